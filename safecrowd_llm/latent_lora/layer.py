"""``LatentLoraLinear``: a frozen ``nn.Linear`` plus a LoRA whose up-projection is linear in the latent z'.

    y = base(x) + s · (B_0 + Σ_j z'_j B_j) A · dropout(x),     s = lora_alpha / r

The latent is per example: ``layer.latent`` holds a ``(B, D)`` tensor (``(1, D)`` broadcasts over the
batch, ``None`` means z' = 0, i.e. the plain LoRA (A, B_0)). It is set on every layer at once by
``model.set_latent`` before the forward pass and is *not* detached, so gradients reach the encoder that
produced z'.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["LatentLoraLinear", "as_batch_latent"]


def as_batch_latent(z: Tensor | None, latent_dim: int) -> Tensor | None:
    """Normalise a latent to ``(B, D)``: ``(D,)`` becomes ``(1, D)``; ``None`` stays ``None``."""
    if z is None:
        return None
    if not isinstance(z, Tensor):
        raise TypeError(f"the latent must be a torch.Tensor or None, got {type(z).__name__}")
    if z.dim() == 1:
        z = z.unsqueeze(0)
    if z.dim() != 2 or z.shape[1] != latent_dim:
        raise ValueError(
            f"the latent must have shape (B, {latent_dim}) or ({latent_dim},), got {tuple(z.shape)}"
        )
    return z


class LatentLoraLinear(nn.Module):
    """Wraps a frozen ``nn.Linear`` (``base_layer``, PEFT's name) with a latent-conditioned LoRA.

    Trainable parameters (PEFT's layout, so export is a slice and a sum):
        lora_A:        (r, in)        down-projection A
        lora_B:        (out, r)       B_0, the up-projection at z' = 0
        lora_B_latent: (D, out, r)    B_1..B_D, one up-projection per latent coordinate
    Half-precision bases get float32 LoRA parameters (as PEFT's ``autocast_adapter_dtype``) for stable
    training; the LoRA path is computed in that dtype and cast back.
    """

    def __init__(
        self,
        base_layer: nn.Linear,
        *,
        r: int,
        lora_alpha: float,
        latent_dim: int,
        lora_dropout: float = 0.0,
        init_latent_B: str = "zeros",
        latent_init_std: float = 0.01,
    ) -> None:
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"LatentLoraLinear wraps nn.Linear, got {type(base_layer).__name__}")
        self.base_layer = base_layer.requires_grad_(False)
        self.r, self.latent_dim, self.scaling = r, latent_dim, lora_alpha / r
        self.init_latent_B, self.latent_init_std = init_latent_B, latent_init_std
        self.lora_dropout = nn.Dropout(lora_dropout) if lora_dropout > 0 else nn.Identity()
        w = base_layer.weight
        dtype = torch.float32 if w.dtype in (torch.float16, torch.bfloat16) else w.dtype
        out_f, in_f = base_layer.out_features, base_layer.in_features
        self.lora_A = nn.Parameter(torch.empty(r, in_f, device=w.device, dtype=dtype))
        self.lora_B = nn.Parameter(torch.empty(out_f, r, device=w.device, dtype=dtype))
        self.lora_B_latent = nn.Parameter(torch.empty(latent_dim, out_f, r, device=w.device, dtype=dtype))
        self.latent: Tensor | None = None  # (B, D) or None; set through model.set_latent
        self.reset_lora_parameters()

    def reset_lora_parameters(self) -> None:
        """PEFT's default init: A Kaiming-uniform, B_0 = 0; B_j zeros or small Gaussian (config)."""
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)
        if self.init_latent_B == "zeros":
            nn.init.zeros_(self.lora_B_latent)
        else:
            nn.init.normal_(self.lora_B_latent, std=self.latent_init_std)

    def merged_lora_B(self, z: Tensor) -> Tensor:
        """The ordinary LoRA up-projection at a fixed latent: B_0 + Σ_j z_j B_j, ``(out, r)``."""
        z = as_batch_latent(z, self.latent_dim)
        if z.shape[0] != 1:
            raise ValueError(f"merged_lora_B takes one latent, got a batch of {z.shape[0]}")
        z = z[0].to(self.lora_B.device, self.lora_B.dtype)
        return self.lora_B + torch.einsum("d,dor->or", z, self.lora_B_latent)

    def forward(self, x: Tensor) -> Tensor:
        result = self.base_layer(x)  # (b, ..., out)
        h = self.lora_dropout(x.to(self.lora_A.dtype)) @ self.lora_A.T  # (b, ..., r)
        z = self.latent
        if z is None:
            delta = h @ self.lora_B.T  # (b, ..., out)
        elif z.shape[0] == 1:  # one latent for the whole batch: a single (out, r) matrix
            delta = h @ self.merged_lora_B(z).T
        else:
            b = x.shape[0] if x.dim() > 1 else -1
            if b != z.shape[0]:
                raise ValueError(
                    f"latent batch {z.shape[0]} does not match the input batch {b} (input shape "
                    f"{tuple(x.shape)}); set a (1, D) latent to broadcast or one row per example"
                )
            z = z.to(h.dtype)
            b_eff = self.lora_B + torch.einsum("bd,dor->bor", z, self.lora_B_latent)  # (b, out, r)
            delta = torch.bmm(h.reshape(b, -1, self.r), b_eff.transpose(1, 2))  # (b, T, out)
            delta = delta.reshape(*h.shape[:-1], -1)  # (b, ..., out)
        return result + (self.scaling * delta).to(result.dtype)

    def extra_repr(self) -> str:
        return f"r={self.r}, latent_dim={self.latent_dim}, scaling={self.scaling:g}"
