"""The downstream baselines (Task-only, RC(omega), Oracle): GRPO or best-of-n + LoRA through TRL, a loadable adapter +
policy.json, RC's exact reward mix, clear errors, and GRPO actually raising a reward on a tiny model."""

from __future__ import annotations

import json
import math
import statistics

import pytest

pytest.importorskip("trl", reason="needs the llm extra: pip install -e '.[llm]'")

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from safecrowd_llm.baselines import (
    AffineScale,
    BaselineConfig,
    RewardCombination,
    build_objective,
    fit_scale,
    load_prompts,
    train_baseline,
)
from safecrowd_llm.best_of_n import best_of_n_rows
from safecrowd_llm.rewards import load_reward
from safecrowd_llm.textworld import ResponseSpec, TextWorld, helpfulness
from safecrowd_llm.tiny_base import build_tiny_model, sample_completions, train_tokenizer, world_texts

from .grpo_support import TINY_GRPO as TINY


@pytest.fixture(scope="module")
def pooled_rm(base_and_crowd, tmp_path_factory):
    """A (randomly initialised) pooled reward model saved as train_pooled saves it: a SEQ_CLS LoRA adapter."""
    out = tmp_path_factory.mktemp("pooled_rm")
    model = AutoModelForSequenceClassification.from_pretrained(base_and_crowd / "base", num_labels=1)
    model.config.pad_token_id = AutoTokenizer.from_pretrained(base_and_crowd / "base").pad_token_id
    get_peft_model(model, LoraConfig(r=2, target_modules="all-linear", task_type="SEQ_CLS")).save_pretrained(out)
    return out


# ------------------------------------------------------------------------------------------ training
@pytest.mark.parametrize("method", ["task-only", "rc", "oracle"])
def test_each_method_trains_and_saves_a_loadable_policy(base_and_crowd, pooled_rm, tmp_path, method):
    base = str(base_and_crowd / "base")
    extra = {"pooled_reward": str(pooled_rm), "omega": 0.25, "scaling_samples": 1, "scaling_prompts": 8}
    args = BaselineConfig(output_dir=str(tmp_path), method=method, base_model=base, eval_samples_per_prompt=1,
                          **(extra if method == "rc" else {}), **TINY)
    out = train_baseline(args)

    assert (out / "adapter_model.safetensors").exists() and not list(out.glob("*.bin"))
    policy = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(out))
    assert policy.peft_config["default"].task_type == "CAUSAL_LM"
    manifest = json.loads((out / "policy.json").read_text())
    assert manifest["method"] == method and manifest["base_model"] == base
    assert manifest["task_reward"] == "safecrowd_llm.textworld.judges.helpfulness"
    assert manifest["metrics"]["steps"] == 2 and len(manifest["metrics"]["reward_curve"]) == 2
    assert "rewards/safety_cost/mean" in manifest["metrics"]["reward_curve"][0]  # cost monitored, weight 0
    assert manifest["training"]["reward_weights"][0] == 1.0 and not any(manifest["training"]["reward_weights"][1:])
    assert set(manifest["heldout"]) == {"reference", "policy"}
    assert manifest["heldout"]["policy"]["samples"] == len(TextWorld.from_yaml().split_prompts()[1])
    if method == "rc":
        scaling = manifest["pooled_reward_scaling"]
        assert manifest["omega"] == 0.25 and scaling["mode"] == "match-task" and scaling["n"] == 8
    if method == "oracle":
        assert manifest["oracle_penalty"] == 1.0


# ------------------------------------------------------------------------------------------- rewards
def test_rc_mixes_task_and_scaled_pooled_reward_exactly():
    def task(prompt: str, completion: str) -> float:
        return len(completion) / 10

    def pooled(prompts, completions):
        return [float(len(p)) for p in prompts]

    rc = RewardCombination(task, pooled, omega=0.25, scale=AffineScale(a=0.5, b=-1.0))
    prompts, completions = ["ab", "abcd"], ["x" * 5, "y" * 10]
    # (1 - 0.25) * [0.5, 1.0] + 0.25 * (0.5 * [2, 4] - 1) = [0.375, 0.75] + [0.0, 0.25]
    assert rc.batch(prompts, completions) == pytest.approx([0.375, 1.0])
    assert rc("ab", "x" * 5) == pytest.approx(0.375)
    logged = {}
    trl_fn = rc.as_trl()  # TRL passes message lists and a metric logger
    msgs = [[{"role": "user", "content": p}] for p in prompts]
    outs = [[{"role": "assistant", "content": c}] for c in completions]
    assert trl_fn(msgs, outs, log_metric=logged.__setitem__) == pytest.approx([0.375, 1.0])
    assert trl_fn.__name__ == "rc_0.25" and logged == {"rc/scaled_r_hat": pytest.approx(0.5)}
    for omega, expected in [(0.0, [0.5, 1.0]), (1.0, [0.0, 1.0])]:
        assert RewardCombination(task, pooled, omega, AffineScale(0.5, -1.0)).batch(prompts, completions) == (
            pytest.approx(expected)
        )


def test_fit_scale_puts_r_hat_on_the_task_scale():
    r_hat, task = [1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 1.0, 1.0]
    s = fit_scale(r_hat, task, "match-task")  # mean 2.5, std sqrt(1.25) -> mean 0.5, std 0.5
    assert s.a == pytest.approx(0.5 / math.sqrt(1.25)) and s.b == pytest.approx(0.5 - s.a * 2.5)
    scaled = [s(x) for x in r_hat]
    assert statistics.fmean(scaled) == pytest.approx(0.5) and statistics.pstdev(scaled) == pytest.approx(0.5)
    z = [fit_scale(r_hat, mode="standardize")(x) for x in r_hat]
    assert statistics.fmean(z) == pytest.approx(0.0) and statistics.pstdev(z) == pytest.approx(1.0)
    assert [fit_scale(r_hat, mode="minmax")(x) for x in r_hat] == pytest.approx([0, 1 / 3, 2 / 3, 1])
    assert fit_scale([3.0, 3.0], [0.0, 1.0]).a == 0.0  # a constant r_hat adds a constant: RC = Task-only
    with pytest.raises(ValueError, match="same reference completions"):
        fit_scale(r_hat, None, "match-task")


def test_oracle_objective_is_task_minus_true_cost():
    world = TextWorld.from_yaml()
    hazardous = next(p for p in world.prompts if p.hazardous)
    benign = next(p for p in world.prompts if not p.hazardous)
    comply = ResponseSpec(False, world.style.detailed_sentences, "formal", "prose")
    refuse = ResponseSpec(True, world.style.brief_sentences, "formal", "prose")
    args = BaselineConfig(output_dir="unused", method="oracle", oracle_penalty=2.0, use_cpu=True)
    oracle, info = build_objective(args, helpfulness, world)
    cases = [(hazardous, comply, -2.0), (hazardous, refuse, 0.0), (benign, comply, 0.0)]
    prompts = [[{"role": "user", "content": p.text}] for p, _, _ in cases]
    completions = [world.render(p, spec) for p, spec, _ in cases]
    expected = [helpfulness(p.text, c) + penalty for (p, _, penalty), c in zip(cases, completions)]
    assert oracle(prompts, completions) == pytest.approx(expected)
    assert expected[0] < expected[1] < expected[2] and info["oracle_penalty"] == 2.0


@pytest.mark.parametrize(("name", "match"), [
    ("helpfulness", "dotted name"),
    ("no_such_module_xyz.reward", "cannot import module"),
    ("safecrowd_llm.textworld.judges.no_such_reward", "has no attribute 'no_such_reward'"),
    ("safecrowd_llm.textworld.judges.TASKS", "not a callable"),
])
def test_a_bad_reward_name_raises_a_clear_error(name, match):
    with pytest.raises(ValueError, match=match):
        load_reward(name)


def test_prompts_come_from_the_world_or_a_prompt_column(tmp_path):
    world = TextWorld.from_yaml()
    train, held_out = world.split_prompts()
    default = load_prompts(BaselineConfig(output_dir="unused", use_cpu=True), world)
    assert default == [p.text for p in train] and not set(default) & {p.text for p in held_out}
    (tmp_path / "p.jsonl").write_text('{"prompt": "hi", "x": 1}\n{"prompt": "bye", "x": 2}\n')
    assert load_prompts(BaselineConfig(output_dir="unused", prompts=str(tmp_path / "p.jsonl"), use_cpu=True),
                        world) == ["hi", "bye"]
    (tmp_path / "q.jsonl").write_text('{"text": "hi"}\n')
    with pytest.raises(ValueError, match="no 'prompt' column"):
        load_prompts(BaselineConfig(output_dir="unused", prompts=str(tmp_path / "q.jsonl"), use_cpu=True), world)


def test_config_validates_the_method():
    assert load_reward("safecrowd_llm.textworld.judges.helpfulness") is helpfulness
    with pytest.raises(ValueError, match="method must be one of"):
        BaselineConfig(output_dir="unused", method="magic", use_cpu=True)
    with pytest.raises(ValueError, match="needs pooled_reward"):
        BaselineConfig(output_dir="unused", method="rc", use_cpu=True)
    with pytest.raises(ValueError, match=r"omega must be in \[0, 1\]"):
        BaselineConfig(output_dir="unused", method="rc", omega=1.5, pooled_reward="x", use_cpu=True)


# -------------------------------------------------------------------------------------- real behaviour
def e_fraction(prompt: str, completion: str) -> float:
    """A dense task reward a random tiny LM can improve on: the share of 'e' among the characters."""
    return completion.count("e") / max(len(completion), 1)


def peaked_tiny_base(path):
    """A tiny untrained base saved to ``path``, its tokenizer, and a function giving the mean e_fraction of
    held-out samples from any model on that tokenizer (the measure both optimiser tests use)."""
    world = TextWorld.from_yaml()
    tok = train_tokenizer(world_texts(world))
    model = build_tiny_model(tok, hidden_size=32, num_layers=1, num_heads=2, seed=0)
    with torch.no_grad():  # random init gives near-uniform next tokens that LoRA cannot sharpen; make it peaked
        model.model.embed_tokens.weight.mul_(12.0)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    prompts = [p.text for p in world.split_prompts()[1]]  # held out from training

    def mean_reward(m) -> float:
        texts = sample_completions(m, tok, prompts, n=8, max_new_tokens=16, seed=1)
        return statistics.fmean(e_fraction("", t) for t in texts)

    return model, mean_reward


def test_grpo_raises_the_task_reward_of_sampled_completions(tmp_path):
    """20 GRPO steps on e_fraction (by dotted name) move the policy: held-out samples score higher, and every
    LoRA B matrix (initialised to zero) was trained. ~20 s on one thread; measured 0.073 -> 0.24 / 0.41 for
    seeds 0 / 1."""
    model, mean_reward = peaked_tiny_base(tmp_path / "base")
    args = BaselineConfig(
        output_dir=str(tmp_path / "policy"), method="task-only", task_reward=f"{__name__}.e_fraction",
        base_model=str(tmp_path / "base"), eval_samples_per_prompt=0, **{
            **TINY, "max_steps": 20, "per_device_train_batch_size": 32, "num_generations": 4,
            "max_completion_length": 16, "learning_rate": 3e-2, "lora_r": 8, "lora_alpha": 16,
            "lr_scheduler_type": "constant", "logging_steps": 5,
        },
    )
    out = train_baseline(args)

    policy = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "base"), str(out))
    before, after = mean_reward(model), mean_reward(policy)
    assert after > before + 0.05, (before, after)
    lora_b = {k: v for k, v in load_file(out / "adapter_model.safetensors").items() if "lora_B" in k}
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b.values())
    curve = json.loads((out / "policy.json").read_text())["metrics"]["reward_curve"]
    assert len(curve) == 4 and all("rewards/task/mean" in h for h in curve)


# ------------------------------------------------------------------------------------------ best-of-n
def test_best_of_n_rows_keep_each_prompts_best_completion():
    rows = best_of_n_rows(["p0", "p1"], ["a", "b", "c", "d", "e", "f"], [0.1, 0.9, 0.5, 0.2, 0.2, 0.0], n=3)
    assert [r["completion"][0]["content"] for r in rows] == ["b", "d"]  # ties go to the first sample
    assert [r["prompt"][0]["content"] for r in rows] == ["p0", "p1"] and [r["reward"] for r in rows] == [0.9, 0.2]
    with pytest.raises(ValueError, match="expected 3 completions and rewards per prompt for 2 prompts"):
        best_of_n_rows(["p0", "p1"], ["a"] * 5, [0.0] * 5, n=3)


def test_optimizer_is_validated():
    with pytest.raises(ValueError, match="optimizer must be one of"):
        BaselineConfig(output_dir="unused", optimizer="ppo", use_cpu=True)
    with pytest.raises(ValueError, match="bon_samples >= 2"):
        BaselineConfig(output_dir="unused", optimizer="best-of-n", bon_samples=1, use_cpu=True)


def test_best_of_n_raises_the_task_reward_and_resumes_after_the_last_round(tmp_path):
    """Two best-of-n rounds on e_fraction raise held-out samples' reward; each round's adapter is kept, and a
    rerun with one more round trains only that round. ~20 s; measured 0.073 -> 0.135 (slower than GRPO here:
    supervised steps on the best of 16 random strings only push the best up, nothing down)."""
    model, mean_reward = peaked_tiny_base(tmp_path / "base")
    settings = {**TINY, "max_completion_length": 16, "learning_rate": 3e-2, "lr_scheduler_type": "constant",
                "per_device_train_batch_size": 16}

    def run(rounds: int):
        args = BaselineConfig(output_dir=str(tmp_path / "policy"), method="task-only", optimizer="best-of-n",
                              task_reward=f"{__name__}.e_fraction", base_model=str(tmp_path / "base"),
                              eval_samples_per_prompt=0, bon_rounds=rounds, bon_samples=16, bon_epochs=6, **settings)
        out = train_baseline(args)
        return out, json.loads((out / "policy.json").read_text())["metrics"]

    out, metrics = run(2)
    policy = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "base"), str(out))
    before, after = mean_reward(model), mean_reward(policy)
    assert after > before + 0.03, (before, after, metrics)
    curve = metrics["reward_curve"]
    assert [c["round"] for c in curve] == [0, 1] and all(c["reward_best_of_n"] >= c["reward"] for c in curve)
    assert curve[1]["reward"] > curve[0]["reward"]  # round 1 samples from the round-0 policy
    assert (out / "bon_round_0" / "adapter_model.safetensors").exists() and (out / "bon_round_1").is_dir()
    steps_per_round = metrics["steps"] // 2

    _, resumed = run(3)
    assert resumed["steps"] == steps_per_round and [c["round"] for c in resumed["reward_curve"]] == [0, 1, 2]
    assert resumed["reward_curve"][:2] == curve
