"""Composition: the high-level policy pi_h(z'|s) over frozen skills and its prior-regularised losses.

Actions come from a = pi_l(s, z' = pi_h(s)) with pi_l frozen. pi_h maximises the *new task's* value
only; the regulariser beta_reg * log p(z') keeps the chosen z' where the VAE put real annotators, so
every action stays inside the skill space that inherited the crowd's shared principle. Safety is a
property of that space, not a reward weight.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["HighLevelPolicy", "categorical_high_level_loss", "high_level_loss"]


def high_level_loss(
    q_value: Tensor,
    log_prior: Tensor,
    *,
    beta_reg: float,
    action: Tensor | None = None,
    data_action: Tensor | None = None,
    beta_bc: float = 0.0,
) -> tuple[Tensor, dict[str, float]]:
    """Loss of a deterministic (TD3-style) high-level policy, online or offline.

    online  (Eq. 11):  L = -E[ Q(s, pi_l(s, z')) + beta_reg log p(z') ],   z' = pi_h(s)
    offline (Eq. 12):  L = online + beta_bc E[ ||a - a_D||^2 ],            a = pi_l(s, z')

    Args:
        q_value: ``(B,)`` critic value of the composed action (gradient flows to z' through pi_l).
        log_prior: ``(B,)`` log p(z') of the chosen latents.
        beta_reg: weight of the prior regulariser.
        action, data_action: ``(B, A)`` composed action and the dataset's action (offline only).
        beta_bc: weight of the behaviour-cloning term.
    """
    reg = beta_reg * log_prior
    loss = -(q_value + reg).mean()
    metrics = {"q": q_value.mean().item(), "log_prior": log_prior.mean().item()}
    if beta_bc:
        if action is None or data_action is None:
            raise ValueError("beta_bc > 0 needs both action and data_action (the offline objective)")
        bc = ((action - data_action) ** 2).sum(-1).mean()
        loss = loss + beta_bc * bc
        metrics["bc"] = bc.item()
    metrics["loss"] = loss.item()
    return loss, metrics


def categorical_high_level_loss(
    logits: Tensor, rewards: Tensor, log_prior: Tensor, *, beta_reg: float, entropy_coef: float = 0.0
) -> tuple[Tensor, dict[str, float]]:
    """Loss of a router over K exported skills, with every skill's reward known (a bandit per state).

    L = -E_s[ sum_k pi_h(k|s) (R(s, k) + beta_reg log p(z'_k)) + entropy_coef H(pi_h(.|s)) ]

    The expectation over k is exact (K is small and all skills were scored), so no policy-gradient
    variance. Args: ``logits (B, K)``, ``rewards (B, K)``, ``log_prior (K,)`` of the skill latents.
    """
    if logits.shape != rewards.shape or log_prior.shape != logits.shape[-1:]:
        raise ValueError(
            f"expected logits and rewards (B, K) and log_prior (K,), got {tuple(logits.shape)}, "
            f"{tuple(rewards.shape)}, {tuple(log_prior.shape)}"
        )
    log_pi = F.log_softmax(logits, -1)
    pi = log_pi.exp()
    objective = (pi * (rewards + beta_reg * log_prior)).sum(-1)
    entropy = -(pi * log_pi).sum(-1)
    loss = -(objective + entropy_coef * entropy).mean()
    metrics = {
        "loss": loss.item(),
        "expected_reward": (pi * rewards).sum(-1).mean().item(),
        "entropy": entropy.mean().item(),
    }
    return loss, metrics


class HighLevelPolicy(nn.Module):
    """pi_h: an MLP from a state (or prompt embedding) to a latent z'.

    ``continuous`` mode outputs z' directly, squashed to ``[-latent_bound, latent_bound]`` (a
    deterministic TD3 actor). ``categorical`` mode outputs logits over K fixed skill latents
    (registered as a buffer) and returns the chosen skill's latent.
    """

    def __init__(
        self,
        obs_dim: int,
        latent_dim: int,
        *,
        skill_latents: Tensor | None = None,
        hidden_dim: int = 256,
        num_layers: int = 2,
        latent_bound: float = 3.0,
    ) -> None:
        super().__init__()
        self.latent_dim, self.latent_bound = latent_dim, latent_bound
        self.categorical = skill_latents is not None
        if self.categorical:
            if skill_latents.dim() != 2 or skill_latents.shape[1] != latent_dim:
                raise ValueError(f"skill_latents must be (K, {latent_dim}), got {tuple(skill_latents.shape)}")
            self.register_buffer("skill_latents", skill_latents.detach().clone().float())
        out = skill_latents.shape[0] if self.categorical else latent_dim
        layers: list[nn.Module] = []
        width = obs_dim
        for _ in range(num_layers):
            layers += [nn.Linear(width, hidden_dim), nn.ReLU()]
            width = hidden_dim
        self.net = nn.Sequential(*layers, nn.Linear(width, out))

    def logits(self, obs: Tensor) -> Tensor:
        if not self.categorical:
            raise RuntimeError("logits() is only defined for a categorical policy (pass skill_latents)")
        return self.net(obs)

    def forward(self, obs: Tensor, *, deterministic: bool = True, generator: torch.Generator | None = None) -> Tensor:
        """``(B, obs_dim) -> (B, latent_dim)``: the latent z' to condition the frozen skill on."""
        if not self.categorical:
            return self.latent_bound * torch.tanh(self.net(obs))
        return self.skill_latents[self.choose(obs, deterministic=deterministic, generator=generator)]

    def choose(self, obs: Tensor, *, deterministic: bool = True, generator: torch.Generator | None = None) -> Tensor:
        """``(B,)`` skill indices: argmax, or a sample from pi_h(k|s)."""
        logits = self.logits(obs)
        if deterministic:
            return logits.argmax(-1)
        return torch.multinomial(torch.softmax(logits, -1), 1, generator=generator).squeeze(-1)
