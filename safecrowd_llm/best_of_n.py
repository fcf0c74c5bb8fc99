"""Best-of-n fine-tuning (RAFT, Dong et al. 2023; expert iteration): the baselines' second reward optimiser.

Each round samples ``bon_samples`` completions per training prompt from the current policy, scores them
with the method's reward, and fine-tunes the LoRA policy with TRL's ``SFTTrainer`` on the best completion
of every prompt. It needs no critic and no within-group reward variance, which is where GRPO stalls on
the tiny text-world base: once every completion in a hazardous prompt's group is an answer, GRPO's
advantage is zero, while best-of-n still finds the one refusal among n samples and trains on it.

After every round the adapter is saved to ``<work_dir>/bon_round_<r>/`` (atomically); a rerun resumes
after the last saved round.
"""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path
from typing import Any

from datasets import Dataset
from peft import PeftModel, get_peft_model, set_peft_model_state_dict
from peft.utils import load_peft_weights
from trl import SFTConfig, SFTTrainer

from .rewards import BatchRewardFn, as_text
from .tiny_base import sample_completions

__all__ = ["best_of_n_rows", "train_best_of_n"]

ROUND_PREFIX = "bon_round_"


def best_of_n_rows(prompts: list[Any], completions: list[str], rewards: list[float], n: int) -> list[dict]:
    """The SFT rows of one round: each prompt with its highest-reward completion (the first on ties).

    ``completions`` and ``rewards`` are prompt-major, ``n`` per prompt (as ``sample_completions`` returns).
    """
    if len(completions) != n * len(prompts) or len(rewards) != len(completions):
        raise ValueError(f"expected {n} completions and rewards per prompt for {len(prompts)} prompts, got "
                         f"{len(completions)} completions and {len(rewards)} rewards")
    rows = []
    for i, prompt in enumerate(prompts):
        scores = rewards[i * n:(i + 1) * n]
        best = i * n + max(range(n), key=scores.__getitem__)
        rows.append({"prompt": [{"role": "user", "content": as_text(prompt)}],
                     "completion": [{"role": "assistant", "content": completions[best]}],
                     "reward": rewards[best]})
    return rows


def _sft_args(args: Any, round_: int, work_dir: Path) -> SFTConfig:
    """The SFT step of a round, from the caller's config (learning rate, batch, CPU/precision, seed)."""
    return SFTConfig(
        output_dir=str(work_dir / "bon_sft"),
        num_train_epochs=args.bon_epochs,
        per_device_train_batch_size=args.per_device_train_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        learning_rate=args.learning_rate,
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=args.warmup_steps,
        weight_decay=args.weight_decay,
        max_length=None,
        completion_only_loss=True,
        use_cpu=args.use_cpu,
        bf16=args.bf16,
        seed=args.seed + round_,
        logging_steps=args.logging_steps,
        save_strategy="no",
        report_to=args.report_to,
        disable_tqdm=args.disable_tqdm,
    )


def _last_round(out: Path) -> int:
    done = [int(p.name[len(ROUND_PREFIX):]) for p in out.glob(f"{ROUND_PREFIX}*") if (p / "round.json").exists()]
    return max(done, default=-1)


def train_best_of_n(args: Any, model: Any, tokenizer: Any, objective: BatchRewardFn, prompts: list[Any],
                    lora: Any, work_dir: str | Path | None = None) -> tuple[PeftModel, list[dict], int]:
    """Wrap ``model`` in the ``lora`` adapter and run ``args.bon_rounds`` best-of-n rounds on ``objective``.

    ``args``: ``bon_rounds``, ``bon_samples``, ``bon_epochs``, ``temperature``, ``max_completion_length`` and the
    usual ``TrainingArguments`` fields; rounds are kept under ``work_dir`` (default ``args.output_dir``).
    Returns the policy, the per-round curve (mean and best-of-n reward of the round's samples, SFT loss)
    and the number of optimiser steps taken in this call.
    """
    out = Path(work_dir or args.output_dir)
    policy = get_peft_model(model, lora)
    start = _last_round(out) + 1
    curve: list[dict] = []
    if start > 0:  # resume: the last finished round's adapter and the curve so far
        last = out / f"{ROUND_PREFIX}{start - 1}"
        set_peft_model_state_dict(policy, load_peft_weights(str(last)))
        curve = json.loads((last / "round.json").read_text())["curve"]
    texts = [as_text(p) for p in prompts]
    steps = 0
    for r in range(start, args.bon_rounds):
        n = args.bon_samples
        completions = sample_completions(policy, tokenizer, texts, n=n, temperature=args.temperature,
                                         max_new_tokens=args.max_completion_length, seed=args.seed + r)
        rewards = [float(x) for x in objective([p for p in texts for _ in range(n)], completions)]
        rows = best_of_n_rows(texts, completions, rewards, n)
        trainer = SFTTrainer(model=policy, args=_sft_args(args, r, out), processing_class=tokenizer,
                             train_dataset=Dataset.from_list([{k: v for k, v in row.items() if k != "reward"}
                                                              for row in rows]))
        result = trainer.train()
        steps += trainer.state.global_step
        curve.append({"round": r, "reward": statistics.fmean(rewards),
                      "reward_best_of_n": statistics.fmean(row["reward"] for row in rows),
                      "sft_loss": round(result.training_loss, 4)})
        if trainer.accelerator.is_main_process:
            tmp = out / f".{ROUND_PREFIX}{r}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            policy.save_pretrained(str(tmp), safe_serialization=True)
            (tmp / "round.json").write_text(json.dumps({"round": r, "curve": curve}, indent=1))
            tmp.replace(out / f"{ROUND_PREFIX}{r}")
        trainer.accelerator.wait_for_everyone()
    return policy, curve, steps
