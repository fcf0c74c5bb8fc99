"""Latent-conditioned LoRA: ΔW(z') = (B_0 + Σ_j z'_j B_j) A · lora_alpha / r (PEFT-style config / layer / model).

One set of trainable weights conditions every target layer on the annotator latent z' during training;
at any fixed z' it is an ordinary LoRA, exported by ``export_skill`` as a standard PEFT adapter.
"""

from .config import ALL_LINEAR, LatentLoraConfig
from .layer import LatentLoraLinear, as_batch_latent
from .model import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    export_skill,
    find_target_modules,
    inject_latent_lora,
    latent_lora_layers,
    latent_lora_state_dict,
    load_latent_lora,
    load_latent_lora_state_dict,
    save_latent_lora,
    set_latent,
)

__all__ = [
    "ALL_LINEAR",
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "LatentLoraConfig",
    "LatentLoraLinear",
    "as_batch_latent",
    "export_skill",
    "find_target_modules",
    "inject_latent_lora",
    "latent_lora_layers",
    "latent_lora_state_dict",
    "load_latent_lora",
    "load_latent_lora_state_dict",
    "save_latent_lora",
    "set_latent",
]
