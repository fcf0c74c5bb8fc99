"""Arguments shared by the latent-skill trainers (Safe-VPL, Safe-CPL): encoder, prior, KL, LoRA, skills.

A mixin dataclass, combined with a TRL / transformers config in each trainer's own ``*Config``, so a
YAML file or the command line sets everything in one place (``TrlParser``) and ``--help`` lists it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["LatentSkillArguments"]


@dataclass
class LatentSkillArguments:
    """Encoder / prior / KL / latent-LoRA / skill-export settings."""

    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow custom model code from the hub (off: only trusted architectures)."}
    )
    latent_dim: int = field(default=4, metadata={"help": "Dimension of the annotator latent z'."})
    encoder_hidden_dim: int = field(default=128, metadata={"help": "Width of the set encoder."})
    encoder_layers: int = field(default=2, metadata={"help": "Self-attention layers over a preference set."})
    prior: str = field(default="normal", metadata={"help": "p(z'): 'normal' (N(0, I)) or 'mixture' (learnable GMM)."})
    prior_components: int = field(default=4, metadata={"help": "Components of the 'mixture' prior."})
    kl_beta: float = field(default=0.05, metadata={"help": "Final KL weight beta of the ELBO."})
    kl_schedule: str = field(default="linear", metadata={"help": "'constant', 'linear' or 'cyclical' KL annealing."})
    kl_warmup_steps: int = field(default=100, metadata={"help": "Steps of the linear ramp of beta from 0."})
    kl_cycle_steps: int = field(default=200, metadata={"help": "Cycle length of the 'cyclical' schedule."})
    num_latent_samples: int = field(default=1, metadata={"help": "Samples of z' per set in the ELBO estimate."})
    context_min: int = field(default=2, metadata={"help": "Smallest context part of a set fed to the encoder."})
    context_max: int = field(default=8, metadata={"help": "Largest context part (VPL uses 2-8)."})
    max_target_pairs: int = field(
        default=8, metadata={"help": "Cap on target comparisons scored per annotator and step (memory bound)."}
    )
    flip_prob: float = field(default=0.0, metadata={"help": "Label-flip probability of the likelihood's noise model."})
    eval_annotator_fraction: float = field(
        default=0.2, metadata={"help": "Fraction of annotators held out for evaluation (0 = none)."}
    )
    embedding_pooling: str = field(
        default="mean", metadata={"help": "Pooling of the frozen base's last layer for encoder features: mean|last."}
    )
    embedding_cache_dir: str | None = field(
        default=None, metadata={"help": "Where cached frozen-base embeddings go (default: <output_dir>/cache)."}
    )
    lora_r: int = field(default=8, metadata={"help": "Rank of the latent LoRA."})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA scale numerator (scale = alpha / r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA input."})
    lora_latent_init: str = field(
        default="zeros",
        metadata={"help": "Init of the latent up-projections B_j: 'zeros' (start at the base) or 'gaussian'."},
    )
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["all-linear"],
        metadata={"help": "Module-name suffixes to adapt, or 'all-linear' (every linear but the head)."},
    )
    max_length: int = field(default=256, metadata={"help": "Max tokens of prompt + response."})
    num_skills: int | None = field(
        default=None, metadata={"help": "Skills to export (k-means over posterior means); None = silhouette sweep."}
    )
    skill_k_min: int = field(default=2, metadata={"help": "Smallest K of the silhouette sweep."})
    skill_k_max: int = field(default=8, metadata={"help": "Largest K of the silhouette sweep."})
    skill_refine_steps: int = field(
        default=0,
        metadata={"help": "Adam steps fitting each skill's latent to all its annotators' pairs (MAP under the trained "
                          "decoder and prior, weights frozen) after k-means picks it; 0 = the cluster centroid of their "
                          "posterior means, which the encoder shrinks toward the prior. On the 256-annotator text-world "
                          "crowd it gives every archetype's style a skill at unchanged safety."},
    )
    skill_refine_lr: float = field(default=0.05, metadata={"help": "Adam learning rate of skill_refine_steps."})

    def validate_latent_args(self) -> None:
        errors = []
        if self.latent_dim < 1:
            errors.append(f"latent_dim must be >= 1 (got {self.latent_dim})")
        if self.prior not in ("normal", "mixture"):
            errors.append(f"prior must be 'normal' or 'mixture' (got {self.prior!r})")
        if self.kl_schedule not in ("constant", "linear", "cyclical"):
            errors.append(f"kl_schedule must be constant|linear|cyclical (got {self.kl_schedule!r})")
        if not 1 <= self.context_min <= self.context_max:
            errors.append(f"need 1 <= context_min <= context_max (got {self.context_min}, {self.context_max})")
        if self.max_target_pairs < 1:
            errors.append(f"max_target_pairs must be >= 1 (got {self.max_target_pairs})")
        if not 0.0 <= self.eval_annotator_fraction < 1.0:
            errors.append(f"eval_annotator_fraction must be in [0, 1) (got {self.eval_annotator_fraction})")
        if self.embedding_pooling not in ("mean", "last"):
            errors.append(f"embedding_pooling must be 'mean' or 'last' (got {self.embedding_pooling!r})")
        if self.num_skills is not None and self.num_skills < 1:
            errors.append(f"num_skills must be >= 1 or None (got {self.num_skills})")
        if self.skill_refine_steps < 0 or self.skill_refine_lr <= 0:
            errors.append(f"need skill_refine_steps >= 0 and skill_refine_lr > 0 (got {self.skill_refine_steps}, "
                          f"{self.skill_refine_lr})")
        if errors:
            raise ValueError("invalid latent-skill arguments: " + "; ".join(errors))
