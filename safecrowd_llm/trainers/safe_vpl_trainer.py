"""Safe-VPL: a latent-conditioned reward model r(x, y, z') trained with the Bradley-Terry ELBO.

The reward reads the last real token's hidden state of the base LM with the latent LoRA at z', and
z' itself, through a linear head. Its skills are latents of a reward; a policy per skill is trained
on r(., ., z'_k) downstream.
"""

from __future__ import annotations

import torch

from ..core import bradley_terry_log_likelihood
from .base_trainer import LatentSetTrainer

__all__ = ["SafeVPLTrainer"]


class SafeVPLTrainer(LatentSetTrainer):
    """Trains a :class:`LatentSkillModel` of kind ``safe-vpl`` with a :class:`SafeVPLConfig`."""

    def pair_scores(self, model, inputs, z_seq):
        mask = inputs["attention_mask"]
        hidden = model.backbone.base_model(input_ids=inputs["input_ids"], attention_mask=mask).last_hidden_state
        last = mask.sum(1) - 1
        h_last = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # (2M, H)
        return {"rewards": model.reward(h_last, z_seq)}

    def pair_log_likelihood(self, scores, y, weights):
        r = scores["rewards"]
        m = r.shape[0] // 2
        return bradley_terry_log_likelihood(r[:m], r[m:], y, weights=weights, flip_prob=self.args.flip_prob)

    def extra_loss(self, scores):
        r = scores["rewards"]
        m = r.shape[0] // 2
        metrics = {"accuracy": (r[:m] > r[m:]).float().mean().item(), "reward_margin": (r[:m] - r[m:]).mean().item()}
        coef = self.args.center_rewards_coefficient
        return (coef * (r**2).mean() if coef else None), metrics
