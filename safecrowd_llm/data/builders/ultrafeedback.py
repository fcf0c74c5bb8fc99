"""UltraFeedback fine-grained ratings (``openbmb/UltraFeedback``) -> one simulated annotator per attribute.

Public schema (one prompt per row): ``source``, ``instruction``, ``models``, ``completions``,
``correct_answers``, ``incorrect_answers``. Each completion has ``model``, ``response``,
``principle``, ``custom_system_prompt``, ``critique``, ``overall_score``, ``fine-grained_score`` and
``annotations`` with one entry per attribute — ``helpfulness``, ``honesty``,
``instruction_following``, ``truthfulness`` — holding ``Rating`` (a string "1"-"5", or "N/A") and
``Rationale`` (helpfulness/truthfulness also ``Type`` and ``Rationale For Rating``). The GitHub
release stores each attribute as a one-element list of that object; both shapes are read.

As in VPL's UF-P, each attribute is a simulated annotator who prefers the completion it rates
higher: every pair of completions of a prompt whose ratings on that attribute differ gives that
annotator a row. ``contested_only`` keeps a pair only if the attributes disagree on its order
(the pairs where users' hidden preferences matter). ``annotators_per_attribute`` > 1 splits each
attribute's prompts among several annotators with the same preference (a larger crowd of sets).
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

import datasets
import torch

from ..records import DataError, Source, iter_records
from ._common import assign_members, finish, need

__all__ = ["ATTRIBUTES", "build_ultrafeedback"]

HUB_NAME = "openbmb/UltraFeedback"
ATTRIBUTES = ("helpfulness", "honesty", "instruction_following", "truthfulness")


def _rating(where: str, completion: Any, attr: str) -> float | None:
    """The attribute's rating as a number, or None for "N/A" / missing."""
    ann = need(where, completion, "annotations", dict)
    entry = ann.get(attr)
    if isinstance(entry, list):  # GitHub release: a one-element list
        entry = entry[0] if entry else None
    if entry is None:
        return None
    if not isinstance(entry, dict) or "Rating" not in entry:
        raise DataError(where, f"annotations.{attr}", "must be an object with a 'Rating'")
    raw = entry["Rating"]
    if raw is None or str(raw).strip().upper() == "N/A":
        return None
    try:
        return float(raw)
    except ValueError:
        raise DataError(
            where, f"annotations.{attr}.Rating", f"must be a number or 'N/A', got {raw!r}"
        ) from None


def build_ultrafeedback(
    source: Source = HUB_NAME,
    *,
    seed: int = 0,
    split: str = "train",
    attributes: tuple[str, ...] = ATTRIBUTES,
    contested_only: bool = False,
    annotators_per_attribute: int = 1,
    max_prompts: int | None = None,
) -> datasets.Dataset:
    """Build UF-P-style rows: ``annotator_id`` is the attribute (``"helpfulness"``, or
    ``"helpfulness/3"`` with several annotators per attribute, prompts assigned with ``seed``).
    ``max_prompts`` keeps a seeded random subset of prompts: all 64k prompts give ~1.5M rows.

    Extra columns: ``attribute``, ``source``, ``prompt_index``, ``chosen_rating``, ``rejected_rating``,
    ``chosen_model``, ``rejected_model``.
    """
    unknown = set(attributes) - set(ATTRIBUTES)
    if unknown:
        raise ValueError(f"unknown attributes {sorted(unknown)}; UltraFeedback rates {ATTRIBUTES}")
    prompts: list[tuple[int, str, str, list[tuple[str, str, dict[str, float | None]]]]] = []
    for n, (where, rec) in enumerate(iter_records(source, split=split)):
        instruction = need(where, rec, "instruction", str)
        completions = []
        for j, c in enumerate(need(where, rec, "completions", list)):
            at = f"{where}, completions[{j}]"
            response = need(at, c, "response", str)
            ratings = {a: _rating(at, c, a) for a in attributes}
            completions.append((response, str(c.get("model") or ""), ratings))
        if instruction.strip():
            prompts.append((n, instruction, str(rec.get("source") or ""), completions))
    if max_prompts is not None and max_prompts < len(prompts):
        keep = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(seed))[:max_prompts]
        prompts = [prompts[i] for i in sorted(keep.tolist())]
    members = assign_members(len(prompts), annotators_per_attribute, seed)
    rows: list[dict[str, Any]] = []
    for (n, instruction, src, completions), member in zip(prompts, members):
        for (r1, m1, g1), (r2, m2, g2) in combinations(completions, 2):
            if r1 == r2 or not r1.strip() or not r2.strip():
                continue
            signs = {a: (g1[a] > g2[a]) - (g1[a] < g2[a]) for a in attributes if None not in (g1[a], g2[a])}
            signs = {a: s for a, s in signs.items() if s != 0}
            if contested_only and len(set(signs.values())) < 2:
                continue
            for attr, s in signs.items():
                (cr, cm, cg), (rr, rm, rg) = (
                    ((r1, m1, g1), (r2, m2, g2)) if s > 0 else ((r2, m2, g2), (r1, m1, g1))
                )
                rows.append(
                    {
                        "annotator_id": attr if annotators_per_attribute == 1 else f"{attr}/{member}",
                        "prompt": instruction,
                        "chosen": cr,
                        "rejected": rr,
                        "attribute": attr,
                        "source": src,
                        "prompt_index": n,
                        "chosen_rating": cg[attr],
                        "rejected_rating": rg[attr],
                        "chosen_model": cm,
                        "rejected_model": rm,
                    }
                )
    return finish(rows, "ultrafeedback")
