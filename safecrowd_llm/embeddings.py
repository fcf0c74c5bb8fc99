"""Frozen base-model embeddings of texts, computed once per dataset and cached on disk.

The set encoder reads every context comparison through the *frozen* base model's embedding of
prompt+chosen and prompt+rejected. Those features never change during training, so they are
computed once (on the main process), written as safetensors keyed by a hash of the model and the
texts, and reused by every step, epoch, run and process.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm.auto import tqdm

from .core.atomic import atomic_path

__all__ = ["cache_key", "cached_embeddings", "embed_texts"]


@torch.no_grad()
def embed_texts(
    model: torch.nn.Module,
    tokenizer,
    texts: Sequence[str],
    *,
    batch_size: int = 32,
    max_length: int = 512,
    pooling: str = "mean",
    progress: bool = True,
) -> Tensor:
    """``(N, H)`` float32 embeddings from the last hidden layer of a frozen (causal) LM.

    ``pooling="mean"`` averages over real tokens; ``"last"`` takes the last real token (what a
    causal LM has seen the whole text at).
    """
    if pooling not in ("mean", "last"):
        raise ValueError(f"pooling must be 'mean' or 'last', got {pooling!r}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    out = []
    try:
        for start in tqdm(range(0, len(texts), batch_size), desc="embedding", disable=not progress):
            enc = tokenizer(
                list(texts[start : start + batch_size]),
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=max_length,
            ).to(device)
            hidden = model(**enc, output_hidden_states=True).hidden_states[-1].float()  # (B, T, H)
            mask = enc["attention_mask"].unsqueeze(-1).float()
            if pooling == "mean":
                out.append((hidden * mask).sum(1) / mask.sum(1).clamp(min=1))
            else:
                last = enc["attention_mask"].sum(1) - 1
                out.append(hidden[torch.arange(hidden.shape[0], device=device), last])
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return torch.cat(out).cpu() if out else torch.zeros(0, 0)


def cache_key(model: torch.nn.Module, texts: Sequence[str], **settings) -> str:
    """Hash of the model's identity and config, the embedding settings, and every text."""
    h = hashlib.sha256()
    cfg = getattr(model, "config", None)
    ident = {"name": getattr(cfg, "_name_or_path", type(model).__name__), "settings": settings}
    if cfg is not None:
        ident["config"] = cfg.to_json_string(use_diff=False)
    h.update(json.dumps(ident, sort_keys=True, default=str).encode())
    # weights matter too (a re-trained tiny base has the same config): hash a few parameter statistics
    for p in list(model.parameters())[:4]:
        h.update(f"{p.shape}:{float(p.detach().double().sum()):.10e}".encode())
    for t in texts:
        h.update(t.encode())
        h.update(b"\0")
    return h.hexdigest()[:24]


def cached_embeddings(
    model: torch.nn.Module,
    tokenizer,
    texts: Sequence[str],
    cache_dir: str | os.PathLike | None,
    **settings,
) -> Tensor:
    """:func:`embed_texts` with an on-disk cache (``<cache_dir>/embeddings-<hash>.safetensors``).

    Call it inside ``accelerator.main_process_first()`` (or ``TrainingArguments.main_process_first``)
    so one process computes and writes, and the others load.
    """
    if cache_dir is None:
        return embed_texts(model, tokenizer, texts, **settings)
    key_settings = {k: v for k, v in settings.items() if k != "progress"}
    path = Path(cache_dir) / f"embeddings-{cache_key(model, texts, **key_settings)}.safetensors"
    if path.exists():
        return load_file(path)["embeddings"]
    emb = embed_texts(model, tokenizer, texts, **settings)
    with atomic_path(path) as tmp:  # a reader never sees a half-written file
        save_file({"embeddings": emb.contiguous()}, str(tmp))
    return emb
