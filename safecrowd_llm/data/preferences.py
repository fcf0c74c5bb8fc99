"""The exchange format: TRL's preference format plus ``annotator_id``; loading, validation, rendering.

A row is ``{"annotator_id", "prompt", "chosen", "rejected", ...}``. ``prompt``/``chosen``/``rejected`` are
either plain strings (TRL "standard" format) or message lists ``[{"role", "content"}, ...]`` (TRL
"conversational" format); one dataset uses one of the two. Extra columns are kept when they form a
table and are ignored by everything here. Errors are :class:`DataError`\\ s that name the file, the
line (JSONL) or record/row, and the field.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import datasets

from .records import DataError, Source, iter_records, load_hub

__all__ = [
    "REQUIRED_COLUMNS",
    "is_conversational",
    "load_preferences",
    "to_text",
    "validate_record",
]

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("annotator_id", "prompt", "chosen", "rejected")
_TEXT_FIELDS = ("prompt", "chosen", "rejected")


def is_conversational(value: Any) -> bool:
    """True for a message list (TRL conversational format), False for a plain string."""
    return isinstance(value, list | tuple) and all(isinstance(m, Mapping) for m in value)


def _check_text(where: str, field: str, value: Any) -> str:
    """Return ``"standard"`` or ``"conversational"``; raise :class:`DataError` on anything else."""
    if value is None:
        raise DataError(where, field, "is null")
    if isinstance(value, str):
        if not value.strip():
            raise DataError(where, field, "is empty")
        return "standard"
    if not isinstance(value, list | tuple):
        raise DataError(where, field, f"must be a string or a list of messages, got {type(value).__name__}")
    if not value:
        raise DataError(where, field, "is an empty message list")
    for j, m in enumerate(value):
        if not isinstance(m, Mapping):
            raise DataError(where, f"{field}[{j}]", f"message must be an object, got {type(m).__name__}")
        for key in ("role", "content"):
            if key not in m or m[key] is None:
                raise DataError(where, f"{field}[{j}]", f"message has no {key!r}")
            if not isinstance(m[key], str):
                raise DataError(
                    where, f"{field}[{j}].{key}", f"must be a string, got {type(m[key]).__name__}"
                )
    return "conversational"


def validate_record(where: str, rec: Any, kind: str | None = None) -> tuple[dict[str, Any], str]:
    """Check one exchange-format record; return it (``annotator_id`` as ``str``) and its format.

    ``kind`` is the format of earlier records; a record in the other format is an error.
    """
    if not isinstance(rec, Mapping):
        raise DataError(where, None, f"expected a JSON object (one preference row), got {type(rec).__name__}")
    for col in REQUIRED_COLUMNS:
        if col not in rec:
            raise DataError(where, col, f"missing column (required: {', '.join(REQUIRED_COLUMNS)})")
    aid = rec["annotator_id"]
    if isinstance(aid, bool) or not isinstance(aid, str | int) or not str(aid).strip():
        raise DataError(where, "annotator_id", f"must be a non-empty string or integer, got {aid!r}")
    kinds = {f: _check_text(where, f, rec[f]) for f in _TEXT_FIELDS}
    if len(set(kinds.values())) > 1:
        raise DataError(where, "prompt", f"mixes plain strings and message lists: {kinds}")
    if rec["chosen"] == rec["rejected"]:
        raise DataError(
            where, "chosen", "chosen and rejected are identical; a comparison needs two responses"
        )
    row_kind = kinds["prompt"]
    if kind is not None and row_kind != kind:
        raise DataError(
            where, "prompt", f"is {row_kind} but earlier rows are {kind}; use one format per dataset"
        )
    out = dict(rec)
    out["annotator_id"] = str(aid)
    return out, row_kind


def _table(rows: list[dict[str, Any]], label: str) -> datasets.Dataset:
    try:
        return datasets.Dataset.from_list(rows)
    except Exception as e:  # extra columns with clashing types: keep only the contract's columns
        logger.warning(
            "%s: extra columns do not form a table (%s); keeping only %s", label, e, REQUIRED_COLUMNS
        )
        return datasets.Dataset.from_list([{c: r[c] for c in REQUIRED_COLUMNS} for r in rows])


def load_preferences(source: Source, *, split: str = "train", min_pairs: int = 1) -> datasets.Dataset:
    """Load and validate exchange-format preference data.

    ``source``: a JSONL / JSON / Parquet file, a directory of them, a ``datasets.Dataset`` /
    ``DatasetDict``, or a hub name (``load_dataset``; only when the hub is reachable). Annotators with
    fewer than ``min_pairs`` rows are dropped (see :func:`~safecrowd_llm.data.grouping.filter_min_pairs`).
    """
    hub = load_hub(source, split=split)
    if hub is not None:
        source = hub
    if isinstance(source, datasets.DatasetDict):
        source = source[split]
    table = source if isinstance(source, datasets.Dataset) else None
    rows: list[dict[str, Any]] = []
    kind = None
    for where, rec in iter_records(source, split=split):
        row, kind = validate_record(where, rec, kind)
        if table is None:
            rows.append(row)
    if len(table if table is not None else rows) == 0:
        raise DataError(str(source), None, "contains no preference rows")
    if table is None:
        ds = _table(rows, str(source))
    elif table.features["annotator_id"] != datasets.Value("string"):
        ds = table.cast_column("annotator_id", datasets.Value("string"))
    else:
        ds = table
    if min_pairs > 1:
        from .grouping import filter_min_pairs

        ds = filter_min_pairs(ds, min_pairs)
    return ds


def _as_messages(value: str | Sequence[Mapping[str, str]], role: str) -> list[dict[str, str]]:
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    return [{"role": m["role"], "content": m["content"]} for m in value]


def to_text(prompt: Any, response: Any, tokenizer: Any = None, *, sep: str = "\n") -> str:
    """Render a (prompt, response) pair as one text, e.g. to embed prompt+chosen and prompt+rejected.

    Conversational data with a ``tokenizer`` that has a chat template goes through
    ``tokenizer.apply_chat_template(messages, tokenize=False)``; conversational data without one is
    rendered as ``role: content`` lines; plain strings are concatenated as ``prompt + sep + response``.
    """
    if is_conversational(prompt) or is_conversational(response):
        messages = _as_messages(prompt, "user") + _as_messages(response, "assistant")
        if tokenizer is not None and getattr(tokenizer, "chat_template", None):
            return tokenizer.apply_chat_template(messages, tokenize=False)
        return "\n".join(f"{m['role']}: {m['content']}" for m in messages)
    return f"{prompt}{sep}{response}"
