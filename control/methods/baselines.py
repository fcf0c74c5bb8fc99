"""Baselines: TD3 online on a *training reward* built from the env and (for RC/SOPL) a learned model.

Definitions (r = env reward, c = env cost of the step, both on the transition just taken):

- **Oracle**: ``r - K c`` with the true cost. ``K`` (option ``cost_penalty``) defaults to
  :func:`default_cost_penalty`: ``max(1, 2 * q99(|r|))`` over D_tau's scripted behaviours (not the behaviour
  agents of :mod:`control.agents`, which optimise r itself) -- one unit of cost outweighs twice
  nearly any single step's reward. Measured on SafetyBallCircle (quick profile, 20k env steps, seed 0):
  with 2x, TD3 ends at reward 278 / cost 28 per episode (Task-only: 605 / 74); with 5x and 10x it
  learns to stand still (reward -1 / cost 0): a larger K needs a longer run (or a K schedule) to leave
  that local optimum. Pass ``cost_penalty`` to override.
- **Task-only**: ``r``.
- **RC(omega)**: ``(1 - omega) r + omega r_hat``, with ``r_hat`` one Bradley-Terry reward MLP fit on the
  *pooled* crowd (all annotators' comparisons, annotator identity ignored; segment utility = sum of
  per-step ``g(s, a)``), affinely rescaled so that over D_tau's steps it has r's mean and std
  (:func:`match_scale`). ``omega`` (option) defaults to 0.5.
- **SOPL** (safety-preference learner, the Safe-RLHF-style setting): it is *given* the explicit safety
  labels ``crowd.safety_labels`` over the crowd's segment pairs (1 = side a has lower cost, 0.5 = equal).
  A non-negative per-step cost model ``c_hat(s, a) = softplus(MLP)`` is fit by Bradley-Terry with
  segment utility ``-sum_t c_hat`` (lower cost preferred; ties pull the two sums together, so
  zero-cost steps go to ~0). It is calibrated to [0, 1] by dividing by its 99th percentile over D_tau
  and clipping, and TD3 trains on ``r - K c_hat_cal`` with the Oracle's K: the Oracle with the true
  cost replaced by the cost learned from safety preferences (a fixed penalty instead of Safe-RLHF's
  Lagrange multiplier).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from control.methods.common import Spaces
from control.networks import StepRewardMLP
from safecrowd_llm.core import bradley_terry_log_likelihood

__all__ = [
    "RewardModelConfig",
    "StepScore",
    "default_cost_penalty",
    "fit_segment_model",
    "match_scale",
    "rc_mix",
]


@dataclass(frozen=True)
class RewardModelConfig:
    """Bradley-Terry fits of RC's pooled reward and SOPL's cost model."""

    hidden: tuple[int, ...] = (128, 128)
    lr: float = 1e-3
    batch_pairs: int = 64
    flip_prob: float = 0.0


def default_cost_penalty(rew: np.ndarray) -> float:
    """K = max(1, 2 * 99th percentile of |r| over D_tau)."""
    return float(max(1.0, 2.0 * np.quantile(np.abs(np.asarray(rew, np.float64)), 0.99)))


def rc_mix(r_new: float | np.ndarray, r_hat: float | np.ndarray, omega: float) -> float | np.ndarray:
    """RC's training reward ``(1 - omega) r_new + omega r_hat`` (``r_hat`` already on r_new's scale)."""
    if not 0.0 <= omega <= 1.0:
        raise ValueError(f"omega must be in [0, 1], got {omega}")
    return (1.0 - omega) * r_new + omega * r_hat


def match_scale(values: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """``(a, b)`` so that ``a * values + b`` has ``target``'s mean and standard deviation."""
    v, t = np.asarray(values, np.float64), np.asarray(target, np.float64)
    a = t.std() / max(v.std(), 1e-8)
    return float(a), float(t.mean() - a * v.mean())


def fit_segment_model(
    seg_a: Tensor,
    seg_b: Tensor,
    labels: Tensor,
    steps: int,
    config: RewardModelConfig,
    *,
    seed: int,
    cost: bool = False,
    progress: bool = True,
    desc: str = "bt reward",
) -> tuple[StepRewardMLP, list[dict[str, float]]]:
    """Bradley-Terry fit of a per-step score on pairs of model-space segments ``(P, T, F)``.

    ``cost=False``: utility = sum_t g (a reward); ``cost=True``: g = softplus >= 0 and utility = -sum_t g.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 5)
    model = StepRewardMLP(seg_a.shape[-1], config.hidden, nonnegative=cost)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    sign = -1.0 if cost else 1.0
    history: list[dict[str, float]] = []
    bar = tqdm(range(steps), desc=desc, disable=not progress, leave=False)
    for step in bar:
        idx = torch.randint(0, len(labels), (config.batch_pairs,), generator=gen)
        u1, u2 = sign * model.segment_utility(seg_a[idx]), sign * model.segment_utility(seg_b[idx])
        ll = bradley_terry_log_likelihood(u1, u2, labels[idx], flip_prob=config.flip_prob)
        loss = -ll.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        decided = labels[idx] != 0.5
        acc = (
            ((u1 > u2) == (labels[idx] > 0.5))[decided].float().mean().item()
            if decided.any()
            else float("nan")
        )
        history.append({"loss": loss.item(), "accuracy": acc})
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval().requires_grad_(False)
    return model, history


class StepScore:
    """``(obs, act) -> a * g([obs_n, act_u]) + b`` for raw env arrays, optionally clipped."""

    def __init__(
        self,
        spaces: Spaces,
        model: StepRewardMLP,
        a: float = 1.0,
        b: float = 0.0,
        clip: tuple[float, float] | None = None,
    ) -> None:
        self.spaces, self.model, self.a, self.b, self.clip = spaces, model, a, b, clip

    @torch.no_grad()
    def raw(self, obs: np.ndarray, act: np.ndarray) -> np.ndarray:
        """Unscaled ``g`` of ``obs (..., obs_dim)``, ``act (..., act_dim)``."""
        x = self.spaces.features(
            torch.as_tensor(np.asarray(obs, np.float32)), torch.as_tensor(np.asarray(act, np.float32))
        )
        return self.model(x).numpy()

    def __call__(self, obs: np.ndarray, act: np.ndarray) -> np.ndarray:
        out = self.a * self.raw(obs, act) + self.b
        return np.clip(out, *self.clip) if self.clip is not None else out
