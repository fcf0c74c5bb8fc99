"""Small torch building blocks of the control methods: MLPs, input normalisers, actors and critics.

Every network here works on *normalised* inputs: observations standardised with D_tau's statistics
(:class:`Standardizer`), actions scaled to [-1, 1] by the env's bounds (:class:`ActionScaler`). The
policies that leave a method (``control.methods.Policy``) carry both, so callers pass raw observations
and get raw, in-bounds actions back.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "ActionScaler",
    "DeterministicActor",
    "GaussianLatentPolicy",
    "Standardizer",
    "StepRewardMLP",
    "TwinCritic",
    "mlp",
]

_LOG_2PI = math.log(2 * math.pi)


def mlp(in_dim: int, out_dim: int, hidden: tuple[int, ...] = (128, 128)) -> nn.Sequential:
    """ReLU MLP ``in_dim -> hidden... -> out_dim`` (no output activation)."""
    layers: list[nn.Module] = []
    width = in_dim
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    return nn.Sequential(*layers, nn.Linear(width, out_dim))


class Standardizer(nn.Module):
    """``(x - mean) / std`` with fixed statistics (buffers, so they travel with the weights), clipped to
    ``[-clip, clip]`` so a feature that was constant in D_tau cannot explode at test time."""

    def __init__(self, mean: np.ndarray | Tensor, std: np.ndarray | Tensor, clip: float = 10.0) -> None:
        super().__init__()
        mean = torch.as_tensor(np.asarray(mean, dtype=np.float32))
        std = torch.as_tensor(np.asarray(std, dtype=np.float32))
        self.register_buffer("mean", mean)
        self.register_buffer("std", std.clamp(min=1e-3))
        self.clip = clip

    @classmethod
    def fit(cls, x: np.ndarray, clip: float = 10.0) -> Standardizer:
        """Statistics of ``x (N, D)`` over its rows."""
        x = np.asarray(x, dtype=np.float64)
        return cls(x.mean(0), x.std(0), clip)

    def forward(self, x: Tensor) -> Tensor:
        return ((x - self.mean) / self.std).clamp(-self.clip, self.clip)


class ActionScaler(nn.Module):
    """Maps env actions in ``[low, high]`` to ``[-1, 1]`` (``scale``) and back (``unscale``)."""

    def __init__(self, low: np.ndarray, high: np.ndarray) -> None:
        super().__init__()
        low, high = np.asarray(low, np.float32), np.asarray(high, np.float32)
        if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high)) and np.all(high > low)):
            raise ValueError(f"action bounds must be finite with high > low, got low={low} high={high}")
        self.register_buffer("mid", torch.as_tensor((high + low) / 2))
        self.register_buffer("half_range", torch.as_tensor((high - low) / 2))

    def scale(self, a: Tensor) -> Tensor:
        return ((a - self.mid) / self.half_range).clamp(-1.0, 1.0)

    def unscale(self, u: Tensor) -> Tensor:
        return self.mid + self.half_range * u


class DeterministicActor(nn.Module):
    """TD3 actor: ``(B, in_dim) -> (B, act_dim)`` in [-1, 1] (tanh); inputs are normalised obs [, z']."""

    def __init__(self, in_dim: int, act_dim: int, hidden: tuple[int, ...] = (128, 128)) -> None:
        super().__init__()
        self.net = mlp(in_dim, act_dim, hidden)

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(self.net(x))


class TwinCritic(nn.Module):
    """Two independent Q-networks ``Q_i(x, a)``; ``forward -> (q1, q2)`` each ``(B,)``."""

    def __init__(self, in_dim: int, act_dim: int, hidden: tuple[int, ...] = (128, 128)) -> None:
        super().__init__()
        self.q1 = mlp(in_dim + act_dim, 1, hidden)
        self.q2 = mlp(in_dim + act_dim, 1, hidden)

    def forward(self, x: Tensor, a: Tensor) -> tuple[Tensor, Tensor]:
        xa = torch.cat([x, a], -1)
        return self.q1(xa).squeeze(-1), self.q2(xa).squeeze(-1)

    def q1_only(self, x: Tensor, a: Tensor) -> Tensor:
        return self.q1(torch.cat([x, a], -1)).squeeze(-1)


class GaussianLatentPolicy(nn.Module):
    """pi_l(a | s, z'): a diagonal Gaussian over *scaled* actions in [-1, 1].

    mean = tanh(MLP([s, z'])) (so the deterministic skill is always in bounds); the log-std is a learned
    state-independent vector clamped to ``[log_std_min, log_std_max]``. Log-probabilities are of the
    *clipped* Gaussian's interior (the plain Gaussian density): D_tau's actions may sit on the bounds,
    where a tanh-squashed density would be infinite. The skill that is executed is the mean.
    """

    def __init__(
        self,
        obs_dim: int,
        latent_dim: int,
        act_dim: int,
        hidden: tuple[int, ...] = (128, 128),
        *,
        log_std_init: float = -1.0,
        log_std_min: float = -2.5,
        log_std_max: float = 0.5,
    ) -> None:
        super().__init__()
        self.obs_dim, self.latent_dim, self.act_dim = obs_dim, latent_dim, act_dim
        self.net = mlp(obs_dim + latent_dim, act_dim, hidden)
        self.log_std = nn.Parameter(torch.full((act_dim,), float(log_std_init)))
        self.log_std_min, self.log_std_max = log_std_min, log_std_max

    def mean(self, s: Tensor, z: Tensor) -> Tensor:
        """``s (..., obs_dim)``, broadcastable ``z (..., latent_dim)`` -> mean action ``(..., act_dim)``."""
        z = z.expand(*s.shape[:-1], z.shape[-1])
        return torch.tanh(self.net(torch.cat([s, z], -1)))

    def forward(self, s: Tensor, z: Tensor) -> Tensor:
        return self.mean(s, z)

    def log_prob(self, s: Tensor, z: Tensor, u: Tensor) -> Tensor:
        """log pi(u | s, z') of scaled actions ``u (..., act_dim)`` -> ``(...)``."""
        log_std = self.log_std.clamp(self.log_std_min, self.log_std_max)
        diff = (u - self.mean(s, z)) / log_std.exp()
        return (-0.5 * diff**2 - log_std - 0.5 * _LOG_2PI).sum(-1)


class StepRewardMLP(nn.Module):
    """A per-step score ``g(x)`` of normalised ``[s, a]`` features; a segment's utility is its sum.

    ``nonnegative`` passes the output through softplus (a learned *cost*, which is >= 0)."""

    def __init__(self, in_dim: int, hidden: tuple[int, ...] = (128, 128), nonnegative: bool = False) -> None:
        super().__init__()
        self.net = mlp(in_dim, 1, hidden)
        self.nonnegative = nonnegative

    def forward(self, x: Tensor) -> Tensor:
        """``(..., in_dim) -> (...)``."""
        out = self.net(x).squeeze(-1)
        return nn.functional.softplus(out) if self.nonnegative else out

    def segment_utility(self, x: Tensor) -> Tensor:
        """``(..., T, in_dim) -> (...)``: summed per-step score."""
        return self(x).sum(-1)
