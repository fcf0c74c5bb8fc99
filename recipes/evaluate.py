"""Compare the composed model (router over skills) with the baselines on a task, on held-out prompts.

    python recipes/evaluate.py --config recipes/textworld_evaluate.yaml

The YAML names the base model, the task reward (dotted path), sampling settings, the output directory
and the methods, each ``{name, kind: router|adapter|base, path, group, param}``; methods whose paths do
not exist are skipped with a warning (so one config serves a partial run). Writes ``results.json``,
``results.md`` and ``reward_cost.png`` to ``out_dir`` and prints the table. Reward is normalised to
Oracle's (= 1) and cost to Task-only's (= 1), as in the paper.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import torch
import yaml

from safecrowd_llm.evaluate_methods import MethodSpec, evaluate_methods
from safecrowd_llm.textworld import TextWorld


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="evaluation YAML (see recipes/textworld_evaluate.yaml)")
    p.add_argument("--out_dir", default=None, help="override the YAML's out_dir")
    p.add_argument("--samples_per_prompt", type=int, default=None, help="override the YAML's samples_per_prompt")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    cfg = yaml.safe_load(Path(args.config).read_text()) or {}
    for key in ("base_model", "task_reward", "methods", "out_dir"):
        if key not in cfg:
            raise SystemExit(f"{args.config}: missing key {key!r}")
    torch.set_num_threads(int(cfg.get("cpu_threads", 1)))
    methods = []
    for i, m in enumerate(cfg["methods"]):
        if not isinstance(m, dict) or "name" not in m or "kind" not in m:
            raise SystemExit(f"{args.config}: methods[{i}] needs 'name' and 'kind'")
        if m.get("path") and not Path(m["path"]).exists():
            print(f"skipping {m['name']}: {m['path']} does not exist", file=sys.stderr)
            continue
        methods.append(MethodSpec(**m))
    world = TextWorld.from_yaml(cfg.get("world"))
    prompts = world.split_prompts()[1]  # held out: never in the crowd, the skills' or the router's training
    results = evaluate_methods(
        methods, base_model=cfg["base_model"], task_reward=cfg["task_reward"], prompts=prompts,
        out_dir=args.out_dir or cfg["out_dir"], world=world,
        samples_per_prompt=args.samples_per_prompt or cfg.get("samples_per_prompt", 4),
        temperature=cfg.get("temperature", 1.0), top_p=cfg.get("top_p", 1.0), max_new_tokens=cfg.get("max_new_tokens", 80),
        seed=cfg.get("seed", 0),
    )
    out = Path(args.out_dir or cfg["out_dir"])
    print((out / "results.md").read_text())
    print(f"results: {out / 'results.json'}; plot: {out / 'reward_cost.png'}")
    return results


if __name__ == "__main__":
    main()
