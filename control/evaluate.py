"""Evaluation episodes of a deterministic policy, and the paper's normalisation of their returns.

Evaluation envs are seeded apart from D_tau's (``EVAL_SEED_OFFSET``) so no evaluation episode
replays a behaviour episode's start. Actions are clipped into the action bounds.

Normalisation (the paper's tables): per env and seed, a method's mean episode reward is divided by
Oracle's and its mean episode cost by Task-only's; the per-seed ratios are then averaged over seeds
(mean +- std). DSRL's normalised cost (episode cost / cost_threshold) is reported next to it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["EVAL_SEED_OFFSET", "dsrl_cost", "evaluate_policy", "mean_std", "ratio"]

EVAL_SEED_OFFSET = 1_000_000
Policy = Callable[[np.ndarray], np.ndarray]


def evaluate_policy(
    env: str, policy: Policy, episodes: int, seed: int, max_steps: int | None = None
) -> list[dict]:
    """Run ``episodes`` episodes of ``policy`` on ``env``; per episode ``{"reward", "cost", "length"}``.

    Deterministic in ``(env, policy, seed)``: episode ``i`` resets with seed ``EVAL_SEED_OFFSET + 1000 * seed + i``.
    ``max_steps`` optionally caps episodes below the env's own limit (tiny CI profiles).
    """
    from control.envs import make_env

    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    base = EVAL_SEED_OFFSET + 1000 * seed
    environment = make_env(env, base)
    low, high = environment.action_space.low, environment.action_space.high
    out = []
    try:
        for i in range(episodes):
            obs, _ = environment.reset(seed=base + i)
            if hasattr(policy, "reset"):  # a stateful policy (e.g. the options high level) starts afresh
                policy.reset()
            reward = cost = 0.0
            length = 0
            while True:
                action = np.asarray(policy(np.asarray(obs, dtype=np.float32)), dtype=np.float32)
                if action.shape != low.shape:
                    raise ValueError(
                        f"{env}: policy returned an action of shape {action.shape}, expected {low.shape}"
                    )
                obs, r, terminated, truncated, info = environment.step(np.clip(action, low, high))
                reward, cost, length = reward + r, cost + info["cost"], length + 1
                if terminated or truncated or (max_steps is not None and length >= max_steps):
                    break
            out.append({"reward": float(reward), "cost": float(cost), "length": length})
    finally:
        environment.close()
    return out


def ratio(value: float, anchor: float) -> float:
    """``value / anchor``; NaN when the anchor is zero or not finite (e.g. Task-only with no cost)."""
    if not math.isfinite(anchor) or anchor == 0:
        return float("nan")
    return value / anchor


def dsrl_cost(episode_cost: float, cost_threshold: float | None) -> float:
    """DSRL normalised cost: episode cost / the env's cost threshold (NaN when it has none)."""
    return episode_cost / cost_threshold if cost_threshold else float("nan")


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and population std over the finite values (NaN, NaN when none)."""
    finite = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if finite.size == 0:
        return float("nan"), float("nan")
    return float(finite.mean()), float(finite.std())
