"""The vanilla single-reward baselines: one model fitted to the *pooled* crowd, no latent.

This is what the paper argues against: a Bradley-Terry reward r_hat (TRL ``RewardTrainer``) or one DPO
policy (TRL ``DPOTrainer``) trained on every annotator's pairs as if one person gave them. Both are
LoRA adapters over the same base as the skills, trained by TRL itself (no second training loop).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, set_seed
from trl import DPOConfig, DPOTrainer, RewardConfig, RewardTrainer

from .data import load_preferences
from .trainers.cpu_defaults import CPUFriendlyDefaults

__all__ = ["POOLED_METHODS", "PooledArguments", "train_pooled"]


@dataclass
class PooledArguments:
    """LoRA settings of the pooled baselines (the data arguments are shared with the skill recipe)."""

    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA scale numerator."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["all-linear"], metadata={"help": "Modules to adapt, or 'all-linear'."}
    )


@dataclass
class PooledRewardConfig(PooledArguments, CPUFriendlyDefaults, RewardConfig):
    """TRL ``RewardConfig`` + LoRA settings, with CPU-friendly defaults."""


@dataclass
class PooledDPOConfig(PooledArguments, CPUFriendlyDefaults, DPOConfig):
    """TRL ``DPOConfig`` + LoRA settings, with CPU-friendly defaults."""


POOLED_METHODS = {"pooled-reward": PooledRewardConfig, "pooled-dpo": PooledDPOConfig}


def _lora(args: PooledArguments, task_type: str) -> LoraConfig:
    targets = "all-linear" if args.lora_target_modules == ["all-linear"] else args.lora_target_modules
    return LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, target_modules=targets, task_type=task_type)


def train_pooled(data_args: Any, args: PooledRewardConfig | PooledDPOConfig) -> Path:
    """Train the pooled baseline named by ``data_args.method``; the adapter is saved to ``output_dir``."""
    if data_args.cpu_threads:
        torch.set_num_threads(data_args.cpu_threads)
    tokenizer = AutoTokenizer.from_pretrained(data_args.base_model, trust_remote_code=args.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    ds = load_preferences(data_args.dataset, split=data_args.dataset_split, min_pairs=data_args.min_pairs)
    ds = ds.select_columns(["prompt", "chosen", "rejected"])  # pooled: who said it is dropped on purpose
    load = {"dtype": getattr(torch, data_args.dtype), "trust_remote_code": args.trust_remote_code}
    # the reward head and the LoRA are initialised here, before the trainer seeds anything
    set_seed(args.seed)
    if isinstance(args, RewardConfig):
        model = AutoModelForSequenceClassification.from_pretrained(data_args.base_model, num_labels=1, **load)
        model.config.pad_token_id = tokenizer.pad_token_id
        trainer = RewardTrainer(
            model=model, args=args, train_dataset=ds, processing_class=tokenizer, peft_config=_lora(args, "SEQ_CLS")
        )
    else:
        model = AutoModelForCausalLM.from_pretrained(data_args.base_model, **load)
        trainer = DPOTrainer(
            model=model, args=args, train_dataset=ds, processing_class=tokenizer, peft_config=_lora(args, "CAUSAL_LM")
        )
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    trainer.save_model(args.output_dir)
    return Path(args.output_dir)
