"""``python -m safecrowd_llm.data``: build exchange-format preference files from public datasets.

    python -m safecrowd_llm.data build pku_saferlhf --source path/to/train.jsonl --out crowd.jsonl
    python -m safecrowd_llm.data summary crowd.jsonl

``--source`` is a local file/directory in the dataset's public schema or its hub name (the default;
needs the hub). The output is written atomically (temporary file, then rename).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import datasets

from .builders import BUILDERS
from .builders.pku_saferlhf import HUB_NAME as PKU_HUB
from .builders.prism import HUB_NAME as PRISM_HUB
from .builders.ultrafeedback import HUB_NAME as UF_HUB
from .grouping import filter_min_pairs, summarize
from .preferences import load_preferences
from .records import write_jsonl

HUB_NAMES = {"prism": PRISM_HUB, "ultrafeedback": UF_HUB, "pku_saferlhf": PKU_HUB}


def _summary_line(ds: datasets.Dataset) -> str:
    s = summarize(ds)
    return (
        f"{s['annotators']} annotators, {s['pairs']} pairs; pairs per annotator "
        f"min {s['pairs_min']} / median {s['pairs_median']:g} / max {s['pairs_max']}"
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m safecrowd_llm.data",
        description="Build and check per-annotator preference files (TRL preference format + annotator_id).",
    )
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser(
        "build",
        help="convert a public dataset into the exchange format (annotator_id, prompt, chosen, rejected)",
        description="Convert a public preference dataset into per-annotator rows (TRL format + annotator_id).",
    )
    b.add_argument("name", choices=sorted(BUILDERS), help="which dataset's schema the source follows")
    b.add_argument(
        "--source",
        help="local JSONL/JSON/Parquet file or directory in the dataset's public schema, or a hub name "
        f"(default: the dataset's hub name: {', '.join(f'{k}={v}' for k, v in HUB_NAMES.items())})",
    )
    b.add_argument("--out", required=True, help="output JSONL file (written atomically)")
    b.add_argument(
        "--split", default="train", help="split to read from a hub dataset or directory (default: train)"
    )
    b.add_argument(
        "--seed", type=int, default=0, help="seed for annotator assignment and label noise (default: 0)"
    )
    b.add_argument(
        "--annotators-per-group",
        type=int,
        default=1,
        help="ultrafeedback/pku_saferlhf: split each simulated annotator's prompts among N annotators (default: 1)",
    )
    b.add_argument(
        "--max-prompts",
        type=int,
        help="ultrafeedback: keep a seeded random subset of this many prompts (all 64k give ~1.5M rows)",
    )
    b.add_argument("--min-pairs", type=int, default=1, help="drop annotators with fewer pairs (default: 1)")
    s = sub.add_parser("summary", help="validate an exchange-format file and print its per-annotator counts")
    s.add_argument("path", help="exchange-format JSONL/JSON/Parquet file or directory")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return _run(args)
    except (OSError, ValueError, KeyError) as e:  # bad data or source: one clear line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    if args.command == "summary":
        print(f"{args.path}: {_summary_line(load_preferences(args.path))}")
        return 0
    kwargs = {"seed": args.seed, "split": args.split}
    if args.annotators_per_group != 1:
        key = {"ultrafeedback": "annotators_per_attribute", "pku_saferlhf": "annotators_per_archetype"}.get(
            args.name
        )
        if key is None:
            print(
                f"error: --annotators-per-group does not apply to {args.name} (real annotators)",
                file=sys.stderr,
            )
            return 2
        kwargs[key] = args.annotators_per_group
    if args.max_prompts is not None:
        if args.name != "ultrafeedback":
            print("error: --max-prompts applies to ultrafeedback only", file=sys.stderr)
            return 2
        kwargs["max_prompts"] = args.max_prompts
    ds = BUILDERS[args.name](args.source or HUB_NAMES[args.name], **kwargs)
    if args.min_pairs > 1:
        ds = filter_min_pairs(ds, args.min_pairs)
    path = write_jsonl(ds, args.out)
    print(f"wrote {path}: {_summary_line(ds)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
