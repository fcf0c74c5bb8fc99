"""Safe-VPL skills: the core PreferenceVAE with a Bradley-Terry latent reward ``r_phi(s, a, z')``
(core ``LatentRewardMLP``), then latent-conditioned low-level skills pi_l(a | s, z') by TD3+BC on D_tau
relabelled with r_phi (or, with an ``IQLConfig``, by implicit Q-learning: ``control.iql``).

Stage 1 (Eq. 7): maximise E_q[sum log sigmoid(sum_t r_phi(x_t^1, z') - sum_t r_phi(x_t^2, z'))] - beta KL.
Stage 2: for every sampled D_tau transition draw a latent z' -- from the annotators' posteriors
(mean + std * noise) or, with probability ``prior_fraction``, from the prior p(z') so the skill is
defined wherever the high-level policy may go -- and run TD3+BC on the conditioned MDP
``([s, z'], a, r_phi(s, a, z'), [s', z'])``, with r_phi standardised over D_tau.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from control.iql import IQL, IQLConfig
from control.methods.latent import LatentConfig, build_vae, fit_vae
from control.td3 import TD3, TD3Config
from safecrowd_llm.core import LatentRewardMLP, PreferenceVAE, bradley_terry_batch_log_likelihood
from safecrowd_llm.core.data import Crowd

__all__ = ["ConcatSkill", "VPLConfig", "fit_vpl_reward", "train_vpl_skills"]


@dataclass(frozen=True)
class VPLConfig:
    """Safe-VPL's latent reward and its TD3+BC skill learner."""

    latent: LatentConfig = field(default_factory=LatentConfig)
    reward_hidden: int = 128
    flip_prob: float = 0.0
    td3: TD3Config = field(default_factory=lambda: TD3Config(bc_alpha=2.5))
    prior_fraction: float = 0.5  # share of relabelling latents drawn from the prior (rest: posteriors)


class ConcatSkill(nn.Module):
    """pi_l(s, z') from a TD3 actor over ``[s, z']``: ``(..., obs_dim), (..., D) -> (..., act_dim)``."""

    def __init__(self, actor: nn.Module) -> None:
        super().__init__()
        self.actor = actor

    def forward(self, s: Tensor, z: Tensor) -> Tensor:
        return self.actor(torch.cat([s, z.expand(*s.shape[:-1], z.shape[-1])], -1))


def fit_vpl_reward(
    crowd: Crowd, latent_dim: int, steps: int, config: VPLConfig, *, seed: int, progress: bool = True
) -> tuple[PreferenceVAE, LatentRewardMLP, list[dict[str, float]]]:
    """Fit encoder + latent BT reward on a model-space crowd; returns VAE, reward (frozen) and metrics."""
    torch.manual_seed(seed)
    vae = build_vae(crowd.feature_shape, latent_dim, config.latent)
    reward = LatentRewardMLP(crowd.feature_shape[-1], latent_dim, hidden_dim=config.reward_hidden)
    history = fit_vae(
        vae,
        reward,
        bradley_terry_batch_log_likelihood(reward, config.flip_prob),
        crowd,
        steps,
        config.latent,
        seed=seed,
        progress=progress,
        desc="safe-vpl reward",
    )
    reward.eval().requires_grad_(False)
    return vae, reward, history


class LatentSampler:
    """Draws relabelling latents: posterior samples of random annotators, or prior samples."""

    def __init__(
        self, vae: PreferenceVAE, means: Tensor, stds: Tensor, prior_fraction: float, gen: torch.Generator
    ):
        self.vae, self.means, self.stds, self.p, self.gen = vae, means, stds, prior_fraction, gen

    def __call__(self, n: int) -> Tensor:
        who = torch.randint(0, self.means.shape[0], (n,), generator=self.gen)
        post = self.means[who] + self.stds[who] * torch.randn(n, self.means.shape[1], generator=self.gen)
        prior = self.vae.prior.sample(n, generator=self.gen)
        use_prior = torch.rand(n, generator=self.gen) < self.p
        return torch.where(use_prior[:, None], prior, post)


def train_vpl_skills(
    vae: PreferenceVAE,
    reward: LatentRewardMLP,
    means: Tensor,
    stds: Tensor,
    dtau: dict[str, Tensor],
    steps: int,
    config: VPLConfig,
    *,
    seed: int,
    progress: bool = True,
    iql: IQLConfig | None = None,
) -> tuple[ConcatSkill, list[dict[str, float]]]:
    """TD3+BC (or IQL, given ``iql``) on D_tau relabelled with ``r_phi(s, a, z')``; returns the frozen skill and
    metrics."""
    gen = torch.Generator().manual_seed(seed + 29)
    sample_z = LatentSampler(vae, means, stds, config.prior_fraction, gen)
    obs, act = dtau["obs"], dtau["act"]
    n, obs_dim, act_dim, latent_dim = obs.shape[0], obs.shape[1], act.shape[1], means.shape[1]

    with torch.no_grad():  # standardise r_phi over D_tau and the latent distribution used below
        idx = torch.randint(0, n, (min(n, 8192),), generator=gen)
        r = reward.step_reward(torch.cat([obs[idx], act[idx]], -1), sample_z(len(idx)))
        r_mean, r_std = r.mean(), r.std().clamp(min=1e-6)

    agent = (TD3(obs_dim + latent_dim, act_dim, config.td3, seed=seed) if iql is None
             else IQL(obs_dim + latent_dim, act_dim, iql, seed=seed))  # fmt: skip
    batch_size = config.td3.batch_size if iql is None else iql.batch_size
    history: list[dict[str, float]] = []
    desc = f"safe-vpl skills ({'TD3+BC' if iql is None else 'IQL'})"
    for step in (bar := tqdm(range(steps), desc=desc, disable=not progress, leave=False)):
        idx = torch.randint(0, n, (batch_size,), generator=gen)
        z = sample_z(len(idx))
        with torch.no_grad():
            r = (reward.step_reward(torch.cat([obs[idx], act[idx]], -1), z) - r_mean) / r_std
        batch = {
            "obs": torch.cat([obs[idx], z], -1),
            "act": act[idx],
            "rew": r,
            "next_obs": torch.cat([dtau["next_obs"][idx], z], -1),
            "terminal": dtau["terminal"][idx],
        }
        metrics = agent.update(batch)
        history.append(metrics)
        if step % 100 == 0:
            bar.set_postfix(critic=f"{metrics['critic_loss']:.3f}")
    skill = ConcatSkill(agent.actor).eval().requires_grad_(False)
    return skill, history
