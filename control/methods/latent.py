"""The VAE stage shared by Safe-VPL and Safe-CPL: build the core PreferenceVAE, fit its ELBO against a
decoder likelihood, read off every annotator's posterior mean and pick K skill latents.

The decoder is whatever the method supplies (a BT latent reward or a CPL latent policy): this module
only owns the loop, so both methods share batching, KL annealing and seeding.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from safecrowd_llm.core import (
    Crowd,
    KLSchedule,
    PreferenceSetBatch,
    PreferenceVAE,
    SetEncoder,
    SkillSelection,
    StandardNormalPrior,
    iterate_set_batches,
    pad_sets,
    select_skills,
)

__all__ = ["LatentConfig", "build_vae", "fit_vae", "pick_skills", "posterior_means"]

LogLik = Callable[[Tensor, PreferenceSetBatch], Tensor]  # (z (A, D), batch) -> (A, Nt)
ExtraLoss = Callable[[int], tuple[Tensor, dict[str, float]]]  # step -> (loss, metrics), e.g. a BC term


@dataclass(frozen=True)
class LatentConfig:
    """The encoder and its ELBO fit (sizes chosen for a 2-core CPU)."""

    encoder_hidden: int = 64  # width of the set encoder's comparison embedding / attention
    encoder_layers: int = 1  # self-attention layers over a set
    annotators_per_batch: int = 8
    context_size: tuple[int, int] = (8, 32)  # comparisons the encoder reads per annotator (sampled range)
    max_target: int = 16  # comparisons the decoder is scored on per annotator (its cost dominates a step)
    lr: float = 1e-3
    beta_max: float = 0.1  # KL weight after warm-up (Eq. 7 has 1; 1 collapsed the posterior on Circle)
    kl_warmup_fraction: float = 0.3  # linear 0 -> beta_max over this fraction of the steps
    grad_clip: float = 10.0


def build_vae(feature_shape: tuple[int, ...], latent_dim: int, config: LatentConfig) -> PreferenceVAE:
    """Core SetEncoder + standard-normal prior (the prior the high-level regulariser reads)."""
    encoder = SetEncoder(
        feature_shape,
        latent_dim,
        hidden_dim=config.encoder_hidden,
        num_layers=config.encoder_layers,
        num_heads=2,
    )
    return PreferenceVAE(encoder, StandardNormalPrior(latent_dim))


def _batches(crowd: Crowd, config: LatentConfig, gen: torch.Generator) -> Iterator[PreferenceSetBatch]:
    while True:  # epochs over annotators, forever
        yield from iterate_set_batches(
            crowd,
            config.annotators_per_batch,
            config.context_size,
            generator=gen,
            max_target=config.max_target,
        )


def fit_vae(
    vae: PreferenceVAE,
    decoder: nn.Module,
    log_likelihood: LogLik,
    crowd: Crowd,
    steps: int,
    config: LatentConfig,
    *,
    seed: int,
    extra_loss: ExtraLoss | None = None,
    progress: bool = True,
    desc: str = "vae",
) -> list[dict[str, float]]:
    """Maximise the ELBO (+ ``extra_loss``) with Adam over encoder and decoder; returns per-step metrics.

    The likelihood is averaged over one reparameterised z' per annotator; beta is annealed linearly.
    """
    gen = torch.Generator().manual_seed(seed)
    params = [p for p in [*vae.parameters(), *decoder.parameters()] if p.requires_grad]
    opt = torch.optim.Adam(params, lr=config.lr)
    schedule = KLSchedule(config.beta_max, "linear", warmup_steps=int(config.kl_warmup_fraction * steps))
    batches = _batches(crowd, config, gen)
    history: list[dict[str, float]] = []
    vae.train()
    bar = tqdm(range(steps), desc=desc, disable=not progress, leave=False)
    for step in bar:
        batch = next(batches)
        loss, metrics = vae.loss(batch, log_likelihood, schedule(step))
        if extra_loss is not None:
            extra, extra_metrics = extra_loss(step)
            loss = loss + extra
            metrics |= extra_metrics
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, config.grad_clip)
        opt.step()
        metrics["loss"] = loss.item()
        history.append(metrics)
        if step % 50 == 0:
            bar.set_postfix(
                loss=f"{metrics['loss']:.3f}", ll=f"{metrics['log_lik']:.3f}", kl=f"{metrics['kl']:.2f}"
            )
    vae.eval()
    return history


@torch.no_grad()
def posterior_means(vae: PreferenceVAE, crowd: Crowd, chunk: int = 16) -> tuple[Tensor, Tensor, list[str]]:
    """Every annotator's posterior ``(mean, std)`` ``(A, D)`` given their *whole* set, and their ids."""
    ids = crowd.annotator_ids
    means, stds = [], []
    for i in range(0, len(ids), chunk):
        sets = [crowd[a] for a in ids[i : i + chunk]]
        q = vae.posterior(pad_sets(sets, sets))
        means.append(q.mean)
        stds.append(q.std)
    return torch.cat(means), torch.cat(stds), ids


def pick_skills(vae: PreferenceVAE, crowd: Crowd, k: int, seed: int) -> tuple[SkillSelection, Tensor, Tensor]:
    """K skill latents by k-means over the posterior means (core ``select_skills``), plus the means/stds."""
    means, stds, ids = posterior_means(vae, crowd)
    k = max(1, min(k, len(ids)))
    return select_skills(means, ids, vae.prior, k=k, seed=seed), means, stds
