"""The router: learns the per-prompt best skill from a reward table, obeys the prior regulariser,
round-trips through its directory, refuses a changed skills directory, and composes generation."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("trl", reason="needs the llm extra: pip install -e '.[llm]'")

from safecrowd_llm.core.atomic import write_json
from safecrowd_llm.router import RouterArguments, generate_routed, load_prompts, load_router, train_router
from safecrowd_llm.router.model import skills_hash
from safecrowd_llm.textworld import TextWorld

WORLD = TextWorld.from_yaml()
TRAIN = WORLD.split_prompts()[0]


def _args(tiny_skills, out, **kw) -> RouterArguments:
    kw = {"samples_per_prompt": 1, "max_new_tokens": 4, "steps": 200} | kw
    return RouterArguments(skills_dir=str(tiny_skills / "skills"), output_dir=str(out), **kw)


def _plant_rewards(args: RouterArguments, table: torch.Tensor) -> None:
    """Write the scored table the router would otherwise generate (same cache key), so the test checks
    learning on known rewards without a trained LM."""
    key = {
        "skills_hash": skills_hash(args.skills_dir), "task_reward": args.task_reward,
        "prompts": [p.text for p in TRAIN], "samples_per_prompt": args.samples_per_prompt,
        "temperature": args.temperature, "max_new_tokens": args.max_new_tokens, "seed": args.seed,
    }
    write_json({"key": key, "skills": ["skill_0", "skill_1", "skill_2"], "rewards": table.tolist()},
               f"{args.output_dir}/skill_rewards.json")


def test_router_learns_the_best_skill_per_prompt_and_round_trips(tiny_skills, tmp_path):
    args = _args(tiny_skills, tmp_path / "router", beta_reg=0.0)
    hazardous = torch.tensor([p.hazardous for p in TRAIN])
    table = torch.full((len(TRAIN), 3), 0.2)
    table[hazardous, 2] = 0.9  # skill_2 is best on hazardous prompts, skill_1 on the rest
    table[~hazardous, 1] = 0.8
    _plant_rewards(args, table)
    summary = train_router(args)
    assert summary["hidden_dim"] > 0  # cross-validation sees that the prompt decides the skill
    assert summary["routed_reward"] > summary["best_single_skill_reward"] + 0.1
    router = load_router(args.output_dir)
    picks = torch.tensor(router.route([p.text for p in TRAIN]))
    assert (picks == torch.where(hazardous, 2, 1)).float().mean() >= 0.95
    assert router.skill_names == ["skill_0", "skill_1", "skill_2"]
    assert torch.allclose(router.probs([TRAIN[0].text]).sum(), torch.tensor(1.0))


def test_cross_validation_keeps_one_skill_when_per_prompt_winners_are_noise(tiny_skills, tmp_path):
    # skill_1 is best on average; which skill wins a given prompt is a coin flip that no prompt feature
    # predicts, so a wide head only memorises the training draws: the narrowest head must be chosen
    args = _args(tiny_skills, tmp_path / "r", beta_reg=0.0)
    g = torch.Generator().manual_seed(0)
    table = torch.rand(len(TRAIN), 3, generator=g) * 0.6
    table[:, 1] += 0.35
    _plant_rewards(args, table)
    summary = train_router(args)
    assert summary["hidden_dim"] == 0 and set(summary["cross_validation"]) == {"0", "8", "64"}
    assert summary["cross_validation"]["0"]["mean"] > summary["cross_validation"]["64"]["mean"]
    router = load_router(args.output_dir)
    assert set(router.route([p.text for p in WORLD.split_prompts()[1]])) == {1}


def test_prior_regulariser_breaks_ties_towards_likely_skills(tiny_skills, tmp_path):
    flat = torch.full((len(TRAIN), 3), 0.5)
    args = _args(tiny_skills, tmp_path / "r", beta_reg=0.5, entropy_coef=0.0)
    _plant_rewards(args, flat)
    train_router(args)
    picks = load_router(args.output_dir).route([p.text for p in TRAIN])
    assert set(picks) == {0}  # skill_0 has the highest log p(z') in the fixture


def test_router_scores_skills_by_generation_and_caches_the_table(tiny_skills, tmp_path):
    args = _args(tiny_skills, tmp_path / "g", steps=5)
    first = train_router(args)
    table = json.loads((tmp_path / "g" / "skill_rewards.json").read_text())
    assert len(table["rewards"]) == len(TRAIN) and len(table["rewards"][0]) == 3
    assert train_router(args)["skill_mean_reward"] == first["skill_mean_reward"]  # reused, not regenerated


def test_a_sweep_reuses_another_routers_table_only_when_it_matches(tiny_skills, tmp_path):
    first = _args(tiny_skills, tmp_path / "a", steps=5)
    _plant_rewards(first, torch.rand(len(TRAIN), 3))
    train_router(first)
    table = tmp_path / "a" / "skill_rewards.json"
    sweep = _args(tiny_skills, tmp_path / "b", steps=5, beta_reg=1.0, reward_table=str(table))
    assert train_router(sweep)["skill_mean_reward"] == train_router(first)["skill_mean_reward"]
    assert (tmp_path / "b" / "skill_rewards.json").read_text() == table.read_text()
    other = _args(tiny_skills, tmp_path / "c", steps=5, temperature=0.5, reward_table=str(table))
    with pytest.warns(UserWarning, match="temperature"):
        train_router(other)  # scored afresh: the table was sampled at another temperature
    assert json.loads((tmp_path / "c" / "skill_rewards.json").read_text())["key"]["temperature"] == 0.5
    nucleus = _args(tiny_skills, tmp_path / "d", steps=5, top_p=0.9, reward_table=str(table))
    with pytest.warns(UserWarning, match="top_p"):
        train_router(nucleus)  # a table of pure samples is not one of nucleus samples
    assert json.loads((tmp_path / "d" / "skill_rewards.json").read_text())["key"]["top_p"] == 0.9


def test_changed_skills_directory_is_refused(tiny_skills, tmp_path):
    import shutil

    skills = tmp_path / "skills"
    shutil.copytree(tiny_skills / "skills", skills)
    args = RouterArguments(skills_dir=str(skills), output_dir=str(tmp_path / "r"), steps=2)
    _plant_rewards(args, torch.zeros(len(TRAIN), 3))
    train_router(args)
    manifest = json.loads((skills / "skills.json").read_text())
    manifest["skills"][0]["log_prior"] = -9.0
    write_json(manifest, skills / "skills.json")
    with pytest.raises(ValueError, match="changed since this router was trained"):
        load_router(tmp_path / "r")


def test_generate_routed_uses_the_chosen_adapter(tiny_skills, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from safecrowd_llm.evaluate_skills import load_skills_model
    from safecrowd_llm.tiny_base import sample_completions

    args = _args(tiny_skills, tmp_path / "r")
    hazardous = torch.tensor([p.hazardous for p in TRAIN])
    table = torch.zeros(len(TRAIN), 3)
    table[hazardous, 2], table[~hazardous, 0] = 1.0, 1.0
    _plant_rewards(args, table)
    train_router(args)
    base = str(tiny_skills / "base")
    tok = AutoTokenizer.from_pretrained(base)
    model, _ = load_skills_model(AutoModelForCausalLM.from_pretrained(base), tiny_skills / "skills")
    router = load_router(args.output_dir, model, tok)
    prompts = [TRAIN[0].text, next(p.text for p in TRAIN if p.hazardous)]
    texts, picks = generate_routed(router, model, tok, prompts, max_new_tokens=6, temperature=0)
    assert picks == router.route(prompts)
    for text, prompt, k in zip(texts, prompts, picks):
        single = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), tiny_skills / "skills" / f"skill_{k}")
        assert text == sample_completions(single, tok, [prompt], max_new_tokens=6, temperature=0)[0]


def test_load_prompts_reports_file_and_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "hi"}\n{"text": "no prompt"}\n')
    with pytest.raises(ValueError, match=r"p\.jsonl, line 2: field 'prompt'"):
        load_prompts(str(path))
    assert load_prompts(None)[0] == TRAIN[0].text
