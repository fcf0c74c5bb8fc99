import math

import pytest
import torch

from safecrowd_llm.core import (
    GaussianMixturePrior,
    HighLevelPolicy,
    KLSchedule,
    StandardNormalPrior,
    categorical_high_level_loss,
    elbo_loss,
    high_level_loss,
    select_skills,
)


def test_elbo_sums_target_log_likelihood_and_weights_kl():
    log_lik = torch.tensor([[-1.0, -2.0], [-0.5, -9.0]])
    mask = torch.tensor([[True, True], [True, False]])
    kl = torch.tensor([0.4, 1.0])
    loss, m = elbo_loss(log_lik, kl, beta=0.5, mask=mask)
    # annotator 0: 3 + 0.2; annotator 1: 0.5 + 0.5 (the padded -9 is ignored)
    assert loss.item() == pytest.approx((3.2 + 1.0) / 2)
    assert m["log_lik"] == pytest.approx(-3.5 / 3) and m["elbo"] == pytest.approx(((-3 - 0.4) + (-0.5 - 1)) / 2)
    with pytest.raises(ValueError):
        elbo_loss(log_lik, torch.zeros(3), 1.0)


def test_kl_schedules():
    lin = KLSchedule(2.0, "linear", warmup_steps=100)
    assert [lin(0), lin(50), lin(100), lin(1000)] == pytest.approx([0.0, 1.0, 2.0, 2.0])
    cyc = KLSchedule(1.0, "cyclical", cycle_steps=100, ramp_fraction=0.5)
    assert [cyc(0), cyc(25), cyc(50), cyc(99), cyc(100), cyc(125)] == pytest.approx([0, 0.5, 1, 1, 0, 0.5])
    assert KLSchedule(0.3, "constant")(12345) == 0.3
    with pytest.raises(ValueError, match="kind"):
        KLSchedule(1.0, "exponential")


def test_high_level_loss_online_and_offline():
    q, lp = torch.tensor([1.0, 3.0]), torch.tensor([-2.0, -4.0])
    loss, _ = high_level_loss(q, lp, beta_reg=0.5)
    assert loss.item() == pytest.approx(-((1 - 1) + (3 - 2)) / 2)
    a, a_d = torch.tensor([[1.0, 0.0], [0.0, 0.0]]), torch.tensor([[0.0, 0.0], [0.0, 2.0]])
    off, m = high_level_loss(q, lp, beta_reg=0.5, action=a, data_action=a_d, beta_bc=0.1)
    assert off.item() == pytest.approx(loss.item() + 0.1 * (1 + 4) / 2) and m["bc"] == pytest.approx(2.5)
    with pytest.raises(ValueError, match="data_action"):
        high_level_loss(q, lp, beta_reg=0.5, beta_bc=1.0)


def test_prior_regulariser_pulls_the_continuous_policy_to_the_regularised_optimum():
    # maximise Q(z) = c.z + beta log N(z; 0, I)  ->  z* = c / beta (the prior keeps z' in-distribution)
    torch.manual_seed(0)
    prior, c = StandardNormalPrior(2), torch.tensor([1.0, -0.5])
    for beta, expected in [(2.0, c / 2.0), (0.0, None)]:
        pi = HighLevelPolicy(3, 2, hidden_dim=32, latent_bound=3.0)
        opt = torch.optim.Adam(pi.parameters(), lr=1e-2)
        obs = torch.randn(64, 3)
        for _ in range(400):
            z = pi(obs)
            loss, _ = high_level_loss(z @ c, prior.log_prob(z), beta_reg=beta)
            opt.zero_grad()
            loss.backward()
            opt.step()
        z = pi(obs).detach()
        if expected is not None:
            torch.testing.assert_close(z.mean(0), expected, atol=0.05, rtol=0)
        else:  # without the regulariser the latent runs off to the bound, out of the prior's support
            assert z.abs().mean() > 2.5


def test_categorical_loss_trades_reward_against_prior_density():
    rewards = torch.tensor([[1.0, 0.8, 0.0]])
    log_prior = torch.tensor([-10.0, -1.0, -1.0])
    for beta, best in [(0.0, 0), (1.0, 1)]:
        logits = torch.zeros(1, 3, requires_grad=True)
        opt = torch.optim.SGD([logits], lr=1.0)
        for _ in range(200):
            loss, _ = categorical_high_level_loss(logits, rewards, log_prior, beta_reg=beta)
            opt.zero_grad()
            loss.backward()
            opt.step()
        assert logits.argmax().item() == best
    # exact expectation: uniform policy -> mean reward, entropy log 3
    _, m = categorical_high_level_loss(torch.zeros(1, 3), rewards, log_prior, beta_reg=0.0)
    assert m["expected_reward"] == pytest.approx(0.6) and m["entropy"] == pytest.approx(math.log(3))


def test_categorical_policy_returns_skill_latents():
    latents = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    pi = HighLevelPolicy(4, 2, skill_latents=latents, hidden_dim=8)
    z = pi(torch.randn(5, 4))
    assert z.shape == (5, 2) and all(any(torch.equal(r, lat) for lat in latents) for r in z)
    assert pi.choose(torch.randn(5, 4), deterministic=False).shape == (5,)
    with pytest.raises(RuntimeError):
        HighLevelPolicy(4, 2).logits(torch.randn(1, 4))


def test_skill_selection_finds_the_clusters_and_who_they_cover():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[3.0, 0.0], [-3.0, 0.0], [0.0, 3.0]])
    means = torch.cat([c + 0.2 * torch.randn(6, 2, generator=g) for c in centres])
    ids = [f"c{i // 6}-{i}" for i in range(18)]
    prior = StandardNormalPrior(2)
    sel = select_skills(means, ids, prior, k_range=(2, 6))
    assert sel.k == 3 and max(sel.silhouette, key=sel.silhouette.get) == 3
    for members in sel.covered:
        assert len({m.split("-")[0] for m in members}) == 1 and len(members) == 6
    torch.testing.assert_close(sel.log_prior, prior.log_prob(sel.latents))
    assert select_skills(means, ids, prior, k=2, seed=0).latents.tolist() == select_skills(means, ids, prior, k=2, seed=0).latents.tolist()
    with pytest.raises(ValueError, match="annotators"):
        select_skills(means, ids[:-1], prior, k=2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_select_skills_with_a_learned_prior_on_the_gpu():
    """k-means runs on the CPU; a learned prior trained on the GPU must still score its centres."""
    prior = GaussianMixturePrior(2, 3, seed=0).cuda()
    means = torch.cat([torch.randn(5, 2) * 0.1 + c for c in (-3.0, 0.0, 3.0)])
    sel = select_skills(means, [f"a{i}" for i in range(15)], prior, k=3)
    assert sel.log_prior.device.type == "cpu"
    torch.testing.assert_close(sel.log_prior, prior.cpu().log_prob(sel.latents))
