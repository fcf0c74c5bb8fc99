"""Linear reward heads over frozen base-model features: the reward and cost models of the related baselines.

MaxMin-RLHF fits a mixture of Bradley-Terry rewards and Safe RLHF a reward and a cost model. Here each is a
linear head on the *frozen* base model's embedding of prompt + completion (the same features the skills'
set encoder reads), so fitting is a convex problem solved in seconds and the EM of MaxMin runs to
convergence on a CPU. Full LoRA reward models would be the GPU-scale variant; the heads keep the
comparison about the *objective* each method optimises, not about reward-model capacity.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor

from ..core.atomic import atomic_path, write_json
from ..embeddings import cached_embeddings
from ..rewards import as_text

__all__ = ["FrozenFeatures", "LinearHeads", "fit_bradley_terry", "fit_linear_head", "fit_logistic", "standardiser"]


class FrozenFeatures:
    """``(prompts, completions) -> (N, H)`` embeddings of the rendered pair by a frozen causal LM.

    Loads its own copy of the base: a GRPO policy wraps the base it trains in LoRA, and the reward must
    keep reading the *base's* features.
    """

    def __init__(self, model: Any, tokenizer: Any, pooling: str = "mean", max_length: int = 512,
                 cache_dir: str | Path | None = None, batch_size: int = 64) -> None:
        self.model, self.tokenizer = model.eval().requires_grad_(False), tokenizer
        self.pooling, self.max_length, self.cache_dir, self.batch_size = pooling, max_length, cache_dir, batch_size
        self._last: tuple[tuple[str, ...], Tensor] | None = None  # a GRPO batch scored by two heads is embedded once

    @classmethod
    def from_pretrained(cls, base_model: str, dtype: str = "float32", trust_remote_code: bool = False,
                        **kwargs: Any) -> FrozenFeatures:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(base_model, trust_remote_code=trust_remote_code)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model = AutoModelForCausalLM.from_pretrained(base_model, dtype=getattr(torch, dtype),
                                                     trust_remote_code=trust_remote_code)
        return cls(model, tokenizer, **kwargs)

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], cache: bool = False) -> Tensor:
        from ..train_skills import render_pair

        texts = [render_pair(self.tokenizer, as_text(p), as_text(c)) for p, c in zip(prompts, completions, strict=True)]
        if not cache and self._last is not None and self._last[0] == tuple(texts):
            return self._last[1]
        emb = cached_embeddings(self.model, self.tokenizer, texts, self.cache_dir if cache else None,
                                 pooling=self.pooling, max_length=self.max_length, batch_size=self.batch_size,
                                 progress=cache and len(texts) > 1000)
        if not cache:
            self._last = (tuple(texts), emb)
        return emb

    def preference_pairs(self, dataset: Any) -> tuple[Tensor, Tensor]:
        """Features of prompt+chosen and prompt+rejected for every row of a preference dataset (cached)."""
        n = len(dataset)
        emb = self(list(dataset["prompt"]) * 2, list(dataset["chosen"]) + list(dataset["rejected"]), cache=True)
        return emb[:n], emb[n:]


class LinearHeads(torch.nn.Module):
    """K linear heads on standardised features: ``scores(x) -> (N, K)``. Saved as safetensors + JSON."""

    def __init__(self, mean: Tensor, std: Tensor, weight: Tensor, bias: Tensor | None = None,
                 meta: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.register_buffer("mean", mean.float())
        self.register_buffer("std", std.float())
        self.register_buffer("weight", weight.float())  # (K, H)
        self.register_buffer("bias", (torch.zeros(weight.shape[0]) if bias is None else bias).float())  # (K,)
        self.meta = dict(meta or {})

    def scores(self, features: Tensor) -> Tensor:
        return ((features.float() - self.mean) / self.std) @ self.weight.T + self.bias

    def save(self, path: str | Path) -> None:
        path = Path(path)
        with atomic_path(path.with_suffix(".safetensors")) as tmp:
            save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(tmp))
        write_json(self.meta, path.with_suffix(".json"))

    @classmethod
    def load(cls, path: str | Path) -> LinearHeads:
        path = Path(path)
        if not path.with_suffix(".safetensors").exists():
            raise FileNotFoundError(f"{path.with_suffix('.safetensors')} not found (saved by LinearHeads.save)")
        state = load_file(str(path.with_suffix(".safetensors")))
        meta = json.loads(path.with_suffix(".json").read_text()) if path.with_suffix(".json").exists() else {}
        return cls(state["mean"], state["std"], state["weight"], state["bias"], meta)


def standardiser(*features: Tensor) -> tuple[Tensor, Tensor]:
    """Per-dimension mean and std over all given feature rows (std floored, so constant dims stay finite)."""
    x = torch.cat([f.float() for f in features])
    return x.mean(0), x.std(0).clamp(min=1e-4)


def fit_linear_head(loss_fn: Callable[[Tensor, Tensor], Tensor], dim: int, l2: float, steps: int,
                    bias: bool) -> tuple[Tensor, Tensor]:
    """Minimise ``loss_fn(w, b) + l2 |w|^2`` over one linear head (w: (dim,), b: scalar, fixed at 0 unless
    ``bias``) with L-BFGS from zero; returns (w, b). The losses here are convex, so this is their optimum."""
    w = torch.zeros(dim, requires_grad=True)
    b = torch.zeros((), requires_grad=bias)
    opt = torch.optim.LBFGS([w, b] if bias else [w], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = loss_fn(w, b) + l2 * w.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def fit_bradley_terry(chosen: Tensor, rejected: Tensor, sample_weight: Tensor | None = None, l2: float = 1e-3,
                      steps: int = 100) -> Tensor:
    """Weighted Bradley-Terry fit of r(x) = w.x on the given (standardised, see :func:`standardiser`) features: minimises
    ``-sum_i s_i log sigmoid(r(chosen_i) - r(rejected_i)) / sum_i s_i + l2 |w|^2``. Returns ``w`` (H,)."""
    diff = (chosen - rejected).float()
    s = torch.ones(len(diff)) if sample_weight is None else sample_weight.float()
    total = s.sum().clamp(min=1e-8)
    w, _ = fit_linear_head(lambda w, b: -(s * F.logsigmoid(diff @ w)).sum() / total, diff.shape[1], l2, steps, bias=False)
    return w


def fit_logistic(features: Tensor, labels: Tensor, l2: float = 1e-3, steps: int = 100) -> tuple[Tensor, Tensor]:
    """Logistic regression p(label = 1 | x) = sigmoid(w.x + b) on the given (standardised) features. Returns (w, b)."""
    y = labels.float()
    return fit_linear_head(lambda w, b: F.binary_cross_entropy_with_logits(features.float() @ w + b, y), features.shape[1],
                l2, steps, bias=True)
