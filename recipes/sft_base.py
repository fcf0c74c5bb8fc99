"""SFT the crowd text world's tiny base LM from scratch with TRL's ``SFTTrainer``.

Trains a byte-level BPE tokenizer (ChatML template) on the world's texts, builds a small Qwen2 model,
and SFTs it on every behaviour of every train prompt, so it can produce refusals and compliance in
every style: the base that skills are trained on. At the end it samples generations on held-out
prompts and prints the parse rate (well-formed responses) and the behaviour coverage.

    python recipes/sft_base.py --config recipes/textworld_sft.yaml
    accelerate launch --config_file recipes/accelerate/cpu.yaml --num_cpu_threads_per_process 1 \
        recipes/sft_base.py --config recipes/textworld_sft.yaml

Every ``TinyBaseArguments`` and ``trl.SFTConfig`` field is an option (``--help``); command-line values
override the YAML. On a busy 2-core machine one thread per process is much faster (``accelerate
launch`` defaults to 2; ``OMP_NUM_THREADS=1`` for plain python). The output
directory loads with ``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained`` and
holds ``tiny_base.json`` (world config, arguments, metrics).
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from trl import SFTConfig, TrlParser

from safecrowd_llm.textworld import TextWorld
from safecrowd_llm.tiny_base import TinyBaseArguments, train_tiny_base


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def main(script_args: TinyBaseArguments, training_args: SFTConfig) -> dict:
    """Train, save, and print a summary (main process only); returns the metrics."""
    world = TextWorld.from_yaml(script_args.world_config)
    result = train_tiny_base(world, training_args.output_dir, script_args, training_args)
    metrics = result.metrics
    if "generation" in metrics:  # only the main process samples generations
        gen = metrics["generation"]
        losses = [metrics[k] for k in ("first_logged_loss", "final_logged_loss") if metrics[k] is not None]
        print(
            f"\ntiny base: {metrics['parameters']:,} parameters, vocab {metrics['vocab']}, "
            f"{metrics['steps']} steps in {metrics['train_seconds']:.1f} s, "
            f"logged loss {' -> '.join(f'{x:.3f}' for x in losses) or 'none (fewer steps than logging_steps)'}"
        )
        print(
            f"{gen['samples']} samples at T={script_args.eval_temperature}: parse rate {gen['parse_rate']:.2f}, "
            f"on topic {gen['on_topic_rate']:.2f}, behaviour coverage {gen['behaviour_coverage']:.2f}, "
            f"refusals hazardous {_fmt(gen['refusal_rate_hazardous'])} / benign {_fmt(gen['refusal_rate_benign'])}"
        )
        print(f"example: {metrics['example_generation']!r}")
        print(f"saved to {training_args.output_dir}")
        print(json.dumps(gen))
    return metrics


def make_parser() -> TrlParser:
    """Options of both dataclasses; ``--config`` is consumed by ``TrlParser`` itself (listed for --help)."""
    parser = TrlParser((TinyBaseArguments, SFTConfig))
    parser.add_argument(
        "--config", default=argparse.SUPPRESS, help="YAML file of option values (command-line values override it)."
    )
    return parser


if __name__ == "__main__":
    script_args, training_args = make_parser().parse_args_and_config()
    main(script_args, training_args)
