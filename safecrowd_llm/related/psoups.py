"""Personalized Soups (Jang et al. 2023): one DPO policy per annotator cluster, merged at inference.

Each cluster's pairs train one LoRA with TRL's ``DPOTrainer``; PEFT's ``add_weighted_adapter``
(``combination_type="cat"``: the merged delta is exactly sum_k w_k B_k A_k) makes a soup for any weights
on the simplex, and the new task reward picks the weights by a grid search on the training prompts —
the reward-weighted analogue of our router, with one fixed mixture instead of a per-prompt choice.

Clusters come from, in this order of preference as configured by ``clusters``:
``archetype`` — the true user types, where the data exposes them (the text world does; an upper bound
on cluster quality), or ``skills`` — the annotators each exported skill covers in a skills manifest
(i.e. clusters of the encoder's posterior means, what a real dataset allows).
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import shutil
import statistics
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
from trl import DPOConfig, DPOTrainer

from ..core.atomic import write_json
from ..data import load_preferences
from ..evaluate_methods import heldout_report
from ..rewards import load_reward
from ..textworld import TextWorld
from ..tiny_base import sample_completions
from ..trainers.cpu_defaults import CPUFriendlyDefaults

__all__ = ["PSoupsConfig", "cluster_rows", "simplex_grid", "train_psoups"]


@dataclass
class PSoupsConfig(CPUFriendlyDefaults, DPOConfig):
    """TRL ``DPOConfig`` (applied to every cluster's policy) + clusters, merge search and LoRA settings."""

    base_model: str = field(default="", metadata={"help": "Base causal LM (the skills' base): local path or hub name."})
    dataset: str = field(default="", metadata={"help": "The crowd's preference data (annotator_id, prompt, chosen, rejected)."})
    min_pairs: int = field(default=4, metadata={"help": "Drop annotators with fewer comparisons than this."})
    clusters: str = field(
        default="archetype",
        metadata={"help": "Where annotator clusters come from: 'archetype' (a column of true user types) or "
                  "'skills' (the annotators each skill covers in skills_manifest).", "choices": ["archetype", "skills"]},
    )
    skills_manifest: str = field(default="", metadata={"help": "clusters=skills: a skills.json written by train_skills.py."})
    task_reward: str = field(
        default="safecrowd_llm.textworld.judges.helpfulness",
        metadata={"help": "Dotted name of the task reward r_new that picks the merge weights."},
    )
    grid_step: float = field(default=0.25, metadata={"help": "Merge weights searched on the simplex with this step."})
    search_prompts: int = field(default=32, metadata={"help": "Training prompts each candidate soup is scored on."})
    search_samples: int = field(default=2, metadata={"help": "Completions per search prompt."})
    search_max_new_tokens: int = field(default=64, metadata={"help": "Longest completion sampled in the search."})
    world_config: str | None = field(default=None, metadata={"help": "Text-world YAML; unset = the packaged world."})
    eval_samples_per_prompt: int = field(default=4, metadata={"help": "Held-out completions per prompt in policy.json; 0 = skip."})
    dtype: str = field(default="float32", metadata={"help": "Base model dtype: float32, bfloat16 or float16."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank of each cluster's policy."})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA scale numerator."})
    lora_target_modules: list[str] = field(default_factory=lambda: ["all-linear"], metadata={"help": "Modules to adapt."})
    cpu_threads: int = field(default=0, metadata={"help": "torch CPU threads (0 = torch's default)."})

    def __post_init__(self) -> None:
        if self.clusters not in ("archetype", "skills"):
            raise ValueError(f"clusters must be archetype or skills, got {self.clusters!r}")
        if self.clusters == "skills" and not self.skills_manifest:
            raise ValueError("clusters=skills needs skills_manifest: a skills.json from train_skills.py")
        if not 0 < self.grid_step <= 1 or abs(round(1 / self.grid_step) * self.grid_step - 1) > 1e-9:
            raise ValueError(f"grid_step must divide 1 (e.g. 0.5, 0.25, 0.2), got {self.grid_step}")
        super().__post_init__()


def simplex_grid(k: int, step: float) -> list[tuple[float, ...]]:
    """Every weight vector of ``k`` non-negative multiples of ``step`` that sum to 1 (pure policies first)."""
    n = round(1 / step)
    points = [c for c in itertools.product(range(n + 1), repeat=k) if sum(c) == n]
    points.sort(key=lambda c: -max(c))
    return [tuple(x / n for x in c) for c in points]


def cluster_rows(dataset: Any, args: PSoupsConfig) -> dict[str, list[int]]:
    """Row indices of each cluster: by the ``archetype`` column or by a skills manifest's covered annotators."""
    ids = dataset["annotator_id"]
    if args.clusters == "archetype":
        if "archetype" not in dataset.column_names:
            raise ValueError(f"{args.dataset}: clusters=archetype needs an 'archetype' column (columns: "
                             f"{dataset.column_names}); use clusters=skills with a skills manifest")
        labels = dataset["archetype"]
    else:
        manifest = json.loads(Path(args.skills_manifest).read_text())
        owner = {a: s["name"] for s in manifest["skills"] for a in s.get("annotators", [])}
        labels = [owner.get(a) for a in ids]
    out: dict[str, list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        if label is not None:
            out[str(label)].append(i)
    if not out:
        raise ValueError(f"{args.dataset}: no row belongs to a cluster (clusters={args.clusters})")
    return dict(sorted(out.items()))


def _conversational(ds: Any, tokenizer: Any) -> Any:
    """String rows as chat messages when the tokenizer has a template, so DPO scores the answer the way the
    policy will be prompted at inference (``sample_completions`` renders prompts with the template)."""
    if not getattr(tokenizer, "chat_template", None) or not isinstance(ds[0]["prompt"], str):
        return ds
    return ds.map(lambda r: {"prompt": [{"role": "user", "content": r["prompt"]}],
                             "chosen": [{"role": "assistant", "content": r["chosen"]}],
                             "rejected": [{"role": "assistant", "content": r["rejected"]}]})


def _lora(args: PSoupsConfig) -> LoraConfig:
    targets = "all-linear" if args.lora_target_modules == ["all-linear"] else args.lora_target_modules
    return LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, target_modules=targets, task_type="CAUSAL_LM")


def _train_cluster(args: PSoupsConfig, ds: Any, tokenizer: Any, out: Path) -> None:
    """One cluster's DPO LoRA, saved as a plain PEFT adapter in ``out``; skipped when ``out`` already holds one
    trained with the same settings on the same rows (``cluster.json``, written last)."""
    settings = {k: v for k, v in args.to_dict().items() if k not in ("output_dir", "logging_dir")}
    stamp = {"config_hash": hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16],
             "rows": len(ds), "data_fingerprint": getattr(ds, "_fingerprint", None)}
    if (out / "cluster.json").exists() and json.loads((out / "cluster.json").read_text()) == stamp:
        return
    model = AutoModelForCausalLM.from_pretrained(args.base_model, dtype=getattr(torch, args.dtype),
                                                 trust_remote_code=args.trust_remote_code)
    cluster_args = copy.copy(args)  # the same DPO settings, checkpoints (if any) under this cluster's directory
    cluster_args.output_dir = str(out / "trainer")
    trainer = DPOTrainer(model=model, args=cluster_args, train_dataset=ds, processing_class=tokenizer,
                         peft_config=_lora(args))
    trainer.train()
    trainer.model.save_pretrained(str(out), safe_serialization=True)
    write_json(stamp, out / "cluster.json")


def train_psoups(args: PSoupsConfig) -> Path:
    """Train the cluster policies, search the merge weights with the task reward, save the best soup.

    ``output_dir`` gets the soup as a plain PEFT adapter (what the evaluation loads), ``clusters/<name>/``
    the cluster policies, and ``policy.json`` (written last) the clusters, the searched grid and the
    held-out report.
    """
    if not args.base_model or not args.dataset:
        raise ValueError("set base_model and dataset (YAML keys or --base_model / --dataset)")
    if args.cpu_threads:
        torch.set_num_threads(args.cpu_threads)
    set_seed(args.seed)
    out = Path(args.output_dir)
    (out / "policy.json").unlink(missing_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(args.base_model, trust_remote_code=args.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    ds = load_preferences(args.dataset, min_pairs=args.min_pairs)
    clusters = cluster_rows(ds, args)
    pairs = _conversational(ds.select_columns(["prompt", "chosen", "rejected"]), tokenizer)
    start = time.perf_counter()
    for name, rows in clusters.items():
        _train_cluster(args, pairs.select(rows), tokenizer, out / "clusters" / name)

    base = AutoModelForCausalLM.from_pretrained(args.base_model, dtype=getattr(torch, args.dtype),
                                                trust_remote_code=args.trust_remote_code)
    names = list(clusters)
    model = PeftModel.from_pretrained(base, str(out / "clusters" / names[0]), adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(str(out / "clusters" / name), adapter_name=name)
    world, task = TextWorld.from_yaml(args.world_config), load_reward(args.task_reward)
    prompts = [p.text for p in world.split_prompts()[0][: args.search_prompts]]
    sampling = {"temperature": 1.0, "max_new_tokens": args.search_max_new_tokens, "seed": args.seed}
    grid, best, best_score = [], -1, -math.inf
    for i, weights in enumerate(simplex_grid(len(names), args.grid_step)):
        model.add_weighted_adapter(names, list(weights), f"soup_{i}", combination_type="cat")
        model.set_adapter(f"soup_{i}")
        texts = sample_completions(model, tokenizer, prompts, n=args.search_samples, **sampling)
        score = statistics.fmean(float(task(prompts[j // args.search_samples], t)) for j, t in enumerate(texts))
        grid.append({"weights": dict(zip(names, weights, strict=True)), "task_reward": score})
        if score > best_score:  # keep only the best soup so far in memory
            if best >= 0:
                model.delete_adapter(f"soup_{best}")
            best, best_score = i, score
        else:
            model.set_adapter(f"soup_{best}")  # never delete the active adapter (PEFT warns and re-picks one)
            model.delete_adapter(f"soup_{i}")
    with tempfile.TemporaryDirectory(dir=out) as tmp:  # PEFT writes a non-default adapter into <dir>/<name>/
        model.save_pretrained(tmp, selected_adapters=[f"soup_{best}"], safe_serialization=True)
        for f in (Path(tmp) / f"soup_{best}").iterdir():
            shutil.copy(f, out / f.name)

    manifest = {
        "kind": "baseline-policy", "method": "psoups", "task_reward": args.task_reward, "base_model": args.base_model,
        "adapter": ".", "clusters": {"source": args.clusters, "sizes": {k: len(v) for k, v in clusters.items()}},
        "merge": {"combination_type": "cat", "weights": grid[best]["weights"], "task_reward": grid[best]["task_reward"],
                  "grid": grid},
        "metrics": {"train_seconds": round(time.perf_counter() - start, 1)},
        "training": args.to_dict(),
    }
    if args.eval_samples_per_prompt > 0:
        soup = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(args.base_model), str(out))
        manifest["heldout"] = {"policy": heldout_report(soup, tokenizer, world, task, args.eval_samples_per_prompt,
                                                        max_new_tokens=args.search_max_new_tokens, seed=args.seed)}
    write_json(manifest, out / "policy.json")
    return out
