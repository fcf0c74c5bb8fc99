import math

import pytest
import torch
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal, kl_divergence

from safecrowd_llm.core import DiagonalGaussian, GaussianMixturePrior, SetEncoder, StandardNormalPrior


def test_encoder_is_permutation_invariant_and_ignores_padding():
    enc = SetEncoder((2, 3), 4, hidden_dim=32, num_layers=2).eval()
    a, b = torch.randn(2, 6, 2, 3), torch.randn(2, 6, 2, 3)
    y = torch.randint(0, 2, (2, 6)).float()
    q = enc(a, b, y)
    perm = torch.randperm(6)
    q_perm = enc(a[:, perm], b[:, perm], y[:, perm])
    torch.testing.assert_close(q.mean, q_perm.mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(q.logvar, q_perm.logvar, atol=1e-5, rtol=1e-5)
    pad = torch.cat([a, torch.randn(2, 3, 2, 3)], 1), torch.cat([b, torch.randn(2, 3, 2, 3)], 1)
    mask = torch.cat([torch.ones(2, 6), torch.zeros(2, 3)], 1).bool()
    q_pad = enc(pad[0], pad[1], torch.cat([y, torch.ones(2, 3)], 1), mask)
    torch.testing.assert_close(q.mean, q_pad.mean, atol=1e-5, rtol=1e-5)
    # the label matters: flipping every label changes the posterior
    assert not torch.allclose(q.mean, enc(a, b, 1 - y).mean)


def test_encoder_rejects_a_set_with_no_context():
    enc = SetEncoder(3, 2, hidden_dim=16, num_layers=1)
    with pytest.raises(ValueError, match="at least one context"):
        enc(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), torch.zeros(1, 2), torch.zeros(1, 2, dtype=torch.bool))


def test_reparameterised_sample_has_the_posterior_moments_and_gradients():
    mean = torch.tensor([1.0, -2.0], requires_grad=True)
    logvar = torch.log(torch.tensor([0.25, 4.0])).requires_grad_()
    q = DiagonalGaussian(mean, logvar)
    z = q.rsample(20000, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(z.mean(0), mean.detach(), atol=0.05, rtol=0)
    torch.testing.assert_close(z.std(0), torch.tensor([0.5, 2.0]), atol=0.05, rtol=0)
    z.sum().backward()
    assert mean.grad is not None and logvar.grad is not None


def test_standard_normal_kl_is_closed_form_and_nonnegative():
    prior = StandardNormalPrior(3)
    mean, logvar = torch.randn(5, 3), torch.randn(5, 3)
    kl = prior.kl(DiagonalGaussian(mean, logvar))
    ref = kl_divergence(Normal(mean, torch.exp(0.5 * logvar)), Normal(torch.zeros(3), torch.ones(3))).sum(-1)
    torch.testing.assert_close(kl, ref)
    assert (kl >= 0).all()
    assert prior.kl(DiagonalGaussian(torch.zeros(2, 3), torch.zeros(2, 3))).abs().max() < 1e-7
    assert prior.log_prob(torch.zeros(3)).item() == pytest.approx(-1.5 * math.log(2 * math.pi))


def test_mixture_log_prob_matches_torch_distributions():
    prior = GaussianMixturePrior(2, 3, seed=1)
    with torch.no_grad():
        prior.logits.copy_(torch.tensor([0.0, 1.0, -1.0]))
        prior.log_stds.copy_(torch.randn(3, 2) * 0.3)
    ref = MixtureSameFamily(
        Categorical(logits=prior.logits.detach()),
        Independent(Normal(prior.means.detach(), prior.log_stds.detach().exp()), 1),
    )
    z = torch.randn(10, 2)
    torch.testing.assert_close(prior.log_prob(z), ref.log_prob(z))
    assert prior.sample(7).shape == (7, 2)


def test_mixture_kl_monte_carlo_agrees_with_closed_form_when_it_is_one_standard_normal():
    prior = GaussianMixturePrior(2, 1, init_scale=0.0, learnable=False)
    q = DiagonalGaussian(torch.tensor([[0.5, -1.0]]), torch.tensor([[-0.5, 0.3]]))
    torch.manual_seed(0)
    mc = prior.kl(q, num_samples=20000)
    exact = StandardNormalPrior(2).kl(q)
    torch.testing.assert_close(mc, exact, atol=0.03, rtol=0)


def test_mixture_is_learnable_towards_the_data():
    prior = GaussianMixturePrior(1, 2, seed=0)
    data = torch.cat([torch.randn(200, 1) * 0.1 - 2, torch.randn(200, 1) * 0.1 + 2])
    opt = torch.optim.Adam(prior.parameters(), lr=0.05)
    start = -prior.log_prob(data).mean().item()
    for _ in range(300):
        loss = -prior.log_prob(data).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < start - 1.0
    assert sorted(prior.means.detach().flatten().tolist()) == pytest.approx([-2.0, 2.0], abs=0.2)


def test_mixture_from_components_is_the_equal_weight_frozen_mixture_with_floored_stds():
    means, stds = torch.randn(4, 3), torch.tensor([0.01, 0.5, 1.0]).expand(4, 3)
    prior = GaussianMixturePrior.from_components(means, stds, min_std=0.1)
    assert list(prior.parameters()) == []  # frozen: a regulariser reads it, nothing trains it
    ref = MixtureSameFamily(Categorical(logits=torch.zeros(4)), Independent(Normal(means, stds.clamp(min=0.1)), 1))
    z = torch.randn(10, 3)
    torch.testing.assert_close(prior.log_prob(z), ref.log_prob(z))
    with pytest.raises(ValueError, match=r"must both be \(K, D\)"):
        GaussianMixturePrior.from_components(means, stds[:2])
