"""Configuration of :class:`SafeCPLTrainer`: ``TrainingArguments`` plus CPL and latent-skill arguments.

TRL has no CPL trainer, so this extends transformers' ``TrainingArguments`` directly (all of its
options — logging, checkpointing, ``resume_from_checkpoint``, ``report_to``, accelerate — apply).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

from .cpu_defaults import CPUFriendlyDefaults
from .latent_config import LatentSkillArguments

__all__ = ["SafeCPLConfig"]


@dataclass
class SafeCPLConfig(LatentSkillArguments, CPUFriendlyDefaults, TrainingArguments):
    """Safe-CPL: a latent-conditioned policy pi(y | x, z') trained with the CPL regret ELBO.

    f(y | x, z') = alpha * sum_t gamma^t [log pi(y_t | x, y_<t, z') - log pi_ref(y_t | x, y_<t)]  (reference
    term only with ``use_reference``); P(chosen) = exp f_c / (exp f_c + exp(lam * f_r)).
    ``per_device_train_batch_size`` counts *annotators* (whole preference sets) per step.
    """

    alpha: float = field(default=0.1, metadata={"help": "CPL temperature alpha on the (log-ratio) log-probs."})
    lam: float = field(default=0.5, metadata={"help": "Conservative bias lambda in (0, 1] on the rejected side."})
    gamma: float = field(
        default=1.0,
        metadata={"help": "Discount over response tokens in f (CPL's discounted regret); < 1 weighs the opening "
                  "tokens, where a response commits to answering or refusing, above its continuation."},
    )
    discount_from: str = field(
        default="response",
        metadata={"help": "Where t = 0 is in f: 'response' (its first token) or 'divergence' (the first token where "
                  "the chosen and rejected responses differ; the shared prefix is left out of f). With 'response' "
                  "and gamma < 1, a decision made late in a response (e.g. to stop or go on) weighs almost nothing.",
                  "choices": ["response", "divergence"]},
    )
    regret_window: int = field(
        default=0,
        metadata={"help": "Count only the first N tokens of f, from where discount_from puts t = 0 (0 = all). With "
                  "'divergence' this scores the decision the annotator judged and never pushes down the rest of a "
                  "rejected response (on the text world it did not make the skills more fluent: BENCHMARKS.md)."},
    )
    regret_positions: str = field(
        default="all",
        metadata={"help": "Which response tokens f sums: 'all', or 'hesitant': only those where the base's top-token "
                  "probability was < kl_confidence (the choices: answer or refuse, tone, format, when to stop), with "
                  "gamma counting those choices rather than tokens; what the base was sure of is left to bc_coef and "
                  "the KL. A decision late in a response then weighs gamma**(choices before it), not gamma**tokens.",
                  "choices": ["all", "hesitant"]},
    )
    use_reference: bool = field(
        default=True,
        metadata={"help": "Score log-ratios against the frozen base (DPO-style) instead of raw log-probs."},
    )
    bc_coef: float = field(
        default=0.1,
        metadata={"help": "Weight of the NLL of chosen responses under z' (keeps a small model fluent)."},
    )
    kl_coef: float = field(
        default=0.0,
        metadata={"help": "Weight of the per-token KL(pi(.|x, y_<t, z') || pi_ref(.|x, y_<t)) over the whole vocabulary at "
                  "the response positions of both responses (an extra no-grad forward of the base per step). The "
                  "regret can be lowered by moving mass to text nobody wrote; this keeps the distribution the "
                  "preferences did not ask to change where the base had it."},
    )
    kl_positions: str = field(
        default="all",
        metadata={"help": "Where the kl_coef term applies: 'all' response positions, or 'continuation': the k-th token "
                  "counted like f's discount (see discount_from) weighs 1 - gamma**k and a prefix the pair shares "
                  "weighs 1, so the decision the annotator judged is free and the rest is held to the base; or "
                  "'confident': only tokens the base predicted with top-token probability >= kl_confidence (grammar, "
                  "words copied from the prompt), leaving free every choice the base hesitated on.",
                  "choices": ["all", "continuation", "confident"]},
    )
    kl_confidence: float = field(
        default=0.9,
        metadata={"help": "The base's top-token probability from which a position counts as sure: kl_positions="
                  "'confident' holds those, regret_positions='hesitant' scores only the others."},
    )
    support_coef: float = field(
        default=0.0,
        metadata={"help": "Weight of -log pi(S_t | x, y_<t, z') at the response positions the base hesitated on (top-token "
                  "probability < kl_confidence), S_t = the tokens the base gave >= support_min_prob there. Pushing a "
                  "rejected choice down (lam near 1) otherwise frees mass onto tokens no answer starts with; this "
                  "keeps it among the base's own options (needs the base's no-grad forward, which the hesitant regret and the KL "
                  "already make)."},
    )
    support_min_prob: float = field(
        default=0.01,
        metadata={"help": "The base's probability from which a token is one of its options (support_coef)."},
    )
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep False: batches are preference sets."})
    learning_rate: float = field(default=2e-3, metadata={"help": "Learning rate (LoRA and encoder)."})
    logging_steps: float = field(default=10, metadata={"help": "Log every N optimisation steps."})

    def __post_init__(self) -> None:
        if not 0.0 < self.lam <= 1.0:
            raise ValueError(f"lam must be in (0, 1], got {self.lam}")
        if not 0.0 < self.gamma <= 1.0:
            raise ValueError(f"gamma must be in (0, 1], got {self.gamma}")
        if self.discount_from not in ("response", "divergence"):
            raise ValueError(f"discount_from must be 'response' or 'divergence', got {self.discount_from!r}")
        if self.regret_positions not in ("all", "hesitant"):
            raise ValueError(f"regret_positions must be 'all' or 'hesitant', got {self.regret_positions!r}")
        if self.alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha}")
        if self.kl_positions not in ("all", "continuation", "confident"):
            raise ValueError(f"kl_positions must be 'all', 'continuation' or 'confident', got {self.kl_positions!r}")
        if not 0.0 < self.kl_confidence < 1.0:
            raise ValueError(f"kl_confidence must be in (0, 1), got {self.kl_confidence}")
        if self.kl_positions == "continuation" and self.gamma == 1.0:
            raise ValueError("kl_positions='continuation' needs gamma < 1 (it frees the tokens the discount weighs)")
        if self.regret_window < 0:
            raise ValueError(f"regret_window must be >= 0 (0 = every token), got {self.regret_window}")
        if self.kl_coef < 0:
            raise ValueError(f"kl_coef must be >= 0, got {self.kl_coef}")
        if self.support_coef < 0:
            raise ValueError(f"support_coef must be >= 0, got {self.support_coef}")
        if not 0.0 < self.support_min_prob < 1.0:
            raise ValueError(f"support_min_prob must be in (0, 1), got {self.support_min_prob}")
        super().__post_init__()
        self.validate_latent_args()
