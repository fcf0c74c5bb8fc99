"""Settings shared by the GRPO-trained baselines' tests."""

TINY_GRPO = {  # a few GRPO steps of 4 prompts x 2 completions of 8 tokens, one CPU thread
    "max_steps": 2, "per_device_train_batch_size": 8, "num_generations": 2, "max_completion_length": 8,
    "learning_rate": 1e-2, "lora_r": 4, "lora_alpha": 8, "logging_steps": 1, "save_strategy": "no",
    "report_to": "none", "use_cpu": True, "cpu_threads": 1, "disable_tqdm": True, "seed": 0,
}
