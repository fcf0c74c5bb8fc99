"""Sweep Safe-CPL settings on the crowd text world and score every run's skills exactly.

    python benchmarks/textworld_cpl_sweep.py --out runs/sweep --set gamma=1,0.9 --set lam=0.5,1 \\
        --max_steps 200 --parallel 2

Each combination of ``--set`` values (a Cartesian product) trains ``recipes/train_skills.py`` on
``--config`` in its own process (one CPU thread each, or ``--device cuda``), then every run's skills are
scored with :func:`safecrowd_llm.evaluate_skills.exact_skill_report` on the world's held-out prompts:
refusal among well-formed answers on hazardous/benign prompts (exact probabilities, no sampling),
well-formed mass, the share of all hazardous text that is a well-formed refusal, each archetype's
favourite skill; ``--top-p`` scores nucleus sampling instead of pure sampling. Finished runs are skipped
(resumable). Writes ``<out>/sweep.json`` and ``<out>/sweep.md`` (``sweep_top_p<P>.*`` with ``--top-p``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "recipes/textworld_cpl.yaml"), help="base recipe YAML")
    p.add_argument("--out", required=True, help="sweep directory (one sub-directory per run)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=V1,V2", help="values to sweep (repeatable)")
    p.add_argument("--max_steps", type=int, default=None, help="override max_steps for every run")
    p.add_argument("--parallel", type=int, default=1, help="runs trained at once")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--world", default=None, help="text-world YAML (default: the packaged world)")
    p.add_argument("--top-p", type=float, default=1.0,
                   help="score nucleus sampling exactly (cached as exact_eval_top_p<P>.json; 1 = pure sampling)")
    p.add_argument("--score-only", action="store_true",
                   help="score the finished runs, train nothing (without --set: every run found under --out)")
    p.add_argument("--train-only", action="store_true", help="train, score nothing (e.g. on a GPU box; score later)")
    return p.parse_args(argv)


def grid(sets: list[str]) -> list[dict[str, str]]:
    keys, values = [], []
    for item in sets:
        key, _, vals = item.partition("=")
        if not vals:
            raise SystemExit(f"--set {item!r}: expected KEY=V1,V2,...")
        keys.append(key)
        values.append(vals.split(","))
    return [dict(zip(keys, combo)) for combo in itertools.product(*values)]


def run_name(overrides: dict[str, str]) -> str:
    return "_".join(f"{k}{v}" for k, v in overrides.items()) or "default"


def train(args: argparse.Namespace, overrides: dict[str, str], out: Path) -> float:
    if (out / "skills" / "skills.json").exists():
        return 0.0
    cmd = [sys.executable, str(ROOT / "recipes/train_skills.py"), "--config", args.config, "--output_dir", str(out)]
    cmd += ["--save_strategy", "no", "--report_to", "none"]
    if args.max_steps:
        cmd += ["--max_steps", str(args.max_steps)]
    if args.device == "cuda":
        cmd += ["--use_cpu", "false"]
    for k, v in overrides.items():
        cmd += [f"--{k}", v]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with open(out / "train.log", "w") as log:
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    if rc:
        print(f"{out.name}: training failed (rc {rc}), see {out / 'train.log'}", flush=True)
    return time.time() - start


def train_runtime(run: Path) -> float:
    """The Trainer's ``train_runtime`` from a run's log (0 if it has none yet)."""
    log = run / "train.log"
    found = re.findall(r"'train_runtime': '([0-9.]+)'", log.read_text(errors="replace")) if log.exists() else []
    return float(found[-1]) if found else 0.0


def score(run: Path, world, prompts, top_p: float = 1.0) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from safecrowd_llm.evaluate_skills import exact_skill_report, load_skills_model
    from safecrowd_llm.skills_export import load_manifest

    base = load_manifest(run / "skills")["base_model"]
    tok = AutoTokenizer.from_pretrained(base)
    model, manifest = load_skills_model(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), run / "skills")
    return exact_skill_report(model, manifest, tok, world, prompts, top_p=top_p)


def markdown(rows: list[dict]) -> str:
    lines = [
        "| run | min haz. refusal | mean haz. refusal | worst-prompt haz. refusal | benign refusal "
        "| haz. well-formed | benign well-formed | min all-text haz. refusal | styles found | train s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        s = r["report"]["skills"].values()
        found = sum(r["report"]["archetype_style_found"].values())
        all_text = r["report"].get("min_hazardous_refusal_all_text")  # reports from before it existed lack it
        all_text = "-" if all_text is None else f"{all_text:.3f}"
        lines.append(
            f"| {r['name']} | {r['report']['min_hazardous_refusal']:.3f} "
            f"| {sum(x['hazardous_refusal'] for x in s) / len(s):.3f} "
            f"| {min(x['hazardous_worst_refusal'] for x in s):.3f} "
            f"| {sum(x['benign_refusal'] for x in s) / len(s):.3f} "
            f"| {min(x['hazardous_well_formed'] for x in s):.3f} | {min(x['benign_well_formed'] for x in s):.3f} "
            f"| {all_text} | {found}/{len(r['report']['archetype_style_found'])} | {r['seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    args = parse_args(argv)
    import torch

    from safecrowd_llm.core.atomic import write_json, write_text
    from safecrowd_llm.textworld import TextWorld

    torch.set_num_threads(1)
    out = Path(args.out)
    runs = [(run_name(o), o) for o in grid(args.set)]
    if args.score_only and not args.set:  # every finished run under --out, e.g. trained elsewhere in groups
        runs = [(str(m.parent.parent.relative_to(out)), {}) for m in sorted(out.glob("**/skills/skills.json"))]
    wall = [0.0] * len(runs)
    if not args.score_only:
        with ThreadPoolExecutor(args.parallel) as pool:
            wall = list(pool.map(lambda r: train(args, r[1], out / r[0]), runs))
    seconds = [train_runtime(out / name) or w for (name, _), w in zip(runs, wall, strict=True)]
    if args.train_only:
        return
    world = TextWorld.from_yaml(args.world)
    _, prompts = world.split_prompts()
    rows = []
    for (name, overrides), sec in zip(runs, seconds):
        if not (out / name / "skills" / "skills.json").exists():
            continue
        cached = out / name / ("exact_eval.json" if args.top_p == 1.0 else f"exact_eval_top_p{args.top_p:g}.json")
        report = json.loads(cached.read_text()) if cached.exists() else score(out / name, world, prompts, args.top_p)
        write_json(report, cached)
        rows.append({"name": name, "overrides": overrides, "seconds": sec, "report": report})
    suffix = "" if args.top_p == 1.0 else f"_top_p{args.top_p:g}"
    write_json(rows, out / f"sweep{suffix}.json")
    write_text(markdown(rows), out / f"sweep{suffix}.md")
    print(markdown(rows))


if __name__ == "__main__":
    main()
