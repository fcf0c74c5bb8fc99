"""Serve trained skills (+ router) as one model behind an OpenAI-compatible API.

    python recipes/serve.py --skills_dir runs/textworld/skills_cpl/skills --router runs/textworld/router
    python recipes/serve.py --config serve.yaml --port 8080          # YAML values, CLI overrides
    python recipes/serve.py --skills_dir ... --backend vllm --vllm_python .venv-vllm/bin/python

Model "safecrowd" (--served_model_name) is routed per request; "skill_k" pins a skill. The answering
skill is in the X-Safecrowd-Skill header and the "skill" field. Same as `python -m safecrowd_llm.serve`.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from trl import TrlParser

from safecrowd_llm.serve import ServeArguments
from safecrowd_llm.serve.__main__ import run


def main(argv: list[str] | None = None) -> None:
    parser = TrlParser(
        ServeArguments, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config", default=argparse.SUPPRESS, help="YAML file of option values (CLI overrides it)."
    )
    (args,) = parser.parse_args_and_config(sys.argv[1:] if argv is None else argv)
    run(args)


if __name__ == "__main__":
    main()
