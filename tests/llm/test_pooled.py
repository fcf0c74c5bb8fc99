"""The no-latent pooled baselines train through TRL from the same recipe arguments and save an adapter."""

from __future__ import annotations

import pytest

pytest.importorskip("trl", reason="needs the llm extra: pip install -e '.[llm]'")

from peft import PeftConfig

from safecrowd_llm.pooled import PooledDPOConfig, PooledRewardConfig, train_pooled
from safecrowd_llm.train_skills import SkillDataArguments


@pytest.mark.parametrize(("method", "config_cls", "task"), [
    ("pooled-dpo", PooledDPOConfig, "CAUSAL_LM"),
    ("pooled-reward", PooledRewardConfig, "SEQ_CLS"),
])
def test_pooled_baseline_trains_and_saves_an_adapter(base_and_crowd, tmp_path, method, config_cls, task):
    data = SkillDataArguments(method=method, base_model=str(base_and_crowd / "base"),
                              dataset=str(base_and_crowd / "crowd.jsonl"), cpu_threads=1)
    args = config_cls(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=8, logging_steps=1,
                      save_strategy="no", report_to="none", use_cpu=True, lora_r=4, max_length=96, disable_tqdm=True)
    out = train_pooled(data, args)
    assert PeftConfig.from_pretrained(str(out)).task_type == task
    assert (out / "adapter_model.safetensors").exists()


def test_pooled_reward_is_reproducible_given_its_seed(base_and_crowd, tmp_path):
    # the score head and the LoRA are initialised before TRL's trainer seeds anything: two runs with one
    # seed must still give the same adapter (RC's baselines read it)
    import torch
    from safetensors.torch import load_file

    data = SkillDataArguments(method="pooled-reward", base_model=str(base_and_crowd / "base"),
                              dataset=str(base_and_crowd / "crowd.jsonl"), cpu_threads=1)
    runs = []
    for name in ("a", "b"):
        args = PooledRewardConfig(output_dir=str(tmp_path / name), max_steps=2, per_device_train_batch_size=8,
                                  save_strategy="no", report_to="none", use_cpu=True, lora_r=4, max_length=96,
                                  disable_tqdm=True, seed=3)
        torch.manual_seed(len(runs))  # a different global RNG state before each run
        runs.append(load_file(str(train_pooled(data, args) / "adapter_model.safetensors")))
    assert runs[0].keys() == runs[1].keys()
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_unknown_method_is_rejected():
    with pytest.raises(ValueError, match="method must be one of"):
        SkillDataArguments(method="pooled-magic")



@pytest.mark.parametrize(("proportions", "majority", "minority"), [
    ({"thorough": 10, "breezy": 1}, "thorough", "breezy"),
    ({"thorough": 1, "breezy": 10}, "breezy", "thorough"),
])
def test_pooled_reward_on_a_10_to_1_crowd_learns_the_majority_style(base_and_crowd, tmp_path, proportions, majority,
                                                                     minority):
    """The failure the paper formalises: one reward for the whole crowd is the majority's reward. On held-out
    benign prompts it ranks the majority type's favourite answer above the minority's favourite, whichever
    type is the majority."""
    from transformers import AutoTokenizer

    from safecrowd_llm.baselines import PooledRewardModel
    from safecrowd_llm.textworld import TextWorld, sample_crowd, write_jsonl

    world = TextWorld.from_yaml(**{"crowd.num_annotators": 22, "crowd.pairs_per_annotator": 24,
                                   "crowd.proportions": proportions})
    write_jsonl(sample_crowd(world, seed=0), tmp_path / "crowd.jsonl")
    base = str(base_and_crowd / "base")
    data = SkillDataArguments(method="pooled-reward", base_model=base, dataset=str(tmp_path / "crowd.jsonl"),
                              cpu_threads=1)
    args = PooledRewardConfig(output_dir=str(tmp_path / "rm"), max_steps=120, per_device_train_batch_size=16,
                              learning_rate=5e-3, save_strategy="no", report_to="none", use_cpu=True, lora_r=4,
                              max_length=96, disable_tqdm=True, seed=0)
    rm = PooledRewardModel.from_pretrained(train_pooled(data, args), base)
    assert AutoTokenizer.from_pretrained(base).pad_token_id == rm.model.config.pad_token_id
    prompts = [p for p in world.split_prompts()[1] if not p.hazardous]
    ours = [world.render(p, world.favourite(majority)) for p in prompts]
    theirs = [world.render(p, world.favourite(minority)) for p in prompts]
    texts = [p.text for p in prompts]
    wins = [a > b for a, b in zip(rm.score(texts, ours), rm.score(texts, theirs))]
    assert sum(wins) / len(wins) >= 0.9
