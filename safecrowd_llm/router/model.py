"""The router pi_h(k | prompt): a small head over a frozen prompt embedding, and its directory format.

A router directory holds ``router.json`` (config, the skills directory it routes over and that
directory's ``skills.json`` hash, how prompt embeddings are made) and ``router.safetensors`` (the
head). :func:`load_router` returns a :class:`Router` that embeds prompts with the skills' base model
(adapters off) and picks a skill per prompt.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ..core.atomic import atomic_path, write_json
from ..embeddings import embed_texts
from ..skills_export import SKILLS_MANIFEST, load_manifest

__all__ = ["ROUTER_CONFIG", "ROUTER_WEIGHTS", "Router", "RouterHead", "RouterSpec", "load_router", "save_router"]

ROUTER_CONFIG, ROUTER_WEIGHTS = "router.json", "router.safetensors"


@dataclass
class RouterSpec:
    """Everything needed to rebuild a router (stored in ``router.json``)."""

    skills_dir: str
    skills_hash: str
    skill_names: list[str]
    embedding_dim: int
    hidden_dim: int = 64
    pooling: str = "mean"
    max_length: int = 256
    task_reward: str | None = None
    beta_reg: float | None = None
    format: str = "safecrowd-router/1"


class RouterHead(nn.Module):
    """Prompt embedding ``(B, H)`` -> logits over K skills ``(B, K)``; inputs are standardised with
    statistics of the training prompts (stored as buffers) so one learning rate fits any base model.

    ``hidden_dim`` 0 is the smallest router: one learned distribution over skills for every prompt."""

    def __init__(self, embedding_dim: int, num_skills: int, hidden_dim: int = 64) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(embedding_dim))
        self.register_buffer("std", torch.ones(embedding_dim))
        if hidden_dim > 0:
            self.net = nn.Sequential(
                nn.Linear(embedding_dim, hidden_dim), nn.Tanh(), nn.Linear(hidden_dim, num_skills)
            )
            # start uniform over skills: a saturated softmax has no gradient to recover from an early mistake
            nn.init.zeros_(self.net[-1].weight)
            nn.init.zeros_(self.net[-1].bias)
        else:
            self.logits = nn.Parameter(torch.zeros(num_skills))

    def fit_normaliser(self, x: Tensor) -> None:
        self.mean.copy_(x.mean(0))
        self.std.copy_(x.std(0).clamp(min=1e-6) if x.shape[0] > 1 else torch.ones_like(self.std))

    def forward(self, x: Tensor) -> Tensor:
        if hasattr(self, "net"):
            return self.net((x - self.mean) / self.std)
        return self.logits.expand(x.shape[0], -1)


def skills_hash(skills_dir: str | Path) -> str:
    return hashlib.sha256((Path(skills_dir) / SKILLS_MANIFEST).read_bytes()).hexdigest()[:16]


def save_router(head: RouterHead, spec: RouterSpec, out_dir: str | Path) -> Path:
    """Write ``router.safetensors`` then ``router.json`` (each atomically)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / ROUTER_WEIGHTS) as tmp:
        save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(tmp))
    write_json(asdict(spec), out / ROUTER_CONFIG)
    return out


class Router:
    """A trained router bound to a base model for prompt embeddings.

    ``route(prompts)`` returns the chosen skill index per prompt (argmax of pi_h); ``probs`` the
    distribution. Prompts are user-message texts (for chat, the last user message).
    """

    def __init__(self, head: RouterHead, spec: RouterSpec, base_model: nn.Module, tokenizer: Any) -> None:
        self.head, self.spec = head.eval(), spec
        self.base_model, self.tokenizer = base_model, tokenizer
        self.skills_dir = Path(spec.skills_dir)
        self.skill_names = list(spec.skill_names)

    def embed(self, prompts: Sequence[str]) -> Tensor:
        # a PeftModel carrying the skill adapters embeds with its adapters switched off: the frozen base
        off = getattr(self.base_model, "disable_adapter", None)
        with off() if callable(off) else contextlib.nullcontext():
            return embed_texts(
                self.base_model, self.tokenizer, list(prompts), pooling=self.spec.pooling,
                max_length=self.spec.max_length, progress=False,
            )

    @torch.no_grad()
    def probs(self, prompts: Sequence[str]) -> Tensor:
        if not prompts:
            return torch.zeros(0, len(self.skill_names))
        return torch.softmax(self.head(self.embed(prompts)), -1)

    def route(self, prompts: Sequence[str]) -> list[int]:
        return self.probs(prompts).argmax(-1).tolist()


def load_router(
    path: str | Path, base_model: nn.Module | None = None, tokenizer: Any = None, *, check_skills: bool = True
) -> Router:
    """Load a router directory. Without ``base_model``/``tokenizer`` the skills' base model is loaded
    (by name or path, as recorded in ``skills.json``)."""
    path = Path(path)
    cfg_path = path / ROUTER_CONFIG
    if not cfg_path.exists():
        raise FileNotFoundError(f"{cfg_path} not found: is {path} a router directory?")
    raw = json.loads(cfg_path.read_text())
    if raw.get("kind") == "continuous":
        raise ValueError(f"{cfg_path}: a continuous-latent router; load it with router.load_continuous_router")
    spec = RouterSpec(**raw)
    skills_dir = Path(spec.skills_dir)
    if not skills_dir.is_absolute():
        skills_dir = (path / skills_dir).resolve()
        spec.skills_dir = str(skills_dir)
    if check_skills and (skills_dir / SKILLS_MANIFEST).exists() and skills_hash(skills_dir) != spec.skills_hash:
        raise ValueError(
            f"{cfg_path}: the skills directory {skills_dir} changed since this router was trained "
            f"(skills.json hash {skills_hash(skills_dir)} != {spec.skills_hash}); retrain the router"
        )
    head = RouterHead(spec.embedding_dim, len(spec.skill_names), spec.hidden_dim)
    head.load_state_dict(load_file(path / ROUTER_WEIGHTS))
    if base_model is None or tokenizer is None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        base = load_manifest(skills_dir)["base_model"]
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(base)
        base_model = base_model or AutoModelForCausalLM.from_pretrained(base)
    return Router(head, spec, base_model, tokenizer)
