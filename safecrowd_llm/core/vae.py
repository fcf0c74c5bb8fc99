"""The VAE that ties encoder, prior and a decoder likelihood together, plus a latent reward MLP.

``PreferenceVAE.loss`` is decoder-agnostic: a track passes a function that scores a batch's target
comparisons for given latents — Bradley-Terry over a latent reward (Safe-VPL) or the CPL regret
likelihood over a latent policy (Safe-CPL). ``LatentRewardMLP`` is the Safe-VPL decoder for
feature-vector data (state-action steps, or fixed embeddings).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from .data import PreferenceSetBatch
from .elbo import elbo_loss
from .encoder import SetEncoder
from .likelihoods import bradley_terry_log_likelihood
from .priors import DiagonalGaussian, Prior

__all__ = ["LatentRewardMLP", "PreferenceVAE", "bradley_terry_batch_log_likelihood"]

# (z (A, D), batch) -> (A, Nt) log-likelihood of each annotator's target comparisons.
LogLikelihoodFn = Callable[[Tensor, PreferenceSetBatch], Tensor]


class PreferenceVAE(nn.Module):
    """q(z'|S_z) and p(z'), trained with the ELBO of Eq. 7 against any decoder likelihood."""

    def __init__(self, encoder: SetEncoder, prior: Prior) -> None:
        super().__init__()
        if encoder.latent_dim != prior.latent_dim:
            raise ValueError(f"encoder latent_dim {encoder.latent_dim} != prior latent_dim {prior.latent_dim}")
        self.encoder, self.prior = encoder, prior

    @property
    def latent_dim(self) -> int:
        return self.encoder.latent_dim

    def posterior(self, batch: PreferenceSetBatch) -> DiagonalGaussian:
        return self.encoder(batch.ctx_a, batch.ctx_b, batch.ctx_y, batch.ctx_mask)

    def loss(
        self,
        batch: PreferenceSetBatch,
        log_likelihood: LogLikelihoodFn,
        beta: float,
        *,
        num_samples: int = 1,
        kl_samples: int = 16,
        deterministic: bool = False,
    ) -> tuple[Tensor, dict[str, float]]:
        """Negative ELBO of a batch; averages the likelihood over ``num_samples`` draws of z'.

        ``deterministic`` scores at the posterior mean instead (evaluation).
        """
        q = self.posterior(batch)
        z = q.mean.unsqueeze(0) if deterministic else q.rsample(num_samples)  # (S, A, D)
        log_lik = torch.stack([log_likelihood(z[s], batch) for s in range(z.shape[0])]).mean(0)
        return elbo_loss(log_lik, self.prior.kl(q, kl_samples), beta, batch.tgt_mask)


class LatentRewardMLP(nn.Module):
    """r(x, z'): an MLP on ``[x, z']``; a segment's utility is its summed per-step reward.

    ``forward(x (A, N, *S, D), z (A, Dz)) -> (A, N)``: z' is broadcast over comparisons and steps,
    and any step dimensions ``S`` between N and D are summed (``(A, N, D)`` inputs have none).
    """

    def __init__(self, feature_dim: int, latent_dim: int, *, hidden_dim: int = 128, num_layers: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = feature_dim + latent_dim
        for _ in range(num_layers):
            layers += [nn.Linear(width, hidden_dim), nn.ReLU()]
            width = hidden_dim
        self.net = nn.Sequential(*layers, nn.Linear(width, 1))

    def step_reward(self, x: Tensor, z: Tensor) -> Tensor:
        """``x (..., D)`` and a broadcastable ``z (..., Dz)`` -> per-step reward ``(...)``."""
        z = z.expand(*x.shape[:-1], z.shape[-1])
        return self.net(torch.cat([x, z], -1)).squeeze(-1)

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        extra = x.dim() - 3  # step dims between N and D
        z = z.reshape(z.shape[0], *([1] * (1 + extra)), z.shape[-1])
        r = self.step_reward(x, z)
        return r.sum(dim=tuple(range(2, 2 + extra))) if extra else r


def bradley_terry_batch_log_likelihood(reward: LatentRewardMLP, flip_prob: float = 0.0) -> LogLikelihoodFn:
    """The Safe-VPL decoder likelihood over a batch's target part, weighted per comparison."""

    def log_likelihood(z: Tensor, batch: PreferenceSetBatch) -> Tensor:
        return bradley_terry_log_likelihood(
            reward(batch.tgt_a, z), reward(batch.tgt_b, z), batch.tgt_y, weights=batch.tgt_weights, flip_prob=flip_prob
        )

    return log_likelihood
