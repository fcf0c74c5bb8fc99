"""Injecting latent-LoRA layers into a transformers model, setting z', saving, loading, and exporting skills.

The model stays the caller's own ``PreTrainedModel`` (causal LM or sequence classifier): target
``nn.Linear`` modules are swapped in place for ``LatentLoraLinear`` and the config is kept on the model
as ``model.latent_lora_config``. For a fixed z' the model *is* a PEFT LoRA, so ``export_skill`` writes a
standard PEFT adapter directory (PEFT's config class and file names, PEFT's tensor keys) that
``PeftModel.from_pretrained`` and vLLM ``--lora-modules name=path`` load unchanged.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from peft import LoraConfig
from peft.utils import CONFIG_NAME as PEFT_CONFIG_NAME
from peft.utils import SAFETENSORS_WEIGHTS_NAME as PEFT_WEIGHTS_NAME
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .config import ALL_LINEAR, LatentLoraConfig
from .layer import LatentLoraLinear, as_batch_latent

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
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

CONFIG_NAME = "latent_lora_config.json"
WEIGHTS_NAME = "latent_lora.safetensors"
PEFT_PREFIX = "base_model.model."  # PEFT's key prefix for LoRA tuners (PeftModel -> LoraModel -> model)
SEQ_CLS_HEAD_NAMES = ("score", "classifier")  # PEFT's list of classification heads 'all-linear' skips
_PARAMS = ("lora_A", "lora_B", "lora_B_latent")


# --------------------------------------------------------------------------- injection


def _head_names(model: nn.Module) -> set[str]:
    """Module names of the LM head / classification head, which 'all-linear' leaves alone (as PEFT)."""
    heads: list[nn.Module] = []
    get_out = getattr(model, "get_output_embeddings", None)
    if callable(get_out) and get_out() is not None:
        heads.append(get_out())
    heads += [m for n in SEQ_CLS_HEAD_NAMES if isinstance(m := getattr(model, n, None), nn.Module)]
    return {name for name, m in model.named_modules() if any(m is h for h in heads)}


def find_target_modules(model: nn.Module, config: LatentLoraConfig) -> list[str]:
    """Names of the ``nn.Linear`` modules ``config.target_modules`` selects (suffix match, as PEFT).

    Raises if an explicit target matches nothing (a typo should not train a silent no-op) or matches a
    module that is not an ``nn.Linear``.
    """
    if config.target_modules == ALL_LINEAR:
        heads = _head_names(model)
        names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n not in heads]
    else:
        names, hits = [], dict.fromkeys(config.target_modules, 0)
        for name, module in model.named_modules():
            matched = [t for t in hits if name == t or name.endswith("." + t)]
            if not matched:
                continue
            if not isinstance(module, nn.Linear):
                raise ValueError(
                    f"target {matched[0]!r} matches {name!r}, a {type(module).__name__}, not nn.Linear"
                )
            names.append(name)
            for t in matched:
                hits[t] += 1
        missing = [t for t, n in hits.items() if n == 0]
        if missing:
            suffixes = sorted(
                {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)}
            )
            raise ValueError(
                f"target_modules {missing} match no module; the model's Linear names end in {suffixes}"
            )
    if not names:
        raise ValueError("no nn.Linear module to adapt in this model")
    return names


def inject_latent_lora(model: nn.Module, config: LatentLoraConfig) -> nn.Module:
    """Wrap the target Linears of ``model`` in ``LatentLoraLinear`` (in place) and freeze everything else.

    Only the LoRA parameters are trainable afterwards; a trainer that also trains e.g. a reward head
    unfreezes it itself. Returns the same model, with ``model.latent_lora_config = config``.
    """
    if latent_lora_layers(model):
        raise ValueError("this model already has latent-LoRA layers; inject once")
    names = find_target_modules(model, config)
    model.requires_grad_(False)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        layer = LatentLoraLinear(
            getattr(parent, child),
            r=config.r,
            lora_alpha=config.lora_alpha,
            latent_dim=config.latent_dim,
            lora_dropout=config.lora_dropout,
            init_latent_B=config.init_latent_B,
            latent_init_std=config.latent_init_std,
        )
        setattr(parent, child, layer)
    model.latent_lora_config = config
    return model


def latent_lora_layers(model: nn.Module) -> dict[str, LatentLoraLinear]:
    """``{module name: layer}`` for every latent-LoRA layer, in module order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LatentLoraLinear)}


def _config_of(model: nn.Module) -> LatentLoraConfig:
    config = getattr(model, "latent_lora_config", None)
    if not isinstance(config, LatentLoraConfig):
        raise ValueError("model has no latent LoRA; call inject_latent_lora(model, config) first")
    return config


# --------------------------------------------------------------------------- the latent


class _LatentScope:
    """Result of ``set_latent``: already applied; as a context manager it restores the previous latents."""

    def __init__(self, layers: Sequence[LatentLoraLinear], z: Tensor | None) -> None:
        self._layers = list(layers)
        self._previous = [layer.latent for layer in self._layers]
        for layer in self._layers:
            layer.latent = z

    def __enter__(self) -> _LatentScope:
        return self

    def __exit__(self, *exc: object) -> None:
        for layer, z in zip(self._layers, self._previous, strict=True):
            layer.latent = z


def set_latent(model: nn.Module, z: Tensor | None) -> _LatentScope:
    """Set z' on every latent-LoRA layer: ``(B, D)`` one row per example, ``(D,)`` for all, ``None`` for 0.

    Applies immediately; ``with set_latent(model, z): ...`` also restores the previous latent on exit,
    which releases the autograd graph hanging off a sampled z' (like ``torch.set_grad_enabled``).
    With gradient checkpointing the backward pass re-runs forwards and reads the latent *then*: run
    ``backward`` inside the block (or call ``set_latent`` without ``with``), else torch raises a
    CheckpointError or, worse, recomputes with the wrong latent.
    """
    layers = list(latent_lora_layers(model).values())
    if not layers:
        raise ValueError("model has no latent-LoRA layers; call inject_latent_lora first")
    return _LatentScope(layers, as_batch_latent(z, layers[0].latent_dim))


# --------------------------------------------------------------------------- save / load


def latent_lora_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """``{'<module>.lora_A' | '.lora_B' | '.lora_B_latent': tensor}`` (detached, not copied)."""
    return {
        f"{name}.{p}": getattr(layer, p).detach()
        for name, layer in latent_lora_layers(model).items()
        for p in _PARAMS
    }


@torch.no_grad()
def load_latent_lora_state_dict(model: nn.Module, state_dict: dict[str, Tensor]) -> None:
    """Copy LoRA tensors into the model's latent-LoRA layers; keys and shapes must match exactly."""
    own = latent_lora_state_dict(model)
    missing, unexpected = sorted(set(own) - set(state_dict)), sorted(set(state_dict) - set(own))
    if missing or unexpected:
        raise ValueError(
            f"latent-LoRA state dict mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    for key, target in own.items():
        if state_dict[key].shape != target.shape:
            raise ValueError(f"{key}: shape {tuple(state_dict[key].shape)} != model's {tuple(target.shape)}")
        target.copy_(state_dict[key])


@contextmanager
def _atomic_directory(out_dir: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``out_dir`` (rename), else it is removed."""
    out = Path(out_dir)
    if out.is_file():
        raise FileExistsError(f"{out} is a file, expected a directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp creates 0700
        if out.exists():  # rename() cannot replace a non-empty folder: move the old one aside first
            old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _to_saveable(t: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    return t.detach().to("cpu", dtype or t.dtype).contiguous().clone()


def save_latent_lora(model: nn.Module, out_dir: str | Path) -> Path:
    """Write ``latent_lora_config.json`` + ``latent_lora.safetensors`` to ``out_dir`` atomically."""
    config = _config_of(model)
    tensors = {k: _to_saveable(v) for k, v in latent_lora_state_dict(model).items()}
    with _atomic_directory(out_dir) as tmp:
        (tmp / CONFIG_NAME).write_text(json.dumps(config.to_dict(), indent=2) + "\n", encoding="utf-8")
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
    return Path(out_dir)


def load_latent_lora(model: nn.Module, in_dir: str | Path) -> nn.Module:
    """Load a ``save_latent_lora`` folder: injects the saved config into a plain model, or checks that an
    already-injected model has the same config, then loads the weights. Returns the model."""
    in_dir = Path(in_dir)
    config = LatentLoraConfig.from_dict(json.loads((in_dir / CONFIG_NAME).read_text(encoding="utf-8")))
    if latent_lora_layers(model):
        if _config_of(model).to_dict() != config.to_dict():
            raise ValueError(f"{in_dir} was saved with {config}, but the model has {_config_of(model)}")
    else:
        inject_latent_lora(model, config)
    load_latent_lora_state_dict(model, load_file(str(in_dir / WEIGHTS_NAME)))
    return model


# --------------------------------------------------------------------------- export as a PEFT adapter


def _export_target_modules(model: nn.Module, names: list[str]) -> list[str]:
    """Short suffixes (``['k_proj', 'q_proj', ...]``, what vLLM and PEFT users expect) when they select
    exactly the adapted modules; otherwise the full module names, which PEFT also matches exactly."""
    short = sorted({n.rsplit(".", 1)[-1] for n in names})
    linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear | LatentLoraLinear)]
    selected = {n for n in linear if any(n == s or n.endswith("." + s) for s in short)}
    return short if selected == set(names) else sorted(names)


def _sort_target_modules(config_path: Path) -> None:
    """PEFT stores target_modules as a set, so its JSON order changes with the hash seed; sort it so the
    same skill always gives the same bytes (same formatting as ``PeftConfigMixin.save_pretrained``)."""
    cfg = json.loads(config_path.read_text(encoding="utf-8"))
    if isinstance(cfg.get("target_modules"), list):
        cfg["target_modules"] = sorted(cfg["target_modules"])
    config_path.write_text(json.dumps(cfg, indent=2, sort_keys=True), encoding="utf-8")


def export_skill(
    model: nn.Module,
    z: Tensor | Sequence[float],
    out_dir: str | Path,
    base_model_name_or_path: str,
    *,
    task_type: str = "CAUSAL_LM",
    dtype: torch.dtype | None = None,
) -> Path:
    """Write the LoRA at a fixed latent z' (A, B = B_0 + Σ_j z'_j B_j) as a standard PEFT adapter folder.

    ``adapter_config.json`` is PEFT's own ``LoraConfig.save_pretrained`` output (``bias='none'``, no
    ``modules_to_save``: what vLLM accepts) and ``adapter_model.safetensors`` holds
    ``base_model.model.<module>.lora_{A,B}.weight`` as ``PeftModel.save_pretrained`` writes them.
    ``model`` must be the injected transformers model itself (not a wrapper), so module names match the
    base model's. ``task_type='SEQ_CLS'`` would make PEFT add the classifier head to
    ``modules_to_save`` on load; keep the default for generation skills. Written atomically.
    """
    config = _config_of(model)
    layers = latent_lora_layers(model)
    z_t = torch.as_tensor(z, dtype=torch.float32).detach()
    z_t = as_batch_latent(z_t, config.latent_dim)
    if z_t.shape[0] != 1:
        raise ValueError(f"export_skill takes one latent, got a batch of {z_t.shape[0]}")
    tensors = {}
    with torch.no_grad():
        for name, layer in layers.items():
            key = f"{PEFT_PREFIX}{name}"
            tensors[f"{key}.lora_A.weight"] = _to_saveable(layer.lora_A, dtype)  # (r, in)
            tensors[f"{key}.lora_B.weight"] = _to_saveable(layer.merged_lora_B(z_t), dtype)  # (out, r)
    alpha = config.lora_alpha
    peft_config = LoraConfig(
        r=config.r,
        lora_alpha=int(alpha) if float(alpha).is_integer() else alpha,
        target_modules=_export_target_modules(model, list(layers)),
        lora_dropout=config.lora_dropout,
        bias="none",
        task_type=task_type,
        base_model_name_or_path=base_model_name_or_path,
        inference_mode=True,  # what PeftModel.save_pretrained records
    )
    with _atomic_directory(out_dir) as tmp:
        peft_config.save_pretrained(str(tmp))
        _sort_target_modules(tmp / PEFT_CONFIG_NAME)
        save_file(tensors, str(tmp / PEFT_WEIGHTS_NAME), metadata={"format": "pt"})
    return Path(out_dir)
