"""Composition: a high-level TD3 policy pi_h(z'|s) acting through a frozen skill pi_l(a|s,z').

The executed action is ``a = pi_l(s, z' = pi_h(s))``. The twin critics score *primitive* actions
``Q(s, a)``, learned from the new task's reward only (the env reward, never a cost). The actor loss is
the core ``high_level_loss`` (Eq. 11, and Eq. 12 offline):

    online : L = -E[ Q~(s, pi_l(s, pi_h(s))) + beta_reg log p(pi_h(s)) ]
    offline: L = online + beta_bc E[ ||pi_l(s, pi_h(s)) - a_D||^2 ]      (a in [-1, 1] units)

with ``Q~ = Q / mean|Q|`` (detached; the TD3+BC normalisation): the Q term then has unit scale whatever
the env's reward scale, so one ``beta_reg`` serves every env (no per-env tuning). The gradient reaches
z' through the frozen skill. Exploration and target-policy smoothing add noise to z' (not to a), and
the warm-up draws z' from the prior, so even exploratory actions are skills. z' is bounded to
``[-latent_bound, latent_bound]`` (3 prior standard deviations by default). The offline variant needs
no latent labels: its BC term compares primitive actions, which D_tau has.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from control.td3 import TD3, TD3Config
from safecrowd_llm.core import HighLevelPolicy, Prior, high_level_loss

__all__ = ["CompositionConfig", "HighLevelTD3", "train_offline_high_level"]


@dataclass(frozen=True)
class CompositionConfig:
    """The high-level policy over frozen skills."""

    td3: TD3Config = field(default_factory=TD3Config)
    beta_reg: float = 0.1  # prior regulariser, relative to the normalised Q (unit scale); the start value with a target
    # Constrained variant: keep E[log p(pi_h(s))] >= prior_target by dual ascent on beta_reg (None = fixed beta_reg).
    prior_target: float | None = None
    beta_lr: float = 1e-3  # dual step per actor update, per nat of violation
    beta_max: float = 1.0
    # Persistence: penalise ||pi_h(s) - pi_h(s')||^2 between consecutive states (0 = off), so pi_h commits to a
    # skill instead of switching between (individually safe) skills from one state to the next.
    beta_switch: float = 0.0
    aggregate_min_std: float = 0.1  # floor on the components' stds when the regulariser reads the aggregate posterior
    beta_bc: float = 0.4  # offline BC weight (TD3+BC's alpha = 2.5 gives the same 1 : 0.4 balance)
    latent_bound: float = 3.0
    z_exploration_noise: float = 0.3  # std of exploration noise on z' (prior std is 1)
    z_policy_noise: float = 0.2  # target smoothing noise on z'
    z_noise_clip: float = 0.5


class HighLevelTD3(TD3):
    """TD3 whose actor is pi_h (core ``HighLevelPolicy``, continuous) composed with a frozen skill.

    Args:
        obs_dim, act_dim: model-space observation and action sizes.
        skill: frozen ``(s (B, obs_dim), z (B, D)) -> u (B, act_dim)`` in [-1, 1].
        prior: the VAE prior p(z') the regulariser reads.
        config: composition settings; ``offline`` adds the BC term with ``config.beta_bc``.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        skill: nn.Module,
        prior: Prior,
        config: CompositionConfig,
        seed: int = 0,
        *,
        offline: bool = False,
    ) -> None:
        torch.manual_seed(seed)
        hidden = config.td3.hidden
        actor = HighLevelPolicy(
            obs_dim,
            prior.latent_dim,
            hidden_dim=hidden[0],
            num_layers=len(hidden),
            latent_bound=config.latent_bound,
        )
        super().__init__(obs_dim, act_dim, config.td3, seed, actor=actor)
        self.skill = skill.eval().requires_grad_(False)
        self.prior = prior.requires_grad_(False)
        self.comp = config
        self.beta_bc = config.beta_bc if offline else 0.0
        self.beta = torch.tensor(float(config.beta_reg))  # the multiplier, learned when prior_target is set

    def _bound(self, z: Tensor) -> Tensor:
        return z.clamp(-self.comp.latent_bound, self.comp.latent_bound)

    def latent(self, x: Tensor) -> Tensor:
        """pi_h's z' ``(B, D)``."""
        return self.actor(x)

    def policy(self, x: Tensor) -> Tensor:
        return self.skill(x, self.actor(x))

    def target_policy(self, x: Tensor) -> Tensor:
        c = self.comp
        z = self.actor_target(x)
        noise = (torch.randn(z.shape, generator=self.noise_gen) * c.z_policy_noise).clamp(
            -c.z_noise_clip, c.z_noise_clip
        )
        return self.skill(x, self._bound(z + noise))

    def explore(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            z = self.actor(x)
            z = self._bound(
                z + torch.randn(z.shape, generator=self.noise_gen) * self.comp.z_exploration_noise
            )
            return self.skill(x, z)

    def warmup_action(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return self.skill(x, self._bound(self.prior.sample(x.shape[0], generator=self.noise_gen)))

    def update(self, batch: dict[str, Tensor]) -> dict[str, float]:
        self._next_obs = batch["next_obs"]  # the persistence term compares pi_h(s) with pi_h(s')
        return super().update(batch)

    def actor_loss(self, x: Tensor, u_data: Tensor) -> tuple[Tensor, dict[str, float]]:
        z = self.actor(x)
        u = self.skill(x, z)
        q = self.critic.q1_only(x, u)
        q_norm = q / q.abs().mean().detach().clamp(min=1e-6)
        log_p = self.prior.log_prob(z)
        loss, metrics = high_level_loss(
            q_norm,
            log_p,
            beta_reg=float(self.beta),
            action=u,
            data_action=u_data,
            beta_bc=self.beta_bc,
        )
        metrics["actor_q"] = q.mean().item()
        metrics["z_norm"] = z.norm(dim=-1).mean().item()
        metrics["log_prior"] = log_p.mean().item()
        c = self.comp
        if c.beta_switch > 0:
            switch = ((self.actor(self._next_obs) - z) ** 2).sum(-1).mean()
            loss = loss + c.beta_switch * switch
            metrics["switch"] = switch.item()
        if c.prior_target is not None:  # dual ascent: raise beta while pi_h sits below the target log-density
            self.beta = (self.beta + c.beta_lr * (c.prior_target - metrics["log_prior"])).clamp(0.0, c.beta_max)
            metrics["beta_reg"] = float(self.beta)
        return loss, metrics

    def state_tensors(self) -> dict[str, Tensor]:
        return super().state_tensors() | {"beta_reg": self.beta.clone()}

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        if "beta_reg" in tensors:
            self.beta = tensors["beta_reg"].clone()
        super().load_state_tensors({k: v for k, v in tensors.items() if k != "beta_reg"})


def train_offline_high_level(
    agent: HighLevelTD3, dtau: dict[str, Tensor], steps: int, *, seed: int, progress: bool = True
) -> list[dict[str, float]]:
    """Eq. 12: train pi_h (with the BC term) and its critics on D_tau's env reward for ``steps`` updates."""
    gen = torch.Generator().manual_seed(seed + 41)
    n = dtau["obs"].shape[0]
    history = []
    bar = tqdm(range(steps), desc="high-level (offline)", disable=not progress, leave=False)
    for _ in bar:
        idx = torch.randint(0, n, (agent.config.batch_size,), generator=gen)
        history.append(agent.update({k: v[idx] for k, v in dtau.items()}))
    return history
