"""Task rewards by name: ``(prompt, completion) -> float`` callables referred to by dotted path in
configs (TRL's reward-function convention), e.g. ``safecrowd_llm.textworld.judges.helpfulness``."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["BatchRewardFn", "RewardFn", "as_text", "as_trl_reward", "load_reward"]

RewardFn = Callable[[Any, Any], float]
BatchRewardFn = Callable[..., list[float]]


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


def as_text(x: Any) -> str:
    """A TRL prompt/completion as text: strings pass through, a message list gives its last message's content
    (task rewards take ``(prompt: str, completion: str)``)."""
    if isinstance(x, str):
        return x
    if isinstance(x, dict):
        return str(x.get("content", ""))
    if isinstance(x, Sequence) and x:
        return as_text(x[-1])
    return ""


def as_trl_reward(fn: RewardFn, name: str | None = None) -> BatchRewardFn:
    """Adapt ``(prompt: str, completion: str) -> float`` to TRL's ``f(prompts, completions, **kw) -> list``."""

    def reward(prompts: Sequence[Any], completions: Sequence[Any], **_: Any) -> list[float]:
        return [float(fn(as_text(p), as_text(c))) for p, c in zip(prompts, completions, strict=True)]

    reward.__name__ = name or getattr(fn, "__name__", "reward")
    return reward
