"""Configuration of :class:`SafeVPLTrainer`: TRL's ``RewardConfig`` plus the latent-skill arguments."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import RewardConfig

from .cpu_defaults import CPUFriendlyDefaults
from .latent_config import LatentSkillArguments

__all__ = ["SafeVPLConfig"]


@dataclass
class SafeVPLConfig(LatentSkillArguments, CPUFriendlyDefaults, RewardConfig):
    """Safe-VPL: a latent-conditioned reward model r(x, y, z') trained with the Bradley-Terry ELBO.

    Everything of TRL's ``RewardConfig`` / ``TrainingArguments`` applies (``output_dir``,
    ``learning_rate``, ``report_to``, ``save_steps``, ``resume_from_checkpoint`` ...), plus the latent
    arguments. ``per_device_train_batch_size`` counts *annotators* (whole preference sets) per step.
    """

    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep False: batches are preference sets."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Learning rate (LoRA, encoder and head)."})
    max_length: int = field(default=256, metadata={"help": "Max tokens of prompt + response."})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.validate_latent_args()
