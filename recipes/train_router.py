"""Train the router pi_h(k | prompt) over exported skills on a new task reward (no safety signal).

    python recipes/train_router.py --config recipes/textworld_router.yaml
    python recipes/train_router.py --skills_dir runs/textworld/skills_cpl/skills --output_dir runs/textworld/router \\
        --task_reward safecrowd_llm.textworld.judges.helpfulness

Every skill answers the training prompts, the task reward scores the answers, and a small head over
the frozen base model's prompt embedding learns which skill to call, regularised towards skills where
the crowd's annotators are (beta_reg * log p(z'_k)). Writes ``router.json`` + ``router.safetensors``
(+ ``skill_rewards.json``, ``train_summary.json``) to ``output_dir``.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from trl import TrlParser

from safecrowd_llm.router import RouterArguments, train_router


def main(argv: list[str] | None = None) -> dict:
    parser = TrlParser((RouterArguments,), description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=argparse.SUPPRESS, help="YAML file of option values (CLI overrides it).")
    (args,) = parser.parse_args_and_config(argv)
    summary = train_router(args)
    print(
        f"router -> {args.output_dir}: routed task reward {summary['routed_reward']:.3f} "
        f"(best single skill {summary['best_single_skill_reward']:.3f}, per-prompt best {summary['oracle_routed_reward']:.3f}); "
        f"choices per skill {summary['choice_counts']}"
    )
    return summary


if __name__ == "__main__":
    main()
