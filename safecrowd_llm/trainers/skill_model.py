"""The trainable latent-skill model: backbone LM with latent LoRA + set encoder + prior (+ reward head).

It saves only what training changes (latent LoRA, encoder, prior, head) as safetensors, next to a
JSON that says how to rebuild it on the same base model, so checkpoints stay small for real models
and every artifact describes itself.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ..core import GaussianMixturePrior, PreferenceVAE, SetEncoder, StandardNormalPrior
from ..core.atomic import atomic_path, write_json
from ..latent_lora import (
    LatentLoraConfig,
    inject_latent_lora,
    latent_lora_state_dict,
    load_latent_lora_state_dict,
)
from .latent_config import LatentSkillArguments

__all__ = ["SKILL_MODEL_CONFIG", "SKILL_MODEL_WEIGHTS", "LatentSkillModel"]

SKILL_MODEL_CONFIG = "skill_model.json"
SKILL_MODEL_WEIGHTS = "skill_model.safetensors"


class LatentSkillModel(nn.Module):
    """``backbone`` (a causal LM with latent LoRA), ``vae`` (encoder + prior), optional reward ``head``.

    The reward head of Safe-VPL reads the last real token's hidden state *and* z', so the latent
    shapes the reward both through the LoRA and directly.
    """

    def __init__(self, backbone: nn.Module, vae: PreferenceVAE, spec: dict[str, Any], reward_head: bool = False) -> None:
        super().__init__()
        self.backbone, self.vae, self.spec = backbone, vae, spec
        hidden = backbone.config.hidden_size
        self.head = nn.Linear(hidden + vae.latent_dim, 1) if reward_head else None

    @classmethod
    def build(
        cls,
        backbone: nn.Module,
        args: LatentSkillArguments,
        *,
        feature_dim: int,
        base_model_name_or_path: str,
        kind: str,
        seed: int = 0,
    ) -> LatentSkillModel:
        """Inject the latent LoRA into ``backbone`` and create encoder / prior from ``args``."""
        lora = LatentLoraConfig(
            latent_dim=args.latent_dim,
            r=args.lora_r,
            lora_alpha=args.lora_alpha,
            lora_dropout=args.lora_dropout,
            init_latent_B=args.lora_latent_init,
            target_modules=args.lora_target_modules if args.lora_target_modules != ["all-linear"] else "all-linear",
        )
        spec = {
            "kind": kind,
            "base_model_name_or_path": base_model_name_or_path,
            "latent_lora": lora.to_dict(),
            "encoder": {
                "feature_shape": [feature_dim],
                "latent_dim": args.latent_dim,
                "hidden_dim": args.encoder_hidden_dim,
                "num_layers": args.encoder_layers,
            },
            "prior": {"type": args.prior, "latent_dim": args.latent_dim, "num_components": args.prior_components},
            # how the encoder's frozen-base features were made, so evaluation can rebuild them
            "features": {"pooling": args.embedding_pooling, "max_length": args.max_length},
            "use_reference": bool(getattr(args, "use_reference", False)),
            "gamma": float(getattr(args, "gamma", 1.0)),
            # which tokens CPL's f sums, so evaluation scores a comparison as training did
            "discount_from": getattr(args, "discount_from", "response"),
            "regret_positions": getattr(args, "regret_positions", "all"),
            "regret_window": int(getattr(args, "regret_window", 0)),
            "kl_confidence": float(getattr(args, "kl_confidence", 0.9)),
        }
        return cls.from_spec(backbone, spec, seed=seed)

    @classmethod
    def from_spec(cls, backbone: nn.Module, spec: dict[str, Any], seed: int = 0) -> LatentSkillModel:
        inject_latent_lora(backbone, LatentLoraConfig.from_dict(spec["latent_lora"]))
        enc = spec["encoder"]
        encoder = SetEncoder(
            tuple(enc["feature_shape"]), enc["latent_dim"], hidden_dim=enc["hidden_dim"], num_layers=enc["num_layers"]
        )
        p = spec["prior"]
        prior = (
            StandardNormalPrior(p["latent_dim"])
            if p["type"] == "normal"
            else GaussianMixturePrior(p["latent_dim"], p["num_components"], seed=seed)
        )
        return cls(backbone, PreferenceVAE(encoder, prior), spec, reward_head=spec["kind"] == "safe-vpl")

    def forward(self, loss_fn: Callable[[LatentSkillModel], Any]) -> Any:
        """Run a trainer's loss closure on this model.

        The trainer computes encoder, latent LoRA and decoder in one closure; calling it through
        ``forward`` keeps DDP / FSDP wrappers in the loop (they only sync what runs in their forward).
        """
        return loss_fn(self)

    @property
    def latent_dim(self) -> int:
        return self.vae.latent_dim

    def reward(self, last_hidden: Tensor, z: Tensor) -> Tensor:
        """``(B, H)`` last-token hidden states and ``(B, D)`` latents -> ``(B,)`` rewards."""
        if self.head is None:
            raise RuntimeError("this skill model has no reward head (it is a Safe-CPL policy)")
        return self.head(torch.cat([last_hidden, z.to(last_hidden.dtype)], -1)).squeeze(-1)

    # ------------------------------------------------------------------ persistence

    def trainable_state_dict(self) -> dict[str, Tensor]:
        state = {f"backbone.{k}": v for k, v in latent_lora_state_dict(self.backbone).items()}
        state.update({f"vae.{k}": v.detach() for k, v in self.vae.state_dict().items()})
        if self.head is not None:
            state.update({f"head.{k}": v.detach() for k, v in self.head.state_dict().items()})
        return {k: v.contiguous().cpu() for k, v in state.items()}

    def load_trainable_state_dict(self, state: dict[str, Tensor]) -> None:
        lora = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
        load_latent_lora_state_dict(self.backbone, lora)
        self.vae.load_state_dict({k.removeprefix("vae."): v for k, v in state.items() if k.startswith("vae.")})
        if self.head is not None:
            self.head.load_state_dict({k.removeprefix("head."): v for k, v in state.items() if k.startswith("head.")})

    def save_pretrained(self, out_dir: str | os.PathLike) -> None:
        """Write ``skill_model.json`` and ``skill_model.safetensors`` (each atomically)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_json(self.spec, out / SKILL_MODEL_CONFIG)
        with atomic_path(out / SKILL_MODEL_WEIGHTS) as tmp:
            save_file(self.trainable_state_dict(), str(tmp), metadata={"format": "pt"})

    def load_trainable(self, in_dir: str | os.PathLike) -> None:
        path = Path(in_dir) / SKILL_MODEL_WEIGHTS
        if not path.exists():
            raise FileNotFoundError(f"no {SKILL_MODEL_WEIGHTS} in {in_dir}")
        self.load_trainable_state_dict(load_file(str(path)))

    @classmethod
    def from_pretrained(cls, in_dir: str | os.PathLike, backbone: nn.Module) -> LatentSkillModel:
        """Rebuild on a freshly loaded ``backbone`` (the same base model) and load the trained weights."""
        spec = json.loads((Path(in_dir) / SKILL_MODEL_CONFIG).read_text())
        model = cls.from_spec(backbone, spec)
        model.load_trainable(in_dir)
        return model

