"""The posterior q(z'|S_z) and the priors p(z') it is regularised towards.

Two priors share one interface (``log_prob``, ``sample``, ``kl``): the standard normal of VPL, with a
closed-form KL, and a learnable Gaussian mixture (the paper's suggested improvement: crowds made of
a few user types are multi-modal), whose KL has no closed form and is estimated by Monte Carlo with
reparameterised samples so it stays differentiable in both q and p.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["DiagonalGaussian", "GaussianMixturePrior", "Prior", "StandardNormalPrior"]

_LOG_2PI = math.log(2 * math.pi)


class DiagonalGaussian:
    """N(mean, diag(exp(logvar))) over the last dimension; batch shape is ``mean.shape[:-1]``."""

    def __init__(self, mean: Tensor, logvar: Tensor) -> None:
        if mean.shape != logvar.shape:
            raise ValueError(f"mean {tuple(mean.shape)} and logvar {tuple(logvar.shape)} differ in shape")
        self.mean, self.logvar = mean, logvar

    @property
    def std(self) -> Tensor:
        return torch.exp(0.5 * self.logvar)

    def rsample(self, n: int | None = None, generator: torch.Generator | None = None) -> Tensor:
        """Reparameterised sample ``(*batch, D)`` (or ``(n, *batch, D)``): mean + std * eps."""
        shape = self.mean.shape if n is None else (n, *self.mean.shape)
        eps = torch.randn(shape, generator=generator, dtype=self.mean.dtype).to(self.mean.device)
        return self.mean + self.std * eps

    def log_prob(self, z: Tensor) -> Tensor:
        return -0.5 * (((z - self.mean) ** 2) / self.logvar.exp() + self.logvar + _LOG_2PI).sum(-1)


class Prior(nn.Module):
    """p(z'): ``log_prob(z) (..., D) -> (...)``, ``sample(n) -> (n, D)``, ``kl(q) -> q's batch shape``."""

    latent_dim: int

    def log_prob(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        raise NotImplementedError

    def kl(self, q: DiagonalGaussian, num_samples: int = 16) -> Tensor:
        """Monte Carlo KL(q || p) = E_q[log q(z) - log p(z)] with reparameterised samples."""
        z = q.rsample(num_samples)  # (S, *batch, D)
        return (q.log_prob(z) - self.log_prob(z)).mean(0)


class StandardNormalPrior(Prior):
    """p(z') = N(0, I); KL to a diagonal Gaussian in closed form."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim

    def log_prob(self, z: Tensor) -> Tensor:
        return -0.5 * (z**2 + _LOG_2PI).sum(-1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return torch.randn(n, self.latent_dim, generator=generator)

    def kl(self, q: DiagonalGaussian, num_samples: int = 0) -> Tensor:
        """KL(N(mu, s^2) || N(0, I)) = 1/2 sum(mu^2 + s^2 - log s^2 - 1); exact, so ``num_samples`` is unused."""
        return 0.5 * (q.mean**2 + q.logvar.exp() - q.logvar - 1).sum(-1)


class GaussianMixturePrior(Prior):
    """Learnable mixture p(z') = sum_k pi_k N(mu_k, diag(sigma_k^2)).

    Component means start spread on a small random sphere so they can move to distinct user types;
    ``learnable=False`` freezes it (a fixed multi-modal prior).
    """

    def __init__(
        self, latent_dim: int, num_components: int, *, init_scale: float = 1.0, learnable: bool = True, seed: int = 0
    ) -> None:
        super().__init__()
        if num_components < 1:
            raise ValueError(f"num_components must be >= 1, got {num_components}")
        self.latent_dim, self.num_components = latent_dim, num_components
        means = torch.randn(num_components, latent_dim, generator=torch.Generator().manual_seed(seed)) * init_scale
        params = {
            "logits": torch.zeros(num_components),
            "means": means,
            "log_stds": torch.zeros(num_components, latent_dim),
        }
        for name, value in params.items():
            if learnable:
                self.register_parameter(name, nn.Parameter(value))
            else:
                self.register_buffer(name, value)

    @classmethod
    def from_components(
        cls, means: Tensor, stds: Tensor, *, min_std: float = 0.0, learnable: bool = False
    ) -> GaussianMixturePrior:
        """An equal-weight mixture with the given ``(K, D)`` component means and stds (frozen by default).

        With the annotators' posteriors q(z'|S_a) as components this is the VAE's *aggregate posterior*:
        the part of the latent space real annotators occupy. ``min_std`` floors the stds so a very
        confident posterior does not make the log-density (and a regulariser reading it) arbitrarily sharp.
        """
        if means.dim() != 2 or means.shape != stds.shape:
            raise ValueError(f"means and stds must both be (K, D), got {tuple(means.shape)}, {tuple(stds.shape)}")
        prior = cls(means.shape[1], means.shape[0], learnable=learnable)
        with torch.no_grad():
            prior.means.copy_(means)
            prior.log_stds.copy_(stds.clamp(min=max(min_std, 1e-6)).log())
        return prior

    def component_log_prob(self, z: Tensor) -> Tensor:
        """``(..., D) -> (..., K)``: log pi_k + log N(z; mu_k, sigma_k^2)."""
        z = z.unsqueeze(-2)  # (..., 1, D)
        var = torch.exp(2 * self.log_stds)
        log_n = -0.5 * (((z - self.means) ** 2) / var + 2 * self.log_stds + _LOG_2PI).sum(-1)
        return torch.log_softmax(self.logits, -1) + log_n

    def log_prob(self, z: Tensor) -> Tensor:
        return torch.logsumexp(self.component_log_prob(z), -1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        k = torch.multinomial(torch.softmax(self.logits.detach(), -1), n, replacement=True, generator=generator)
        eps = torch.randn(n, self.latent_dim, generator=generator)
        return (self.means[k] + torch.exp(self.log_stds[k]) * eps).detach()
