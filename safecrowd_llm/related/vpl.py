"""Plain VPL: the latent reward model used directly for the new task, no skill composition.

VPL (Poddar et al. 2024) personalises a reward r_phi(x, y, z) by a latent z read from a user's context.
Used downstream without skills, a new task has no user context, so the reward is read at one latent and
mixed with the task reward exactly as RC mixes the pooled r_hat: r' = (1 - omega) r_new + omega s(r_phi(., ., z)).
The latent is the prior's mean (``vpl_latent: prior-mean``; the "average user") or the exported skill
latent whose reward agrees most with the task reward on the base's reference completions
(``best-match``; the "user most like the task"). The model is the Safe-VPL run of ``train_skills.py``.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..baselines import Reference, combine_with_task
from ..core import GaussianMixturePrior
from ..latent_lora import set_latent
from ..rewards import BatchRewardFn, RewardFn, as_text
from ..trainers import LatentSkillModel
from ..trainers.set_data import tokenize_response

__all__ = ["LatentReward", "prior_mean", "vpl_objective"]


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


def _best_match(reward: LatentReward, skills_json: Path, task: RewardFn,
                reference: tuple[Sequence[str], Sequence[str]]) -> tuple[dict[str, Any], dict[str, float]]:
    """The skill whose latent's r_phi correlates most (Pearson) with the task reward on the reference completions."""
    skills = json.loads(skills_json.read_text())["skills"]
    prompts, completions = reference
    r_task = [float(task(p, c)) for p, c in zip(prompts, completions, strict=True)]
    scores: dict[str, float] = {}
    for skill in skills:
        reward.z = torch.tensor(skill["latent"], dtype=torch.float32)
        r = reward(prompts, completions)
        scores[skill["name"]] = statistics.correlation(r, r_task) if len(set(r)) > 1 and len(set(r_task)) > 1 else 0.0
    best = max(scores, key=scores.get)
    return next(s for s in skills if s["name"] == best), scores


def vpl_objective(args: Any, task: RewardFn, world: Any = None,
                  reference: Reference | Callable[[], Reference] | None = None) -> tuple[BatchRewardFn, dict]:
    """The plain-VPL objective for :func:`~safecrowd_llm.baselines.train_baseline` (``build_objective``'s signature)."""
    reward = LatentReward.from_run(args.vpl_model, args.base_model, args.dtype, args.trust_remote_code)
    info: dict[str, Any] = {"method": args.method, "task_reward": args.task_reward, "vpl_model": str(args.vpl_model),
                            "vpl_latent": args.vpl_latent}
    if args.vpl_latent == "best-match":
        if callable(reference):
            reference = reference()
        skills_json = Path(args.vpl_model) / "skills" / "skills.json"
        if not skills_json.exists():
            raise FileNotFoundError(f"vpl_latent best-match reads the exported skills: {skills_json} not found")
        skill, info["skill_task_correlation"] = _best_match(reward, skills_json, task, reference)
        reward.z = torch.tensor(skill["latent"], dtype=torch.float32)
        info |= {"skill": skill["name"], "latent": skill["latent"]}
    else:
        info["latent"] = reward.z.tolist()
    rc, mix = combine_with_task(args, task, reward, reference, "vpl_reward")
    objective = rc.as_trl()
    objective.__name__ = f"vpl_{args.omega:g}"
    return objective, info | mix
