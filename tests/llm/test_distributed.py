"""Nothing in the skill trainers assumes a single process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("trl", reason="needs the llm extra: pip install -e '.[llm]'")


def test_two_process_cpu_run_trains_and_exports_once(base_and_crowd, tmp_path):
    """DDP over gloo with torchrun: embeddings cached once, skills exported once by the main process."""
    recipe = Path(__file__).resolve().parents[2] / "recipes" / "train_skills.py"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531", str(recipe),
        "--method", "safe-cpl", "--base_model", str(base_and_crowd / "base"),
        "--dataset", str(base_and_crowd / "crowd.jsonl"), "--output_dir", str(tmp_path), "--use_cpu", "true",
        "--max_steps", "3", "--per_device_train_batch_size", "2", "--latent_dim", "2", "--encoder_hidden_dim", "16",
        "--max_target_pairs", "2", "--max_length", "96", "--num_skills", "2", "--save_strategy", "no",
        "--report_to", "none", "--cpu_threads", "1", "--disable_tqdm", "true",
    ]
    env = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "skills" / "skills.json").exists()
    assert len(list((tmp_path / "cache").glob("embeddings-*.safetensors"))) == 1
