"""Implicit Q-learning (Kostrikov et al. 2022) for offline skills: learn the value of the *best actions in the
data* without ever querying the critic off D_tau's support, then extract the policy by advantage-weighted
regression.

Why next to TD3+BC: TD3+BC's actor climbs Q(s, pi(s)), so where Q is wrong off-support it follows the error, and
its BC term pulls it to the *average* action of D_tau. IQL only evaluates Q on dataset actions: V(s) is an upper
expectile of Q(s, a) over D_tau's actions at s, Q(s, a) regresses r + gamma V(s'), and the actor imitates each
dataset action with weight exp(beta (Q(s, a) - V(s))) -- it clones the best behaviour D_tau holds, e.g. the one
fast, safe driver among many slower or unsafe ones.

Inputs are normalised (``x``: standardised obs [+ latent]; ``u``: actions in [-1, 1]), as in ``control.td3``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from control.networks import DeterministicActor, TwinCritic, mlp

__all__ = ["IQL", "IQLConfig"]


@dataclass(frozen=True)
class IQLConfig:
    """IQL's hyper-parameters (the paper's locomotion values; smaller networks for a 2-core CPU)."""

    hidden: tuple[int, ...] = (128, 128)
    gamma: float = 0.99
    tau: float = 0.005  # Polyak rate of the target critic
    lr: float = 3e-4
    batch_size: int = 256
    expectile: float = 0.7  # V = this expectile of Q over D_tau's actions (0.5 = the mean: behaviour's value)
    temperature: float = 3.0  # beta of the advantage weights exp(beta * A)
    max_weight: float = 100.0  # clip of those weights

    def __post_init__(self) -> None:
        if not 0.5 <= self.expectile < 1:
            raise ValueError(f"expectile must be in [0.5, 1), got {self.expectile}")
        if self.temperature < 0 or self.max_weight <= 0:
            raise ValueError("temperature must be >= 0 and max_weight > 0")


class IQL:
    """IQL over inputs ``x (B, in_dim)`` and actions ``u (B, act_dim)``; ``actor`` is a deterministic tanh MLP
    (AWR with a fixed-variance Gaussian is a weighted squared error on its mean)."""

    def __init__(self, in_dim: int, act_dim: int, config: IQLConfig, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.config = config
        self.actor = DeterministicActor(in_dim, act_dim, config.hidden)
        self.critic = TwinCritic(in_dim, act_dim, config.hidden)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.value = mlp(in_dim, 1, config.hidden)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=config.lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=config.lr)
        self.value_opt = torch.optim.Adam(self.value.parameters(), lr=config.lr)

    def update(self, batch: dict[str, Tensor]) -> dict[str, float]:
        """One value, critic and actor step on ``obs, act, rew (B,), next_obs, terminal (B,)``."""
        c = self.config
        x, u, r, x2, done = batch["obs"], batch["act"], batch["rew"], batch["next_obs"], batch["terminal"]
        with torch.no_grad():
            q_t = torch.min(*self.critic_target(x, u))
        v = self.value(x).squeeze(-1)
        diff = q_t - v
        value_loss = (torch.abs(c.expectile - (diff < 0).float()) * diff**2).mean()
        self.value_opt.zero_grad(set_to_none=True)
        value_loss.backward()
        self.value_opt.step()

        with torch.no_grad():
            target = r + c.gamma * (1.0 - done) * self.value(x2).squeeze(-1)
        q1, q2 = self.critic(x, u)
        critic_loss = F.mse_loss(q1, target) + F.mse_loss(q2, target)
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_opt.step()

        with torch.no_grad():
            adv = q_t - v.detach()
            weight = torch.exp(c.temperature * adv).clamp(max=c.max_weight)
        actor_loss = (weight * ((self.actor(x) - u) ** 2).sum(-1)).mean()
        self.actor_opt.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.actor_opt.step()

        for p, tp in zip(self.critic.parameters(), self.critic_target.parameters()):
            tp.data.mul_(1 - c.tau).add_(p.data, alpha=c.tau)
        return {"critic_loss": critic_loss.item(), "value_loss": value_loss.item(), "actor_loss": actor_loss.item(),
                "adv_mean": adv.mean().item(), "weight_mean": weight.mean().item()}  # fmt: skip
