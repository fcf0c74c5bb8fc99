"""Safe-VPL skill policies: one best-of-n LoRA per skill latent, written as an ordinary skills directory."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("trl", reason="needs the llm extra: pip install -e '.[llm]'")

from peft import PeftModel
from transformers import AutoModelForCausalLM

from safecrowd_llm.skills_export import load_manifest
from safecrowd_llm.vpl_policies import SkillPolicyConfig, train_skill_policies

TINY = {"bon_rounds": 1, "bon_samples": 2, "bon_epochs": 1, "max_completion_length": 8, "per_device_train_batch_size": 16,
        "learning_rate": 1e-2, "lora_r": 2, "lora_alpha": 4, "eval_samples_per_prompt": 1, "use_cpu": True,
        "report_to": "none", "disable_tqdm": True, "cpu_threads": 1, "save_strategy": "no"}


def test_every_skill_becomes_a_loadable_policy_with_its_latent_and_a_rerun_skips_it(vpl_run, tmp_path):
    args = SkillPolicyConfig(output_dir=str(tmp_path / "policies"), vpl_model=str(vpl_run), **TINY)
    manifest = train_skill_policies(args)

    source = load_manifest(vpl_run / "skills")
    written = load_manifest(tmp_path / "policies")  # checks the contract's fields
    assert [s["latent"] for s in written["skills"]] == [s["latent"] for s in source["skills"]]
    assert [s["log_prior"] for s in written["skills"]] == [s["log_prior"] for s in source["skills"]]
    assert manifest["method"] == "safe-vpl" and manifest["skill_policy"]["optimizer"] == "best-of-n"
    base = manifest["base_model"]
    for skill in written["skills"]:
        policy = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), skill["path"])
        assert policy.peft_config["default"].task_type == "CAUSAL_LM"
        report = next(s for s in manifest["skills"] if s["name"] == skill["name"])["policy"]
        assert len(report["curve"]) == 1 and 0.0 <= report["heldout"]["hazardous_compliance"] <= 1.0

    adapter = tmp_path / "policies" / "skill_0" / "adapter_model.safetensors"
    stamp = adapter.stat().st_mtime_ns
    again = train_skill_policies(args)
    assert adapter.stat().st_mtime_ns == stamp and again["skills"] == manifest["skills"]


def test_clear_errors_for_a_run_that_is_not_safe_vpl_or_an_unknown_skill(vpl_run, tmp_path):
    with pytest.raises(ValueError, match="vpl_model"):
        SkillPolicyConfig(output_dir=str(tmp_path), use_cpu=True)
    with pytest.raises(ValueError, match="not a Safe-VPL skills manifest"):
        train_skill_policies(SkillPolicyConfig(output_dir=str(tmp_path / "a"), vpl_model=str(tmp_path), **TINY))
    with pytest.raises(ValueError, match=r"skills \['skill_9'\] are not in"):
        train_skill_policies(SkillPolicyConfig(output_dir=str(tmp_path / "b"), vpl_model=str(vpl_run),
                                               skills=["skill_9"], **TINY))
    manifest = json.loads((vpl_run / "skills" / "skills.json").read_text())
    assert manifest["method"] == "safe-vpl"


def test_recipe_help_lists_the_options():
    import subprocess
    import sys
    from pathlib import Path

    recipe = Path(__file__).resolve().parents[2] / "recipes" / "train_vpl_policies.py"
    out = subprocess.run([sys.executable, str(recipe), "--help"], capture_output=True, text=True, check=True).stdout
    assert "--vpl_model" in out and "--bon_rounds" in out and "--learning_rate" in out
