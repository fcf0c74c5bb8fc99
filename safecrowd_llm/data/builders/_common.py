"""Helpers shared by the dataset builders: typed field access with located errors, member assignment."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import datasets
import torch

from ..preferences import validate_record
from ..records import DataError

__all__ = ["assign_members", "finish", "need"]


def need(where: str, rec: Any, field: str, types: type | tuple[type, ...], *, optional: bool = False) -> Any:
    """``rec[field]`` checked against ``types``; a :class:`DataError` naming location and field if not."""
    if not isinstance(rec, Mapping):
        raise DataError(where, None, f"expected a JSON object, got {type(rec).__name__}")
    if field not in rec or rec[field] is None:
        if optional:
            return None
        raise DataError(where, field, "missing" if field not in rec else "is null")
    value = rec[field]
    bad_bool = isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,))
    if not isinstance(value, types) or bad_bool:
        names = "/".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
        raise DataError(where, field, f"must be {names}, got {type(value).__name__} {value!r:.40}")
    return value


def assign_members(n: int, k: int, seed: int) -> list[int]:
    """Assign ``n`` items to ``k`` members of an archetype, balanced and seeded (member = perm % k)."""
    if k < 1:
        raise ValueError(f"need at least one annotator per archetype, got {k}")
    return (torch.randperm(n, generator=torch.Generator().manual_seed(seed)) % k).tolist()


def finish(rows: list[dict[str, Any]], name: str) -> datasets.Dataset:
    """Validate built rows against the exchange format (a builder bug must not write bad data)."""
    if not rows:
        raise ValueError(f"{name}: the source produced no preference pairs")
    kind = None
    for i, r in enumerate(rows):
        _, kind = validate_record(f"{name} output, row {i}", r, kind)
    return datasets.Dataset.from_list(rows)
