"""The online TD3 loop shared by every online method: env steps, a training reward, one replay buffer,
periodic resumable checkpoints.

What differs between methods is only (a) the agent (plain TD3 over primitive actions, or the
high-level TD3 over skills) and (b) the *training* reward computed from each transition -- the env
reward (Task-only, the high-level policy), r - K cost (Oracle), a reward mix (RC), r - K c_hat (SOPL).
Logged episode returns are always the env's reward and cost.

Optionally a fixed share of every TD3 batch comes from D_tau, relabelled with the run's training reward
(symmetric sampling, as in RLPD): the baselines then see the same offline data the skills were learned
from, and an online Oracle need not rediscover, from scratch, behaviour D_tau already holds.

Seeding: the env is built with ``seed`` and episode ``e`` is reset with ``seed * 100_000 + e``; all
exploration noise comes from the agent's generator and all replay sampling from the buffer's, so a
run is a function of its seed. A checkpoint (agent, optimisers, buffer, RNG states) is written at the
first episode end after every ``checkpoint_every`` env steps; a rerun with the same config resumes from
it (MuJoCo envs then repeat the uninterrupted run exactly; a fresh Bullet env may differ slightly, see
``control.envs``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from control.methods.common import Spaces, load_checkpoint, save_checkpoint
from control.td3 import TD3, ReplayBuffer

__all__ = ["OnlineConfig", "TrainingReward", "relabelled", "save_final", "train_online"]

# (obs, act, env reward, env cost, next_obs) -> training reward; raw env quantities, one step (or a batch of
# them, stacked on a leading axis, for relabelling D_tau).
TrainingReward = Callable[[np.ndarray, np.ndarray, float, float, np.ndarray], float]


@dataclass(frozen=True)
class OnlineConfig:
    """Online loop settings (TD3 hyper-parameters live in ``TD3Config``)."""

    steps: int  # env steps
    learning_starts: int = 1_000  # warm-up env steps with the agent's warm-up action, no updates
    update_every: int = 1  # env steps per gradient update (2 halves the compute of a run)
    checkpoint_every: int = 10_000  # env steps between resumable checkpoints (0 = never)
    max_episode_steps: int | None = None  # optional cap below the env's own limit (tiny CI profiles)


def _episode_seed(seed: int, episode: int) -> int:
    return seed * 100_000 + episode


def train_online(
    env_name: str,
    agent: TD3,
    spaces: Spaces,
    reward_fn: TrainingReward,
    config: OnlineConfig,
    *,
    seed: int,
    workdir: Path | None = None,
    config_hash: str = "",
    progress: bool = True,
    desc: str = "td3",
    offline: dict[str, np.ndarray] | None = None,
    offline_fraction: float = 0.5,
) -> dict[str, Any]:
    """Train ``agent`` online on ``env_name`` for ``config.steps`` env steps; returns the training log
    (per-episode env reward/cost/length, wall time, updates).

    ``offline``: transitions in model space (``obs, act, rew, next_obs, terminal``; ``rew`` already the training
    reward); when given, ``offline_fraction`` of every batch is drawn from them, the rest from the online buffer.
    """
    from control.envs import make_env

    env = make_env(env_name, seed)
    buffer = ReplayBuffer(
        spaces.obs_dim, spaces.act_dim, min(config.steps, agent.config.buffer_size), seed=seed + 3
    )
    offline_buffer, n_offline = None, 0
    if offline is not None:
        if not 0.0 < offline_fraction < 1.0:
            raise ValueError(f"offline_fraction must be in (0, 1), got {offline_fraction}")
        offline_buffer = ReplayBuffer(spaces.obs_dim, spaces.act_dim, len(offline["rew"]), seed=seed + 5)
        offline_buffer.load_arrays(offline, 0)
        n_offline = round(agent.config.batch_size * offline_fraction)
    log: dict[str, Any] = {"episodes": [], "updates": 0, "wall_s": 0.0}
    step, episode = 0, 0
    ckpt = (
        workdir / "online_checkpoint.safetensors" if workdir is not None and config.checkpoint_every else None
    )
    if ckpt is not None and (found := load_checkpoint(ckpt, config_hash)) is not None:
        tensors, meta = found
        agent.load_state_tensors({k[6:]: v for k, v in tensors.items() if k.startswith("agent.")})
        buffer.load_arrays(
            {k[7:]: v.numpy() for k, v in tensors.items() if k.startswith("buffer.")}, meta["buffer_pos"]
        )
        buffer.rng.bit_generator.state = meta["buffer_rng"]
        if offline_buffer is not None:
            offline_buffer.rng.bit_generator.state = meta["offline_rng"]
        torch.set_rng_state(tensors["torch_rng"])
        step, episode, log = meta["step"], meta["episode"], meta["log"]
    last_ckpt = step

    def to_model(o: np.ndarray) -> torch.Tensor:
        with torch.no_grad():
            return spaces.obs(torch.as_tensor(np.asarray(o, np.float32)).unsqueeze(0))

    t0 = time.perf_counter() - log["wall_s"]
    obs, _ = env.reset(seed=_episode_seed(seed, episode))
    x = to_model(obs)
    ep_rew = ep_cost = 0.0
    ep_len = 0
    bar = tqdm(total=config.steps, initial=step, desc=desc, disable=not progress, leave=False)
    while step < config.steps:
        with torch.no_grad():
            u = agent.warmup_action(x) if step < config.learning_starts else agent.explore(x)
            act = spaces.act.unscale(u).squeeze(0).numpy().astype(np.float32)
        next_obs, rew, terminated, truncated, info = env.step(act)
        cost = float(info["cost"])
        train_r = float(reward_fn(obs, act, rew, cost, next_obs))
        x2 = to_model(next_obs)
        buffer.add(x.squeeze(0).numpy(), u.squeeze(0).numpy(), train_r, x2.squeeze(0).numpy(), terminated)
        ep_rew, ep_cost, ep_len = ep_rew + rew, ep_cost + cost, ep_len + 1
        obs, x = next_obs, x2
        step += 1
        bar.update(1)
        if step >= config.learning_starts and step % config.update_every == 0:
            if offline_buffer is None:
                batch = buffer.sample(agent.config.batch_size)
            else:
                on, off = buffer.sample(agent.config.batch_size - n_offline), offline_buffer.sample(n_offline)
                batch = {k: torch.cat([on[k], off[k]]) for k in on}
            agent.update(batch)
            log["updates"] += 1
        if config.max_episode_steps is not None and ep_len >= config.max_episode_steps:
            truncated = True
        if terminated or truncated:
            log["episodes"].append({"step": step, "reward": ep_rew, "cost": ep_cost, "length": ep_len})
            bar.set_postfix(ep_reward=f"{ep_rew:.1f}", ep_cost=f"{ep_cost:.1f}")
            episode += 1
            ep_rew = ep_cost = 0.0
            ep_len = 0
            if ckpt is not None and step - last_ckpt >= config.checkpoint_every and step < config.steps:
                log["wall_s"] = time.perf_counter() - t0
                _save(ckpt, agent, buffer, step, episode, log, config_hash, offline_buffer)
                last_ckpt = step
            obs, _ = env.reset(seed=_episode_seed(seed, episode))
            x = to_model(obs)
    bar.close()
    env.close()
    log["wall_s"] = time.perf_counter() - t0
    return log


def relabelled(spaces: Spaces, data: Any, reward_fn: TrainingReward) -> dict[str, np.ndarray]:
    """D_tau's transitions in model space with ``rew`` replaced by ``reward_fn`` (``train_online``'s ``offline``)."""
    out = {k: v.numpy() for k, v in spaces.tensors(data).items()}
    out["rew"] = np.asarray(reward_fn(data.obs, data.act, data.rew, data.cost, data.next_obs), np.float32)
    return out


def save_final(workdir: Path, tensors: dict[str, torch.Tensor], log: dict[str, Any], config_hash: str) -> dict[str, Any]:
    """Write a finished run's ``workdir/final.safetensors`` (with its summary) and drop the resume checkpoint;
    returns the summary (episodes, updates, mean reward/cost of the last five episodes)."""
    eps = log["episodes"]
    last = eps[-5:]
    summary = {
        "episodes": len(eps),
        "updates": log["updates"],
        **({"options": log["options"]} if "options" in log else {}),
        "last_episode_reward": float(np.mean([e["reward"] for e in last])) if last else None,
        "last_episode_cost": float(np.mean([e["cost"] for e in last])) if last else None,
    }
    save_checkpoint(workdir / "final.safetensors", tensors, {"config_hash": config_hash, "summary": summary})
    for stale in ("online_checkpoint.safetensors", "online_checkpoint.json"):
        (workdir / stale).unlink(missing_ok=True)
    return summary


def _save(
    path: Path, agent: TD3, buffer: ReplayBuffer, step: int, episode: int, log: dict, config_hash: str,
    offline_buffer: ReplayBuffer | None = None,
) -> None:
    tensors = {f"agent.{k}": v for k, v in agent.state_tensors().items()}
    tensors |= {f"buffer.{k}": torch.from_numpy(v) for k, v in buffer.arrays().items()}
    tensors["torch_rng"] = torch.get_rng_state()
    meta = {
        "config_hash": config_hash,
        "step": step,
        "episode": episode,
        "buffer_pos": buffer.pos,
        "buffer_rng": json.loads(json.dumps(buffer.rng.bit_generator.state)),
        "log": log,
    }
    if offline_buffer is not None:  # its data is D_tau's, rebuilt on resume; only where its sampling stood
        meta["offline_rng"] = json.loads(json.dumps(offline_buffer.rng.bit_generator.state))
    save_checkpoint(path, tensors, meta)
