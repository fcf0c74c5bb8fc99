"""Safe RLHF as a related baseline: the cost model learns the safety labels, the Lagrange multiplier does
projected dual ascent, the reward is r_new - lambda * P(unsafe), missing labels fail clearly, and a GRPO run
saves the adapter, the cost head and the multiplier's trajectory."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import pytest

pytest.importorskip("trl", reason="needs the llm extra: pip install -e '.[llm]'")

import torch

from safecrowd_llm.baselines import train_baseline
from safecrowd_llm.data import load_preferences
from safecrowd_llm.related import RelatedBaselineConfig, build_related_objective
from safecrowd_llm.related.features import FrozenFeatures, LinearHeads
from safecrowd_llm.related.safe_rlhf import (
    CostModel,
    LagrangeMultiplier,
    LagrangianReward,
    fit_cost_model,
    safe_rlhf_objective,
)
from safecrowd_llm.textworld import TextWorld, read_jsonl, write_jsonl

from .grpo_support import TINY_GRPO as TINY


# ------------------------------------------------------------------------------------- the multiplier
def test_multiplier_rises_over_budget_falls_under_it_and_stays_in_range():
    m = LagrangeMultiplier(budget=0.1, init=1.0, lr=2.0, lambda_max=2.5)
    assert m.update(0.6) == pytest.approx(2.0)  # 1 + 2 * (0.6 - 0.1)
    assert m.update(0.6) == pytest.approx(2.5)  # 3.0, clipped at lambda_max
    assert m.update(0.0) == pytest.approx(2.3)  # 2.5 + 2 * (0 - 0.1)
    for _ in range(20):
        m.update(0.0)
    assert m.value == 0.0 and m.history[-1] == 0.0  # projected onto lambda >= 0
    assert len(m.history) == 23 and all(0.0 <= v <= 2.5 for v in m.history)
    assert m.update(0.1) == 0.0  # exactly on budget: no change
    with pytest.raises(ValueError):
        LagrangeMultiplier(budget=0.1, init=5.0, lambda_max=3.0)


def test_lagrangian_reward_uses_the_current_lambda_then_takes_one_dual_step():
    phase = {"cost": 0.9}
    cost_calls = []

    def cost(prompts, completions):
        cost_calls.append((list(prompts), list(completions)))
        return [phase["cost"]] * len(completions)

    def task(prompt, completion):
        return float(len(completion))

    m = LagrangeMultiplier(budget=0.2, init=1.0, lr=1.0, lambda_max=10.0)
    reward = LagrangianReward(task, cost, m).as_trl()
    assert reward.__name__ == "safe_rlhf"
    prompts = [[{"role": "user", "content": "how do i bake bread ?"}]] * 3  # TRL message lists
    completions = [[{"role": "assistant", "content": "x" * n}] for n in (1, 2, 3)]
    lambdas, logged = [], []
    for step in range(6):
        if step == 3:
            phase["cost"] = 0.0
        before = m.value
        out = reward(prompts, completions, log_metric=lambda k, v: logged.append((k, v)))
        lambdas.append(m.value)
        assert out == pytest.approx([n - before * phase["cost"] for n in (1, 2, 3)])
        assert dict(logged[-2:]) == pytest.approx({"safe_rlhf/lambda": before, "safe_rlhf/cost": phase["cost"]})
    assert cost_calls[0] == (["how do i bake bread ?"] * 3, ["x", "xx", "xxx"])  # scored as text
    assert lambdas[0] < lambdas[1] < lambdas[2]  # cost 0.9 > budget: lambda rises
    assert lambdas[2] > lambdas[3] > lambdas[4] > lambdas[5]  # cost 0 < budget: lambda falls
    assert lambdas == pytest.approx([1.7, 2.4, 3.1, 2.9, 2.7, 2.5]) and m.history == lambdas


# ------------------------------------------------------------------------------------- the cost model
def _textworld_pairs(prompts, seed=0):
    """One (comply, refuse) pair per prompt with random styles, in random order, with their unsafe labels."""
    world, rng = TextWorld.from_yaml(), random.Random(seed)
    comply = [s for s in world.specs if not s.refused]
    refuse = [s for s in world.specs if s.refused]
    rows = []
    for p in prompts:
        a, b = rng.choice(comply), rng.choice(refuse)
        if rng.random() < 0.5:
            a, b = b, a
        rows.append({"prompt": p.text, "chosen": world.render(p, a), "rejected": world.render(p, b),
                     "chosen_unsafe": a.is_unsafe(p.hazardous), "rejected_unsafe": b.is_unsafe(p.hazardous)})
    return rows


def _bag_of_words(prompts, completions, vocab):
    """Word-presence features of prompt + completion: unsafe (hazardous topic AND no refusal) is linear in them."""
    x = torch.zeros(len(prompts), len(vocab))
    for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        for word in f"{p} {c}".split():
            if word in vocab:
                x[i, vocab[word]] = 1.0
    return x


def test_cost_model_learns_textworld_safety_labels_and_generalises_to_heldout_prompts():
    world = TextWorld.from_yaml()
    train_prompts, eval_prompts = world.split_prompts()
    vocab = {w: i for i, w in enumerate(sorted({w for p in world.prompts for s in world.specs
                                                 for w in f"{p.text} {world.render(p, s)}".split()}))}

    def tensors(rows):
        ps = [r["prompt"] for r in rows]
        return (_bag_of_words(ps, [r["chosen"] for r in rows], vocab),
                _bag_of_words(ps, [r["rejected"] for r in rows], vocab),
                torch.tensor([r["chosen_unsafe"] for r in rows]), torch.tensor([r["rejected_unsafe"] for r in rows]))

    train = tensors(_textworld_pairs(train_prompts, seed=0))
    head = fit_cost_model(*train)
    assert head.meta["label_accuracy"] >= 0.95 and head.meta["pair_accuracy"] >= 0.95
    assert head.meta["safety_pairs"] == sum(p.hazardous for p in train_prompts) > 0
    assert head.weight.shape == (1, len(vocab)) and head.bias.shape == (1,)

    xc, xr, cu, ru = tensors(_textworld_pairs(eval_prompts, seed=1))  # unseen prompts, fresh styles
    p_unsafe = torch.sigmoid(head.scores(torch.cat([xc, xr]))[:, 0])
    labels = torch.cat([cu, ru])
    assert ((p_unsafe > 0.5) == labels).float().mean() >= 0.95
    assert p_unsafe[labels].min() > p_unsafe[~labels].max()  # every unsafe response costs more than every safe one
    assert float(p_unsafe.min()) >= 0.0 and float(p_unsafe.max()) <= 1.0


def test_cost_model_minimises_safe_rlhf_cost_loss_and_recovers_the_risk_direction():
    """Noisy labels from a hidden risk direction (the riskier response of some pairs is unsafe, of others both
    responses are safe or both unsafe): the head points along that direction, and sits at a stationary point of
    the *whole* cost-model loss (label term + pair term + L2), not of the label term alone."""
    torch.manual_seed(0)
    n, h, l2 = 300, 5, 1e-3
    chosen, rejected = torch.randn(n, h) * 3 + 1, torch.randn(n, h) * 3 + 1
    direction = torch.tensor([1.0, -2.0, 0.5, 0.0, 0.0])
    cu = torch.rand(n) < torch.sigmoid(chosen @ direction)
    ru = torch.rand(n) < torch.sigmoid(rejected @ direction)
    head = fit_cost_model(chosen, rejected, cu, ru, l2=l2)
    differ = cu != ru
    assert head.meta["safety_pairs"] == int(differ.sum()) > 50 and head.meta["pair_accuracy"] >= 0.9
    assert torch.nn.functional.cosine_similarity(head.weight[0] / head.std, direction, dim=0) > 0.9

    w, b = head.weight[0].clone().requires_grad_(), head.bias[0].clone().requires_grad_()
    xc, xr = (chosen - head.mean) / head.std, (rejected - head.mean) / head.std
    labels = torch.nn.functional.binary_cross_entropy_with_logits(torch.cat([xc, xr]) @ w + b,
                                                                  torch.cat([cu, ru]).float())
    unsafe, safe = torch.where(cu[:, None], xc, xr)[differ], torch.where(cu[:, None], xr, xc)[differ]
    pairs = -torch.nn.functional.logsigmoid((unsafe - safe) @ w).mean()
    grad_full = torch.autograd.grad(labels + pairs + l2 * w.square().sum(), [w, b], retain_graph=True)
    grad_labels = torch.autograd.grad(labels + l2 * w.square().sum(), [w, b])
    assert max(float(g.abs().max()) for g in grad_full) < 1e-4
    assert max(float(g.abs().max()) for g in grad_labels) > 1e-3
    none = fit_cost_model(chosen, rejected, torch.zeros(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool))
    assert none.meta["safety_pairs"] == 0 and none.meta["pair_accuracy"] is None


def test_cost_model_on_frozen_base_features_gives_probabilities(base_and_crowd, tmp_path):
    data = load_preferences(str(base_and_crowd / "crowd.jsonl"))
    features = FrozenFeatures.from_pretrained(str(base_and_crowd / "base"), cache_dir=tmp_path / "cache")
    chosen, rejected = features.preference_pairs(data)
    head = fit_cost_model(chosen, rejected, torch.tensor(data["chosen_unsafe"]), torch.tensor(data["rejected_unsafe"]))
    assert 0.0 <= head.meta["label_accuracy"] <= 1.0 and head.meta["responses"] == 2 * len(data)
    head.save(tmp_path / "cost_model")
    cost = CostModel(features, LinearHeads.load(tmp_path / "cost_model"))
    prompts = [*data["prompt"][:4], [{"role": "user", "content": data["prompt"][0]}]]
    completions = [*data["chosen"][:4], [{"role": "assistant", "content": data["chosen"][0]}]]
    p = cost(prompts, completions)
    assert len(p) == 5 and all(0.0 <= v <= 1.0 for v in p)
    assert p[4] == pytest.approx(p[0], abs=1e-5)  # message lists are scored as their text
    assert p[:4] == pytest.approx(torch.sigmoid(head.scores(chosen[:4])[:, 0]).tolist(), abs=1e-5)
    assert cost([], []) == []


@pytest.mark.parametrize(("missing", "everywhere"), [("chosen_unsafe", True), ("rejected_unsafe", True),
                                                      ("rejected_unsafe", False)])
def test_missing_safety_labels_fail_naming_the_column(base_and_crowd, tmp_path, missing, everywhere):
    rows = read_jsonl(base_and_crowd / "crowd.jsonl")
    for r in rows if everywhere else rows[:1]:
        if everywhere:
            del r[missing]
        else:
            r[missing] = None  # one unlabelled response
    write_jsonl(rows, tmp_path / "unlabelled.jsonl")
    args = SimpleNamespace(dataset=str(tmp_path / "unlabelled.jsonl"))
    with pytest.raises(ValueError, match=f"Safe RLHF needs explicit safety labels.*{missing}"):
        safe_rlhf_objective(args, task=lambda p, c: 0.0)


# ------------------------------------------------------------------------------------------ end to end
def test_safe_rlhf_trains_and_records_the_multiplier(base_and_crowd, tmp_path):
    calls = []

    def build(args, task, world, reference):
        objective, info = build_related_objective(args, task, world, reference)

        def counted(*a, **kw):
            calls.append(1)
            return objective(*a, **kw)

        counted.__name__ = objective.__name__
        return counted, info

    args = RelatedBaselineConfig(output_dir=str(tmp_path), method="safe-rlhf", base_model=str(base_and_crowd / "base"),
                                 dataset=str(base_and_crowd / "crowd.jsonl"), eval_samples_per_prompt=1,
                                 cost_budget=0.0, lambda_init=0.5, **TINY)
    out = train_baseline(args, build=build)

    assert (out / "adapter_model.safetensors").exists() and (out / "cost_model.safetensors").exists()
    head = LinearHeads.load(out / "cost_model")
    assert head.meta["kind"] == "safe-rlhf-cost" and head.meta["dataset"] == args.dataset
    manifest = json.loads((out / "policy.json").read_text())
    assert manifest["method"] == "safe-rlhf" and manifest["cost_budget"] == 0.0 and manifest["lambda_init"] == 0.5
    assert manifest["cost_model"]["label_accuracy"] == pytest.approx(head.meta["label_accuracy"])
    history, costs = manifest["lambda_history"], manifest["cost_history"]
    assert len(calls) >= 1 and len(history) == len(costs) == len(calls)
    assert all(0.0 <= c <= 1.0 for c in costs)
    # budget 0 and lr 1: each step adds that batch's mean predicted cost
    assert history == pytest.approx([0.5 + sum(costs[: i + 1]) for i in range(len(costs))])
    assert "rewards/safe_rlhf/mean" in manifest["metrics"]["reward_curve"][0]
    assert set(manifest["heldout"]) == {"reference", "policy"}


def test_safe_rlhf_with_a_reward_model_mixes_it_with_the_task(base_and_crowd, tmp_path):
    """omega > 0: Safe RLHF's separate reward model (a BT head on the crowd) enters the objective as RC mixes r_hat."""
    args = RelatedBaselineConfig(output_dir=str(tmp_path), method="safe-rlhf", base_model=str(base_and_crowd / "base"),
                                 dataset=str(base_and_crowd / "crowd.jsonl"), omega=0.5, scaling_prompts=4,
                                 scaling_samples=1, eval_samples_per_prompt=0, **TINY)
    out = train_baseline(args, build=build_related_objective)
    policy = json.loads((out / "policy.json").read_text())
    assert (out / "reward_model.safetensors").exists() and (out / "cost_model.safetensors").exists()
    assert policy["omega"] == 0.5 and "reward_model_scaling" in policy
    assert len(policy["lambda_history"]) >= 1
