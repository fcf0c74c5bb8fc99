"""Preference data: comparisons, one annotator's preference set S_z, a crowd, and set batching.

The method needs an annotator's comparisons *together*: the encoder reads a context part of S_z to
infer the annotator's latent z', and the decoder is scored on a target part. Features are whatever a
track supplies for each side of a comparison — a ``(D,)`` frozen-LM embedding of prompt+response or a
``(T, D)`` state-action segment — as long as they have one shape across the crowd.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = [
    "Comparison",
    "Crowd",
    "PreferenceSet",
    "PreferenceSetBatch",
    "collate_sets",
    "iterate_set_batches",
    "pad_sets",
    "split_context_target",
]

_VALID_LABELS = (0.0, 0.5, 1.0)


@dataclass(frozen=True)
class Comparison:
    """One labelled comparison: ``y = 1`` if side ``a`` was preferred, 0 if ``b``, 0.5 for a tie."""

    a: Tensor
    b: Tensor
    y: float
    weight: float = 1.0
    id: int = -1  # row of the comparison in its source dataset, so a track can look up raw data


@dataclass
class PreferenceSet:
    """S_z: all comparisons of one annotator, stored as stacked tensors.

    Attributes:
        annotator_id: who labelled them.
        a, b: ``(N, *F)`` features of the two sides.
        y: ``(N,)`` labels in {0, 0.5, 1}.
        weights: ``(N,)`` per-comparison weights (default 1).
        ids: ``(N,)`` source-row ids (default ``arange(N)``).
    """

    annotator_id: str
    a: Tensor
    b: Tensor
    y: Tensor
    weights: Tensor | None = None
    ids: Tensor | None = None

    def __post_init__(self) -> None:
        self.y = torch.as_tensor(self.y, dtype=torch.float32)
        n = self.y.shape[0] if self.y.dim() == 1 else -1
        if self.weights is None and n >= 0:
            self.weights = torch.ones(n)
        if self.ids is None and n >= 0:
            self.ids = torch.arange(n)
        self.validate()

    def _fail(self, msg: str) -> None:
        raise ValueError(f"preference set of annotator {self.annotator_id!r}: {msg}")

    def validate(self) -> None:
        """Raise ``ValueError`` naming the annotator and comparison index on malformed data."""
        if self.y.dim() != 1:
            self._fail(f"labels must be 1-D (N,), got shape {tuple(self.y.shape)}")
        n = self.y.shape[0]
        if n == 0:
            self._fail("the set is empty; every annotator needs at least one comparison")
        for name in ("a", "b"):
            t = getattr(self, name)
            if t.shape[0] != n:
                self._fail(f"{name} has {t.shape[0]} comparisons but there are {n} labels")
        if self.a.shape != self.b.shape:
            self._fail(f"sides have different shapes: a {tuple(self.a.shape)} vs b {tuple(self.b.shape)}")
        for name in ("weights", "ids"):
            if getattr(self, name).shape != (n,):
                self._fail(f"{name} must have shape ({n},), got {tuple(getattr(self, name).shape)}")
        bad = ~((self.y == 0) | (self.y == 0.5) | (self.y == 1))
        if bad.any():
            i = int(bad.nonzero()[0])
            self._fail(f"comparison {i}: label must be 0 or 1 (0.5 for a tie), got {self.y[i].item()}")
        for name in ("a", "b"):
            t = getattr(self, name)
            finite = torch.isfinite(t.reshape(n, -1)).all(-1)
            if not finite.all():
                i = int((~finite).nonzero()[0])
                self._fail(f"comparison {i}: side {name} has NaN or infinite features")
        if (self.weights < 0).any() or not torch.isfinite(self.weights).all():
            i = int(((self.weights < 0) | ~torch.isfinite(self.weights)).nonzero()[0])
            self._fail(f"comparison {i}: weight must be finite and >= 0, got {self.weights[i].item()}")

    @classmethod
    def from_comparisons(cls, annotator_id: str, comparisons: Sequence[Comparison]) -> PreferenceSet:
        if not comparisons:
            raise ValueError(f"preference set of annotator {annotator_id!r}: the set is empty")
        shapes = {tuple(c.a.shape) for c in comparisons} | {tuple(c.b.shape) for c in comparisons}
        if len(shapes) > 1:
            first = tuple(comparisons[0].a.shape)
            i = next(i for i, c in enumerate(comparisons) if {tuple(c.a.shape), tuple(c.b.shape)} != {first})
            raise ValueError(
                f"preference set of annotator {annotator_id!r}: comparison {i} has feature shape "
                f"{tuple(comparisons[i].a.shape)}/{tuple(comparisons[i].b.shape)}, expected {first}"
            )
        return cls(
            annotator_id,
            torch.stack([c.a for c in comparisons]).float(),
            torch.stack([c.b for c in comparisons]).float(),
            torch.tensor([float(c.y) for c in comparisons]),
            torch.tensor([float(c.weight) for c in comparisons]),
            torch.tensor([c.id if c.id >= 0 else i for i, c in enumerate(comparisons)]),
        )

    def __len__(self) -> int:
        return self.y.shape[0]

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return tuple(self.a.shape[1:])

    def subset(self, index: Tensor) -> PreferenceSet:
        return PreferenceSet(
            self.annotator_id, self.a[index], self.b[index], self.y[index], self.weights[index], self.ids[index]
        )


@dataclass
class Crowd:
    """The crowd D_pref = {S_z}: preference sets keyed by annotator id, all with one feature shape."""

    sets: dict[str, PreferenceSet] = field(default_factory=dict)

    def __post_init__(self) -> None:
        shapes = {s.feature_shape for s in self.sets.values()}
        if len(shapes) > 1:
            ref = next(iter(self.sets.values())).feature_shape
            bad = next(k for k, s in self.sets.items() if s.feature_shape != ref)
            raise ValueError(
                f"annotator {bad!r} has feature shape {self.sets[bad].feature_shape}, others have {ref}"
            )
        for key, s in self.sets.items():
            if key != s.annotator_id:
                raise ValueError(f"crowd key {key!r} holds the set of annotator {s.annotator_id!r}")

    @classmethod
    def from_sets(cls, sets: Sequence[PreferenceSet]) -> Crowd:
        out: dict[str, PreferenceSet] = {}
        for s in sets:
            if s.annotator_id in out:
                raise ValueError(f"annotator {s.annotator_id!r} appears twice in the crowd")
            out[s.annotator_id] = s
        return cls(out)

    def __len__(self) -> int:
        return len(self.sets)

    def __getitem__(self, annotator_id: str) -> PreferenceSet:
        return self.sets[annotator_id]

    @property
    def annotator_ids(self) -> list[str]:
        return list(self.sets)

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return next(iter(self.sets.values())).feature_shape

    @property
    def num_comparisons(self) -> int:
        return sum(len(s) for s in self.sets.values())

    def split(self, eval_fraction: float, seed: int = 0) -> tuple[Crowd, Crowd]:
        """Split *annotators* (not comparisons) into train and held-out crowds."""
        if not 0.0 < eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
        ids = sorted(self.sets)
        perm = torch.randperm(len(ids), generator=torch.Generator().manual_seed(seed)).tolist()
        n_eval = max(1, round(eval_fraction * len(ids)))
        if n_eval >= len(ids):
            raise ValueError(f"cannot hold out {n_eval} of {len(ids)} annotators and keep any for training")
        eval_ids = {ids[i] for i in perm[:n_eval]}
        train = {k: v for k, v in self.sets.items() if k not in eval_ids}
        held = {k: v for k, v in self.sets.items() if k in eval_ids}
        return Crowd(train), Crowd(held)


def split_context_target(
    n: int,
    context_size: int | tuple[int, int],
    generator: torch.Generator | None = None,
    *,
    disjoint: bool = True,
    max_target: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Random context/target indices for a set of ``n`` comparisons.

    ``context_size`` is a fixed size or an inclusive ``(low, high)`` range sampled per call (VPL
    uses 2-8). With ``disjoint`` the target is the rest of the set (at least one comparison is kept
    for it), otherwise the whole set; ``max_target`` caps the target size.
    """
    lo, hi = (context_size, context_size) if isinstance(context_size, int) else context_size
    if lo < 1 or hi < lo:
        raise ValueError(f"context_size must be >= 1 (or a range low <= high), got {context_size}")
    c = int(torch.randint(lo, hi + 1, (1,), generator=generator))
    c = min(c, n - 1) if disjoint and n > 1 else min(c, n)
    perm = torch.randperm(n, generator=generator)
    ctx = perm[:c]
    tgt = perm[c:] if disjoint and n > 1 else perm
    if max_target is not None:
        tgt = tgt[:max_target]
    return ctx, tgt


@dataclass
class PreferenceSetBatch:
    """A batch of A annotators' sets, each split into a padded context and target part.

    Shapes: ``ctx_a/ctx_b (A, Nc, *F)``, ``ctx_y/ctx_mask (A, Nc)``; likewise ``tgt_*`` with Nt;
    ``*_ids`` are source-row ids (-1 on padding); masks are True on real comparisons.
    """

    annotator_ids: list[str]
    ctx_a: Tensor
    ctx_b: Tensor
    ctx_y: Tensor
    ctx_mask: Tensor
    ctx_ids: Tensor
    tgt_a: Tensor
    tgt_b: Tensor
    tgt_y: Tensor
    tgt_weights: Tensor
    tgt_mask: Tensor
    tgt_ids: Tensor

    def to(self, device: torch.device | str) -> PreferenceSetBatch:
        moved = {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in self.__dict__.items()}
        return PreferenceSetBatch(**moved)


def _pad(parts: Sequence[PreferenceSet]) -> tuple[Tensor, ...]:
    n = max(len(p) for p in parts)
    feat = parts[0].feature_shape
    a = torch.zeros(len(parts), n, *feat)
    b = torch.zeros(len(parts), n, *feat)
    y, w = torch.zeros(len(parts), n), torch.zeros(len(parts), n)
    mask = torch.zeros(len(parts), n, dtype=torch.bool)
    ids = torch.full((len(parts), n), -1, dtype=torch.long)
    for i, p in enumerate(parts):
        k = len(p)
        a[i, :k], b[i, :k], y[i, :k], w[i, :k], mask[i, :k], ids[i, :k] = p.a, p.b, p.y, p.weights, True, p.ids
    return a, b, y, w, mask, ids


def pad_sets(contexts: Sequence[PreferenceSet], targets: Sequence[PreferenceSet]) -> PreferenceSetBatch:
    """Pad already-split context and target parts (one of each per annotator) into a batch."""
    if len(contexts) != len(targets) or not contexts:
        raise ValueError(f"need one context and one target part per annotator, got {len(contexts)}/{len(targets)}")
    ca, cb, cy, _, cm, cid = _pad(contexts)
    ta, tb, ty, tw, tm, tid = _pad(targets)
    return PreferenceSetBatch([s.annotator_id for s in contexts], ca, cb, cy, cm, cid, ta, tb, ty, tw, tm, tid)


def collate_sets(
    sets: Sequence[PreferenceSet],
    context_size: int | tuple[int, int],
    generator: torch.Generator | None = None,
    *,
    disjoint: bool = True,
    max_target: int | None = None,
) -> PreferenceSetBatch:
    """Split each set into context/target (see :func:`split_context_target`) and pad into a batch."""
    ctx_parts, tgt_parts = [], []
    for s in sets:
        ci, ti = split_context_target(len(s), context_size, generator, disjoint=disjoint, max_target=max_target)
        ctx_parts.append(s.subset(ci))
        tgt_parts.append(s.subset(ti))
    return pad_sets(ctx_parts, tgt_parts)


def iterate_set_batches(
    crowd: Crowd | Mapping[str, PreferenceSet],
    annotators_per_batch: int,
    context_size: int | tuple[int, int],
    *,
    generator: torch.Generator | None = None,
    shuffle: bool = True,
    disjoint: bool = True,
    max_target: int | None = None,
) -> Iterator[PreferenceSetBatch]:
    """One epoch over the crowd, ``annotators_per_batch`` whole sets at a time."""
    sets = list(crowd.sets.values() if isinstance(crowd, Crowd) else crowd.values())
    order = torch.randperm(len(sets), generator=generator).tolist() if shuffle else list(range(len(sets)))
    for start in range(0, len(sets), annotators_per_batch):
        chunk = [sets[i] for i in order[start : start + annotators_per_batch]]
        yield collate_sets(chunk, context_size, generator, disjoint=disjoint, max_target=max_target)

