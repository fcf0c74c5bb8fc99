"""D_tau: offline trajectories of goal-conditioned behaviour policies, generated once and cached.

:func:`load_or_generate` rolls out the env's behaviour mix (:mod:`control.behaviour`): every episode
draws its own goal parameters (speed, lane, radius, approach path, action noise), so D_tau mixes slow
and fast, safe and unsafe behaviour. Nothing in it is labelled safe or unsafe; the env's own per-step
``info["cost"]`` is stored next to its reward, and per-step ``features`` hold the named quantities the
simulated users read (:mod:`control.crowd`).

Cache layout: ``root/<env_id>/<profile.name>-seed<seed>/{data.npz, manifest.json}``, both written
atomically; the manifest records env, profile, seed, package versions, the behaviour config, sizes and
mean episode reward/cost per behaviour. A cache is reused when its manifest's ``config_hash`` matches.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from control.profiles import Profile

__all__ = ["OfflineData", "cache_dir", "generate", "load_or_generate", "package_versions", "return_ceiling"]

_ARRAYS = ("obs", "act", "rew", "cost", "next_obs", "terminal", "episode_end", "episode")
_FEATURE_PREFIX = "feature/"
_VERSIONED = ("numpy", "gymnasium", "bullet-safety-gym", "pybullet", "safety-gymnasium", "mujoco", "torch")


@dataclass
class OfflineData:
    """Flat transition arrays of D_tau; episodes are contiguous and in order.

    Shapes: ``obs/next_obs (N, obs_dim)`` float32, ``act (N, act_dim)`` float32 inside the action
    bounds, ``rew/cost (N,)`` float32 (env reward, env ``info["cost"]``), ``terminal`` (true termination),
    ``episode_end`` (last step of its episode), ``episode (N,)`` int64, ``features[name] (N,)`` float32.
    ``manifest`` is the cache manifest (empty for data built in memory).
    """

    env_id: str
    obs: np.ndarray
    act: np.ndarray
    rew: np.ndarray
    cost: np.ndarray
    next_obs: np.ndarray
    terminal: np.ndarray
    episode_end: np.ndarray
    episode: np.ndarray
    features: dict[str, np.ndarray] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.obs)
        for name in _ARRAYS:
            if len(getattr(self, name)) != n:
                raise ValueError(
                    f"OfflineData({self.env_id}): {name} has {len(getattr(self, name))} rows, obs {n}"
                )
        for name, values in self.features.items():
            if len(values) != n:
                raise ValueError(
                    f"OfflineData({self.env_id}): feature {name!r} has {len(values)} rows, obs {n}"
                )

    def __len__(self) -> int:
        return len(self.obs)

    @property
    def obs_dim(self) -> int:
        return int(self.obs.shape[1])

    @property
    def act_dim(self) -> int:
        return int(self.act.shape[1])

    @property
    def num_episodes(self) -> int:
        return len(np.unique(self.episode))

    def episode_returns(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-episode summed (reward, cost), in episode order."""
        _, inverse = np.unique(self.episode, return_inverse=True)
        return (np.bincount(inverse, weights=self.rew), np.bincount(inverse, weights=self.cost))

    def scripted_mask(self) -> np.ndarray:
        """``(N,)`` bool: steps of the scripted behaviours, i.e. all but the behaviour agents' episodes
        (:mod:`control.agents`, named in the manifest's per-episode records; all steps without a manifest)."""
        from control.agents import AGENTS

        names = {a.name for a in AGENTS}
        agent_episodes = [i for i, e in enumerate(self.manifest.get("episodes", [])) if e["behaviour"] in names]
        return ~np.isin(self.episode, agent_episodes)

    def segment_starts(self, length: int) -> np.ndarray:
        """Every index ``i`` whose ``length`` steps ``i..i+length-1`` lie in one episode, ascending."""
        if length < 1:
            raise ValueError(f"segment length must be >= 1, got {length}")
        n = len(self)
        if n < length:
            return np.zeros(0, dtype=np.int64)
        starts = np.arange(n - length + 1, dtype=np.int64)
        return starts[self.episode[starts] == self.episode[starts + length - 1]]

    def segments(self, starts: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
        """Observations ``(M, T, obs_dim)`` and actions ``(M, T, act_dim)`` of the segments at ``starts``."""
        idx = np.asarray(starts, dtype=np.int64)[:, None] + np.arange(length)[None, :]  # (M, T)
        if idx.size and (idx.max() >= len(self) or idx.min() < 0):
            raise IndexError(f"segment of length {length} runs past D_tau ({len(self)} steps)")
        return self.obs[idx], self.act[idx]

    def segment_sums(self, values: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
        """Sum of a per-step array over each segment: ``(M,)`` (uses a cumulative sum, O(N + M))."""
        csum = np.concatenate([[0.0], np.cumsum(np.asarray(values, dtype=np.float64))])
        starts = np.asarray(starts, dtype=np.int64)
        return csum[starts + length] - csum[starts]

    def save(self, path: str | Path) -> None:
        """Write all arrays to one ``.npz`` atomically (features under ``feature/<name>``)."""
        from safecrowd_llm.core.atomic import atomic_path

        arrays = {name: getattr(self, name) for name in _ARRAYS}
        arrays.update({_FEATURE_PREFIX + k: v for k, v in self.features.items()})
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)

    @classmethod
    def load(cls, path: str | Path, env_id: str, manifest: dict[str, Any] | None = None) -> OfflineData:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in _ARRAYS if k not in z.files]
            if missing:
                raise ValueError(f"{path}: missing arrays {missing}")
            arrays = {k: z[k] for k in _ARRAYS}
            feats = {k[len(_FEATURE_PREFIX) :]: z[k] for k in z.files if k.startswith(_FEATURE_PREFIX)}
        return cls(env_id=env_id, features=feats, manifest=dict(manifest or {}), **arrays)


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages that shape the data (None when absent)."""
    out: dict[str, str | None] = {}
    for name in _VERSIONED:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def cache_dir(env: str, profile: Profile, root: str | Path = "runs/control/data", seed: int = 0) -> Path:
    """``root/<env_id>/<profile.name>-seed<seed>``."""
    from control.envs import get_spec

    return Path(root) / get_spec(env).env_id / f"{profile.name}-seed{seed}"


def _config(env_id: str, profile: Profile, seed: int) -> dict[str, Any]:
    from control.behaviour import behaviour_config

    config = {
        "env_id": env_id,
        "seed": seed,
        "data_episodes": profile.data_episodes,
        "max_episode_steps": profile.max_episode_steps,
        "behaviour": behaviour_config(env_id),
    }
    if profile.agent_steps:  # absent otherwise, so scripted-only caches keep their hash
        from control.agents import agent_config

        config["agents"] = agent_config(profile.agent_steps)
    return config


def _hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def generate(
    env: str, profile: Profile, seed: int = 0, progress: bool = True, agents_dir: str | Path | None = None
) -> OfflineData:
    """Roll out ``profile.data_episodes`` behaviour episodes of ``env`` (no caching; see :func:`load_or_generate`).

    With ``profile.agent_steps`` the episodes are split: the scripted mix first, then the behaviour agents'
    shares (:mod:`control.agents`), trained on the scripted part (checkpointed under ``agents_dir``)."""
    from control.behaviour import rollout_behaviour
    from control.envs import get_spec

    spec = get_spec(env)
    t0 = time.perf_counter()
    agent_summaries: dict[str, Any] = {}
    if profile.agent_steps:
        from control.agents import AGENTS

        n_agents = [max(1, round(a.share * profile.data_episodes)) for a in AGENTS]
        n_scripted = profile.data_episodes - sum(n_agents)
        if n_scripted < 1:
            raise ValueError(f"profile {profile.name!r}: data_episodes too small for the behaviour agents' shares")
    else:
        n_scripted = profile.data_episodes
    arrays, features, episodes = rollout_behaviour(
        spec.env_id, n_scripted, seed, profile.max_episode_steps, progress=progress
    )
    data = OfflineData(env_id=spec.env_id, features=features, **arrays)
    if profile.agent_steps:
        data, agent_summaries, agent_episodes = _add_agents(data, profile, seed, agents_dir, n_agents, progress)
        episodes += agent_episodes
    seconds = time.perf_counter() - t0
    config = _config(spec.env_id, profile, seed)
    data.manifest = {
        "env_id": spec.env_id,
        "profile": profile.name,
        "seed": seed,
        "config": config,
        "config_hash": _hash(config),
        "versions": package_versions(),
        "sizes": {
            "transitions": len(data),
            "episodes": data.num_episodes,
            "obs_dim": data.obs_dim,
            "act_dim": data.act_dim,
            "cost_steps": int((data.cost > 0).sum()),
            "features": sorted(features),
        },
        "generation_seconds": round(seconds, 2),
        "steps_per_second": round(len(data) / max(seconds, 1e-9), 1),
        "behaviours": _behaviour_stats(episodes),
        **({"agents": agent_summaries} if agent_summaries else {}),
        "episodes": episodes,
    }
    return data


def _add_agents(
    scripted: OfflineData,
    profile: Profile,
    seed: int,
    agents_dir: str | Path | None,
    counts: list[int],
    progress: bool,
) -> tuple[OfflineData, dict[str, Any], list[dict[str, Any]]]:
    """Train the behaviour agents on ``scripted`` and append ``counts[i]`` noisy episodes of agent ``i``."""
    import tempfile

    from control.agents import AGENTS, train_agents
    from control.behaviour import Behaviour, rollout_behaviour

    with tempfile.TemporaryDirectory() as tmp:
        policies, summaries = train_agents(
            scripted, profile.agent_steps, seed, agents_dir or tmp, profile.max_episode_steps, progress
        )
    parts = [scripted]
    records: list[dict[str, Any]] = []
    first = int(scripted.episode.max()) + 1
    for spec, n in zip(AGENTS, counts):
        behaviour = Behaviour(spec.name, spec.name, 1.0, noise=spec.noise)
        policy = policies[spec.name]
        arrays, features, eps = rollout_behaviour(
            scripted.env_id, n, seed, profile.max_episode_steps, progress,
            mix=(behaviour,), controllers={spec.name: lambda env, goal, p=policy: p}, first_episode=first,
        )  # fmt: skip
        parts.append(OfflineData(env_id=scripted.env_id, features=features, **arrays))
        records += eps
        first += n
    merged = OfflineData(
        env_id=scripted.env_id,
        features={k: np.concatenate([p.features[k] for p in parts]) for k in scripted.features},
        **{k: np.concatenate([getattr(p, k) for p in parts]) for k in _ARRAYS},
    )
    return merged, summaries, records


def _behaviour_stats(episodes: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean/min/max episode reward and cost per behaviour name."""
    out: dict[str, dict[str, float]] = {}
    for name in sorted({e["behaviour"] for e in episodes}):
        rows = [e for e in episodes if e["behaviour"] == name]
        rew = np.array([e["reward"] for e in rows])
        cost = np.array([e["cost"] for e in rows])
        out[name] = {
            "episodes": len(rows),
            "mean_reward": float(rew.mean()),
            "mean_cost": float(cost.mean()),
            "min_cost": float(cost.min()),
            "max_cost": float(cost.max()),
            "safe_episode_fraction": float((cost == 0).mean()),
        }
    return out


def return_ceiling(manifest: dict[str, Any]) -> dict[str, float | None]:
    """D_tau's best episode returns from its manifest: what an offline learner can imitate at most.

    ``best_safe_return`` is the best cost-free behaviour episode (None if none is cost-free): when the
    Oracle's online return is far above it, skills learned from D_tau cannot reach the Oracle's reward.
    """
    eps = manifest.get("episodes", [])
    safe = [e["reward"] for e in eps if e["cost"] == 0]
    return {
        "best_safe_return": float(max(safe)) if safe else None,
        "best_return": float(max(e["reward"] for e in eps)) if eps else None,
        "safe_episode_fraction": len(safe) / len(eps) if eps else None,
    }


def load_or_generate(
    env: str, profile: Profile, root: str | Path = "runs/control/data", seed: int = 0, progress: bool = True
) -> OfflineData:
    """D_tau for ``env`` under ``profile``: loaded from the cache when its config matches, else generated and cached."""
    from control.envs import get_spec
    from safecrowd_llm.core.atomic import write_json

    env_id = get_spec(env).env_id
    folder = cache_dir(env_id, profile, root, seed)
    data_path, manifest_path = folder / "data.npz", folder / "manifest.json"
    want = _hash(_config(env_id, profile, seed))
    if data_path.exists() and manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("config_hash") == want:
            return OfflineData.load(data_path, env_id, manifest)
    data = generate(env_id, profile, seed, progress, agents_dir=folder / "agents")
    data.save(data_path)  # data first: a manifest without its data is never left behind
    write_json(data.manifest, manifest_path)
    return data


def main(argv: list[str] | None = None) -> None:
    """``python -m control.offline --envs Run Circle --profile quick``: generate/cached D_tau and print its coverage."""
    import argparse

    from control.profiles import PROFILES, get_profile

    p = argparse.ArgumentParser(prog="python -m control.offline", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--envs",
        nargs="+",
        default=["Run", "Circle", "Reach", "HalfCheetah-vel", "Hopper-vel", "Swimmer-vel"],
    )
    p.add_argument("--profile", default="quick", choices=list(PROFILES))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--root", type=Path, default=Path("runs/control/data"))
    args = p.parse_args(argv)
    for env in args.envs:
        t0 = time.perf_counter()
        data = load_or_generate(env, get_profile(args.profile), args.root, args.seed)
        m = data.manifest
        print(json.dumps({"env": data.env_id, "seconds": round(time.perf_counter() - t0, 1),
                          "steps_per_second": m.get("steps_per_second"), **m["sizes"],
                          "cost_step_fraction": round(float((data.cost > 0).mean()), 3),
                          "behaviours": m["behaviours"]}, indent=1), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
