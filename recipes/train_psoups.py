r"""Personalized Soups: one DPO LoRA per annotator cluster (TRL DPOTrainer), merged with PEFT's weighted
adapter merge; the task reward picks the merge weights (grid on the simplex).

    python recipes/train_psoups.py --config recipes/textworld_psoups.yaml
    python recipes/train_psoups.py --config recipes/textworld_psoups.yaml --clusters skills \
        --skills_manifest runs/textworld/skills_cpl2/skills/skills.json     # clusters from the encoder
    python recipes/train_psoups.py --help      # every option (PSoupsConfig = DPOConfig + clusters and search)

Output, in ``output_dir``: the best soup as a plain PEFT LoRA adapter, ``clusters/<name>/`` (each cluster's
DPO adapter; a rerun reuses finished ones) and ``policy.json`` (clusters, searched grid, held-out report).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from trl import TrlParser

from safecrowd_llm.related.psoups import PSoupsConfig, train_psoups


def main(args: PSoupsConfig) -> dict:
    out = train_psoups(args)
    manifest = json.loads((out / "policy.json").read_text())
    print(f"clusters ({manifest['clusters']['source']}): {manifest['clusters']['sizes']}")
    print(f"best merge weights {manifest['merge']['weights']} (train task reward {manifest['merge']['task_reward']:.3f})")
    for who, report in manifest.get("heldout", {}).items():
        print(f"{who:>9}: task reward {report['task_reward']:.3f}  hazardous compliance "
              f"{report['hazardous_compliance']:.3f}  cost {report['cost']:.3f}  parse {report['parse_rate']:.2f}")
    print(f"soup saved to {out}")
    return manifest


if __name__ == "__main__":
    parser = TrlParser((PSoupsConfig,), description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=argparse.SUPPRESS, help="YAML file of option values (CLI overrides it).")
    (training_args,) = parser.parse_args_and_config(sys.argv[1:])
    main(training_args)
