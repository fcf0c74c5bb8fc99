"""Defaults that suit a CPU as well as a GPU, for configs built on TRL's (bf16 and checkpointing on)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["CPUFriendlyDefaults"]


@dataclass
class CPUFriendlyDefaults:
    """Mixin placed before a TRL / transformers config: bf16 only where CUDA supports it, no
    gradient checkpointing unless asked (both slow a CPU down for nothing)."""

    gradient_checkpointing: bool = field(default=False, metadata={"help": "Trade compute for memory (GPU)."})
    bf16: bool | None = field(default=None, metadata={"help": "bf16 mixed precision; default: on where CUDA has it."})

    def __post_init__(self) -> None:
        if self.bf16 is None:
            self.bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        super().__post_init__()
