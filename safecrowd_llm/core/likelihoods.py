"""Preference likelihoods as pure functions: Bradley-Terry and CPL regret.

Both return the *per-comparison* log-likelihood of the observed label, so callers sum over the
target part of a preference set (the ELBO) or average over a batch (a plain reward model).

Labels ``y`` are floats in [0, 1]: 1 means the first item was preferred, 0 the second, 0.5 a tie;
any soft value is read as a Bernoulli target, ``y log P(1) + (1 - y) log P(0)``.
``flip_prob`` (epsilon) models label noise: an annotator reports the wrong side with probability
epsilon, so ``P_obs(1) = (1 - epsilon) P(1) + epsilon P(0)``; it bounds the loss of any single
mislabelled pair instead of letting it dominate the gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["bradley_terry_log_likelihood", "cpl_log_likelihood", "discounted_sum"]


def _check_labels(y: Tensor, flip_prob: float) -> None:
    if not 0.0 <= flip_prob < 0.5:
        raise ValueError(f"flip_prob must be in [0, 0.5), got {flip_prob}")
    if y.numel() and (y.min() < 0 or y.max() > 1):
        raise ValueError(f"labels must lie in [0, 1], got min {y.min().item()} max {y.max().item()}")


def _binary_log_likelihood(logit: Tensor, y: Tensor, weights: Tensor | None, flip_prob: float) -> Tensor:
    """log P(y) for P(y=1) = sigmoid(logit), with optional flip noise and per-item weights."""
    y = y.to(logit.dtype)
    _check_labels(y, flip_prob)
    if flip_prob == 0.0:
        log_p1, log_p0 = F.logsigmoid(logit), F.logsigmoid(-logit)
    else:
        # log((1-e) sigmoid(x) + e sigmoid(-x)), computed stably in log space.
        log_e, log_1me = torch.log(torch.tensor(flip_prob)), torch.log1p(torch.tensor(-flip_prob))
        log_p1 = torch.logaddexp(log_1me + F.logsigmoid(logit), log_e + F.logsigmoid(-logit))
        log_p0 = torch.logaddexp(log_1me + F.logsigmoid(-logit), log_e + F.logsigmoid(logit))
    ll = y * log_p1 + (1 - y) * log_p0
    return ll if weights is None else ll * weights.to(ll.dtype)


def bradley_terry_log_likelihood(
    u1: Tensor, u2: Tensor, y: Tensor, *, weights: Tensor | None = None, flip_prob: float = 0.0
) -> Tensor:
    """Bradley-Terry log-likelihood of preference labels.

    P(y=1 | tau1, tau2, z') = sigmoid(u(tau1, z') - u(tau2, z'))

    Args:
        u1, u2: utilities of the two sides (any shape ``(...,)``, e.g. ``(B,)`` or ``(A, N)`` for
            N comparisons of A annotators); a segment's utility is usually its summed reward.
        y: labels in [0, 1], same shape (1 = first preferred, 0.5 = tie).
        weights: optional per-comparison weights, same shape (e.g. annotator confidence).
        flip_prob: probability that a label was flipped (label-noise model), in [0, 0.5).

    Returns:
        ``(...,)`` per-comparison (weighted) log-likelihood; higher is better.
    """
    return _binary_log_likelihood(u1 - u2, y, weights, flip_prob)


def discounted_sum(x: Tensor, gamma: float = 1.0, mask: Tensor | None = None) -> Tensor:
    """Sum_t gamma^t x_t over the last dimension ``(..., T) -> (...)``; ``mask`` zeroes padding."""
    if mask is not None:
        x = x * mask.to(x.dtype)
    if gamma != 1.0:
        x = x * gamma ** torch.arange(x.shape[-1], device=x.device, dtype=x.dtype)
    return x.sum(-1)


def cpl_log_likelihood(
    logp1: Tensor,
    logp2: Tensor,
    y: Tensor,
    *,
    alpha: float = 1.0,
    lam: float = 1.0,
    gamma: float = 1.0,
    mask1: Tensor | None = None,
    mask2: Tensor | None = None,
    weights: Tensor | None = None,
    flip_prob: float = 0.0,
) -> Tensor:
    """Contrastive Preference Learning (regret) log-likelihood with a conservative bias.

    f(tau | z') = sum_t gamma^t alpha log pi(a_t | s_t, z')
    P(y=1)      = exp f1 / (exp f1 + exp(lam f2))  = sigmoid(f1 - lam f2)
    P(y=0)      = exp f2 / (exp f2 + exp(lam f1))  = sigmoid(f2 - lam f1)

    The bias lam in (0, 1] discounts the dispreferred side: with log-probabilities <= 0, lam < 1
    makes the rejected segment look *more* likely, so the policy must push its own probability of the
    preferred segment up rather than only pushing the rejected one down (the CPL paper's
    conservative variant). With lam = 1 and alpha = 1 this is Bradley-Terry on summed log-probs.
    For y in {0, 1} the two cases use their own normaliser, so P(1) + P(0) != 1 when lam < 1; soft
    labels mix the two log-likelihoods.

    Args:
        logp1, logp2: ``(..., T)`` per-step log pi(a_t | s_t, z') of each side (per token for LMs).
        y: ``(...,)`` labels in [0, 1].
        alpha: temperature on the log-probabilities (the CPL/KL-regularisation scale).
        lam: conservative bias, in (0, 1].
        gamma: discount over steps.
        mask1, mask2: optional ``(..., T)`` masks (1 = real step), for padded segments/responses.
        weights: optional ``(...,)`` per-comparison weights.
        flip_prob: label-flip probability, in [0, 0.5).

    Returns:
        ``(...,)`` per-comparison (weighted) log-likelihood.
    """
    if not 0.0 < lam <= 1.0:
        raise ValueError(f"lam (conservative bias) must be in (0, 1], got {lam}")
    f1 = alpha * discounted_sum(logp1, gamma, mask1)
    f2 = alpha * discounted_sum(logp2, gamma, mask2)
    y = y.to(f1.dtype)
    _check_labels(y, flip_prob)
    ll1 = _binary_log_likelihood(f1 - lam * f2, torch.ones_like(y), None, flip_prob)
    ll0 = _binary_log_likelihood(f2 - lam * f1, torch.ones_like(y), None, flip_prob)
    ll = y * ll1 + (1 - y) * ll0
    return ll if weights is None else ll * weights.to(ll.dtype)
