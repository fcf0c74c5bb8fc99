"""Train the router pi_h(k | prompt) over exported skills on a new task reward (no safety signal).

    python recipes/train_router.py --config recipes/textworld_router.yaml
    python recipes/train_router.py --skills_dir runs/textworld/skills_cpl/skills --output_dir runs/textworld/router \\
        --task_reward safecrowd_llm.textworld.judges.helpfulness

Every skill answers the training prompts, the task reward scores the answers, and a small head over
the frozen base model's prompt embedding learns which skill to call, regularised towards skills where
the crowd's annotators are (beta_reg * log p(z'_k)). Writes ``router.json`` + ``router.safetensors``
(+ ``skill_rewards.json``, ``train_summary.json``) to ``output_dir``.

The continuous-latent variant (pi_h outputs z' itself; the latent LoRA answers at that z'):

    python recipes/train_router.py --latent_model runs/textworld/skills_cpl/latent_model \
        --output_dir runs/textworld/router_continuous --iterations 100
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from trl import TrlParser

from safecrowd_llm.router import (
    ContinuousRouterArguments,
    RouterArguments,
    train_continuous_router,
    train_router,
)


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    continuous = any(a.startswith("--latent_model") for a in argv)
    arguments = ContinuousRouterArguments if continuous else RouterArguments
    parser = TrlParser((arguments,), description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=argparse.SUPPRESS, help="YAML file of option values (CLI overrides it).")
    (args,) = parser.parse_args_and_config(argv)
    if continuous:
        summary = train_continuous_router(args)
        last = summary["history"][-1]
        print(f"continuous router -> {args.output_dir}: last batch task reward {last['reward']:.3f}, |z'| {last['z_norm']:.2f}")
        return summary
    summary = train_router(args)
    print(
        f"router -> {args.output_dir}: routed task reward {summary['routed_reward']:.3f} "
        f"(best single skill {summary['best_single_skill_reward']:.3f}, per-prompt best {summary['oracle_routed_reward']:.3f}); "
        f"choices per skill {summary['choice_counts']}; head width {summary['hidden_dim']} (cross-validated)"
    )
    return summary


if __name__ == "__main__":
    main()
