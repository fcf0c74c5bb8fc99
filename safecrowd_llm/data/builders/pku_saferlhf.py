"""PKU-SafeRLHF (``PKU-Alignment/PKU-SafeRLHF``) -> simulated annotators sharing one safety principle.

Public schema (one pair per row, ``data/<model>/{train,test}.jsonl``): ``prompt``, ``response_0``,
``response_1``, ``prompt_source``, ``response_{0,1}_source``, ``is_response_{0,1}_safe`` (bool),
``response_{0,1}_harm_category`` (19 named categories -> bool), ``response_{0,1}_severity_level``
(0-3), ``better_response_id`` (more helpful) and ``safer_response_id`` (0 or 1), ``response_{0,1}_sha256``.
The v0 release lacks the harm-category and severity fields; they are optional here.

The crowd: every archetype labels every row, and all of them follow the *shared principle* — when
the two responses differ in safety, or both are unsafe, the one at ``safer_response_id`` is chosen
(rows whose ``safer_response_id`` points at the unsafe one of a safe/unsafe pair are dropped as
inconsistent). They differ only where both responses are safe:

- ``helpful``: the more helpful one (``better_response_id``, the dataset's human label);
- ``concise``: the shorter one (fewer words; equal lengths skipped);
- ``thorough``: the longer one.

The principle is never labelled as such (a ``rule`` column records it for analysis only) and label
noise (``flip_prob``) only flips the style choices, so the safe-over-unsafe rule holds for everyone.
"""

from __future__ import annotations

import logging
from typing import Any

import datasets
import torch

from ..records import DataError, Source, iter_records
from ._common import assign_members, finish, need

__all__ = ["ARCHETYPES", "build_pku_saferlhf"]

logger = logging.getLogger(__name__)
HUB_NAME = "PKU-Alignment/PKU-SafeRLHF"
ARCHETYPES = ("helpful", "concise", "thorough")


def _style_choice(archetype: str, r0: str, r1: str, better: int) -> int | None:
    """Index of the response ``archetype`` prefers among two safe ones (None: indifferent)."""
    if archetype == "helpful":
        return better
    n0, n1 = len(r0.split()), len(r1.split())
    if n0 == n1:
        return None
    shorter = 0 if n0 < n1 else 1
    return shorter if archetype == "concise" else 1 - shorter


def build_pku_saferlhf(
    source: Source = HUB_NAME,
    *,
    seed: int = 0,
    split: str = "train",
    archetypes: tuple[str, ...] = ARCHETYPES,
    annotators_per_archetype: int = 1,
    flip_prob: float = 0.0,
) -> datasets.Dataset:
    """Build rows for the archetypes above; ``annotator_id`` is the archetype (``"concise/2"`` with
    several annotators per archetype, rows assigned with ``seed``; ``flip_prob`` noise uses it too).

    Extra columns: ``archetype``, ``rule`` (``"safety"`` or ``"style"``), ``source_row``,
    ``chosen_unsafe``, ``rejected_unsafe``, ``chosen_severity``, ``rejected_severity`` (None if absent).
    """
    unknown = set(archetypes) - set(ARCHETYPES)
    if unknown:
        raise ValueError(f"unknown archetypes {sorted(unknown)}; known: {ARCHETYPES}")
    if not 0.0 <= flip_prob < 0.5:
        raise ValueError(f"flip_prob must be in [0, 0.5), got {flip_prob}")
    pairs: list[dict[str, Any]] = []
    inconsistent = 0
    for n, (where, rec) in enumerate(iter_records(source, split=split)):
        prompt = need(where, rec, "prompt", str)
        resp = [need(where, rec, f"response_{k}", str) for k in (0, 1)]
        safe = [need(where, rec, f"is_response_{k}_safe", bool) for k in (0, 1)]
        sev = [need(where, rec, f"response_{k}_severity_level", int, optional=True) for k in (0, 1)]
        safer = need(where, rec, "safer_response_id", int)
        better = need(where, rec, "better_response_id", int)
        for field, v in (("safer_response_id", safer), ("better_response_id", better)):
            if v not in (0, 1):
                raise DataError(where, field, f"must be 0 or 1, got {v}")
        if not prompt.strip() or resp[0] == resp[1] or not all(r.strip() for r in resp):
            continue
        if safe[0] != safe[1] and not safe[safer]:
            inconsistent += 1
            continue
        pairs.append(
            {
                "n": n,
                "prompt": prompt,
                "resp": resp,
                "safe": safe,
                "sev": sev,
                "safer": safer,
                "better": better,
            }
        )
    if inconsistent:
        logger.warning(
            "pku_saferlhf: dropped %d rows whose safer_response_id is the unsafe response", inconsistent
        )
    gen = torch.Generator().manual_seed(seed)
    rows: list[dict[str, Any]] = []
    for a, archetype in enumerate(archetypes):
        members = assign_members(len(pairs), annotators_per_archetype, seed + 1000 * (a + 1))
        flips = (torch.rand(len(pairs), generator=gen) < flip_prob).tolist()
        for p, member, flip in zip(pairs, members, flips):
            r0, r1 = p["resp"]
            if p["safe"][0] and p["safe"][1]:
                rule, pick = "style", _style_choice(archetype, r0, r1, p["better"])
                if pick is None:
                    continue
                pick = 1 - pick if flip else pick
            else:
                rule, pick = "safety", p["safer"]
            c, r = pick, 1 - pick
            rows.append(
                {
                    "annotator_id": archetype if annotators_per_archetype == 1 else f"{archetype}/{member}",
                    "prompt": p["prompt"],
                    "chosen": p["resp"][c],
                    "rejected": p["resp"][r],
                    "archetype": archetype,
                    "rule": rule,
                    "source_row": p["n"],
                    "chosen_unsafe": not p["safe"][c],
                    "rejected_unsafe": not p["safe"][r],
                    "chosen_severity": p["sev"][c],
                    "rejected_severity": p["sev"][r],
                }
            )
    return finish(rows, "pku_saferlhf")
