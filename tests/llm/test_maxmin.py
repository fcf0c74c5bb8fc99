"""MaxMin-RLHF: the EM mixture of Bradley-Terry rewards recovers planted annotator clusters (balanced and a
10:1 minority), EM is monotone, k=1 is plain Bradley-Terry, the policy's reward mixes the task reward with the
minimum over the heads, and GRPO trains and saves a policy + the fitted mixture."""

from __future__ import annotations

import itertools
import json

import pytest

pytest.importorskip("trl", reason="needs the llm extra: pip install -e '.[llm]'")

import torch
import torch.nn.functional as F

from safecrowd_llm.baselines import train_baseline
from safecrowd_llm.related import RelatedBaselineConfig, build_related_objective
from safecrowd_llm.related.features import FrozenFeatures, LinearHeads, fit_bradley_terry, standardiser
from safecrowd_llm.related.maxmin import MinReward, assignment_accuracy, fit_mixture, maxmin_objective
from safecrowd_llm.textworld import helpfulness

from .grpo_support import TINY_GRPO as TINY


def planted_crowd(sizes, dim=16, pairs=30, beta=1.5, seed=0):
    """Annotators in clusters of the given sizes, each cluster a random unit reward vector; every annotator
    labels ``pairs`` random feature pairs by Bradley-Terry with slope ``beta`` (1.5: ~78% agree with the
    cluster's reward). Features have a non-zero mean and unequal scales, so the fit must standardise."""
    g = torch.Generator().manual_seed(seed)
    w = F.normalize(torch.randn(len(sizes), dim, generator=g), dim=1)
    scale, shift = torch.rand(dim, generator=g) + 0.5, 3.0
    chosen, rejected, index, labels = [], [], [], []
    for k, n in enumerate(sizes):
        for _ in range(n):
            x1, x2 = torch.randn(pairs, dim, generator=g), torch.randn(pairs, dim, generator=g)
            first = torch.rand(pairs, generator=g) < torch.sigmoid(beta * (x1 - x2) @ w[k])
            chosen.append(torch.where(first[:, None], x1, x2) * scale + shift)
            rejected.append(torch.where(first[:, None], x2, x1) * scale + shift)
            index += [len(labels)] * pairs
            labels.append(f"type{k}")
    return torch.cat(chosen), torch.cat(rejected), torch.tensor(index), labels


# ------------------------------------------------------------------------------------------------- EM
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_em_recovers_four_planted_clusters(seed):
    chosen, rejected, index, labels = planted_crowd([10, 10, 10, 10], seed=seed)
    fit = fit_mixture(chosen, rejected, index, k=4, seed=seed)
    assert assignment_accuracy(fit.responsibilities, labels) >= 0.9
    assert fit.responsibilities.shape == (40, 4) and fit.annotators == [str(i) for i in range(40)]
    assert torch.allclose(fit.responsibilities.sum(1), torch.ones(40))
    assert fit.weights.sum().item() == pytest.approx(1.0) and (fit.weights > 0.15).all()
    assert fit.heads.weight.shape == (4, 16) and fit.heads.meta["k"] == 4
    assert fit.heads.meta["log_likelihood"] == fit.log_likelihood


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_em_finds_a_ten_to_one_minority(seed):
    chosen, rejected, index, labels = planted_crowd([30, 3], seed=seed)
    fit = fit_mixture(chosen, rejected, index, k=2, seed=seed)
    assert assignment_accuracy(fit.responsibilities, labels) >= 0.95  # 30/33 = 0.91 would not prove it
    clusters = fit.responsibilities.argmax(1)
    majority = torch.mode(clusters[:30]).values
    assert (clusters[30:] != majority).all()  # every minority annotator is outside the majority's cluster
    assert fit.weights.min().item() == pytest.approx(3 / 33, abs=0.03)


def test_em_log_likelihood_never_decreases():
    """Noisy data (beta 1, 15 pairs) where EM keeps moving for many iterations; tol=0 runs them all."""
    chosen, rejected, index, _ = planted_crowd([10, 10, 10, 10], pairs=15, beta=1.0, seed=3)
    fit = fit_mixture(chosen, rejected, index, k=4, iterations=25, tol=0.0, seed=3, restarts=1)
    ll = fit.log_likelihood
    assert len(ll) == 25 and ll[-1] > ll[0] + 1.0  # it did improve, not just stay flat
    for before, after in itertools.pairwise(ll):
        assert after >= before - 1e-4 * abs(before)


def test_one_cluster_is_plain_bradley_terry():
    chosen, rejected, index, _ = planted_crowd([4, 4], pairs=20, seed=4)
    fit = fit_mixture(chosen, rejected, index, k=1, l2=1e-2)
    mean, std = standardiser(chosen, rejected)
    w = fit_bradley_terry((chosen - mean) / std, (rejected - mean) / std, l2=1e-2)
    assert F.cosine_similarity(fit.heads.weight[0], w, dim=0) > 0.99
    assert torch.allclose(fit.heads.mean, mean) and torch.allclose(fit.heads.std, std)
    assert fit.weights.tolist() == [1.0] and torch.allclose(fit.responsibilities, torch.ones(8, 1))


def test_assignment_accuracy_matches_clusters_to_labels():
    resp = F.one_hot(torch.tensor([1, 1, 0, 0, 0]), 2).float()
    assert assignment_accuracy(resp, ["a", "a", "b", "b", "b"]) == 1.0  # cluster names are arbitrary
    assert assignment_accuracy(resp, ["a", "b", "b", "b", "a"]) == pytest.approx(3 / 5)
    assert assignment_accuracy(resp, ["a", "a", "a", "a", "a"]) == pytest.approx(3 / 5)  # one label, one cluster


def test_bad_inputs_raise_clear_errors():
    chosen, rejected, index, labels = planted_crowd([2, 1], pairs=5)
    with pytest.raises(ValueError, match="k=4 clusters but only 3 annotators"):
        fit_mixture(chosen, rejected, index, k=4)
    with pytest.raises(ValueError, match="one shape"):
        fit_mixture(chosen, rejected[:-1], index, k=2)
    with pytest.raises(ValueError, match="one entry per pair"):
        fit_mixture(chosen, rejected, index[:-1], k=2)
    with pytest.raises(ValueError, match="iterations and restarts >= 1"):
        fit_mixture(chosen, rejected, index, k=2, iterations=0)
    with pytest.raises(ValueError, match="2 labels for 3 annotators"):
        assignment_accuracy(torch.ones(3, 2), labels[:2])


# --------------------------------------------------------------------------------------------- reward
@pytest.fixture(scope="module")
def frozen(base_and_crowd):
    return FrozenFeatures.from_pretrained(str(base_and_crowd / "base"))


def test_min_reward_is_the_elementwise_minimum_of_the_heads(frozen):
    prompts = ["how do i fly a kite ?", "tell me about bread", "help me", "hello"]
    completions = ["sure , here you go !", "i am sorry , i can not help .", "ok", "bread is good ."]
    x = frozen(prompts, completions)
    g = torch.Generator().manual_seed(0)
    heads = LinearHeads(x.mean(0), x.std(0) + 1e-3, torch.randn(3, x.shape[1], generator=g))
    scores = heads.scores(x)
    expected = scores.min(1).values
    assert len(set(scores.argmin(1).tolist())) > 1  # different heads are the minimum on different pairs
    assert MinReward(frozen, heads)(prompts, completions) == pytest.approx(expected.tolist(), abs=1e-5)
    assert MinReward(frozen, heads)([], []) == []


def test_objective_mixes_the_task_reward_with_the_scaled_minimum(base_and_crowd, frozen, tmp_path):
    args = RelatedBaselineConfig(output_dir=str(tmp_path), method="maxmin", base_model=str(base_and_crowd / "base"),
                                 dataset=str(base_and_crowd / "crowd.jsonl"), num_clusters=2, em_iterations=5,
                                 omega=0.25, pooled_reward_scaling="standardize", use_cpu=True)
    prompts = ["how do i fly a kite ?", "tell me about bread", "help me"]
    completions = ["sure , here you go !\n- first , get the kite ready .", "i am sorry , i can not help .", "ok"]
    objective, info = maxmin_objective(args, helpfulness, reference=(prompts, completions))
    heads = LinearHeads.load(tmp_path / "maxmin_rewards")
    low = heads.scores(frozen(prompts, completions)).min(1).values.tolist()
    scale = info["maxmin_reward_scaling"]
    expected = [0.75 * helpfulness(p, c) + 0.25 * (scale["a"] * m + scale["b"]) for p, c, m in zip(prompts, completions, low)]
    assert objective(prompts, completions) == pytest.approx(expected, abs=1e-5)
    assert scale["a"] > 0 and objective.__name__ == "maxmin_0.25" and info["omega"] == 0.25 and scale["n"] == 3
    assert heads.weight.shape[0] == 2 and len(heads.meta["annotators"]) == 6


# ---------------------------------------------------------------------------------------------- GRPO
def test_maxmin_trains_and_saves_policy_and_mixture(base_and_crowd, tmp_path):
    args = RelatedBaselineConfig(
        output_dir=str(tmp_path), method="maxmin", base_model=str(base_and_crowd / "base"),
        dataset=str(base_and_crowd / "crowd.jsonl"), num_clusters=2, em_iterations=5, scaling_samples=1,
        scaling_prompts=8, eval_samples_per_prompt=1, **TINY,
    )
    out = train_baseline(args, build=build_related_objective)

    assert (out / "adapter_model.safetensors").exists() and (out / "maxmin_rewards.safetensors").exists()
    manifest = json.loads((out / "policy.json").read_text())
    assert manifest["method"] == "maxmin" and manifest["num_clusters"] == 2
    assert len(manifest["mixing_weights"]) == 2 and sum(manifest["mixing_weights"]) == pytest.approx(1.0)
    assert sum(manifest["cluster_sizes"]) == 6 and 0.0 <= manifest["assignment_accuracy"] <= 1.0
    assert manifest["maxmin_reward_scaling"]["n"] == 8 and manifest["metrics"]["steps"] == 2
    assert all("rewards/maxmin_0.5/mean" in h for h in manifest["metrics"]["reward_curve"])
    assert set(manifest["heldout"]) == {"reference", "policy"}
    meta = json.loads((out / "maxmin_rewards.json").read_text())
    assert meta["k"] == 2 and meta["log_likelihood"][-1] == pytest.approx(manifest["em_log_likelihood"])
    assert meta["assignment_accuracy"] == manifest["assignment_accuracy"]


def test_config_needs_the_crowd_data():
    with pytest.raises(ValueError, match="needs dataset"):
        RelatedBaselineConfig(output_dir="unused", method="maxmin", use_cpu=True)
