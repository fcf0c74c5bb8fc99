r"""Turn Safe-VPL's skill latents into skill policies: one LoRA per skill, best-of-n fine-tuned on r_phi(x, y, z_k).

    python recipes/train_vpl_policies.py --config recipes/textworld_vpl_policies.yaml
    python recipes/train_vpl_policies.py --vpl_model runs/textworld/skills_vpl --output_dir runs/textworld/vpl_policies
    python recipes/train_vpl_policies.py --help     # every option (trl.SFTConfig + the search's)

Needs a Safe-VPL run first (``recipes/train_skills.py --config recipes/textworld_vpl_skills.yaml``). Writes an
ordinary skills directory to ``output_dir`` (``skill_<k>/`` PEFT adapters + ``skills.json``), which
``recipes/train_router.py --skills_dir`` and the server take like Safe-CPL's. A rerun skips finished skills.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from trl import TrlParser

from safecrowd_llm.vpl_policies import SkillPolicyConfig, train_skill_policies


def main(argv: list[str] | None = None) -> dict:
    parser = TrlParser((SkillPolicyConfig,), description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=argparse.SUPPRESS, help="YAML file of option values (CLI overrides it).")
    (args,) = parser.parse_args_and_config(sys.argv[1:] if argv is None else argv)
    manifest = train_skill_policies(args)
    for skill in manifest["skills"]:
        held = skill["policy"].get("heldout")
        line = f"{skill['name']}: z'={skill['latent']}"
        if held:
            line += (f"  task reward {held['task_reward']:.3f}  hazardous compliance {held['hazardous_compliance']:.3f}"
                     f"  benign refusal {held['benign_refusal']:.3f}  parse {held['parse_rate']:.2f}")
        print(line)
    print(f"skill policies saved to {args.output_dir}")
    return manifest


if __name__ == "__main__":
    main()
