"""From a trained latent-skill model to a skills directory: K PEFT adapters and ``skills.json``.

The annotators' posterior means (each read from their whole preference set) are clustered by the core's skill
selection (each latent then optionally refined on its whole group's pairs); every chosen latent is exported as an
ordinary LoRA adapter. ``skills.json`` records what a downstream tool needs: base model, latent dimension, and per
skill its name, latent, prior log-density and covered annotators, plus the hash of the training config.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .core import Crowd, SkillSelection, pad_sets, select_skills
from .core.atomic import write_json
from .latent_lora import export_skill, set_latent
from .trainers.skill_model import LatentSkillModel

__all__ = ["SKILLS_MANIFEST", "config_hash", "export_skills", "load_manifest", "posterior_means"]

SKILLS_MANIFEST = "skills.json"
FORMAT = "safecrowd-skills/1"


def config_hash(config: Mapping[str, Any] | Any) -> str:
    """A short, stable hash of a training configuration (a dict or a dataclass with ``to_dict``)."""
    data = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


@torch.no_grad()
def posterior_means(
    model: LatentSkillModel, crowd: Crowd, *, max_context: int = 64, batch_size: int = 32
) -> tuple[list[str], Tensor]:
    """``(ids, (A, D))``: each annotator's posterior mean from (up to ``max_context`` of) their set."""
    was_training = model.training
    model.eval()
    device = next(model.vae.parameters()).device
    sets = list(crowd.sets.values())
    means = []
    for start in range(0, len(sets), batch_size):
        chunk = [s.subset(torch.arange(min(len(s), max_context))) for s in sets[start : start + batch_size]]
        batch = pad_sets(chunk, chunk).to(device)
        means.append(model.vae.posterior(batch).mean.cpu())
    model.train(was_training)
    return [s.annotator_id for s in sets], torch.cat(means)


def export_skills(
    model: LatentSkillModel,
    crowd: Crowd,
    out_dir: str | os.PathLike,
    *,
    num_skills: int | None = None,
    k_range: tuple[int, int] = (2, 8),
    seed: int = 0,
    training_config: Mapping[str, Any] | Any | None = None,
    refine: Callable[[list[str], Tensor], Tensor] | None = None,
) -> tuple[SkillSelection, dict[str, Any]]:
    """Select skills from ``crowd``'s posterior means and write ``out_dir/skill_<k>/`` + ``skills.json``.

    ``refine(annotator_ids, centroid) -> latent`` moves each selected latent (e.g. the trainer's
    ``fit_group_latent``); the manifest then also keeps the k-means ``centroid``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ids, means = posterior_means(model, crowd)
    selection = select_skills(means, ids, model.vae.prior, k=num_skills, k_range=k_range, seed=seed)
    centroids = selection.latents
    if refine is not None:
        latents = torch.stack([refine(selection.covered[k], centroids[k]) for k in tqdm(range(selection.k), desc="refining skills")])
        device = next(itertools.chain(model.vae.prior.parameters(), model.vae.prior.buffers()), latents).device
        with torch.no_grad():
            log_prior = model.vae.prior.log_prob(latents.to(device)).float().cpu()
        selection = dataclasses.replace(selection, latents=latents, log_prior=log_prior)
    base = model.spec["base_model_name_or_path"]
    skills = []
    set_latent(model.backbone, None)
    for k in range(selection.k):
        name = f"skill_{k}"
        export_skill(model.backbone, selection.latents[k], out / name, base)
        skills.append(
            {
                "name": name,
                "path": name,
                "latent": [round(float(v), 6) for v in selection.latents[k]],
                "log_prior": float(selection.log_prior[k]),
                "annotators": selection.covered[k],
                **({"centroid": [round(float(v), 6) for v in centroids[k]]} if refine is not None else {}),
            }
        )
    manifest = {
        "format": FORMAT,
        "method": model.spec["kind"],
        "base_model": base,
        "latent_dim": model.latent_dim,
        "prior": model.spec["prior"],
        "config_hash": config_hash(training_config) if training_config is not None else None,
        "silhouette": {str(k): v for k, v in selection.silhouette.items()},
        "skills": skills,
    }
    write_json(manifest, out / SKILLS_MANIFEST)
    return selection, manifest


def load_manifest(skills_dir: str | os.PathLike) -> dict[str, Any]:
    """Read and check ``skills.json``; skill paths are resolved against the directory."""
    path = Path(skills_dir) / SKILLS_MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {skills_dir} a skills directory?")
    manifest = json.loads(path.read_text())
    for i, skill in enumerate(manifest.get("skills", [])):
        for key in ("name", "path", "latent", "log_prior", "annotators"):
            if key not in skill:
                raise ValueError(f"{path}: skill {i} has no field {key!r}")
        skill["path"] = str((Path(skills_dir) / skill["path"]).resolve())
    return manifest
