"""The VAE objective of Eq. 7 and KL annealing schedules.

ELBO(S_z) = E_{z' ~ q(z'|S_z)} [ sum_{(tau1, tau2, y) in target(S_z)} log P(y | tau1, tau2, z') ]
            - beta * KL(q(z'|S_z) || p(z'))

Annealing beta from 0 lets the decoder learn to use z' before the KL term pulls the posterior onto
the prior (otherwise the latent can collapse and every annotator gets the same skill).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

__all__ = ["KLSchedule", "elbo_loss"]


def elbo_loss(log_lik: Tensor, kl: Tensor, beta: float, mask: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
    """Negative ELBO averaged over annotators; never steps an optimiser.

    Args:
        log_lik: ``(A, Nt)`` per-comparison log-likelihood of each annotator's target part (one z'
            sample per annotator; average several samples before calling for a tighter estimate).
        kl: ``(A,)`` KL(q(z'|S_z) || p(z')) per annotator.
        beta: KL weight (from a :class:`KLSchedule`).
        mask: ``(A, Nt)`` True on real (unpadded) comparisons.

    Returns:
        ``(loss, metrics)``: ``loss = mean_A(-sum_Nt log_lik + beta * kl)`` and floats for logging
        (``elbo``, ``log_lik`` per comparison, ``kl``, ``beta``).
    """
    if log_lik.dim() != 2 or kl.shape != log_lik.shape[:1]:
        raise ValueError(f"expected log_lik (A, Nt) and kl (A,), got {tuple(log_lik.shape)} and {tuple(kl.shape)}")
    if mask is not None:
        log_lik = log_lik * mask.to(log_lik.dtype)
        n = mask.sum().clamp(min=1)
    else:
        n = log_lik.numel()
    set_ll = log_lik.sum(-1)  # (A,)
    loss = (-set_ll + beta * kl).mean()
    metrics = {
        "elbo": (set_ll - kl).mean().item(),
        "log_lik": (log_lik.sum() / n).item(),
        "kl": kl.mean().item(),
        "beta": float(beta),
    }
    return loss, metrics


@dataclass(frozen=True)
class KLSchedule:
    """beta as a function of the optimisation step.

    kind:
        ``constant``: ``beta_max`` throughout.
        ``linear``: 0 -> ``beta_max`` over ``warmup_steps``, then flat.
        ``cyclical``: cosine ramp 0 -> ``beta_max`` over the first ``ramp_fraction`` of every
            ``cycle_steps``, then flat to the end of the cycle (Fu et al., 2019), which repeatedly
            re-opens the latent channel.
    """

    beta_max: float = 1.0
    kind: str = "linear"
    warmup_steps: int = 1000
    cycle_steps: int = 1000
    ramp_fraction: float = 0.5

    def __post_init__(self) -> None:
        if self.kind not in ("constant", "linear", "cyclical"):
            raise ValueError(f"kind must be 'constant', 'linear' or 'cyclical', got {self.kind!r}")
        if self.beta_max < 0:
            raise ValueError(f"beta_max must be >= 0, got {self.beta_max}")
        if self.warmup_steps < 0 or self.cycle_steps < 1 or not 0 < self.ramp_fraction <= 1:
            raise ValueError("need warmup_steps >= 0, cycle_steps >= 1 and 0 < ramp_fraction <= 1")

    def __call__(self, step: int) -> float:
        if self.kind == "constant":
            return self.beta_max
        if self.kind == "linear":
            return self.beta_max * (min(1.0, step / self.warmup_steps) if self.warmup_steps else 1.0)
        t = (step % self.cycle_steps) / (self.cycle_steps * self.ramp_fraction)
        return self.beta_max * (0.5 - 0.5 * math.cos(math.pi * min(1.0, t)))
