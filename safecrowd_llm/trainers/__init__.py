"""Latent-skill trainers of the language-model track (TRL house style: one trainer + config per file)."""

from .safe_cpl_config import SafeCPLConfig
from .safe_cpl_trainer import SafeCPLTrainer, reference_logps
from .safe_vpl_config import SafeVPLConfig
from .safe_vpl_trainer import SafeVPLTrainer
from .set_data import (
    AnnotatorSetCollator,
    AnnotatorSetDataset,
    TokenizedPairs,
    tokenize_pairs,
    tokenize_response,
)
from .skill_model import LatentSkillModel

__all__ = [
    "AnnotatorSetCollator",
    "AnnotatorSetDataset",
    "LatentSkillModel",
    "SafeCPLConfig",
    "SafeCPLTrainer",
    "SafeVPLConfig",
    "SafeVPLTrainer",
    "TokenizedPairs",
    "reference_logps",
    "tokenize_pairs",
    "tokenize_response",
]
