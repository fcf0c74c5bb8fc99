"""The set encoder q(z' | S_z): one annotator's comparisons in, a Gaussian posterior over z' out.

Each comparison is embedded from the features of its two sides, their difference and its label, the embeddings of
one set attend to each other (no positional encoding, so the mixing is permutation-equivariant), and
a masked mean pools them into a permutation-invariant summary. That summary, not any single pair, is
what identifies a user: one comparison rarely tells two tastes apart, a set does.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .priors import DiagonalGaussian

__all__ = ["SetEncoder"]


class SetEncoder(nn.Module):
    """Permutation-invariant encoder of a preference set into ``DiagonalGaussian(mean, logvar)``.

    Args:
        feature_shape: shape of one side's features (``(D,)`` or ``(T, D)``; flattened internally).
        latent_dim: size of z'.
        hidden_dim: width of the comparison embedding and of attention.
        num_layers: self-attention layers over the set (0 = a plain Deep Set).
        num_heads: attention heads.
        min_logvar: floor on log-variance, so the posterior never collapses to a point during training.
    """

    def __init__(
        self,
        feature_shape: tuple[int, ...] | int,
        latent_dim: int,
        *,
        hidden_dim: int = 128,
        num_layers: int = 2,
        num_heads: int = 4,
        dropout: float = 0.0,
        min_logvar: float = -10.0,
    ) -> None:
        super().__init__()
        shape = (feature_shape,) if isinstance(feature_shape, int) else tuple(feature_shape)
        self.feature_dim = math.prod(shape)
        self.latent_dim, self.min_logvar = latent_dim, min_logvar
        self.embed = nn.Sequential(
            nn.Linear(3 * self.feature_dim + 1, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim),
        )
        layer = nn.TransformerEncoderLayer(
            hidden_dim, num_heads, 2 * hidden_dim, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.mixer = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False) if num_layers else None
        self.head = nn.Sequential(nn.LayerNorm(hidden_dim), nn.Linear(hidden_dim, 2 * latent_dim))

    def forward(self, a: Tensor, b: Tensor, y: Tensor, mask: Tensor | None = None) -> DiagonalGaussian:
        """Encode sets: ``a, b (A, N, *F)``, ``y (A, N)``, ``mask (A, N)`` (True = real) -> batch ``(A,)``."""
        n_sets, n = y.shape
        if mask is None:
            mask = y.new_ones(n_sets, n, dtype=bool)
        if not mask.any(-1).all():
            raise ValueError("every set in the batch needs at least one context comparison")
        x = _pair_features(a.reshape(n_sets, n, -1), b.reshape(n_sets, n, -1), y)
        h = self.embed(x)  # (A, N, H)
        if self.mixer is not None:
            h = self.mixer(h, src_key_padding_mask=~mask)
        m = mask.unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1)  # (A, H)
        mean, logvar = self.head(pooled).chunk(2, -1)
        return DiagonalGaussian(mean, logvar.clamp(min=self.min_logvar))


def _pair_features(a: Tensor, b: Tensor, y: Tensor) -> Tensor:
    """``(A, N, 3D + 1)``: both sides, their difference (what a taste shows in) and the label, centred
    to {-1, 0, 1} so a tie carries no sign."""
    return torch.cat([a, b, a - b, (2 * y - 1).unsqueeze(-1).to(a.dtype)], -1)
