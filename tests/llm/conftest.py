"""Fixtures shared by the language-model tests: a tiny base model and a small crowd on disk."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def base_and_crowd(tmp_path_factory):
    """A saved tiny (untrained) base model + tokenizer, and a 6-annotator text-world crowd JSONL."""
    pytest.importorskip("transformers", reason="needs the llm extra: pip install -e '.[llm]'")
    from safecrowd_llm.textworld import TextWorld, sample_crowd, write_jsonl
    from safecrowd_llm.tiny_base import build_tiny_model, train_tokenizer, world_texts

    root = tmp_path_factory.mktemp("pooled")
    world = TextWorld.from_yaml(**{"crowd.num_annotators": 6, "crowd.pairs_per_annotator": 8})
    write_jsonl(sample_crowd(world, seed=0), root / "crowd.jsonl")
    tok = train_tokenizer(world_texts(world))
    build_tiny_model(tok, hidden_size=32, num_layers=1, num_heads=2, seed=0).save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    return root


@pytest.fixture(scope="session")
def tiny_skills(tmp_path_factory):
    """base/ (tiny text-world Qwen2, untrained) and skills/ (3 random LoRA adapters + skills.json)."""
    pytest.importorskip("peft", reason="needs the llm extra: pip install -e '.[llm]'")
    import torch
    from peft import LoraConfig, get_peft_model

    from safecrowd_llm.core.atomic import write_json
    from safecrowd_llm.textworld import TextWorld
    from safecrowd_llm.tiny_base import build_tiny_model, train_tokenizer, world_texts

    root = tmp_path_factory.mktemp("skills")
    tok = train_tokenizer(world_texts(TextWorld.from_yaml()))
    build_tiny_model(tok, hidden_size=32, num_layers=1, num_heads=2, seed=0).save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    skills = []
    for k in range(3):
        torch.manual_seed(100 + k)
        lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        base = build_tiny_model(tok, hidden_size=32, num_layers=1, num_heads=2, seed=0)
        get_peft_model(base, lora).save_pretrained(root / "skills" / f"skill_{k}")
        skills.append({"name": f"skill_{k}", "path": f"skill_{k}", "latent": [float(k), 0.0],
                       "log_prior": -1.0 - k, "annotators": [f"a{k}"]})
    manifest = {"format": "safecrowd-skills/1", "method": "safe-cpl", "base_model": str(root / "base"),
                "latent_dim": 2, "config_hash": None, "skills": skills}
    write_json(manifest, root / "skills" / "skills.json")
    return root


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Every language-model test runs torch on one thread (a 2-core CI box stalls with more)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _vpl_arguments(root, out, **overrides):
    """The tiny Safe-VPL run's arguments (data, config) on ``base_and_crowd``'s files."""
    from safecrowd_llm.train_skills import SkillDataArguments
    from safecrowd_llm.trainers import SafeVPLConfig

    data = SkillDataArguments(method="safe-vpl", base_model=str(root / "base"), dataset=str(root / "crowd.jsonl"),
                              cpu_threads=1, export_only=overrides.pop("export_only", False))
    args = dict(output_dir=str(out), max_steps=3, per_device_train_batch_size=2, save_strategy="no",
                report_to="none", use_cpu=True, latent_dim=2, encoder_hidden_dim=16, encoder_layers=1,
                max_target_pairs=2, lora_r=2, num_skills=2, eval_annotator_fraction=0.0, disable_tqdm=True,
                learning_rate=1e-2, max_length=96)
    return data, SafeVPLConfig(**{**args, **overrides})


@pytest.fixture(scope="session")
def vpl_run(base_and_crowd, tmp_path_factory):
    """A Safe-VPL run directory (latent_model/ + skills/), trained for a few steps on the tiny crowd."""
    from safecrowd_llm.train_skills import train_skills

    out = tmp_path_factory.mktemp("vpl")
    train_skills(*_vpl_arguments(base_and_crowd, out))
    return out


@pytest.fixture(scope="session")
def vpl_arguments():
    """``(root, out, **overrides) -> (data, config)``: the arguments ``vpl_run`` was trained with."""
    return _vpl_arguments
