"""PRISM (``HannahRoseKirk/prism-alignment``, ``conversations`` config) -> per-user preference pairs.

Public schema (``conversations.jsonl``, one conversation per line): ``conversation_id`` ("c0"...),
``user_id`` ("user0"...), ``conversation_type`` ("unguided" / "values guided" / "controversy
guided"), ``opening_prompt``, ``conversation_turns``, ``conversation_history``, plus feedback fields.
``conversation_history`` is a list of messages ``{"turn", "role": "user"|"model", "content"}``; model
messages also carry ``model_provider``, ``model_name``, ``score`` (1-100 slider), ``if_chosen`` and
``within_turn_id``. Turn 0 has up to four responses from different models; later turns two (A/B)
from the chosen model. The history of turn t is the user messages and the *chosen* responses of
earlier turns.

Every pair of responses to the same user message with different scores gives a row: annotator =
the real ``user_id``, the higher score is chosen. Rows are conversational (message lists).
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

import datasets

from ..records import DataError, Source, iter_records
from ._common import finish, need

__all__ = ["build_prism"]

HUB_NAME = "HannahRoseKirk/prism-alignment"


def _turns(where: str, history: list[Any]) -> dict[int, dict[str, Any]]:
    """Group the flat history into ``{turn: {"user": str, "models": [(msg, where)]}}``."""
    turns: dict[int, dict[str, Any]] = {}
    for j, msg in enumerate(history):
        at = f"{where}, conversation_history[{j}]"
        turn = need(at, msg, "turn", int)
        role = need(at, msg, "role", str)
        content = need(at, msg, "content", str)
        t = turns.setdefault(turn, {"user": None, "models": []})
        if role == "user":
            t["user"] = content
        elif role == "model":
            t["models"].append((msg, at))
        else:
            raise DataError(at, "role", f"must be 'user' or 'model', got {role!r}")
    return turns


def build_prism(
    source: Source = HUB_NAME,
    *,
    seed: int = 0,
    split: str = "train",
    opening_turn_only: bool = False,
    min_score_gap: float = 1,
) -> datasets.Dataset:
    """Build per-user preference rows from PRISM conversations.

    Args:
        source: ``conversations.jsonl``, a directory holding it, a ``Dataset``, or the hub name.
        seed: unused (the construction is deterministic); kept for a uniform builder signature.
        opening_turn_only: only the opening turn (four different models; no shared history).
        min_score_gap: skip pairs whose scores differ by less (1 drops only exact ties).

    Extra columns: ``conversation_id``, ``turn``, ``conversation_type``, ``chosen_score``,
    ``rejected_score``, ``chosen_model``, ``rejected_model``.
    """
    del seed
    rows: list[dict[str, Any]] = []
    for where, rec in iter_records(
        source, split=split, hub_config="conversations", prefer_file="conversations.jsonl"
    ):
        user = str(need(where, rec, "user_id", (str, int)))
        conv_id = str(need(where, rec, "conversation_id", (str, int)))
        ctype = need(where, rec, "conversation_type", str, optional=True) or ""
        turns = _turns(where, need(where, rec, "conversation_history", list))
        history: list[dict[str, str]] = []
        for t in sorted(turns):
            user_msg, models = turns[t]["user"], turns[t]["models"]
            if user_msg is None:
                raise DataError(
                    where, "conversation_history", f"turn {t} has model responses but no user message"
                )
            prompt = [*history, {"role": "user", "content": user_msg}]
            scored = []
            for msg, at in models:
                score = need(at, msg, "score", (int, float), optional=True)
                if score is not None and msg["content"].strip():
                    scored.append((msg, float(score)))
            for (m1, s1), (m2, s2) in combinations(scored, 2):
                if abs(s1 - s2) < min_score_gap or m1["content"] == m2["content"]:
                    continue
                (cm, cs), (rm, rs) = ((m1, s1), (m2, s2)) if s1 > s2 else ((m2, s2), (m1, s1))
                rows.append(
                    {
                        "annotator_id": user,
                        "prompt": [dict(m) for m in prompt],
                        "chosen": [{"role": "assistant", "content": cm["content"]}],
                        "rejected": [{"role": "assistant", "content": rm["content"]}],
                        "conversation_id": conv_id,
                        "turn": t,
                        "conversation_type": ctype,
                        "chosen_score": cs,
                        "rejected_score": rs,
                        "chosen_model": str(cm.get("model_name") or ""),
                        "rejected_model": str(rm.get("model_name") or ""),
                    }
                )
            if opening_turn_only:
                break
            chosen = [m for m, _ in models if m.get("if_chosen") is True]
            if not chosen:  # the conversation cannot continue without a chosen response
                break
            history = [*prompt, {"role": "assistant", "content": chosen[0]["content"]}]
    return finish(rows, "prism")
