"""Safe-CPL skills: the core PreferenceVAE with a latent-conditioned policy as decoder, fit with the CPL
regret likelihood (no reward model, no RL).

Decoder likelihood of annotator z's target comparison (core ``cpl_log_likelihood``):
    f(tau | z') = alpha * sum_t log pi_l(a_t | s_t, z')
    P(y=1)      = sigmoid(f(tau1|z') - lam f(tau2|z'))      (lam < 1: the conservative bias)
Loss = -ELBO (Eq. 7 with beta * KL) + bc_weight * E_{(s,a) ~ D_tau, z' ~ p(z')}[-log pi_l(a | s, z')],
and inside the ELBO's per-comparison term, ``preferred_bc_weight * mean_t log pi_l(a_t | s_t, z')`` over
the *preferred* side of each target comparison (ties skipped), with z' the annotator's posterior sample.

The preferred-side term makes pi_l(.|., z') an actual controller that imitates what annotator z'
preferred: the CPL ratio alone only ranks segments and left the executed mean a poor controller
(SafetyBallCircle, quick profile: decoded skills at the user types' mean latents returned 15-42 per
episode without it, 50-64 with it; D_tau's safe episodes have median 28). The D_tau BC term keeps pi_l
a sensible behaviour model at *every* latent the prior covers (the CPL paper's BC regulariser;
FINDINGS: CPL without it erodes a small model), which matters because the high-level policy later
moves anywhere in that space. The skill that is executed is pi_l's mean.

Defaults: alpha = 1, lam = 0.75, bc_weight = 0.5 (quick profile, seed 0, returns of the 4 skill latents,
all cost-free). On SafetyCarRun lam = 1 with bc_weight = 0.1 left every skill driving backwards (-90 to
-240: pushing down the dispreferred side's log-probs moved the mean action out of D_tau's support);
lam = 0.75 with bc_weight = 0.5 gives 136 / 268 / 378 / 153. On SafetyBallCircle the two settings are
on a par (18 / 150 / 142 / 31 vs 19 / 105 / 165 / 18); lam = 0.5 with bc_weight = 1 helps Run but gives
Circle a costly skill. alpha = 0.1 with the KL weight at 1 collapsed the posterior onto the prior.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from control.methods.latent import LatentConfig, build_vae, fit_vae
from control.networks import GaussianLatentPolicy
from safecrowd_llm.core import PreferenceSetBatch, PreferenceVAE, cpl_log_likelihood
from safecrowd_llm.core.data import Crowd

__all__ = ["CPLConfig", "cpl_batch_log_likelihood", "fit_cpl_skills"]


@dataclass(frozen=True)
class CPLConfig:
    """Safe-CPL's decoder and loss weights."""

    latent: LatentConfig = field(default_factory=LatentConfig)
    policy_hidden: tuple[int, ...] = (128, 128)
    alpha: float = 1.0  # temperature on summed segment log-probs
    lam: float = 0.75  # conservative bias in (0, 1]; 1 = no bias
    bc_weight: float = 0.5  # weight of the per-step BC negative log-likelihood on D_tau (z' from the prior)
    preferred_bc_weight: float = 1.0  # weight of the mean per-step log-prob of each preferred segment
    bc_batch: int = 256
    flip_prob: float = 0.0  # label-noise model of the likelihood (< 0.5)


def cpl_batch_log_likelihood(policy: GaussianLatentPolicy, config: CPLConfig):
    """``(z (A, D), batch) -> (A, Nt)``: CPL log-likelihood of each annotator's target comparisons.

    Each side's features are ``(A, Nt, T, obs_dim + act_dim)`` model-space steps ``[s_n, a_u]``."""
    d = policy.obs_dim

    def segment_log_probs(x: Tensor, z: Tensor) -> Tensor:  # (A, Nt, T, F), (A, D) -> (A, Nt, T)
        return policy.log_prob(x[..., :d], z[:, None, None, :], x[..., d:])

    def log_likelihood(z: Tensor, batch: PreferenceSetBatch) -> Tensor:
        lp_a, lp_b = segment_log_probs(batch.tgt_a, z), segment_log_probs(batch.tgt_b, z)
        ll = cpl_log_likelihood(
            lp_a, lp_b, batch.tgt_y, alpha=config.alpha, lam=config.lam, weights=batch.tgt_weights,
            flip_prob=config.flip_prob,
        )  # fmt: skip
        if config.preferred_bc_weight:
            y = batch.tgt_y
            preferred = (y == 1).to(ll.dtype) * lp_a.mean(-1) + (y == 0).to(ll.dtype) * lp_b.mean(-1)
            ll = ll + config.preferred_bc_weight * preferred
        return ll

    return log_likelihood


def fit_cpl_skills(
    crowd: Crowd,
    dtau: dict[str, Tensor],
    act_dim: int,
    latent_dim: int,
    steps: int,
    config: CPLConfig,
    *,
    seed: int,
    progress: bool = True,
) -> tuple[PreferenceVAE, GaussianLatentPolicy, list[dict[str, float]]]:
    """Fit encoder + latent policy on a model-space ``crowd`` and D_tau tensors (``obs``, ``act`` scaled).

    Returns the VAE, the policy (frozen afterwards by the caller) and per-step metrics."""
    torch.manual_seed(seed)
    obs_dim = dtau["obs"].shape[1]
    vae = build_vae(crowd.feature_shape, latent_dim, config.latent)
    policy = GaussianLatentPolicy(obs_dim, latent_dim, act_dim, config.policy_hidden)
    gen = torch.Generator().manual_seed(seed + 17)
    n = dtau["obs"].shape[0]

    def bc_loss(step: int) -> tuple[Tensor, dict[str, float]]:
        idx = torch.randint(0, n, (config.bc_batch,), generator=gen)
        z = vae.prior.sample(config.bc_batch, generator=gen)
        nll = -policy.log_prob(dtau["obs"][idx], z, dtau["act"][idx]).mean()
        return config.bc_weight * nll, {"bc_nll": nll.item()}

    history = fit_vae(
        vae,
        policy,
        cpl_batch_log_likelihood(policy, config),
        crowd,
        steps,
        config.latent,
        seed=seed,
        extra_loss=bc_loss if config.bc_weight > 0 else None,
        progress=progress,
        desc="safe-cpl skills",
    )
    policy.eval().requires_grad_(False)
    return vae, policy, history
