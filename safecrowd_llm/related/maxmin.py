"""MaxMin-RLHF (Chakraborty et al. 2024): an EM mixture of Bradley-Terry rewards over annotators, then one
policy that maximises the *minimum* over the mixture's rewards.

Every annotator belongs to one latent cluster k with reward r_k(x, y) = w_k . z(x, y), a linear head on the
standardised frozen base features z (:mod:`.features`). EM alternates

* E-step: responsibility of cluster k for annotator a, the posterior given *all* of a's pairs,
  gamma_ak ∝ pi_k prod_i sigmoid(r_k(chosen_i) - r_k(rejected_i)) (in log space, so many pairs don't underflow);
* M-step: pi_k = mean_a gamma_ak and w_k = a Bradley-Terry fit with pair i weighted by gamma_{a(i) k}.

The policy is trained as in RC: GRPO on (1 - omega) r_new + omega s(min_k r_k) (:func:`combine_with_task`).
Each head is 0 at the mean feature of the preference data (no bias), which fixes the free shift of a
Bradley-Terry reward and so gives the minimum over heads a common origin.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..baselines import combine_with_task
from ..rewards import BatchRewardFn, RewardFn
from .features import FrozenFeatures, LinearHeads, fit_bradley_terry, standardiser

__all__ = ["MinReward", "MixtureFit", "assignment_accuracy", "fit_from_dataset", "fit_mixture", "maxmin_objective"]

_WEIGHT_FLOOR = 1e-6  # mixing weights never reach 0, so an emptied cluster can still win annotators back


@dataclass
class MixtureFit:
    """A fitted mixture: K heads (meta: k, iterations, log-likelihood history, annotators, mixing weights),
    the (A, K) responsibilities of the annotators (in ``annotators`` order), the (K,) mixing weights and the
    best restart's history of the penalised log-likelihood EM maximises (non-decreasing up to the M-step's
    tolerance)."""

    heads: LinearHeads
    responsibilities: Tensor
    annotators: list[str]
    weights: Tensor
    log_likelihood: list[float]


def _spherical_kmeans(x: Tensor, k: int, gen: torch.Generator, steps: int = 25) -> Tensor:
    """Cluster labels (A,) of unit rows by cosine k-means, seeded by k-means++ (random through ``gen``)."""
    centres = x[torch.randint(len(x), (1,), generator=gen)]
    for _ in range(k - 1):  # k-means++: the next centre is drawn ∝ squared distance to the nearest one
        d2 = (1 - (x @ centres.T).max(1).values).clamp(min=0).square() + 1e-12
        centres = torch.cat([centres, x[torch.multinomial(d2, 1, generator=gen)]])
    for _ in range(steps):
        labels = (x @ centres.T).argmax(1)
        for j in range(k):  # an emptied centre keeps its place
            if (labels == j).any():
                centres[j] = F.normalize(x[labels == j].sum(0), dim=0)
    return (x @ centres.T).argmax(1)


def _em(diff: Tensor, index: Tensor, gamma: Tensor, iterations: int, l2: float, tol: float,
        steps: int) -> tuple[Tensor, Tensor, Tensor, list[float]]:
    """EM from initial responsibilities (A, K) on standardised differences (N, H). Returns the heads (K, H),
    mixing weights (K,), responsibilities (A, K) and the penalised log-likelihood after each iteration."""
    (n, dim), (a, k) = diff.shape, gamma.shape
    zero = torch.zeros_like(diff)
    weight, history = torch.zeros(k, dim), []
    for _ in range(iterations):
        # M-step: mixing weights, and one weighted BT fit per cluster with the fixed penalty l2 * N |w|^2
        # (fit_bradley_terry divides its loss by the weight total, hence l2 * n / mass)
        pi = gamma.mean(0).clamp(min=_WEIGHT_FLOOR)
        pi = pi / pi.sum()
        pair_w = gamma[index]  # (N, K)
        for j in range(k):
            mass = float(pair_w[:, j].sum())
            if mass > 1e-8:  # an empty cluster keeps its head (refitting on nothing would zero it)
                weight[j] = fit_bradley_terry(diff, zero, pair_w[:, j], l2=l2 * n / mass, steps=steps)
        # E-step: each annotator's log-likelihood under each head, over all its pairs, in log space
        loglik = torch.zeros(a, k).index_add_(0, index, F.logsigmoid(diff @ weight.T))  # (A, K)
        joint = loglik + pi.log()
        evidence = torch.logsumexp(joint, dim=1)
        gamma = (joint - evidence[:, None]).exp()
        history.append(float(evidence.sum() - l2 * n * weight.square().sum()))
        if tol > 0 and len(history) > 1 and history[-1] - history[-2] < tol * abs(history[-2]):
            break
    return weight, pi, gamma, history


def fit_mixture(chosen: Tensor, rejected: Tensor, annotator_index: Tensor, k: int, iterations: int = 30,
                l2: float = 1e-3, seed: int = 0, tol: float = 1e-5, annotators: Sequence[str] | None = None,
                restarts: int = 4, steps: int = 100) -> MixtureFit:
    """EM for a K-component mixture of linear Bradley-Terry rewards over annotators, on raw (N, H) features.

    ``annotator_index`` (N,) gives each pair's annotator; ``annotators`` optionally names index values
    0..max (default: the index as a string). EM only finds a local optimum, so it runs ``restarts`` times
    and keeps the highest final objective; each run starts from hard clusters (softened a little) of a
    spherical k-means (k-means++ seeding, random by ``seed``) of each annotator's mean standardised
    chosen-minus-rejected vector, the first-order direction of a per-annotator Bradley-Terry fit.
    The penalty is ``l2 * N * sum_k |w_k|^2``: fixed, so EM is monotone in the penalised log-likelihood
    (``log_likelihood``), and with k=1 the fit is exactly ``fit_bradley_terry(l2=l2)``.
    Each run stops after ``iterations`` M-steps or when the objective improves by less than ``tol`` (relative;
    ``tol=0`` runs all iterations).
    """
    if chosen.shape != rejected.shape or chosen.dim() != 2:
        raise ValueError(f"chosen and rejected must be (N, H) of one shape, got {tuple(chosen.shape)} and "
                         f"{tuple(rejected.shape)}")
    if annotator_index.shape != (len(chosen),):
        raise ValueError(f"annotator_index must have one entry per pair ({len(chosen)}), got {tuple(annotator_index.shape)}")
    if iterations < 1 or k < 1 or restarts < 1:
        raise ValueError(f"need k, iterations and restarts >= 1, got k={k}, iterations={iterations}, restarts={restarts}")
    ids, index = torch.unique(annotator_index.long(), return_inverse=True)  # only annotators with pairs
    n, a = len(chosen), len(ids)
    if k > a:
        raise ValueError(f"k={k} clusters but only {a} annotators: each cluster needs at least one annotator")
    names = [str(annotators[i]) if annotators is not None else str(i) for i in ids.tolist()]
    mean, std = standardiser(chosen, rejected)
    diff = (chosen.float() - rejected.float()) / std  # standardised chosen - standardised rejected
    gen = torch.Generator().manual_seed(seed)
    counts = torch.zeros(a).index_add_(0, index, torch.ones(n))
    direction = F.normalize(torch.zeros(a, diff.shape[1]).index_add_(0, index, diff) / counts[:, None], dim=1)

    best, finals = None, []
    for _ in range(restarts if k > 1 else 1):
        labels = _spherical_kmeans(direction, k, gen)
        run = _em(diff, index, F.one_hot(labels, k).float() * 0.95 + 0.05 / k, iterations, l2, tol, steps)
        finals.append(run[3][-1])
        if best is None or finals[-1] > best[3][-1]:
            best = run
    weight, pi, gamma, history = best
    meta = {"kind": "maxmin-mixture", "k": k, "iterations": len(history), "log_likelihood": history,
            "restart_log_likelihoods": finals, "annotators": names, "mixing_weights": pi.tolist(),
            "clusters": gamma.argmax(1).tolist(), "l2": l2, "seed": seed, "pairs": n}
    heads = LinearHeads(mean, std, weight.clone(), meta=meta)
    return MixtureFit(heads, gamma, names, pi, history)


def assignment_accuracy(responsibilities: Tensor, true_labels: Sequence[str]) -> float:
    """Share of annotators whose most responsible cluster matches their true label, under the best one-to-one
    matching of clusters to labels (Hungarian algorithm on the confusion matrix)."""
    from scipy.optimize import linear_sum_assignment

    if len(true_labels) != len(responsibilities):
        raise ValueError(f"{len(true_labels)} labels for {len(responsibilities)} annotators")
    names = sorted(set(true_labels))
    confusion = torch.zeros(responsibilities.shape[1], len(names))
    for cluster, label in zip(responsibilities.argmax(1).tolist(), true_labels, strict=True):
        confusion[cluster, names.index(label)] += 1
    rows, cols = linear_sum_assignment(confusion.numpy(), maximize=True)
    return float(confusion[rows, cols].sum()) / max(len(true_labels), 1)


class MinReward:
    """min_k r_k(x, y): the MaxMin objective's learned reward, ``(prompts, completions) -> list[float]``,
    scoring the frozen base's features of each pair with every head (batched)."""

    def __init__(self, features: FrozenFeatures, heads: LinearHeads) -> None:
        self.features, self.heads = features, heads

    @torch.no_grad()
    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any]) -> list[float]:
        if not len(prompts):
            return []
        return self.heads.scores(self.features(prompts, completions)).min(dim=1).values.tolist()


def fit_from_dataset(args: Any, features: FrozenFeatures) -> MixtureFit:
    """Fit the mixture on ``args.dataset`` (annotators with >= ``args.min_pairs`` pairs).

    When the data carry an ``archetype`` column (the text world's true user types), the heads' meta records
    ``assignment_accuracy`` against it. That is a diagnostic only: the fit never sees archetypes.
    """
    from ..data import load_preferences

    ds = load_preferences(args.dataset, min_pairs=args.min_pairs)
    chosen, rejected = features.preference_pairs(ds)
    ids = list(ds["annotator_id"])
    names = sorted(set(ids))
    position = {name: i for i, name in enumerate(names)}
    index = torch.tensor([position[i] for i in ids], dtype=torch.long)
    fit = fit_mixture(chosen, rejected, index, k=args.num_clusters, iterations=args.em_iterations,
                      l2=args.head_l2, seed=args.seed, annotators=names)
    fit.heads.meta["dataset"] = str(args.dataset)
    if "archetype" in ds.column_names:
        archetype = dict(zip(ids, ds["archetype"], strict=True))  # one archetype per annotator
        fit.heads.meta["assignment_accuracy"] = assignment_accuracy(
            fit.responsibilities, [str(archetype[a]) for a in fit.annotators])
    return fit


def maxmin_objective(args: Any, task: RewardFn, world: Any = None,
                     reference: Any = None) -> tuple[BatchRewardFn, dict]:
    """MaxMin-RLHF's GRPO reward: (1 - omega) r_new + omega s(min_k r_k), with the mixture fitted on the crowd
    and saved to ``<output_dir>/maxmin_rewards.{safetensors,json}``; and what describes it in ``policy.json``."""
    out = Path(args.output_dir)
    features = FrozenFeatures.from_pretrained(args.base_model, args.dtype, args.trust_remote_code,
                                              pooling=args.feature_pooling, cache_dir=out / "cache")
    features.model.to(args.device)  # the reward embeds every GRPO batch: on the trainer's device
    fit = fit_from_dataset(args, features)
    fit.heads.save(out / "maxmin_rewards")
    rc, mix = combine_with_task(args, task, MinReward(features, fit.heads), reference, "maxmin_reward")
    objective = rc.as_trl()
    objective.__name__ = f"maxmin_{args.omega:g}"  # TRL logs rewards/maxmin_<omega>/mean
    sizes = torch.bincount(fit.responsibilities.argmax(1), minlength=fit.weights.numel())
    info: dict[str, Any] = {
        "method": args.method, "task_reward": args.task_reward, "num_clusters": args.num_clusters,
        "em_log_likelihood": fit.log_likelihood[-1], "em_iterations_run": len(fit.log_likelihood),
        "mixing_weights": fit.weights.tolist(), "cluster_sizes": sizes.tolist(),
    }
    if "assignment_accuracy" in fit.heads.meta:
        info["assignment_accuracy"] = fit.heads.meta["assignment_accuracy"]
    return objective, info | mix
