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

from ..baselines import Reference, combine_with_task
from ..latent_reward import LatentReward, prior_mean
from ..rewards import BatchRewardFn, RewardFn

__all__ = ["LatentReward", "prior_mean", "vpl_objective"]


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
