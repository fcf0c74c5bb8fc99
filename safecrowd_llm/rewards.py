"""Task rewards by name: ``(prompt, completion) -> float`` callables referred to by dotted path in
configs (TRL's reward-function convention), e.g. ``safecrowd_llm.textworld.judges.helpfulness``."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__all__ = ["RewardFn", "load_reward"]

RewardFn = Callable[[Any, Any], float]


def load_reward(name: str) -> RewardFn:
    """Import ``package.module.attr`` (or ``package.module:attr``) and check it is callable."""
    module_name, sep, attr = name.partition(":") if ":" in name else name.rpartition(".")
    if not sep or not module_name or not attr:
        raise ValueError(f"reward {name!r}: expected a dotted path like 'package.module.function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"reward {name!r}: cannot import module {module_name!r} ({e})") from e
    fn = getattr(module, attr, None)
    if fn is None:
        raise ValueError(f"reward {name!r}: module {module_name!r} has no attribute {attr!r}")
    if not callable(fn):
        raise ValueError(f"reward {name!r}: {attr!r} is not callable")
    return fn
