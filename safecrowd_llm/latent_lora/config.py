"""Configuration of a latent-conditioned LoRA (saved next to its weights, so the artifact describes itself)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = ["ALL_LINEAR", "LATENT_INIT_CHOICES", "LatentLoraConfig"]

ALL_LINEAR = "all-linear"
LATENT_INIT_CHOICES = ("zeros", "gaussian")


@dataclass
class LatentLoraConfig:
    """ΔW(z') = (B_0 + Σ_j z'_j B_j) A · lora_alpha / r on every target ``nn.Linear``.

    For a fixed z' this is an ordinary LoRA (A, B = B_0 + Σ_j z'_j B_j), which is what
    ``export_skill`` writes. Field names follow PEFT's ``LoraConfig`` where they mean the same thing.
    """

    latent_dim: int = field(metadata={"help": "Dimension D of the latent z' every target layer reads."})
    r: int = field(default=8, metadata={"help": "LoRA rank (vLLM's default --max-lora-rank is 16)."})
    lora_alpha: float = field(
        default=16.0, metadata={"help": "Scale numerator: ΔW is multiplied by lora_alpha / r."}
    )
    lora_dropout: float = field(
        default=0.0, metadata={"help": "Dropout on the LoRA path's input (train mode only)."}
    )
    target_modules: list[str] | str = field(
        default=ALL_LINEAR,
        metadata={
            "help": "Module-name suffixes to wrap (e.g. ['q_proj', 'v_proj']; 'self_attn.q_proj' also works), "
            "or 'all-linear': every nn.Linear except the LM head / classification head."
        },
    )
    init_latent_B: str = field(
        default="zeros",
        metadata={
            "help": "Initialisation of the latent up-projections B_j: 'zeros' (with B_0 = 0 the injected model "
            "starts exactly at the base model) or 'gaussian' (N(0, latent_init_std^2))."
        },
    )
    latent_init_std: float = field(
        default=0.01, metadata={"help": "Std of B_j when init_latent_B='gaussian'."}
    )

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, tuple):
            self.target_modules = list(self.target_modules)
        errors = []
        if not _is_int(self.latent_dim) or self.latent_dim < 1:
            errors.append(f"latent_dim must be a positive int, got {self.latent_dim!r}")
        if not _is_int(self.r) or self.r < 1:
            errors.append(f"r must be a positive int, got {self.r!r}")
        if not _is_number(self.lora_alpha) or self.lora_alpha <= 0:
            errors.append(f"lora_alpha must be a positive number, got {self.lora_alpha!r}")
        if not _is_number(self.lora_dropout) or not 0.0 <= self.lora_dropout < 1.0:
            errors.append(f"lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        if isinstance(self.target_modules, str):
            if self.target_modules != ALL_LINEAR:
                errors.append(
                    f"target_modules must be {ALL_LINEAR!r} or a list of module-name suffixes, "
                    f"got the string {self.target_modules!r} (wrap a single name in a list)"
                )
        elif not isinstance(self.target_modules, list) or not self.target_modules:
            errors.append(f"target_modules must be a non-empty list of names, got {self.target_modules!r}")
        elif not all(isinstance(t, str) and t and not t.startswith(".") for t in self.target_modules):
            errors.append(f"target_modules entries must be non-empty names, got {self.target_modules!r}")
        if self.init_latent_B not in LATENT_INIT_CHOICES:
            errors.append(f"init_latent_B must be one of {LATENT_INIT_CHOICES}, got {self.init_latent_B!r}")
        if not _is_number(self.latent_init_std) or self.latent_init_std < 0:
            errors.append(f"latent_init_std must be >= 0, got {self.latent_init_std!r}")
        if errors:
            raise ValueError("invalid LatentLoraConfig: " + "; ".join(errors))

    @property
    def scaling(self) -> float:
        """lora_alpha / r, the factor PEFT (and vLLM) apply to B A."""
        return self.lora_alpha / self.r

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (lists copied)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatentLoraConfig:
        """Inverse of ``to_dict``; unknown keys are an error (a misspelt field should not pass silently)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown LatentLoraConfig fields {unknown}; known fields are {sorted(known)}")
        return cls(**data)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)
