"""IQL: clones the best of the data's actions (not their average), and only from the data."""

from __future__ import annotations

import pytest
import torch

from control.iql import IQL, IQLConfig

SMALL = IQLConfig(hidden=(32, 32), batch_size=128, lr=1e-3)


def _two_behaviours(n: int = 2000, seed: int = 0) -> dict[str, torch.Tensor]:
    """One-step episodes: half the data plays u = +0.8 (reward 1), half u = -0.8 (reward 0).
    Behaviour cloning lands between the two (~0); the best action in the data is +0.8."""
    g = torch.Generator().manual_seed(seed)
    x = 0.1 * torch.randn(n, 2, generator=g)
    good = torch.rand(n, generator=g) < 0.5
    u = torch.where(good, 0.8, -0.8)[:, None]
    return {"obs": x, "act": u, "rew": good.float(), "next_obs": x, "terminal": torch.ones(n)}


def _train(agent: IQL, data: dict[str, torch.Tensor], updates: int, seed: int = 1) -> list[dict[str, float]]:
    g = torch.Generator().manual_seed(seed)
    hist = []
    for _ in range(updates):
        idx = torch.randint(0, len(data["obs"]), (agent.config.batch_size,), generator=g)
        hist.append(agent.update({k: v[idx] for k, v in data.items()}))
    return hist


def _mean_action(agent: IQL) -> float:
    with torch.no_grad():
        return float(agent.actor(0.1 * torch.randn(256, 2, generator=torch.Generator().manual_seed(9))).mean())


def test_iql_clones_the_better_behaviour_and_bc_the_average() -> None:
    data = _two_behaviours()
    iql = IQL(2, 1, SMALL, seed=0)
    hist = _train(iql, data, 600)
    assert _mean_action(iql) > 0.6  # the rewarded behaviour, +0.8
    first = sum(m["critic_loss"] for m in hist[:20]) / 20
    assert sum(m["critic_loss"] for m in hist[-20:]) / 20 < first
    bc = IQL(2, 1, IQLConfig(**{**SMALL.__dict__, "temperature": 0.0}), seed=0)  # beta = 0: plain BC
    _train(bc, data, 600)
    assert abs(_mean_action(bc)) < 0.3


def test_iql_same_seed_same_numbers() -> None:
    data = _two_behaviours(500)
    a, b = IQL(2, 1, SMALL, seed=3), IQL(2, 1, SMALL, seed=3)
    assert _train(a, data, 20) == _train(b, data, 20)


def test_iql_config_rejects_a_lower_expectile() -> None:
    with pytest.raises(ValueError, match="expectile"):
        IQLConfig(expectile=0.3)
