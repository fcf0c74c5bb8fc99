"""How much each method moves when the crowd changes: two ``results.json`` of ``recipes/evaluate.py`` (e.g. the
pipeline on a balanced and on a 10:1 crowd), compared in the paper's normalisation.

    python recipes/compare_crowds.py runs/pipeline_full_balanced/eval/results.json \\
        runs/pipeline_full_10to1/eval/results.json --labels balanced 10:1 --out runs/crowd_shift.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from safecrowd_llm.core.atomic import write_json, write_text
from safecrowd_llm.evaluate_methods import crowd_shift, crowd_shift_table


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("reference", help="results.json on the reference crowd (e.g. balanced)")
    p.add_argument("shifted", help="results.json on the changed crowd (e.g. 10:1)")
    p.add_argument("--labels", nargs=2, default=["balanced", "10:1"], help="names of the two crowds in the table")
    p.add_argument("--out", default=None, help="write the Markdown table here (and the numbers next to it as .json)")
    args = p.parse_args(argv)
    summaries = [json.loads(Path(f).read_text())["summary"] for f in (args.reference, args.shifted)]
    shift = crowd_shift(*summaries)
    table = crowd_shift_table(shift, tuple(args.labels))
    print(table)
    if args.out:
        write_text(table, args.out)
        write_json(shift, Path(args.out).with_suffix(".json"))
    return shift


if __name__ == "__main__":
    main()
