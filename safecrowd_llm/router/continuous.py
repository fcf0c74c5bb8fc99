"""The continuous-latent variant of the router: pi_h(z' | prompt) outputs a latent, not a skill index.

Instead of choosing among K exported adapters, the head proposes z' for each prompt and the latent-LoRA
model answers at that z' (an adapter "exported on the fly": for a fixed z' the latent LoRA *is* a LoRA).
Generation and the task reward are not differentiable in z', so pi_h is a Gaussian policy trained by
REINFORCE on R(prompt, completion) + beta_reg log p(z') with a batch-mean baseline — the same objective as
the categorical router, over the whole latent space. Kept for comparison: the prior regulariser is all
that keeps z' where annotators (and hence the shared principle) are.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm.auto import trange

from ..core.atomic import atomic_path, write_json
from ..embeddings import cached_embeddings, embed_texts
from ..latent_lora import set_latent
from ..rewards import load_reward
from ..tiny_base import sample_completions
from .train import load_prompts

__all__ = [
    "ContinuousRouterArguments",
    "LatentRouterHead",
    "generate_at_latents",
    "load_continuous_router",
    "train_continuous_router",
]

CONFIG, WEIGHTS = "router.json", "router.safetensors"


class LatentRouterHead(nn.Module):
    """Prompt embedding ``(B, H)`` -> Gaussian over z' ``(B, D)``: mean ``bound * tanh(.)``, shared std."""

    def __init__(self, embedding_dim: int, latent_dim: int, hidden_dim: int = 64, bound: float = 3.0,
                 init_std: float = 0.5) -> None:
        super().__init__()
        self.bound = bound
        self.register_buffer("mean", torch.zeros(embedding_dim))
        self.register_buffer("std", torch.ones(embedding_dim))
        self.net = nn.Sequential(nn.Linear(embedding_dim, hidden_dim), nn.Tanh(), nn.Linear(hidden_dim, latent_dim))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)  # start at the prior mean
        self.log_std = nn.Parameter(torch.full((latent_dim,), math.log(init_std)))

    def fit_normaliser(self, x: Tensor) -> None:
        self.mean.copy_(x.mean(0))
        self.std.copy_(x.std(0).clamp(min=1e-6) if x.shape[0] > 1 else torch.ones_like(self.std))

    def forward(self, x: Tensor) -> torch.distributions.Normal:
        mu = self.bound * torch.tanh(self.net((x - self.mean) / self.std))
        return torch.distributions.Normal(mu, self.log_std.exp().expand_as(mu))


@dataclass
class ContinuousRouterArguments:
    """Options of the continuous-latent router (``recipes/train_router.py --latent_model ...``)."""

    latent_model: str = field(default="", metadata={"help": "A skills run's latent_model/ directory."})
    output_dir: str = field(default="", metadata={"help": "Where the router directory is written."})
    task_reward: str = field(default="safecrowd_llm.textworld.judges.helpfulness",
                             metadata={"help": "Dotted path of a (prompt, completion) -> float task reward."})
    prompts: str | None = field(default=None, metadata={"help": "JSONL with 'prompt' (default: text-world train prompts)."})
    world: str | None = field(default=None, metadata={"help": "Text-world YAML (default: the packaged world)."})
    iterations: int = field(default=100, metadata={"help": "REINFORCE updates."})
    prompts_per_iteration: int = field(default=16, metadata={"help": "Prompts sampled per update."})
    beta_reg: float = field(default=0.05, metadata={"help": "Weight of beta_reg * log p(z')."})
    learning_rate: float = field(default=3e-3, metadata={"help": "Adam learning rate of the head (1e-2 diverged: |z'| -> bound)."})
    max_new_tokens: int = field(default=80, metadata={"help": "Length limit of sampled completions."})
    bound: float = field(default=3.0, metadata={"help": "|z'_j| <= bound (the prior's bulk)."})
    init_std: float = field(default=0.5, metadata={"help": "Initial std of pi_h's Gaussian."})
    hidden_dim: int = field(default=64, metadata={"help": "Width of the head."})
    seed: int = field(default=0, metadata={"help": "Seed of prompt sampling, z' sampling and generation."})
    cpu_threads: int | None = field(default=1, metadata={"help": "torch CPU threads."})


def generate_at_latents(model: Any, tokenizer: Any, prompts: Sequence[str], z: Tensor, **sampling: Any) -> list[str]:
    """One completion per prompt from the latent-LoRA ``model`` (a ``LatentSkillModel``'s backbone) at
    the per-row latents ``z (B, D)``."""
    set_latent(model, z)
    try:
        return sample_completions(model, tokenizer, prompts, batch_size=len(prompts), **sampling)
    finally:
        set_latent(model, None)


def _load(latent_model: str) -> tuple[Any, Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..trainers.skill_model import SKILL_MODEL_CONFIG, LatentSkillModel

    spec = json.loads((Path(latent_model) / SKILL_MODEL_CONFIG).read_text())
    base = spec["base_model_name_or_path"]
    tokenizer = AutoTokenizer.from_pretrained(base)
    frozen = AutoModelForCausalLM.from_pretrained(base).eval()
    model = LatentSkillModel.from_pretrained(latent_model, AutoModelForCausalLM.from_pretrained(base)).eval()
    return model, frozen, tokenizer


def train_continuous_router(args: ContinuousRouterArguments) -> dict[str, Any]:
    """REINFORCE pi_h(z' | prompt) on task reward + beta_reg log p(z'); saves the router directory."""
    if not args.latent_model or not args.output_dir:
        raise ValueError("set latent_model and output_dir")
    if args.cpu_threads:
        torch.set_num_threads(args.cpu_threads)
    model, frozen, tok = _load(args.latent_model)
    reward_fn = load_reward(args.task_reward)
    prompts = load_prompts(args.prompts, args.world)
    emb = cached_embeddings(frozen, tok, prompts, Path(args.output_dir) / "cache", pooling="mean", max_length=256,
                            progress=False)
    g = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    head = LatentRouterHead(emb.shape[1], model.latent_dim, args.hidden_dim, args.bound, args.init_std)
    head.fit_normaliser(emb)
    opt = torch.optim.Adam(head.parameters(), lr=args.learning_rate)
    prior = model.vae.prior
    history = []
    for it in trange(args.iterations, desc="continuous router"):
        idx = torch.randperm(len(prompts), generator=g)[: args.prompts_per_iteration]
        dist = head(emb[idx])
        z = dist.sample()
        with torch.no_grad():
            texts = generate_at_latents(model.backbone, tok, [prompts[i] for i in idx], z,
                                        max_new_tokens=args.max_new_tokens, seed=args.seed * 100_003 + it)
            reward = torch.tensor([float(reward_fn(prompts[i], t)) for i, t in zip(idx.tolist(), texts)])
            score = reward + args.beta_reg * prior.log_prob(z)
        advantage = score - score.mean()
        loss = -(advantage * dist.log_prob(z).sum(-1)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append({"iteration": it, "reward": reward.mean().item(), "z_norm": z.norm(dim=-1).mean().item(),
                        "std": head.log_std.exp().mean().item()})
    spec = {"kind": "continuous", "latent_model": str(Path(args.latent_model).resolve()),
            "embedding_dim": emb.shape[1], "latent_dim": model.latent_dim, "hidden_dim": args.hidden_dim,
            "bound": args.bound, "task_reward": args.task_reward, "beta_reg": args.beta_reg,
            "format": "safecrowd-router/1"}
    out = Path(args.output_dir)
    with atomic_path(out / WEIGHTS) as tmp:
        save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(tmp))
    write_json(spec, out / CONFIG)
    summary = {"history": history, "args": asdict(args)}
    write_json(summary, out / "train_summary.json")
    return summary


class ContinuousRouter:
    """A trained continuous router with its latent model: ``latents(prompts)`` (the Gaussian means) and
    ``generate(prompts)``."""

    def __init__(self, head: LatentRouterHead, model: Any, frozen: Any, tokenizer: Any) -> None:
        self.head, self.model, self.frozen, self.tokenizer = head.eval(), model, frozen, tokenizer

    @torch.no_grad()
    def latents(self, prompts: Sequence[str]) -> Tensor:
        emb = embed_texts(self.frozen, self.tokenizer, list(prompts), pooling="mean", max_length=256, progress=False)
        return self.head(emb).mean

    def generate(self, prompts: Sequence[str], **sampling: Any) -> list[str]:
        return generate_at_latents(self.model.backbone, self.tokenizer, prompts, self.latents(prompts), **sampling)


def load_continuous_router(path: str | Path) -> ContinuousRouter:
    path = Path(path)
    spec = json.loads((path / CONFIG).read_text())
    if spec.get("kind") != "continuous":
        raise ValueError(f"{path / CONFIG}: not a continuous-latent router")
    model, frozen, tok = _load(spec["latent_model"])
    head = LatentRouterHead(spec["embedding_dim"], spec["latent_dim"], spec["hidden_dim"], spec["bound"])
    head.load_state_dict(load_file(path / WEIGHTS))
    return ContinuousRouter(head, model, frozen, tok)
