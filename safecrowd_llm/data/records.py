"""Reading raw records from files, directories, ``datasets`` objects or the hub, with their location.

Why: every error about data must say *where* the bad record is. JSONL is parsed here line by line (not
by ``datasets``' Arrow reader, whose errors name neither the line nor the field), so each record comes
with a location such as ``data.jsonl, line 7``; other sources give ``data.parquet, row 3`` (0-based).
The builders and :func:`~safecrowd_llm.data.preferences.load_preferences` both read through here.
"""

from __future__ import annotations

import gzip
import json
import lzma
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import datasets

from ..core.atomic import write_jsonl

__all__ = ["DataError", "Source", "iter_records", "load_hub", "write_jsonl"]

Source = str | os.PathLike | datasets.Dataset | datasets.DatasetDict
_SUFFIXES = (".jsonl", ".json", ".parquet", ".jsonl.gz", ".jsonl.xz", ".json.gz")


class DataError(ValueError):
    """A malformed record: the message starts with its location, then the field, then the problem."""

    def __init__(self, where: str, field: str | None, problem: str) -> None:
        self.where, self.field, self.problem = where, field, problem
        super().__init__(f"{where}: field {field!r}: {problem}" if field else f"{where}: {problem}")


def _open(path: Path) -> IO[str]:
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    if path.name.endswith(".xz"):
        return lzma.open(path, "rt", encoding="utf-8")
    return path.open(encoding="utf-8")


def _iter_jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    with _open(path) as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}, line {n}"
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(where, None, f"malformed JSON ({e.msg} at column {e.colno})") from None


def _iter_json(path: Path, split: str) -> Iterator[tuple[str, Any]]:
    with _open(path) as fh:
        try:
            data = json.load(fh)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}, line {e.lineno}", None, f"malformed JSON ({e.msg})") from None
    if isinstance(data, Mapping):  # {"train": [...]} or {"data": [...]}
        key = split if split in data else "data" if "data" in data else None
        if key is None or not isinstance(data[key], list):
            raise DataError(
                str(path), None, f"expected a list of records or a {split!r}/'data' key holding one"
            )
        data = data[key]
    if not isinstance(data, list):
        raise DataError(str(path), None, f"expected a list of records, got {type(data).__name__}")
    for i, rec in enumerate(data):
        yield f"{path}, record {i}", rec


def _iter_dataset(ds: datasets.Dataset, label: str) -> Iterator[tuple[str, Any]]:
    for i, rec in enumerate(ds):
        yield f"{label}, row {i}", rec


def _data_files(directory: Path, split: str, prefer: str | None) -> list[Path]:
    if prefer and (directory / prefer).is_file():
        return [directory / prefer]
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.name.endswith(_SUFFIXES))
    if not files:
        files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name.endswith(_SUFFIXES))
    of_split = [p for p in files if p.name.split(".")[0].startswith(split) or p.parent.name == split]
    if not files:
        raise FileNotFoundError(f"{directory}: no {', '.join(_SUFFIXES)} files found")
    return of_split or files


def load_hub(
    source: Source, *, split: str = "train", hub_config: str | None = None
) -> datasets.Dataset | None:
    """``load_dataset(source, hub_config, split=split)`` if ``source`` looks like a hub name and is not a
    local path, else None. Needs the hub to be reachable; the error says so when it is not."""
    if not isinstance(source, str) or Path(source).exists():
        return None
    if source.count("/") != 1 or source.startswith((".", "/")) or source.endswith(_SUFFIXES):
        return None
    try:
        return datasets.load_dataset(source, hub_config, split=split)
    except Exception as e:  # offline, unknown name, gated: say what was tried
        raise FileNotFoundError(
            f"{source!r} is not a local path and loading it from the Hugging Face hub failed "
            f"({type(e).__name__}: {e}); pass a local file or directory instead"
        ) from e


def iter_records(
    source: Source,
    *,
    split: str = "train",
    hub_config: str | None = None,
    prefer_file: str | None = None,
) -> Iterator[tuple[str, Any]]:
    """Yield ``(location, record)`` for every record of ``source``.

    ``source`` is a JSONL / JSON / Parquet file (``.gz``/``.xz`` JSON allowed), a directory of them
    (``prefer_file`` if present, else the files whose name starts with ``split``, else all), a
    ``datasets.Dataset`` / ``DatasetDict`` (``split`` picked), a ``save_to_disk`` directory, or a hub
    name loaded with ``load_dataset(source, hub_config, split=split)`` (needs the hub to be reachable).
    """
    if isinstance(source, datasets.DatasetDict):
        if split not in source:
            raise KeyError(f"split {split!r} not in the DatasetDict (has {sorted(source)})")
        source = source[split]
    if isinstance(source, datasets.Dataset):
        yield from _iter_dataset(source, "dataset")
        return
    path = Path(source)
    if path.is_dir():
        if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
            yield from iter_records(datasets.load_from_disk(str(path)), split=split)
            return
        for f in _data_files(path, split, prefer_file):
            yield from iter_records(f, split=split)
        return
    if path.is_file():
        name = path.name
        if name.endswith((".jsonl", ".jsonl.gz", ".jsonl.xz")):
            yield from _iter_jsonl(path)
        elif name.endswith((".json", ".json.gz")):
            yield from _iter_json(path, split)
        elif name.endswith(".parquet"):
            yield from _iter_dataset(datasets.Dataset.from_parquet(str(path)), str(path))
        else:
            raise ValueError(f"{path}: unsupported file type (use one of {', '.join(_SUFFIXES)})")
        return
    ds = load_hub(source, split=split, hub_config=hub_config)
    if ds is not None:
        yield from _iter_dataset(ds, f"{source} [{split}]")
        return
    raise FileNotFoundError(f"{source}: no such file or directory")
