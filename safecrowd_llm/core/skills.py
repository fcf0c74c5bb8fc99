"""Skill selection: K skill latents from the annotators' posterior means.

A continuous latent space is all that training gives; exporting and serving need a finite set of
skills. Clustering the posterior means picks latents where annotators actually are (so each skill is
on the prior's support and inherits the shared principle), and records whom each skill represents.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .priors import Prior

__all__ = ["SkillSelection", "select_skills"]


@dataclass(frozen=True)
class SkillSelection:
    """The chosen skills.

    Attributes:
        latents: ``(K, D)`` skill latents (cluster centroids of posterior means).
        log_prior: ``(K,)`` log p(z'_k) under the trained prior.
        covered: for each skill, the annotator ids assigned to it.
        assignment: annotator id -> skill index.
        silhouette: K -> silhouette score for every K tried (empty when K was given).
    """

    latents: Tensor
    log_prior: Tensor
    covered: list[list[str]]
    assignment: dict[str, int]
    silhouette: dict[int, float]

    @property
    def k(self) -> int:
        return self.latents.shape[0]


def _kmeans(x: np.ndarray, k: int, seed: int):
    from sklearn.cluster import KMeans  # imported here: scikit-learn takes seconds to import

    return KMeans(n_clusters=k, n_init=10, random_state=seed).fit(x)


def select_skills(
    posterior_means: Tensor,
    annotator_ids: Sequence[str],
    prior: Prior,
    *,
    k: int | None = None,
    k_range: tuple[int, int] = (2, 8),
    seed: int = 0,
) -> SkillSelection:
    """Pick K skill latents by k-means (fixed seed) over ``posterior_means (A, D)``.

    With ``k=None``, K is the value in the inclusive ``k_range`` with the best silhouette score.
    """
    if posterior_means.dim() != 2 or posterior_means.shape[0] != len(annotator_ids):
        raise ValueError(
            f"posterior_means must be (A, D) with A = {len(annotator_ids)} annotators, "
            f"got {tuple(posterior_means.shape)}"
        )
    x = posterior_means.detach().cpu().double().numpy()
    n = x.shape[0]
    scores: dict[int, float] = {}
    if k is None:
        lo, hi = max(2, k_range[0]), min(k_range[1], n - 1)
        if lo > hi:
            raise ValueError(f"a silhouette sweep needs at least 3 annotators, got {n}")
        from sklearn.metrics import silhouette_score

        fits = {kk: _kmeans(x, kk, seed) for kk in range(lo, hi + 1)}
        scores = {kk: float(silhouette_score(x, f.labels_)) for kk, f in fits.items()}
        k = max(scores, key=scores.get)
        fit = fits[k]
    else:
        if not 1 <= k <= n:
            raise ValueError(f"k must be in [1, {n}] (the number of annotators), got {k}")
        fit = _kmeans(x, k, seed)
    latents = torch.as_tensor(fit.cluster_centers_, dtype=torch.float32)
    # a learned prior (e.g. the mixture) may sit on the GPU; the k-means centres are on the CPU
    device = next(itertools.chain(prior.parameters(), prior.buffers()), latents).device
    with torch.no_grad():
        log_prior = prior.log_prob(latents.to(device)).float().cpu()
    labels = fit.labels_.tolist()
    covered = [[a for a, lab in zip(annotator_ids, labels) if lab == i] for i in range(k)]
    return SkillSelection(latents, log_prior, covered, dict(zip(annotator_ids, labels)), scores)
