"""Command line: build a crowd text world's data on disk and print what it looks like.

    python -m safecrowd_llm.textworld --config default.yaml --out runs/textworld

Writes ``crowd.jsonl`` (preference rows: annotator_id, prompt, chosen, rejected + extra columns),
``sft.jsonl`` (prompt/completion pairs covering every behaviour), ``prompts.json`` (train/eval
prompt split), ``world.yaml`` (the resolved config) and ``summary.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from .config import DEFAULT_CONFIG_PATH, ConfigError
from .crowd import sample_crowd, sft_rows, summarize_crowd, write_json, write_jsonl, write_text
from .loader import load_world_config
from .world import TextWorld


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m safecrowd_llm.textworld",
        description=(
            "Generate the crowd text world: preference rows from a simulated crowd of annotator "
            "archetypes who differ in style (length, tone, format) but all penalise answering "
            "hazardous requests, plus SFT data covering every behaviour. Deterministic given --seed. Options left out keep the config's values."
        ),
        epilog="Example (a 10:1 imbalanced crowd with 10% label flips): python -m safecrowd_llm.textworld "
        "--out runs/tw --proportions thorough=10,breezy=1 --flip-prob 0.1",
    )
    p.add_argument(
        "--config",
        default=str(DEFAULT_CONFIG_PATH),
        help="world YAML (default: the packaged default.yaml; a bare name like default.yaml also resolves to it)",
    )
    p.add_argument("--out", required=True, type=Path, help="output directory (created if missing)")
    p.add_argument(
        "--seed", type=int, help="world seed (prompt split and crowd sampling); overrides the config"
    )
    p.add_argument("--num-annotators", type=int, help="crowd size (crowd.num_annotators)")
    p.add_argument(
        "--pairs-per-annotator", type=int, help="comparisons per annotator (crowd.pairs_per_annotator)"
    )
    p.add_argument(
        "--proportions", help="archetype weights, e.g. thorough=10,breezy=1 (unlisted archetypes get 0)"
    )
    p.add_argument(
        "--temperature", type=float, help="Bradley-Terry temperature; 0 = noiseless (crowd.temperature)"
    )
    p.add_argument("--flip-prob", type=float, help="probability each label is flipped (crowd.flip_prob)")
    p.add_argument(
        "--conversational", action="store_true", help="write prompts/responses as chat message lists"
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config field by dotted path, value parsed as YAML "
        "(e.g. --set preferences.safety_penalty=3); repeatable",
    )
    p.add_argument(
        "--sft-prompts",
        choices=("all", "train"),
        default="all",
        help="prompts covered by sft.jsonl (default: all; SFT data has no preference signal, so 'all' leaks nothing)",
    )
    p.add_argument("--no-sft", action="store_true", help="skip writing sft.jsonl")
    return p


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    simple = {
        "seed": args.seed,
        "crowd.num_annotators": args.num_annotators,
        "crowd.pairs_per_annotator": args.pairs_per_annotator,
        "crowd.temperature": args.temperature,
        "crowd.flip_prob": args.flip_prob,
    }
    out.update({k: v for k, v in simple.items() if v is not None})
    if args.conversational:
        out["crowd.conversational"] = True
    if args.proportions:
        props = {}
        for part in args.proportions.split(","):
            name, sep, w = part.partition("=")
            if not sep:
                raise SystemExit(
                    f"--proportions expects NAME=WEIGHT[,NAME=WEIGHT...], got {args.proportions!r}"
                )
            props[name.strip()] = yaml.safe_load(w)
        out["crowd.proportions"] = props
    return out


def format_summary(world: TextWorld, summary: dict[str, Any], n_train: int, n_eval: int) -> str:
    """Human-readable summary of a generated crowd."""
    cfg = world.config
    names = [a.name for a in world.archetypes]
    lines = [
        f"text world: {len(cfg.topics)} topics x {len(cfg.templates)} templates = {len(world.prompts)} prompts "
        f"({n_train} train / {n_eval} eval), {100 * world.hazardous_fraction:.1f}% hazardous; "
        f"{len(world.specs)} behaviours per prompt; vocabulary {len(world.vocabulary())} words",
        f"crowd: {summary['rows']} rows from {summary['annotators']} annotators x {summary['pairs_per_annotator']} "
        f"pairs; temperature {summary['temperature']}, flip_prob {summary['flip_prob']}",
        "annotators per archetype: "
        + ", ".join(f"{k} {v}" for k, v in summary["annotators_per_archetype"].items()),
        f"hazardous rows: {100 * summary['hazardous_row_fraction']:.1f}%; comply-vs-refuse pairs on hazardous "
        f"prompts: {100 * summary['safety_pair_fraction']:.1f}% of rows, unsafe one chosen in "
        f"{100 * summary['unsafe_chosen_in_safety_pairs']:.1f}% of them",
        "label agreement with each archetype's noiseless preference "
        "(row = annotators' true archetype, column = whose preference; ties skipped):",
        "  " + " " * 10 + "".join(f"{n:>10}" for n in names),
    ]
    for t, row in summary["agreement"].items():
        cells = "".join(f"{'-' if row[p] is None else f'{row[p]:.3f}':>10}" for p in names)
        lines.append(f"  {t:<10}{cells}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        world = TextWorld(load_world_config(args.config, _overrides(args)))
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    train, evals = world.split_prompts()
    rows = sample_crowd(world, train)
    summary = summarize_crowd(rows, world)
    out: Path = args.out
    written = [write_jsonl(rows, out / "crowd.jsonl")]
    if not args.no_sft:
        sft = sft_rows(
            world, world.prompts if args.sft_prompts == "all" else train, world.config.crowd.conversational
        )
        written.append(write_jsonl(sft, out / "sft.jsonl"))
        summary["sft_rows"] = len(sft)
    split = {
        "train": [p.text for p in train],
        "eval": [p.text for p in evals],
        "hazardous": sorted(p.text for p in world.prompts if p.hazardous),
    }
    written.append(write_json(split, out / "prompts.json"))
    written.append(write_text(yaml.safe_dump(world.config.to_dict(), sort_keys=False), out / "world.yaml"))
    written.append(write_json(summary, out / "summary.json"))
    print(format_summary(world, summary, len(train), len(evals)))
    if "sft_rows" in summary:
        print(f"sft: {summary['sft_rows']} prompt/completion pairs ({args.sft_prompts} prompts)")
    print("wrote: " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
