"""Related systems as baselines on the language-model track (issue: P-Soups, MaxMin-RLHF, Safe RLHF, plain VPL).

Each answers "why not one of those?" on the same data, base model and evaluation as ours:

* :mod:`.psoups` — Personalized Soups: one DPO LoRA per annotator cluster, merged with PEFT's weighted
  adapter merge; the task reward picks the merge weights.
* :mod:`.maxmin` — MaxMin-RLHF: an EM mixture of Bradley-Terry rewards over annotators; GRPO on the task
  reward mixed (as in RC) with the minimum over the mixture.
* :mod:`.safe_rlhf` — Safe RLHF: a cost model trained *with* safety labels; GRPO on the task reward under a
  Lagrangian constraint E[cost] <= budget.
* :mod:`.vpl` — plain VPL: the latent reward model used directly as the learned reward, no skills.
"""

from __future__ import annotations

from typing import Any

from ..baselines import build_objective
from .config import RELATED_METHODS, RelatedBaselineConfig

__all__ = ["RELATED_METHODS", "RelatedBaselineConfig", "build_related_objective"]


def build_related_objective(args: Any, task: Any, world: Any = None, reference: Any = None) -> tuple[Any, dict]:
    """:func:`~safecrowd_llm.baselines.build_objective` extended with the related methods (same signature)."""
    if args.method == "maxmin":
        from .maxmin import maxmin_objective

        return maxmin_objective(args, task, world, reference)
    if args.method == "safe-rlhf":
        from .safe_rlhf import safe_rlhf_objective

        return safe_rlhf_objective(args, task, world, reference)
    if args.method == "vpl":
        from .vpl import vpl_objective

        return vpl_objective(args, task, world, reference)
    return build_objective(args, task, world, reference)
