"""The shared, domain-free core of the method (torch only; imports no track and no HF/gym library).

Preference sets -> set encoder q(z'|S_z) -> prior p(z') -> Bradley-Terry / CPL likelihood -> ELBO
-> skill selection -> prior-regularised composition. See each module's docstring for the maths.
"""

from .composition import HighLevelPolicy, categorical_high_level_loss, high_level_loss
from .data import (
    Comparison,
    Crowd,
    PreferenceSet,
    PreferenceSetBatch,
    collate_sets,
    iterate_set_batches,
    pad_sets,
    split_context_target,
)
from .elbo import KLSchedule, elbo_loss
from .encoder import SetEncoder
from .likelihoods import bradley_terry_log_likelihood, cpl_log_likelihood, discounted_sum
from .priors import DiagonalGaussian, GaussianMixturePrior, Prior, StandardNormalPrior
from .skills import SkillSelection, select_skills
from .vae import LatentRewardMLP, PreferenceVAE, bradley_terry_batch_log_likelihood

__all__ = [
    "Comparison",
    "Crowd",
    "DiagonalGaussian",
    "GaussianMixturePrior",
    "HighLevelPolicy",
    "KLSchedule",
    "LatentRewardMLP",
    "PreferenceSet",
    "PreferenceSetBatch",
    "PreferenceVAE",
    "Prior",
    "SetEncoder",
    "SkillSelection",
    "StandardNormalPrior",
    "bradley_terry_batch_log_likelihood",
    "bradley_terry_log_likelihood",
    "categorical_high_level_loss",
    "collate_sets",
    "cpl_log_likelihood",
    "discounted_sum",
    "elbo_loss",
    "high_level_loss",
    "iterate_set_batches",
    "pad_sets",
    "select_skills",
    "split_context_target",
]
