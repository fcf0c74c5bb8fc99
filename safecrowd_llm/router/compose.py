"""The composed model: route each prompt to a skill, then answer with that skill's adapter."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..tiny_base import sample_completions
from .model import Router

__all__ = ["generate_routed"]


def generate_routed(
    router: Router, model: Any, tokenizer: Any, prompts: Sequence[str], **sampling: Any
) -> tuple[list[str], list[int]]:
    """Completions (prompt order) and the skill index that answered each.

    ``model`` is a ``PeftModel`` holding every skill of ``router.skill_names`` as a named adapter;
    prompts routed to the same skill are generated together. ``sampling`` goes to
    :func:`safecrowd_llm.tiny_base.sample_completions` (temperature, max_new_tokens, seed, ...).
    """
    picks = router.route(prompts)
    out: list[str] = [""] * len(prompts)
    for k in sorted(set(picks)):
        idx = [i for i, p in enumerate(picks) if p == k]
        model.set_adapter(router.skill_names[k])
        for i, text in zip(idx, sample_completions(model, tokenizer, [prompts[i] for i in idx], **sampling)):
            out[i] = text
    return out, picks
