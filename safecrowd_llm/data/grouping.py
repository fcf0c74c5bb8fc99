"""Per-annotator views of an exchange-format dataset: groups, filters, annotator splits, contexts.

These work on row *indices* of a ``datasets.Dataset`` so that the text stays in one table; features
for the core (frozen-LM embeddings of prompt+chosen / prompt+rejected, one row each) are attached by
:func:`build_crowd`, which turns the groups into the core's :class:`~safecrowd_llm.core.data.Crowd`.
Annotator splits and context/target sampling delegate to the core so that a split of the dataset
and a split of the crowd built from it hold out the same annotators.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Sequence

import datasets
import torch
from torch import Tensor

from ..core.data import Crowd, PreferenceSet, split_context_target

__all__ = [
    "build_crowd",
    "filter_min_pairs",
    "group_by_annotator",
    "sample_context_target",
    "split_annotators",
    "summarize",
]

logger = logging.getLogger(__name__)


def group_by_annotator(ds: datasets.Dataset) -> dict[str, list[int]]:
    """Row indices per annotator: keys sorted, indices ascending (independent of row order ties)."""
    groups: dict[str, list[int]] = {}
    for i, aid in enumerate(ds["annotator_id"]):
        groups.setdefault(str(aid), []).append(i)
    return {k: groups[k] for k in sorted(groups)}


def filter_min_pairs(ds: datasets.Dataset, min_pairs: int) -> datasets.Dataset:
    """Drop annotators with fewer than ``min_pairs`` rows (they cannot fill a context and a target)."""
    groups = group_by_annotator(ds)
    keep = {k for k, rows in groups.items() if len(rows) >= min_pairs}
    dropped = len(groups) - len(keep)
    if dropped:
        n_rows = sum(len(r) for k, r in groups.items() if k not in keep)
        logger.info(
            "min_pairs=%d: dropped %d of %d annotators (%d rows)", min_pairs, dropped, len(groups), n_rows
        )
    if not keep:
        raise ValueError(
            f"no annotator has >= {min_pairs} pairs (largest set: {max(map(len, groups.values()))})"
        )
    return ds.select(sorted(i for k in keep for i in groups[k]))


def _index_crowd(groups: dict[str, list[int]]) -> Crowd:
    """A crowd whose sets carry only row ids: lets the core's split logic act on a dataset."""
    sets = []
    for aid, rows in groups.items():
        n = len(rows)
        sets.append(
            PreferenceSet(aid, torch.zeros(n, 1), torch.zeros(n, 1), torch.ones(n), ids=torch.tensor(rows))
        )
    return Crowd.from_sets(sets)


def split_annotators(
    ds: datasets.Dataset, eval_fraction: float, seed: int = 0
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Split by *annotator* (held-out people, not held-out rows), exactly as ``Crowd.split`` does."""
    train, held = _index_crowd(group_by_annotator(ds)).split(eval_fraction, seed)

    def rows(c: Crowd) -> list[int]:
        return sorted(int(i) for s in c.sets.values() for i in s.ids)

    return ds.select(rows(train)), ds.select(rows(held))


def sample_context_target(
    rows: Sequence[int],
    context_size: int | tuple[int, int],
    generator: torch.Generator | None = None,
    *,
    disjoint: bool = True,
    max_target: int | None = None,
) -> tuple[list[int], list[int]]:
    """Split one annotator's row indices into context and target rows (VPL samples 2-8 as context).

    The positions come from the core's :func:`split_context_target`, so the same generator state gives
    the same split as the core's batching.
    """
    ctx, tgt = split_context_target(
        len(rows), context_size, generator, disjoint=disjoint, max_target=max_target
    )
    return [rows[i] for i in ctx.tolist()], [rows[i] for i in tgt.tolist()]


def build_crowd(
    ds: datasets.Dataset,
    chosen_features: Tensor,
    rejected_features: Tensor,
    *,
    swap_seed: int | None = None,
) -> Crowd:
    """The core's crowd from a dataset and per-row features ``(N, *F)`` of prompt+chosen / prompt+rejected.

    Side ``a`` is the chosen response (``y = 1``) unless ``swap_seed`` is given, in which case each
    comparison's sides are swapped with probability 1/2 (``y = 0``) so labels are not all one value.
    ``ids`` are the dataset rows, so a track can look the text back up.
    """
    n = len(ds)
    if chosen_features.shape[0] != n or rejected_features.shape[0] != n:
        raise ValueError(
            f"features have {chosen_features.shape[0]}/{rejected_features.shape[0]} rows, dataset has {n}"
        )
    swap = torch.zeros(n, dtype=torch.bool)
    if swap_seed is not None:
        swap = torch.rand(n, generator=torch.Generator().manual_seed(swap_seed)) < 0.5
    sw = swap.view(n, *([1] * (chosen_features.dim() - 1)))
    a = torch.where(sw, rejected_features, chosen_features).float()
    b = torch.where(sw, chosen_features, rejected_features).float()
    y = (~swap).float()
    sets = []
    for aid, rows in group_by_annotator(ds).items():
        idx = torch.tensor(rows)
        sets.append(PreferenceSet(aid, a[idx], b[idx], y[idx], ids=idx))
    return Crowd.from_sets(sets)


def summarize(ds: datasets.Dataset) -> dict[str, float | int]:
    """Counts for a summary line: annotators, pairs, and pairs per annotator (min / median / max)."""
    sizes = [len(r) for r in group_by_annotator(ds).values()]
    return {
        "annotators": len(sizes),
        "pairs": len(ds),
        "pairs_min": min(sizes, default=0),
        "pairs_median": statistics.median(sizes) if sizes else 0,
        "pairs_max": max(sizes, default=0),
    }
