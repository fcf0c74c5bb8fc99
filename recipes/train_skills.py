"""Train Safe-CPL or Safe-VPL skills on crowd preferences and export them as PEFT LoRA adapters.

    accelerate launch recipes/train_skills.py --config recipes/textworld_cpl.yaml
    python recipes/train_skills.py --config recipes/textworld_cpl.yaml --max_steps 50
    torchrun --nproc_per_node 2 recipes/train_skills.py --config ...   # 2 CPU processes (DDP, gloo)
    python recipes/train_skills.py --method safe-vpl --help      # every option of that method
    python recipes/train_skills.py --method pooled-dpo ...       # the no-latent baselines (TRL DPO / reward)

Outputs, under ``output_dir``: ``latent_model/`` (encoder, prior and latent LoRA: what training
changed), ``skills/`` (one PEFT adapter per skill + ``skills.json``), and the usual checkpoints.
"""

from __future__ import annotations

import argparse
import os
import sys

import yaml

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from trl import TrlParser

from safecrowd_llm.pooled import POOLED_METHODS, train_pooled
from safecrowd_llm.train_skills import ALL_METHODS, METHODS, SkillDataArguments, train_skills


def method_from_argv(argv: list[str]) -> str:
    """The method decides which config class parses the rest: read it from --method or the YAML."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--method")
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    if known.method:
        return known.method
    if known.config:
        with open(known.config) as f:
            return (yaml.safe_load(f) or {}).get("method", "safe-cpl")
    return "safe-cpl"


def make_parser(method: str) -> TrlParser:
    """The parser of one method's options: the data arguments plus that method's trainer config."""
    if method not in ALL_METHODS:
        raise SystemExit(f"unknown method {method!r}; choose one of {ALL_METHODS}")
    config_cls = POOLED_METHODS[method] if method in POOLED_METHODS else METHODS[method][0]
    parser = TrlParser(
        (SkillDataArguments, config_cls), description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=argparse.SUPPRESS, help="YAML file of option values (CLI overrides it).")
    return parser


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    method = method_from_argv(argv)
    data_args, training_args = make_parser(method).parse_args_and_config(argv)
    if method in POOLED_METHODS:
        print(f"pooled baseline saved to {train_pooled(data_args, training_args)}")
        return {}
    manifest = train_skills(data_args, training_args)
    for skill in manifest.get("skills", []):
        print(f"{skill['name']}: z'={skill['latent']} log p(z')={skill['log_prior']:.2f} "
              f"covers {len(skill['annotators'])} annotators")
    return manifest


if __name__ == "__main__":
    main()
