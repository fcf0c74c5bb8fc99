r"""Train a downstream baseline policy on one scalar reward with TRL GRPO + LoRA: Task-only, RC(omega), Oracle,
and the related systems MaxMin-RLHF, Safe RLHF and plain VPL (Personalized Soups: recipes/train_psoups.py).

    python recipes/train_baseline.py --config recipes/textworld_task_only.yaml
    python recipes/train_baseline.py --config recipes/textworld_rc.yaml --omega 0.25 \
        --output_dir runs/textworld/baselines/rc_0.25
    python recipes/train_baseline.py --config recipes/textworld_oracle.yaml --max_steps 20
    python recipes/train_baseline.py --config recipes/textworld_maxmin.yaml      # EM mixture of BT rewards, min
    python recipes/train_baseline.py --config recipes/textworld_safe_rlhf.yaml   # cost model + Lagrangian
    python recipes/train_baseline.py --config recipes/textworld_plain_vpl.yaml   # latent reward, no skills
    python recipes/train_baseline.py --help      # every option (GRPOConfig + the methods')

RC needs the pooled reward model first:
    python recipes/train_skills.py --method pooled-reward --base_model runs/textworld/base \
        --dataset runs/textworld/world/crowd.jsonl --output_dir runs/textworld/pooled_reward ...

Output, in ``output_dir``: the policy as a plain PEFT LoRA adapter (``PeftModel.from_pretrained(base,
output_dir)``) and ``policy.json`` (method, rewards, base, training config, held-out task reward and
safety cost of the base and of the policy on the text world), written last.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from trl import TrlParser

from safecrowd_llm.baselines import train_baseline
from safecrowd_llm.related import RelatedBaselineConfig, build_related_objective


def main(args: RelatedBaselineConfig) -> dict:
    """Train, save, and print the held-out summary; returns ``policy.json``'s content."""
    out = train_baseline(args, build=build_related_objective)
    manifest = json.loads((out / "policy.json").read_text()) if (out / "policy.json").exists() else {}
    for who, report in manifest.get("heldout", {}).items():
        print(f"{who:>9}: task reward {report['task_reward']:.3f}  hazardous compliance "
              f"{report['hazardous_compliance']:.3f}  cost {report['cost']:.3f}  parse {report['parse_rate']:.2f}")
    print(f"{args.method} policy saved to {out}")
    return manifest


if __name__ == "__main__":
    parser = TrlParser((RelatedBaselineConfig,), description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=argparse.SUPPRESS, help="YAML file of option values (CLI overrides it).")
    (training_args,) = parser.parse_args_and_config(sys.argv[1:])
    main(training_args)
