"""Serve a skills directory (+ router) behind an OpenAI-compatible API.

    python -m safecrowd_llm.serve --skills_dir runs/x/skills --router runs/x/router
    python -m safecrowd_llm.serve --skills_dir ... --backend vllm --vllm_python .venv-vllm/bin/python

Then: model "safecrowd" (--served_model_name) is routed; "skill_k" pins skill k. Binds to 127.0.0.1.
YAML configs: ``recipes/serve.py --config serve.yaml``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    from transformers import HfArgumentParser

    from .config import ServeArguments

    parser = HfArgumentParser(
        ServeArguments,
        prog="python -m safecrowd_llm.serve",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    (args,) = parser.parse_args_into_dataclasses(sys.argv[1:] if argv is None else argv)
    run(args)


def run(args) -> None:
    """Build and serve (shared with ``recipes/serve.py``)."""
    from .server import serve

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    serve(args)


if __name__ == "__main__":
    main()
