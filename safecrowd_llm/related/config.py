"""Configuration of the related systems trained with GRPO (MaxMin-RLHF, Safe RLHF, plain VPL).

They share the downstream baselines' recipe (``recipes/train_baseline.py``): the same GRPO + LoRA run,
the same task reward, prompts, held-out report and ``policy.json``; only the objective differs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ..baselines import METHODS, BaselineConfig

__all__ = ["RELATED_METHODS", "RelatedBaselineConfig"]

RELATED_METHODS = ("maxmin", "safe-rlhf", "vpl")


@dataclass
class RelatedBaselineConfig(BaselineConfig):
    """:class:`~safecrowd_llm.baselines.BaselineConfig` + what MaxMin-RLHF, Safe RLHF and plain VPL fit first."""

    methods: ClassVar[tuple[str, ...]] = (*METHODS, *RELATED_METHODS)

    dataset: str = field(
        default="",
        metadata={"help": "maxmin / safe-rlhf: the crowd's preference data (annotator_id, prompt, chosen, rejected; "
                  "safe-rlhf also chosen_unsafe / rejected_unsafe), a JSONL/Parquet path or hub name."},
    )
    min_pairs: int = field(default=4, metadata={"help": "maxmin: drop annotators with fewer comparisons than this."})
    feature_pooling: str = field(
        default="mean", metadata={"help": "maxmin / safe-rlhf: how the frozen base embeds prompt + completion (mean or last)."}
    )
    head_l2: float = field(default=1e-3, metadata={"help": "maxmin / safe-rlhf: L2 penalty of the linear reward / cost heads."})
    num_clusters: int = field(default=4, metadata={"help": "maxmin: K, the number of Bradley-Terry rewards in the mixture."})
    em_iterations: int = field(default=30, metadata={"help": "maxmin: EM iterations over annotators."})
    cost_budget: float = field(
        default=0.05, metadata={"help": "safe-rlhf: the constraint E[c] <= budget on the cost model's P(unsafe)."}
    )
    lambda_init: float = field(default=1.0, metadata={"help": "safe-rlhf: initial Lagrange multiplier."})
    lambda_lr: float = field(default=1.0, metadata={"help": "safe-rlhf: dual-ascent step on the multiplier, per GRPO batch."})
    lambda_max: float = field(default=20.0, metadata={"help": "safe-rlhf: the multiplier is clipped to [0, lambda_max]."})
    vpl_model: str = field(
        default="", metadata={"help": "vpl: a Safe-VPL run directory (train_skills.py --method safe-vpl output_dir)."}
    )
    vpl_latent: str = field(
        default="prior-mean",
        metadata={"help": "vpl: the latent r_phi(x, y, z) is read at: 'prior-mean' (z = the prior's mean) or "
                  "'best-match' (the skill latent whose reward agrees most with the task reward on reference completions).",
                  "choices": ["prior-mean", "best-match"]},
    )

    def __post_init__(self) -> None:
        if self.method in ("maxmin", "safe-rlhf") and not self.dataset:
            raise ValueError(f"method {self.method!r} needs dataset: the crowd's preference data")
        if self.method == "vpl" and not self.vpl_model:
            raise ValueError("method 'vpl' needs vpl_model: a train_skills.py --method safe-vpl output_dir")
        if self.num_clusters < 1 or self.em_iterations < 1:
            raise ValueError("num_clusters and em_iterations must be >= 1")
        if self.cost_budget < 0 or self.lambda_lr < 0 or not 0 <= self.lambda_init <= self.lambda_max:
            raise ValueError("need cost_budget >= 0, lambda_lr >= 0 and 0 <= lambda_init <= lambda_max")
        if self.vpl_latent not in ("prior-mean", "best-match"):
            raise ValueError(f"vpl_latent must be prior-mean or best-match, got {self.vpl_latent!r}")
        if self.method == "safe-rlhf" and self.optimizer != "grpo":
            raise ValueError("safe-rlhf updates its Lagrange multiplier once per GRPO batch: use optimizer grpo")
        if self.feature_pooling not in ("mean", "last"):
            raise ValueError(f"feature_pooling must be mean or last, got {self.feature_pooling!r}")
        super().__post_init__()
