"""The Safe-VPL reward r_phi(x, y, z) of a trained latent reward model, read at one fixed latent z.

Used where a Safe-VPL latent becomes a scalar reward: its skill policies (:mod:`.vpl_policies`, best-of-n on
r_phi(., ., z_k)) and plain VPL (:mod:`.related.vpl`, r_phi at the prior mean mixed with the task reward).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .core import GaussianMixturePrior
from .latent_lora import set_latent
from .rewards import as_text
from .trainers import LatentSkillModel
from .trainers.set_data import tokenize_response

__all__ = ["LatentReward", "prior_mean"]


def prior_mean(model: LatentSkillModel) -> Tensor:
    """E[z] under the model's prior: 0 for N(0, I), the weighted component means for a mixture."""
    prior = model.vae.prior
    if isinstance(prior, GaussianMixturePrior):
        return (torch.softmax(prior.logits.detach(), -1)[:, None] * prior.means.detach()).sum(0)
    return torch.zeros(model.latent_dim)


class LatentReward:
    """``(prompts, completions) -> r_phi(x, y, z)`` of a trained Safe-VPL model at a fixed latent ``z``."""

    def __init__(self, model: LatentSkillModel, tokenizer: Any, z: Tensor, max_length: int = 512,
                 batch_size: int = 32) -> None:
        if model.head is None:
            raise ValueError("plain VPL needs a Safe-VPL reward model (this one has no reward head: a Safe-CPL policy?)")
        self.model, self.tokenizer, self.max_length, self.batch_size = model.eval(), tokenizer, max_length, batch_size
        self.z = z.detach().float().reshape(-1)

    @classmethod
    def from_run(cls, run_dir: str | Path, base_model: str, dtype: str = "float32", trust_remote_code: bool = False,
                 z: Tensor | None = None) -> LatentReward:
        """Load ``<run_dir>/latent_model`` (``train_skills.py --method safe-vpl``) on ``base_model``."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(run_dir) / "latent_model"
        if not (path / "skill_model.json").exists():
            raise FileNotFoundError(f"{path} has no skill_model.json: pass the output_dir of train_skills.py --method safe-vpl")
        tokenizer = AutoTokenizer.from_pretrained(base_model, trust_remote_code=trust_remote_code)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        backbone = AutoModelForCausalLM.from_pretrained(base_model, dtype=getattr(torch, dtype),
                                                        trust_remote_code=trust_remote_code)
        model = LatentSkillModel.from_pretrained(path, backbone).requires_grad_(False)
        max_length = int(model.spec.get("features", {}).get("max_length", 512))
        return cls(model, tokenizer, prior_mean(model) if z is None else z, max_length)

    @torch.inference_mode()
    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any]) -> list[float]:
        out: list[float] = []
        pad = self.tokenizer.pad_token_id
        for i in range(0, len(prompts), self.batch_size):
            ids = [tokenize_response(self.tokenizer, as_text(p), as_text(c), self.max_length)[0]
                   for p, c in zip(prompts[i : i + self.batch_size], completions[i : i + self.batch_size], strict=True)]
            width = max(len(x) for x in ids)
            input_ids = torch.tensor([x + [pad] * (width - len(x)) for x in ids])
            mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids])
            z = self.z.expand(len(ids), -1)
            with set_latent(self.model.backbone, z):  # as SafeVPLTrainer scores a pair: last real token + z
                hidden = self.model.backbone.base_model(input_ids=input_ids, attention_mask=mask).last_hidden_state
            last = hidden[torch.arange(len(ids)), mask.sum(1) - 1]
            out += self.model.reward(last, z).float().tolist()
        return out
