"""Related systems as baselines: Personalized Soups (DPO per cluster + weighted merge) and plain VPL
(the latent reward used directly); each trains a few steps on the tiny world and leaves a loadable policy."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("trl", reason="needs the llm extra: pip install -e '.[llm]'")

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from safecrowd_llm.baselines import train_baseline
from safecrowd_llm.data import load_preferences
from safecrowd_llm.related import RelatedBaselineConfig, build_related_objective
from safecrowd_llm.related.psoups import PSoupsConfig, cluster_rows, simplex_grid, train_psoups
from safecrowd_llm.related.vpl import LatentReward
from safecrowd_llm.textworld import TextWorld

from .grpo_support import TINY_GRPO as GRPO


# ---------------------------------------------------------------------------------------- P-Soups
def test_simplex_grid_covers_the_simplex_with_pure_policies_first():
    grid = simplex_grid(3, 0.5)
    assert len(grid) == 6 and all(sum(w) == pytest.approx(1) and min(w) >= 0 for w in grid)
    assert sorted(grid[:3]) == [(0.0, 0.0, 1.0), (0.0, 1.0, 0.0), (1.0, 0.0, 0.0)]
    assert len(set(simplex_grid(4, 0.25))) == 35
    with pytest.raises(ValueError, match="grid_step"):
        PSoupsConfig(output_dir="unused", grid_step=0.3, use_cpu=True)


def test_cat_merge_is_the_weighted_sum_of_the_cluster_deltas(base_and_crowd):
    """What the soup is: for weights w, the merged delta W equals sum_k w_k (B_k A_k) * scaling_k."""
    base = AutoModelForCausalLM.from_pretrained(base_and_crowd / "base")
    torch.manual_seed(0)
    model = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], init_lora_weights=False), "a")
    model.add_adapter("b", LoraConfig(r=3, lora_alpha=3, target_modules=["q_proj"], init_lora_weights=False))
    with torch.no_grad():  # a fresh adapter's B is random here, not zero: both deltas are non-trivial
        model.add_weighted_adapter(["a", "b"], [0.25, 0.75], "soup", combination_type="cat")
    layer = model.base_model.model.model.layers[0].self_attn.q_proj

    def delta(name: str):
        return layer.lora_B[name].weight @ layer.lora_A[name].weight * layer.scaling[name]

    expected = 0.25 * delta("a") + 0.75 * delta("b")
    assert expected.abs().max() > 1e-3
    assert torch.allclose(delta("soup"), expected, atol=1e-6)


def test_clusters_from_archetypes_or_from_a_skills_manifest(base_and_crowd, tmp_path):
    ds = load_preferences(str(base_and_crowd / "crowd.jsonl"))
    args = PSoupsConfig(output_dir="unused", dataset="crowd.jsonl", use_cpu=True)
    by_type = cluster_rows(ds, args)
    assert set(by_type) == set(ds["archetype"]) and sum(map(len, by_type.values())) == len(ds)
    assert all(ds[i]["archetype"] == name for name, rows in by_type.items() for i in rows)

    annotators = sorted(set(ds["annotator_id"]))
    manifest = {"skills": [{"name": "s0", "annotators": annotators[:2]}, {"name": "s1", "annotators": annotators[2:3]}]}
    (tmp_path / "skills.json").write_text(json.dumps(manifest))
    by_skill = cluster_rows(ds, PSoupsConfig(output_dir="unused", clusters="skills",
                                             skills_manifest=str(tmp_path / "skills.json"), use_cpu=True))
    assert sorted(by_skill) == ["s0", "s1"]
    assert {ds[i]["annotator_id"] for i in by_skill["s1"]} == {annotators[2]}

    with pytest.raises(ValueError, match="archetype"):
        cluster_rows(ds.remove_columns("archetype"), args)


def test_psoups_trains_one_policy_per_cluster_and_saves_the_best_soup(base_and_crowd, tmp_path):
    base = str(base_and_crowd / "base")
    args = PSoupsConfig(output_dir=str(tmp_path), base_model=base, dataset=str(base_and_crowd / "crowd.jsonl"),
                        grid_step=0.5, search_prompts=4, search_samples=1, search_max_new_tokens=8,
                        eval_samples_per_prompt=1, max_steps=2, per_device_train_batch_size=4, learning_rate=1e-2,
                        lora_r=2, lora_alpha=4, save_strategy="no", report_to="none", use_cpu=True, cpu_threads=1,
                        disable_tqdm=True, logging_steps=1, max_length=96)
    out = train_psoups(args)
    policy = json.loads((out / "policy.json").read_text())
    clusters = policy["clusters"]["sizes"]
    assert all((out / "clusters" / name / "adapter_model.safetensors").exists() for name in clusters)
    grid = policy["merge"]["grid"]
    assert len(grid) == len(simplex_grid(len(clusters), 0.5))
    assert policy["merge"]["task_reward"] == max(g["task_reward"] for g in grid)
    assert policy["merge"]["weights"] in [g["weights"] for g in grid]
    soup = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(out))  # a plain PEFT adapter
    assert soup.peft_config["default"].r == 2 * len(clusters)  # cat merge: ranks add up
    assert 0 <= policy["heldout"]["policy"]["parse_rate"] <= 1


# -------------------------------------------------------------------------------------- plain VPL
def test_latent_reward_is_batch_invariant_and_depends_on_the_latent(vpl_run, base_and_crowd):
    reward = LatentReward.from_run(vpl_run, str(base_and_crowd / "base"))
    assert torch.equal(reward.z, torch.zeros(2))  # N(0, I) prior: its mean
    world = TextWorld.from_yaml()
    prompts = [p.text for p in world.prompts[:3]]
    completions = ["ok", "Sure. Here is a long and detailed answer to that.", "No."]
    batched = reward(prompts, completions)
    alone = [reward([p], [c])[0] for p, c in zip(prompts, completions)]
    assert batched == pytest.approx(alone, abs=1e-5)  # padding does not leak into the score
    reward.z = torch.tensor([3.0, -3.0])
    assert reward(prompts, completions) != pytest.approx(batched, abs=1e-4)


@pytest.mark.parametrize("latent", ["prior-mean", "best-match"])
def test_plain_vpl_trains_a_policy_on_task_plus_latent_reward(vpl_run, base_and_crowd, tmp_path, latent):
    args = RelatedBaselineConfig(output_dir=str(tmp_path), method="vpl", base_model=str(base_and_crowd / "base"),
                                 vpl_model=str(vpl_run), vpl_latent=latent, omega=0.5, scaling_prompts=4,
                                 scaling_samples=1, eval_samples_per_prompt=1, **GRPO)
    out = train_baseline(args, build=build_related_objective)
    policy = json.loads((out / "policy.json").read_text())
    assert policy["method"] == "vpl" and policy["vpl_latent"] == latent and len(policy["latent"]) == 2
    assert "vpl_reward_scaling" in policy and policy["omega"] == 0.5
    if latent == "best-match":
        skills = json.loads((vpl_run / "skills" / "skills.json").read_text())["skills"]
        assert set(policy["skill_task_correlation"]) == {s["name"] for s in skills}
        assert policy["latent"] in [s["latent"] for s in skills]
    assert (out / "adapter_model.safetensors").exists()


def test_related_config_errors_name_what_is_missing():
    with pytest.raises(ValueError, match="vpl_model"):
        RelatedBaselineConfig(output_dir="unused", method="vpl", use_cpu=True)
    with pytest.raises(ValueError, match="dataset"):
        RelatedBaselineConfig(output_dir="unused", method="maxmin", use_cpu=True)
    with pytest.raises(ValueError, match="method must be one of"):
        RelatedBaselineConfig(output_dir="unused", method="soups", use_cpu=True)


def test_a_cluster_policy_is_reused_only_with_the_same_settings(base_and_crowd, tmp_path):
    from transformers import AutoTokenizer

    from safecrowd_llm.related.psoups import _train_cluster

    tok = AutoTokenizer.from_pretrained(base_and_crowd / "base")
    ds = load_preferences(str(base_and_crowd / "crowd.jsonl")).select_columns(["prompt", "chosen", "rejected"])
    common = {"output_dir": str(tmp_path), "base_model": str(base_and_crowd / "base"), "dataset": "crowd.jsonl",
              "max_steps": 1, "per_device_train_batch_size": 4, "save_strategy": "no", "report_to": "none",
              "use_cpu": True, "disable_tqdm": True, "lora_r": 2, "max_length": 96}
    out = tmp_path / "cluster"
    _train_cluster(PSoupsConfig(**common, learning_rate=1e-3), ds, tok, out)
    first = (out / "adapter_model.safetensors").stat().st_mtime_ns
    _train_cluster(PSoupsConfig(**common, learning_rate=1e-3), ds, tok, out)
    assert (out / "adapter_model.safetensors").stat().st_mtime_ns == first  # same settings: reused
    _train_cluster(PSoupsConfig(**common, learning_rate=2e-3), ds, tok, out)
    assert (out / "adapter_model.safetensors").stat().st_mtime_ns != first  # changed: trained again


def test_every_related_system_produces_a_result_row(base_and_crowd, vpl_run, tmp_path):
    """Each related system trains a few steps on the tiny world and enters the same comparison as the others."""
    from safecrowd_llm.evaluate_methods import MethodSpec, evaluate_methods

    base, crowd = str(base_and_crowd / "base"), str(base_and_crowd / "crowd.jsonl")
    extra = {"maxmin": {"dataset": crowd, "num_clusters": 2, "em_iterations": 3}, "safe-rlhf": {"dataset": crowd},
             "vpl": {"vpl_model": str(vpl_run)}, "task-only": {}}
    specs = []
    for method, kw in extra.items():
        args = RelatedBaselineConfig(output_dir=str(tmp_path / method), method=method, base_model=base,
                                     scaling_prompts=4, scaling_samples=1, eval_samples_per_prompt=0, **kw, **GRPO)
        specs.append(MethodSpec(method, "adapter", str(train_baseline(args, build=build_related_objective))))
    soup = train_psoups(PSoupsConfig(output_dir=str(tmp_path / "psoups"), base_model=base, dataset=crowd, grid_step=1.0,
                                     search_prompts=2, search_samples=1, search_max_new_tokens=8,
                                     eval_samples_per_prompt=0, max_steps=1, per_device_train_batch_size=4,
                                     lora_r=2, save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True,
                                     max_length=96))
    specs.append(MethodSpec("psoups", "adapter", str(soup)))
    world = TextWorld.from_yaml()
    results = evaluate_methods(specs, base_model=base, task_reward="safecrowd_llm.textworld.judges.helpfulness",
                               prompts=world.split_prompts()[1][:4], out_dir=tmp_path / "eval", world=world,
                               samples_per_prompt=1, max_new_tokens=8)
    assert list(results["summary"]) == [*extra, "psoups"]
    for row in results["summary"].values():
        assert row["samples"] == 4 and 0 <= row["parse_rate"] <= 1 and {"norm_reward", "norm_cost"} <= set(row)
    assert "| safe-rlhf |" in (tmp_path / "eval" / "results.md").read_text()


def test_frozen_features_embed_a_repeated_batch_once(base_and_crowd):
    """Safe RLHF scores each GRPO batch with a cost head and a reward head: the base embeds it once."""
    from safecrowd_llm.related.features import FrozenFeatures

    features = FrozenFeatures.from_pretrained(str(base_and_crowd / "base"))
    first = features(["how do i bake bread ?"], ["Sure."])
    assert features(["how do i bake bread ?"], ["Sure."]) is first
    other = features(["how do i bake bread ?"], ["No."])
    assert other is not first and not torch.equal(other, first)
