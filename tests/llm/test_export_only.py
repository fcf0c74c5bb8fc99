"""``train_skills.py --export_only``: the skills of a trained run exported again, without training."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

pytest.importorskip("trl", reason="needs the llm extra: pip install -e '.[llm]'")

from safecrowd_llm.train_skills import train_skills


def test_export_only_reproduces_the_trained_skills_and_can_change_k(vpl_run, vpl_arguments, base_and_crowd, tmp_path):
    shutil.copytree(vpl_run / "latent_model", tmp_path / "latent_model")
    trained = json.loads((vpl_run / "skills" / "skills.json").read_text())

    again = train_skills(*vpl_arguments(base_and_crowd, tmp_path, export_only=True))
    assert [s["latent"] for s in again["skills"]] == [s["latent"] for s in trained["skills"]]
    assert (tmp_path / "skills" / "skill_1" / "adapter_model.safetensors").exists()

    three = train_skills(*vpl_arguments(base_and_crowd, tmp_path, export_only=True, num_skills=3))
    assert len(three["skills"]) == 3 and len(list((tmp_path / "skills").glob("skill_*"))) >= 3



def test_export_only_can_refine_each_skill_on_its_group(vpl_run, vpl_arguments, base_and_crowd, tmp_path):
    shutil.copytree(vpl_run / "latent_model", tmp_path / "latent_model")
    trained = json.loads((vpl_run / "skills" / "skills.json").read_text())
    refined = train_skills(*vpl_arguments(base_and_crowd, tmp_path, export_only=True, skill_refine_steps=5,
                                          skill_refine_lr=0.2))
    for old, new in zip(trained["skills"], refined["skills"], strict=True):
        assert new["centroid"] == old["latent"] and new["latent"] != old["latent"]  # moved from the k-means centroid
        assert new["annotators"] == old["annotators"] and math.isfinite(new["log_prior"])
    assert refined["config_hash"] != trained["config_hash"]
    with pytest.raises(ValueError, match="skill_refine_steps"):
        vpl_arguments(base_and_crowd, tmp_path, skill_refine_steps=-1)

def test_export_only_without_a_trained_model_names_what_is_missing(vpl_arguments, base_and_crowd, tmp_path):
    with pytest.raises(FileNotFoundError, match="latent_model"):
        train_skills(*vpl_arguments(base_and_crowd, tmp_path, export_only=True))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_training_on_the_gpu_with_a_learned_prior_exports_its_skills(vpl_arguments, base_and_crowd, tmp_path):
    """What broke on the first GPU run: a mixture prior on cuda:0 scoring the CPU k-means centres."""
    manifest = train_skills(*vpl_arguments(base_and_crowd, tmp_path, use_cpu=False, prior="mixture", prior_components=2))
    assert len(manifest["skills"]) == 2 and all(math.isfinite(s["log_prior"]) for s in manifest["skills"])
