"""The options high level: SMDP Q-learning over K frozen skills, each committed to for ``horizon`` steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from control.methods.common import Spaces
from control.methods.options import OptionsConfig, OptionsPolicy, SkillValues, train_options
from control.networks import ActionScaler, Standardizer


class _SignEnv:
    """A one-state-per-episode bandit: the state's sign says which action pays (reward a * sign(s))."""

    def __init__(self, seed: int) -> None:
        self.rng, self.t, self.s = np.random.default_rng(seed), 0, 1.0

    def reset(self, seed: int | None = None):
        self.rng = np.random.default_rng(seed) if seed is not None else self.rng
        self.t, self.s = 0, float(self.rng.choice([-1.0, 1.0]))
        return np.array([self.s], np.float32), {}

    def step(self, action):
        self.t += 1
        obs = np.array([self.s], np.float32)
        return obs, float(action[0]) * self.s, False, self.t >= 20, {"cost": 0.0}

    def close(self) -> None:
        pass


class _ConstantSkill(nn.Module):
    """Skill z' -> action tanh(3 z'_0), whatever the state."""

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(3 * z[..., :1]).expand(x.shape[0], 1)


_SPACES = Spaces(Standardizer(np.zeros(1), np.ones(1)), ActionScaler(np.array([-1.0]), np.array([1.0])))
_LATENTS = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])  # skill 0 pushes +1, skill 1 pushes -1


def _train(log_prior: torch.Tensor, beta_reg: float, steps: int = 3000) -> SkillValues:
    cfg = OptionsConfig(horizon=5, hidden=(32,), beta_reg=beta_reg, gamma=0.9, epsilon_fraction=0.3)
    torch.manual_seed(0)
    values = SkillValues(1, _LATENTS, log_prior, cfg)
    log = train_options(_SignEnv, values, _ConstantSkill(), _SPACES, steps, cfg, seed=0, progress=False)
    assert log["options"] == steps // 5 and len(log["episodes"]) == steps // 20
    return values


def test_the_options_high_level_learns_which_skill_pays_in_which_state() -> None:
    values = _train(torch.zeros(2), beta_reg=0.1)
    assert values.choose(torch.tensor([[1.0], [-1.0]])).tolist() == [0, 1]


def test_a_strong_prior_regulariser_keeps_the_choice_on_the_likely_skill() -> None:
    values = _train(torch.tensor([-20.0, 0.0]), beta_reg=1.0)  # skill 0 is far off the prior
    assert values.choose(torch.tensor([[1.0], [-1.0]])).tolist() == [1, 1]


def test_the_policy_commits_to_a_skill_for_horizon_steps_and_resets() -> None:
    values = SkillValues(1, _LATENTS, torch.zeros(2), OptionsConfig(hidden=(8,)))
    with torch.no_grad():  # Q prefers skill 0 for s > 0 and skill 1 for s < 0
        values.net[-1].weight.zero_()
        values.net[-1].bias.zero_()
        values.net[0].weight.fill_(1.0)
        values.net[0].bias.zero_()
        values.net[-1].weight[0].fill_(1.0)
        values.net[-1].weight[1].fill_(-1.0)
        values.net[-1].bias[1] = 0.5
    policy = OptionsPolicy(_SPACES, values, _ConstantSkill(), horizon=3)
    acts = [float(policy(np.array([s], np.float32))[0]) for s in (1.0, -1.0, -1.0, -1.0)]
    assert acts[0] == acts[1] == acts[2] > 0 and acts[3] < 0  # the first choice holds for 3 steps
    policy.reset()
    assert float(policy(np.array([-1.0], np.float32))[0]) < 0


def test_options_config_is_validated() -> None:
    with pytest.raises(ValueError, match="horizon"):
        OptionsConfig(horizon=0)
