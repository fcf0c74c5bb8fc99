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
        raise ValueError(f"reward must be a dotted name like 'package.module.function', got {name!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"cannot import module {module_name!r} of reward {name!r}: {e}") from e
    fn = getattr(module, attr, None)
    if fn is None:
        raise ValueError(f"module {module_name!r} has no attribute {attr!r} (reward {name!r})")
    if not callable(fn):
        raise ValueError(f"reward {name!r} is a {type(fn).__name__}, not a callable (prompt, completion) -> float")
    return fn
