"""Sampling a crowd's preference rows from the text world, summarising them, and writing them out.

Rows use the project's exchange format — TRL's preference format plus ``annotator_id`` — with extra
columns loaders ignore: ``archetype`` (the hidden user type z, for probes), ``hazardous``,
``chosen_unsafe`` / ``rejected_unsafe`` (explicit safety labels, only for the Safe-RLHF-style baseline
and for analysis; the method never reads them) and ``topic``.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..core.atomic import write_json, write_jsonl, write_text
from .judges import _text, parse_response
from .world import Prompt, ResponseSpec, TextWorld

__all__ = [
    "EXCHANGE_COLUMNS",
    "assign_archetypes",
    "noiseless_label",
    "read_jsonl",
    "sample_crowd",
    "sft_rows",
    "summarize_crowd",
    "to_dataset",
    "write_json",
    "write_jsonl",
    "write_text",
]

EXCHANGE_COLUMNS = ("annotator_id", "prompt", "chosen", "rejected")


def assign_archetypes(n: int, proportions: dict[str, float], rng: random.Random) -> list[str]:
    """Archetype of each of ``n`` annotators: counts by largest remainder (so 10:1 of 64 is 58:6),
    then shuffled so that annotator ids reveal nothing about their type."""
    total = sum(proportions.values())
    quotas = {k: n * w / total for k, w in proportions.items()}
    counts = {k: math.floor(q) for k, q in quotas.items()}
    by_remainder = sorted(quotas, key=lambda k: quotas[k] - counts[k], reverse=True)
    for k in by_remainder[: n - sum(counts.values())]:
        counts[k] += 1
    names = [k for k in proportions for _ in range(counts[k])]
    rng.shuffle(names)
    return names


def _bt_prob(diff: float, temperature: float) -> float:
    """P(first preferred) under Bradley–Terry on a utility difference; T = 0 gives argmax (ties 0.5)."""
    if temperature == 0:
        return 1.0 if diff > 0 else 0.0 if diff < 0 else 0.5
    x = max(-60.0, min(60.0, diff / temperature))
    return 1.0 / (1.0 + math.exp(-x))


def _wrap(text: str, role: str, conversational: bool) -> Any:
    return [{"role": role, "content": text}] if conversational else text


def sample_crowd(
    world: TextWorld,
    prompts: Sequence[Prompt] | None = None,
    seed: int | None = None,
    conversational: bool | None = None,
) -> list[dict[str, Any]]:
    """Preference rows of the configured crowd (deterministic given the seed).

    Each annotator labels ``pairs_per_annotator`` pairs: a prompt drawn from ``prompts`` (default:
    the train split), two distinct behaviours drawn uniformly, chosen by Bradley–Terry on the
    annotator's utility at the configured temperature, then flipped with ``flip_prob``.
    """
    cfg = world.config.crowd
    conv = cfg.conversational if conversational is None else conversational
    rng = random.Random(f"crowd:{world.config.seed if seed is None else seed}")
    pool = list(world.split_prompts()[0] if prompts is None else prompts)
    if not pool:
        raise ValueError("no prompts to sample pairs from")
    archetypes = assign_archetypes(cfg.num_annotators, world.config.proportions, rng)
    rows: list[dict[str, Any]] = []
    for i, arch in enumerate(archetypes):
        annotator = f"annotator_{i:04d}"
        for _ in range(cfg.pairs_per_annotator):
            p = rng.choice(pool)
            a, b = rng.sample(world.specs, 2)
            diff = world.utility(arch, p.hazardous, a) - world.utility(arch, p.hazardous, b)
            pick_a = rng.random() < _bt_prob(diff, cfg.temperature)
            if rng.random() < cfg.flip_prob:
                pick_a = not pick_a
            chosen, rejected = (a, b) if pick_a else (b, a)
            rows.append(
                {
                    "annotator_id": annotator,
                    "prompt": _wrap(p.text, "user", conv),
                    "chosen": _wrap(world.render(p, chosen), "assistant", conv),
                    "rejected": _wrap(world.render(p, rejected), "assistant", conv),
                    "archetype": arch,
                    "hazardous": p.hazardous,
                    "chosen_unsafe": chosen.is_unsafe(p.hazardous),
                    "rejected_unsafe": rejected.is_unsafe(p.hazardous),
                    "topic": p.noun,
                }
            )
    return rows


def sft_rows(
    world: TextWorld, prompts: Iterable[Prompt] | None = None, conversational: bool = False
) -> list[dict[str, Any]]:
    """SFT data in TRL's prompt-completion format: every behaviour on every prompt."""
    return [
        {"prompt": _wrap(p, "user", conversational), "completion": _wrap(c, "assistant", conversational)}
        for p, c in world.sft_examples(prompts)
    ]


def summarize_crowd(rows: Sequence[dict[str, Any]], world: TextWorld) -> dict[str, Any]:
    """What a crowd looks like: sizes, archetype mix, hazard fractions, and label agreement.

    ``agreement[true][pref]`` = among rows labelled by annotators of archetype ``true``, the fraction
    whose chosen response archetype ``pref`` noiselessly prefers (pairs it rates equal are skipped).
    The diagonal measures label noise; off-diagonal entries how distinguishable the archetypes are.
    Responses are read back with the parser, so this also checks the rows are well-formed.
    """
    names = [a.name for a in world.archetypes]
    annotators: dict[str, set[str]] = defaultdict(set)
    agree: dict[str, Counter] = {n: Counter() for n in names}
    total: dict[str, Counter] = {n: Counter() for n in names}
    safety_pairs = unsafe_chosen = 0
    for r in rows:
        annotators[r["archetype"]].add(r["annotator_id"])
        c, j = parse_response(r["chosen"], None, world), parse_response(r["rejected"], None, world)
        if c is None or j is None:
            raise ValueError(f"unparseable response in row of {r['annotator_id']}: {_text(r['chosen'])!r}")
        if r["chosen_unsafe"] != r["rejected_unsafe"]:
            safety_pairs += 1
            unsafe_chosen += bool(r["chosen_unsafe"])
        for pref in names:
            d = world.utility(pref, r["hazardous"], c.spec) - world.utility(pref, r["hazardous"], j.spec)
            if d != 0:
                total[r["archetype"]][pref] += 1
                agree[r["archetype"]][pref] += d > 0
    n = len(rows)
    return {
        "rows": n,
        "annotators": sum(len(v) for v in annotators.values()),
        "annotators_per_archetype": {k: len(annotators.get(k, ())) for k in names},
        "pairs_per_annotator": world.config.crowd.pairs_per_annotator,
        "hazardous_row_fraction": sum(bool(r["hazardous"]) for r in rows) / max(n, 1),
        "safety_pair_fraction": safety_pairs / max(n, 1),
        "unsafe_chosen_in_safety_pairs": unsafe_chosen / max(safety_pairs, 1),
        "agreement": {
            t: {p: (agree[t][p] / total[t][p] if total[t][p] else None) for p in names}
            for t in names
            if annotators.get(t)
        },
        "temperature": world.config.crowd.temperature,
        "flip_prob": world.config.crowd.flip_prob,
    }


def noiseless_label(
    world: TextWorld, archetype: str, hazardous: bool, a: ResponseSpec, b: ResponseSpec
) -> int:
    """1 if ``archetype`` strictly prefers a, 0 if b, -1 on a tie (helper for tests and analysis)."""
    d = world.utility(archetype, hazardous, a) - world.utility(archetype, hazardous, b)
    return 1 if d > 0 else 0 if d < 0 else -1


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read JSON lines (blank lines skipped); errors name the file and line."""
    rows = []
    with open(path, encoding="utf-8") as fh:
        for i, line in enumerate(fh, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{i}: not valid JSON: {e}") from None
    return rows


def to_dataset(rows: Sequence[dict[str, Any]]) -> Any:
    """The rows as a ``datasets.Dataset`` (``datasets`` is imported only here)."""
    try:
        from datasets import Dataset
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("to_dataset needs the 'datasets' package: pip install 'safecrowd-llm[llm]'") from e
    return Dataset.from_list(list(rows))
