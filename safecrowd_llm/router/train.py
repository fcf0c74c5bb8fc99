"""Train the router pi_h(k | prompt) on a new task reward only, with the prior regulariser.

1. Every skill answers every training prompt (``samples_per_prompt`` sampled completions); the task
   reward scores them: R(prompt, k) = mean reward. The table is cached in the output directory.
2. The head reads the frozen base model's prompt embedding and maximises
   E_k~pi_h[R(prompt, k) + beta_reg log p(z'_k)] + entropy_coef H(pi_h)   (core
   ``categorical_high_level_loss``; exact over the K skills, no policy-gradient noise).
   Its width is chosen by k-fold cross-validation on the training prompts (one-standard-error rule:
   the smallest head within one standard error of the best), because a wide head also learns which
   skill happened to win a tie or a noisy draw on each training prompt, and that does not carry over
   to new prompts; width 0 is one skill distribution for every prompt.
No safety signal enters: the skills are safe because the crowd's shared principle is in all of them.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..core import categorical_high_level_loss
from ..core.atomic import write_json
from ..embeddings import cached_embeddings
from ..rewards import load_reward
from ..skills_export import load_manifest
from ..tiny_base import sample_completions
from .model import RouterHead, RouterSpec, save_router, skills_hash

__all__ = ["RouterArguments", "fit_head", "load_prompts", "score_skills", "select_hidden_dim", "train_router"]


@dataclass
class RouterArguments:
    """Options of ``recipes/train_router.py`` (YAML keys or ``--flags``)."""

    skills_dir: str = field(default="", metadata={"help": "A skills directory (skills.json + one adapter per skill)."})
    output_dir: str = field(default="", metadata={"help": "Where the router directory is written."})
    task_reward: str = field(
        default="safecrowd_llm.textworld.judges.helpfulness",
        metadata={"help": "Dotted path of a (prompt, completion) -> float task reward."},
    )
    prompts: str | None = field(
        default=None,
        metadata={"help": "JSONL file with a 'prompt' field per line; default: the text world's training prompts."},
    )
    world: str | None = field(default=None, metadata={"help": "Text-world YAML (default: the packaged world)."})
    samples_per_prompt: int = field(default=4, metadata={"help": "Completions per prompt and skill to score."})
    reward_table: str | None = field(
        default=None,
        metadata={"help": "A skill_rewards.json of another router to reuse (e.g. in a beta_reg sweep); used only if "
                          "it was scored with the same skills, task, prompts and sampling."},
    )
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of the scored completions."})
    top_p: float = field(
        default=1.0,
        metadata={"help": "Nucleus of the scored completions (1 = pure sampling): score the skills as they will be served."},
    )
    max_new_tokens: int = field(default=80, metadata={"help": "Length limit of the scored completions."})
    beta_reg: float = field(
        default=0.05,
        metadata={"help": "Weight of the prior regulariser beta_reg * log p(z'_k) (rewards are in [0, 1])."},
    )
    entropy_coef: float = field(default=0.01, metadata={"help": "Entropy bonus of pi_h."})
    hidden_dims: list[int] = field(
        default_factory=lambda: [0, 8, 64],
        metadata={"help": "Candidate head widths (0 = one skill distribution for every prompt); with more than "
                          "one, cross-validation on the training prompts picks the width."},
    )
    cv_folds: int = field(default=5, metadata={"help": "Folds of that cross-validation."})
    steps: int = field(default=300, metadata={"help": "Full-batch Adam steps on the reward table."})
    learning_rate: float = field(default=3e-3, metadata={"help": "Adam learning rate of the head."})
    pooling: str = field(default="mean", metadata={"help": "Prompt embedding pooling: mean | last."})
    max_length: int = field(default=256, metadata={"help": "Token limit of prompt embeddings."})
    seed: int = field(default=0, metadata={"help": "Sampling and initialisation seed."})
    cpu_threads: int | None = field(default=1, metadata={"help": "torch CPU threads (None = torch's default)."})


def load_prompts(path: str | None, world: str | None = None) -> list[str]:
    """Prompts from a JSONL file (``{"prompt": ...}`` per line) or, without one, the text world's
    training prompts (its held-out prompts stay for evaluation)."""
    if path is None:
        from ..textworld import TextWorld

        return [p.text for p in TextWorld.from_yaml(world).split_prompts()[0]]
    prompts = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}, line {i}: not valid JSON ({e.msg})") from e
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
                raise ValueError(f"{path}, line {i}: field 'prompt' must be a string")
            prompts.append(row["prompt"])
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    return prompts


def score_skills(
    model: Any, tokenizer: Any, skill_names: Sequence[str], prompts: Sequence[str], reward_fn, *,
    samples_per_prompt: int, temperature: float, max_new_tokens: int, seed: int, top_p: float = 1.0,
) -> torch.Tensor:
    """``(P, K)`` mean task reward of each skill's sampled completions to each prompt."""
    table = torch.zeros(len(prompts), len(skill_names))
    for k, name in enumerate(tqdm(skill_names, desc="scoring skills")):
        model.set_adapter(name)
        texts = sample_completions(
            model, tokenizer, prompts, n=samples_per_prompt, temperature=temperature,
            max_new_tokens=max_new_tokens, seed=seed, top_p=top_p,
        )
        rewards = [float(reward_fn(prompts[i // samples_per_prompt], t)) for i, t in enumerate(texts)]
        table[:, k] = torch.tensor(rewards).view(len(prompts), samples_per_prompt).mean(1)
    return table


def _reward_table(args: RouterArguments, model, tokenizer, names, prompts, reward_fn) -> torch.Tensor:
    """The scored table, reused from ``<output_dir>/skill_rewards.json`` when nothing it depends on changed."""
    key = {
        "skills_hash": skills_hash(args.skills_dir), "task_reward": args.task_reward, "prompts": list(prompts),
        "samples_per_prompt": args.samples_per_prompt, "temperature": args.temperature,
        "max_new_tokens": args.max_new_tokens, "seed": args.seed,
    }
    if args.top_p < 1.0:  # tables scored before top_p existed stay valid
        key["top_p"] = args.top_p
    path = Path(args.output_dir) / "skill_rewards.json"
    for source in (path, Path(args.reward_table) if args.reward_table else None):
        if source is not None and source.exists():
            cached = json.loads(source.read_text())
            if cached.get("key") == key:
                if source != path:
                    write_json(cached, path)
                return torch.tensor(cached["rewards"])
            if source != path:
                differ = sorted(k for k in key if cached.get("key", {}).get(k) != key[k])
                warnings.warn(f"{source}: scored with other {', '.join(differ)}; scoring the skills afresh", stacklevel=2)
    table = score_skills(
        model, tokenizer, names, prompts, reward_fn, samples_per_prompt=args.samples_per_prompt,
        temperature=args.temperature, max_new_tokens=args.max_new_tokens, seed=args.seed, top_p=args.top_p,
    )
    write_json({"key": key, "skills": list(names), "rewards": table.tolist()}, path)
    return table


def fit_head(
    emb: torch.Tensor, rewards: torch.Tensor, log_prior: torch.Tensor, hidden_dim: int, args: RouterArguments
) -> tuple[RouterHead, list[dict[str, float]]]:
    """A head of width ``hidden_dim`` fitted by full-batch Adam on the reward table."""
    torch.manual_seed(args.seed)
    head = RouterHead(emb.shape[1], rewards.shape[1], hidden_dim)
    head.fit_normaliser(emb)
    opt = torch.optim.Adam(head.parameters(), lr=args.learning_rate)
    history = []
    for step in range(args.steps):
        loss, metrics = categorical_high_level_loss(
            head(emb), rewards, log_prior, beta_reg=args.beta_reg, entropy_coef=args.entropy_coef
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == args.steps - 1:
            history.append({"step": step, **metrics})
    return head, history


def select_hidden_dim(
    emb: torch.Tensor, rewards: torch.Tensor, log_prior: torch.Tensor, args: RouterArguments
) -> tuple[int, dict[str, dict[str, float]]]:
    """The head width to train, by ``cv_folds``-fold cross-validation of the routed objective
    R(prompt, k) + beta_reg log p(z'_k) at the head's argmax on held-out training prompts.

    Returns the smallest width whose mean is within one standard error of the best mean, and each
    width's mean and standard error.
    """
    widths = sorted(set(args.hidden_dims))
    if not widths:
        raise ValueError("hidden_dims is empty: give at least one head width")
    folds = min(args.cv_folds, len(emb))
    if len(widths) == 1 or folds < 2:
        return widths[-1], {}
    order = torch.randperm(len(emb), generator=torch.Generator().manual_seed(args.seed))
    value = rewards + args.beta_reg * log_prior
    scores = {}
    for width in widths:
        per_prompt = torch.empty(len(emb))
        for f in range(folds):
            held = order[f::folds]
            keep = torch.ones(len(emb), dtype=torch.bool)
            keep[held] = False
            head, _ = fit_head(emb[keep], rewards[keep], log_prior, width, args)
            with torch.no_grad():
                per_prompt[held] = value[held, head(emb[held]).argmax(-1)]
        scores[str(width)] = {"mean": per_prompt.mean().item(), "stderr": (per_prompt.std() / len(emb) ** 0.5).item()}
    best = max(scores.values(), key=lambda s: s["mean"])
    chosen = next(w for w in widths if scores[str(w)]["mean"] >= best["mean"] - best["stderr"])
    return chosen, scores


def train_router(args: RouterArguments, model: Any = None, tokenizer: Any = None) -> dict[str, Any]:
    """Score the skills, fit the head, save the router directory; returns training metrics.

    ``model`` may be a ``PeftModel`` with every skill loaded as a named adapter (else it is loaded).
    """
    if not args.skills_dir or not args.output_dir:
        raise ValueError("set skills_dir and output_dir")
    if args.cpu_threads:
        torch.set_num_threads(args.cpu_threads)
    manifest = load_manifest(args.skills_dir)
    names = [s["name"] for s in manifest["skills"]]
    if model is None or tokenizer is None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from ..evaluate_skills import load_skills_model

        tokenizer = AutoTokenizer.from_pretrained(manifest["base_model"])
        model, _ = load_skills_model(AutoModelForCausalLM.from_pretrained(manifest["base_model"]), args.skills_dir)
    reward_fn = load_reward(args.task_reward)
    prompts = load_prompts(args.prompts, args.world)
    rewards = _reward_table(args, model, tokenizer, names, prompts, reward_fn)
    with model.disable_adapter():
        emb = cached_embeddings(
            model, tokenizer, prompts, Path(args.output_dir) / "cache", pooling=args.pooling,
            max_length=args.max_length, progress=False,
        )
    # log p(z'_k) up to a constant (the constant does not change pi_h's optimum: sum_k pi = 1)
    log_prior = torch.tensor([s["log_prior"] for s in manifest["skills"]])
    log_prior = log_prior - log_prior.max()

    hidden_dim, cv = select_hidden_dim(emb, rewards, log_prior, args)
    head, history = fit_head(emb, rewards, log_prior, hidden_dim, args)
    spec = RouterSpec(
        skills_dir=str(Path(args.skills_dir).resolve()), skills_hash=skills_hash(args.skills_dir), skill_names=names,
        embedding_dim=emb.shape[1], hidden_dim=hidden_dim, pooling=args.pooling, max_length=args.max_length,
        task_reward=args.task_reward, beta_reg=args.beta_reg,
    )
    save_router(head, spec, args.output_dir)
    with torch.no_grad():
        pick = head(emb).argmax(-1)
    summary = {
        "history": history,
        "skill_mean_reward": rewards.mean(0).tolist(),
        "best_single_skill_reward": rewards.mean(0).max().item(),
        "routed_reward": rewards[torch.arange(len(prompts)), pick].mean().item(),
        "oracle_routed_reward": rewards.max(1).values.mean().item(),
        "choice_counts": torch.bincount(pick, minlength=len(names)).tolist(),
        "hidden_dim": hidden_dim,
        "cross_validation": cv,
        "args": asdict(args),
    }
    write_json(summary, Path(args.output_dir) / "train_summary.json")
    return summary
