"""Loading a :class:`WorldConfig` from YAML or plain data, with errors that name the file and field.

Why separate: the dataclasses check each value; this module walks the nested YAML, rejects unknown
keys (typos such as ``flipprob`` must not be silently ignored), applies dotted overrides and prefixes
every error with the dotted path of the field (``crowd.flip_prob``) and the file it came from.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from .config import (
    DEFAULT_CONFIG_PATH,
    Archetype,
    ConfigError,
    CrowdConfig,
    PreferenceConfig,
    StyleConfig,
    Topic,
    WorldConfig,
)

__all__ = ["load_world_config", "world_config_from_dict"]


def world_config_from_dict(data: Mapping[str, Any]) -> WorldConfig:
    """Build a :class:`WorldConfig` from plain data (parsed YAML); errors name the dotted field path."""
    d = _as_mapping("", data)
    _no_unknown("", d, {f.name for f in fields(WorldConfig)})
    for key in ("templates", "topics", "style", "preferences"):
        if key not in d:
            raise ConfigError(key, "is required")
    topics = []
    for i, t in enumerate(_as_list("topics", d["topics"])):
        topics.append(_build(Topic, f"topics[{i}]", t))
    prefs = _as_mapping("preferences", d["preferences"])
    _no_unknown("preferences", prefs, {f.name for f in fields(PreferenceConfig)})
    archs = []
    for name, w in _as_mapping("preferences.archetypes", prefs.get("archetypes", {})).items():
        path = f"preferences.archetypes.{name}"
        archs.append(_build(Archetype, path, {"name": name, **_as_mapping(path, w or {})}))
    prefs_cfg = _build(PreferenceConfig, "preferences", {**prefs, "archetypes": archs})
    kwargs = {
        **{k: v for k, v in d.items() if k in ("templates", "seed")},
        "topics": topics,
        "style": _build(StyleConfig, "style", d["style"]),
        "preferences": prefs_cfg,
    }
    if "crowd" in d:
        kwargs["crowd"] = _build(CrowdConfig, "crowd", d["crowd"] or {})
    return _build(WorldConfig, "", kwargs)


def _as_mapping(path: str, v: Any) -> dict[str, Any]:
    if not isinstance(v, Mapping):
        raise ConfigError(path or "<root>", f"must be a mapping, got {type(v).__name__}")
    return dict(v)


def _as_list(path: str, v: Any) -> list[Any]:
    if not isinstance(v, list):
        raise ConfigError(path, f"must be a list, got {type(v).__name__}")
    return v


def _no_unknown(path: str, d: Mapping[str, Any], known: set[str]) -> None:
    for k in d:
        if k not in known:
            where = f"{path}.{k}" if path else str(k)
            raise ConfigError(where, f"unknown field; known fields: {sorted(known)}")


def _build(cls: type, path: str, data: Any) -> Any:
    """Instantiate a config dataclass, re-raising its errors with the full dotted field path."""
    d = _as_mapping(path, data)
    _no_unknown(path, d, {f.name for f in fields(cls)})
    try:
        return cls(**d)
    except ConfigError as e:
        raise ConfigError(f"{path}.{e.field}" if path else e.field, e.reason) from None
    except TypeError as e:  # missing required field
        raise ConfigError(path or "<root>", str(e)) from None


def load_world_config(
    path: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> WorldConfig:
    """Load a world from YAML (``None`` = the packaged ``default.yaml``; a bare name such as
    ``default.yaml`` that does not exist locally is looked up next to this module).

    ``overrides`` maps dotted field paths (``crowd.flip_prob``) to values applied before validation.
    Errors name the file and the field.
    """
    p = DEFAULT_CONFIG_PATH if path is None else Path(path)
    if not p.exists() and (DEFAULT_CONFIG_PATH.parent / p.name).exists() and p.parent == Path():
        p = DEFAULT_CONFIG_PATH.parent / p.name
    try:
        with open(p, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except FileNotFoundError:
        raise FileNotFoundError(f"world config file not found: {p}") from None
    except yaml.YAMLError as e:
        raise ConfigError("<root>", f"not valid YAML: {e}", source=str(p)) from None
    try:
        data = _as_mapping("", data)
        for key, value in (overrides or {}).items():
            node = data
            *parents, leaf = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise ConfigError(key, "cannot override inside a non-mapping field")
            node[leaf] = value
        return WorldConfig.from_dict(data)
    except ConfigError as e:
        raise ConfigError(e.field, e.reason, source=str(p)) from None
