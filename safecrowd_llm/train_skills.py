"""Skill discovery end to end: preference data -> latent-skill model -> exported skills directory.

``recipes/train_skills.py`` parses a YAML/CLI config into :class:`SkillDataArguments` plus a
``SafeCPLConfig`` or ``SafeVPLConfig`` and calls :func:`train_skills`; the CPU pipeline calls it too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

from .data import build_crowd, load_preferences, to_text
from .embeddings import cached_embeddings
from .pooled import POOLED_METHODS
from .skills_export import export_skills
from .trainers import (
    AnnotatorSetDataset,
    LatentSkillModel,
    SafeCPLConfig,
    SafeCPLTrainer,
    SafeVPLConfig,
    SafeVPLTrainer,
    tokenize_pairs,
)

__all__ = ["ALL_METHODS", "METHODS", "SkillDataArguments", "render_pair", "train_skills"]

logger = logging.getLogger(__name__)

METHODS = {"safe-cpl": (SafeCPLConfig, SafeCPLTrainer), "safe-vpl": (SafeVPLConfig, SafeVPLTrainer)}
ALL_METHODS = [*METHODS, *POOLED_METHODS]


@dataclass
class SkillDataArguments:
    """What to train on: the base model, the preference data and the method."""

    method: str = field(
        default="safe-cpl",
        metadata={"help": "safe-cpl or safe-vpl (latent skills), or the no-latent baselines pooled-reward / pooled-dpo."},
    )
    base_model: str = field(default="", metadata={"help": "Base causal LM: a local path or hub name."})
    dataset: str = field(
        default="",
        metadata={"help": "Preference data (annotator_id, prompt, chosen, rejected): JSONL/Parquet path or hub name."},
    )
    dataset_split: str = field(default="train", metadata={"help": "Split to read when loading by name."})
    min_pairs: int = field(default=4, metadata={"help": "Drop annotators with fewer comparisons than this."})
    dtype: str = field(default="float32", metadata={"help": "Base model dtype: float32, bfloat16 or float16."})
    cpu_threads: int = field(
        default=0,
        metadata={"help": "torch CPU threads (0 = torch's default). On a small shared CPU, 1 avoids oversubscription."},
    )
    export_only: bool = field(
        default=False,
        metadata={"help": "Train nothing: load <output_dir>/latent_model and export the skills again (e.g. another "
                  "--num_skills)."},
    )

    def __post_init__(self) -> None:
        if self.method not in ALL_METHODS:
            raise ValueError(f"method must be one of {ALL_METHODS}, got {self.method!r}")


def render_pair(tokenizer, prompt, response) -> str:
    """prompt + response as the model reads it: through the chat template when the tokenizer has one."""
    if isinstance(prompt, str) and isinstance(response, str) and getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        return tokenizer.apply_chat_template(messages, tokenize=False)
    return to_text(prompt, response, tokenizer)


def train_skills(data_args: SkillDataArguments, args: SafeCPLConfig | SafeVPLConfig) -> dict[str, Any]:
    """Train the latent-skill model, save it to ``<output_dir>/latent_model`` and export the skills to
    ``<output_dir>/skills``. Returns the skills manifest (on the main process; ``{}`` elsewhere)."""
    if not data_args.base_model or not data_args.dataset:
        raise ValueError("set base_model and dataset (YAML keys or --base_model / --dataset)")
    config_cls, trainer_cls = METHODS[data_args.method]
    if not isinstance(args, config_cls):
        raise TypeError(f"method {data_args.method} needs a {config_cls.__name__}, got {type(args).__name__}")
    if data_args.cpu_threads:
        torch.set_num_threads(data_args.cpu_threads)
    set_seed(args.seed)  # the encoder and prior are initialised before the Trainer would seed
    out = Path(args.output_dir)
    tokenizer = AutoTokenizer.from_pretrained(data_args.base_model, trust_remote_code=args.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    backbone = AutoModelForCausalLM.from_pretrained(
        data_args.base_model, dtype=getattr(torch, data_args.dtype), trust_remote_code=args.trust_remote_code
    )

    ds = load_preferences(data_args.dataset, split=data_args.dataset_split, min_pairs=data_args.min_pairs)
    # frozen-base features of prompt+chosen / prompt+rejected: computed once, by the main process
    with args.main_process_first(desc="embedding the preference data"):
        texts = [render_pair(tokenizer, p, r) for side in ("chosen", "rejected") for p, r in zip(ds["prompt"], ds[side])]
        emb = cached_embeddings(
            backbone, tokenizer, texts, args.embedding_cache_dir or out / "cache",
            pooling=args.embedding_pooling, max_length=args.max_length,
        )
    n = len(ds)
    crowd = build_crowd(ds, emb[:n], emb[n:])
    if args.eval_annotator_fraction > 0:
        train_crowd, eval_crowd = crowd.split(args.eval_annotator_fraction, seed=args.seed)
    else:
        train_crowd, eval_crowd = crowd, None
    logger.info("%d annotators (%d held out), %d comparisons", len(crowd), len(eval_crowd or ()), n)

    model = LatentSkillModel.build(
        backbone, args, feature_dim=emb.shape[1], base_model_name_or_path=data_args.base_model,
        kind=data_args.method, seed=args.seed,
    )
    refining = args.skill_refine_steps > 0
    trainer = None
    if not data_args.export_only or refining:  # export alone needs only the crowd (its split and features)
        tokens = tokenize_pairs(tokenizer, ds["prompt"], ds["chosen"], ds["rejected"], args.max_length)
        context = (args.context_min, args.context_max)
        train_set = AnnotatorSetDataset(train_crowd, context, args.max_target_pairs, seed=args.seed)
        eval_set = (
            AnnotatorSetDataset(eval_crowd, context, args.max_target_pairs, seed=args.seed + 1) if eval_crowd else None
        )
        trainer = trainer_cls(
            model=model, args=args, train_dataset=train_set, tokens=tokens, eval_dataset=eval_set,
            processing_class=tokenizer,
        )
    if data_args.export_only:
        model.load_trainable(out / "latent_model")
        return _export(model, train_crowd, out, data_args, args, trainer)
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    trainer.save_model(str(out / "latent_model"))
    accelerator = trainer.accelerator
    # the main process exports; every rank then leaves the process group together (a rank that exits while
    # gloo's threads still run can abort: "terminate called without an active exception")
    manifest = (
        _export(accelerator.unwrap_model(trainer.model), train_crowd, out, data_args, args, trainer)
        if accelerator.is_main_process else {}
    )
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return manifest


def _export(model: LatentSkillModel, crowd, out: Path, data_args: SkillDataArguments, args, trainer=None) -> dict:
    """Cluster the crowd's posteriors into skills and write them as PEFT adapters under ``out/skills``."""
    refine = None
    if args.skill_refine_steps > 0:
        def refine(ids: list[str], z0: Tensor) -> Tensor:
            return trainer.fit_group_latent([crowd.sets[a] for a in ids], z0, args.skill_refine_steps, args.skill_refine_lr)
    _, manifest = export_skills(
        model, crowd, out / "skills",
        num_skills=args.num_skills, k_range=(args.skill_k_min, args.skill_k_max), seed=args.seed,
        training_config={"data": {k: v for k, v in vars(data_args).items() if k != "export_only"},
                         "training": args.to_dict()},
        refine=refine,
    )
    logger.info("exported %d skills to %s", len(manifest["skills"]), out / "skills")
    return manifest
