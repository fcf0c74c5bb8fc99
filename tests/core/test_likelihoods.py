import math

import pytest
import torch

from safecrowd_llm.core import bradley_terry_log_likelihood, cpl_log_likelihood, discounted_sum


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_bradley_terry_matches_hand_computed_values():
    u1, u2, y = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0]), torch.tensor([1.0, 0.0])
    ll = bradley_terry_log_likelihood(u1, u2, y)
    # row 0: first preferred, margin +1 -> log sigma(1); row 1: second preferred, margin -2 -> log sigma(2)
    assert ll.tolist() == pytest.approx([log_sigmoid(1.0), log_sigmoid(2.0)], abs=1e-6)
    weighted = bradley_terry_log_likelihood(u1, u2, y, weights=torch.tensor([2.0, 0.5]))
    assert weighted.tolist() == pytest.approx([2 * log_sigmoid(1.0), 0.5 * log_sigmoid(2.0)], abs=1e-6)


def test_bradley_terry_ties_and_label_noise():
    u1, u2 = torch.tensor([1.0, 1.0]), torch.tensor([0.0, 0.0])
    tie = bradley_terry_log_likelihood(u1, u2, torch.tensor([0.5, 0.5]))
    assert tie[0].item() == pytest.approx(0.5 * (log_sigmoid(1.0) + log_sigmoid(-1.0)), abs=1e-6)
    noisy = bradley_terry_log_likelihood(u1, u2, torch.tensor([1.0, 0.0]), flip_prob=0.1)
    p1 = 1 / (1 + math.exp(-1.0))
    assert noisy.tolist() == pytest.approx(
        [math.log(0.9 * p1 + 0.1 * (1 - p1)), math.log(0.9 * (1 - p1) + 0.1 * p1)], abs=1e-6
    )
    # the noise model bounds the penalty of a confidently contradicted label at log(flip_prob)
    huge = bradley_terry_log_likelihood(torch.tensor([50.0]), torch.tensor([0.0]), torch.tensor([0.0]), flip_prob=0.1)
    assert huge.item() == pytest.approx(math.log(0.1), abs=1e-4)


def test_cpl_matches_hand_computed_values():
    logp1 = torch.tensor([[-1.0, -2.0], [-0.5, -0.5]])
    logp2 = torch.tensor([[-3.0, -1.0], [-2.0, -2.0]])
    ll = cpl_log_likelihood(logp1, logp2, torch.tensor([1.0, 0.0]), alpha=0.5, lam=0.5, gamma=0.9)
    f1 = [0.5 * (-1 - 0.9 * 2), 0.5 * (-0.5 - 0.9 * 0.5)]  # -1.4, -0.475
    f2 = [0.5 * (-3 - 0.9 * 1), 0.5 * (-2 - 0.9 * 2)]  # -1.95, -1.9
    expected = [log_sigmoid(f1[0] - 0.5 * f2[0]), log_sigmoid(f2[1] - 0.5 * f1[1])]
    assert ll.tolist() == pytest.approx(expected, abs=1e-6)


def test_cpl_with_unit_alpha_and_lambda_is_bradley_terry_on_summed_logprobs():
    g = torch.Generator().manual_seed(0)
    logp1, logp2 = -torch.rand(5, 7, generator=g) * 3, -torch.rand(5, 7, generator=g) * 3
    y = torch.tensor([1.0, 0.0, 1.0, 0.5, 0.0])
    w = torch.rand(5, generator=g)
    cpl = cpl_log_likelihood(logp1, logp2, y, alpha=1.0, lam=1.0, weights=w)
    bt = bradley_terry_log_likelihood(logp1.sum(-1), logp2.sum(-1), y, weights=w)
    torch.testing.assert_close(cpl, bt)


def test_cpl_masks_padding_and_conservative_bias_rewards_raising_chosen():
    logp1 = torch.tensor([[-1.0, -9.0]])
    mask = torch.tensor([[1.0, 0.0]])
    masked = cpl_log_likelihood(logp1, torch.tensor([[-2.0, 0.0]]), torch.ones(1), mask1=mask, mask2=mask)
    assert masked.item() == pytest.approx(log_sigmoid(-1.0 + 2.0), abs=1e-6)
    # with lam < 1 lowering the rejected side's log-prob helps less than raising the chosen side's
    base = dict(y=torch.ones(1), lam=0.5)
    up = cpl_log_likelihood(torch.tensor([[-1.0]]), torch.tensor([[-2.0]]), **base)
    down = cpl_log_likelihood(torch.tensor([[-2.0]]), torch.tensor([[-3.0]]), **base)
    assert up.item() > down.item()


def test_discounted_sum():
    x = torch.tensor([[1.0, 1.0, 1.0]])
    assert discounted_sum(x, 0.5).item() == pytest.approx(1.75)


@pytest.mark.parametrize("kwargs", [{"lam": 0.0}, {"lam": 1.5}, {"flip_prob": 0.5}])
def test_cpl_rejects_bad_hyperparameters(kwargs):
    with pytest.raises(ValueError):
        cpl_log_likelihood(torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1), **kwargs)


def test_labels_outside_unit_interval_raise():
    with pytest.raises(ValueError, match="labels"):
        bradley_terry_log_likelihood(torch.zeros(2), torch.zeros(2), torch.tensor([1.0, 2.0]))
