"""What every control method shares: normalisation fitted on D_tau, the crowd in model space, seeding,
safetensors checkpoints that describe themselves, and the :data:`Policy` wrappers handed back.

All learned models see *normalised* inputs: observations standardised with D_tau's statistics and
actions scaled to [-1, 1] by the env's bounds; a step's preference feature is ``[obs_n, act_u]``
(the crowd's ``concat(obs, act)`` mapped the same way), so reward models, encoders and policies share
one input space.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from control.networks import ActionScaler, Standardizer
from safecrowd_llm.core import Crowd, PreferenceSet
from safecrowd_llm.core.atomic import atomic_path, write_json

__all__ = [
    "ActorPolicy",
    "Policy",
    "Spaces",
    "config_hash",
    "load_checkpoint",
    "model_crowd",
    "save_checkpoint",
    "seed_everything",
    "segment_features",
]

Policy = Callable[[np.ndarray], np.ndarray]  # deterministic: observation (obs_dim,) -> action (act_dim,)


def seed_everything(seed: int) -> None:
    """Seed python, numpy's legacy global RNG and torch (methods also keep their own generators)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def config_hash(*parts: Any) -> str:
    """A short stable hash of configs (dataclasses, dicts, numbers) to key cached stages on."""

    def plain(x: Any) -> Any:
        if is_dataclass(x) and not isinstance(x, type):
            return plain(asdict(x))
        if isinstance(x, dict):
            return {str(k): plain(v) for k, v in sorted(x.items(), key=lambda kv: str(kv[0]))}
        if isinstance(x, list | tuple):
            return [plain(v) for v in x]
        if isinstance(x, np.generic):
            return x.item()
        return x

    text = json.dumps(plain(list(parts)), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def data_fingerprint(data: Any) -> dict[str, Any]:
    """Identifies a D_tau (size and a checksum of rewards/actions) without hashing all of it."""
    return {
        "env_id": data.env_id,
        "n": len(data.obs),
        "rew": round(float(np.asarray(data.rew, np.float64).sum()), 4),
        "act": round(float(np.asarray(data.act, np.float64).sum()), 4),
    }


def crowd_fingerprint(crowd: Any) -> dict[str, Any]:
    return {
        "pairs": len(crowd.pairs),
        "pairs_sum": int(np.asarray(crowd.pairs).sum()),
        "labels": round(float(np.asarray(crowd.labels, np.float64).sum()), 4),
        "annotators": len(crowd.crowd),
    }


@dataclass
class Spaces:
    """The normalisers of one env, fitted on D_tau: observations and actions."""

    obs: Standardizer
    act: ActionScaler

    @classmethod
    def from_data(cls, data: Any, low: np.ndarray | None = None, high: np.ndarray | None = None) -> Spaces:
        """Observation statistics from ``data.obs``; action bounds given, or the env's (``make_env``)."""
        if low is None or high is None:
            from control.envs import make_env

            env = make_env(data.env_id, 0)
            low, high = env.action_space.low, env.action_space.high
            env.close()
        return cls(Standardizer.fit(data.obs), ActionScaler(low, high))

    @property
    def obs_dim(self) -> int:
        return int(self.obs.mean.shape[0])

    @property
    def act_dim(self) -> int:
        return int(self.act.mid.shape[0])

    def features(self, obs: Tensor, act: Tensor) -> Tensor:
        """``[obs_n, act_u]`` of raw ``obs (..., obs_dim)`` and ``act (..., act_dim)``."""
        return torch.cat([self.obs(obs), self.act.scale(act)], -1)

    def tensors(self, data: Any) -> dict[str, Tensor]:
        """D_tau's transitions in model space: ``obs, act, rew, next_obs, terminal`` tensors."""
        with torch.no_grad():
            return {
                "obs": self.obs(torch.as_tensor(data.obs, dtype=torch.float32)),
                "act": self.act.scale(torch.as_tensor(data.act, dtype=torch.float32)),
                "rew": torch.as_tensor(data.rew, dtype=torch.float32),
                "next_obs": self.obs(torch.as_tensor(data.next_obs, dtype=torch.float32)),
                "terminal": torch.as_tensor(np.asarray(data.terminal), dtype=torch.float32),
            }


def segment_features(spaces: Spaces, data: Any, starts: np.ndarray, length: int) -> Tensor:
    """``(M, T, obs_dim + act_dim)`` model-space features of D_tau's segments at ``starts``."""
    obs, act = data.segments(np.asarray(starts), length)
    with torch.no_grad():
        return spaces.features(
            torch.as_tensor(obs, dtype=torch.float32), torch.as_tensor(act, dtype=torch.float32)
        )


def model_crowd(crowd: Crowd, spaces: Spaces) -> Crowd:
    """The crowd with each side's ``concat(obs, act)`` steps mapped to model space ``[obs_n, act_u]``."""
    d = spaces.obs_dim
    if crowd.feature_shape[-1] != d + spaces.act_dim:
        raise ValueError(
            f"crowd features have size {crowd.feature_shape[-1]}, expected obs {d} + act {spaces.act_dim}"
        )

    def conv(x: Tensor) -> Tensor:
        with torch.no_grad():
            return spaces.features(x[..., :d].float(), x[..., d:].float())

    sets = [
        PreferenceSet(s.annotator_id, conv(s.a), conv(s.b), s.y, s.weights, s.ids)
        for s in crowd.sets.values()
    ]
    return Crowd.from_sets(sets)


class ActorPolicy:
    """A :data:`Policy` from a module mapping normalised observations to scaled actions in [-1, 1]."""

    def __init__(self, spaces: Spaces, actor: Callable[[Tensor], Tensor]) -> None:
        self.spaces, self.actor = spaces, actor
        if isinstance(actor, nn.Module):
            actor.eval()

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            x = self.spaces.obs(torch.as_tensor(np.asarray(obs, np.float32)).unsqueeze(0))
            return self.spaces.act.unscale(self.actor(x)).squeeze(0).numpy().astype(np.float32)


# ---- checkpoints -------------------------------------------------------------------------------------------
def save_checkpoint(path: str | Path, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    """Write ``tensors`` to ``path`` (safetensors) and ``meta`` next to it (``.json``), both atomically.

    The JSON is written last, so its presence means the pair is complete."""
    from safetensors.torch import save_file

    path = Path(path)
    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(flat, str(tmp))
    write_json(meta, path.with_suffix(".json"))


def load_checkpoint(
    path: str | Path, expect_hash: str | None = None
) -> tuple[dict[str, Tensor], dict[str, Any]] | None:
    """``(tensors, meta)`` of a checkpoint, or None if absent or made with another config hash."""
    from safetensors.torch import load_file

    path = Path(path)
    meta_path = path.with_suffix(".json")
    if not (path.exists() and meta_path.exists()):
        return None
    meta = json.loads(meta_path.read_text())
    if expect_hash is not None and meta.get("config_hash") != expect_hash:
        return None
    return load_file(str(path)), meta


def module_tensors(prefix: str, module: nn.Module) -> dict[str, Tensor]:
    return {f"{prefix}.{k}": v for k, v in module.state_dict().items()}


def load_module(prefix: str, module: nn.Module, tensors: dict[str, Tensor]) -> None:
    module.load_state_dict(
        {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
    )
