"""Behaviour agents: TD3 policies trained online as extra D_tau behaviours, next to the scripted drivers.

The scripted drivers (:mod:`control.behaviour`) span the users' goals but not the task's optimum: the
Oracle learns to be faster *and* safe than any of them (paper profile: D_tau's best cost-free episode is
0.59 of the Oracle's return on Circle, 0.84 on Run), and skills learned offline cannot beat their data.
So D_tau also holds rollouts of TD3 agents trained on the env reward minus ``penalty x K x cost``
(K = the Oracle's :func:`~control.methods.baselines.default_cost_penalty` over the scripted data):
``agent_task`` (penalty 0, the task's own optimum, costly) and ``agent_safe`` (penalty 1, the Oracle's
recipe, fast and safe), each rolled out with per-episode action noise. Nothing is labelled: the agents
are just two more behaviours whose episodes carry the env's own cost.

Agents are trained once per D_tau cache (``<cache>/agents/<name>/``) with resumable checkpoints, so an
interrupted generation picks up where it stopped. The data layer reaches into the methods' TD3 loop only
here, lazily.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["AGENTS", "AgentSpec", "agent_config", "train_agents"]


@dataclass(frozen=True)
class AgentSpec:
    """One behaviour agent: trains on ``r - penalty * K * cost``; ``share`` of D_tau's episodes."""

    name: str
    penalty: float
    share: float = 0.1
    noise: tuple[float, ...] = (0.0, 0.1, 0.3)  # per-episode Gaussian action noise (env action units)


AGENTS: tuple[AgentSpec, ...] = (AgentSpec("agent_task", 0.0), AgentSpec("agent_safe", 1.0))

def _td3_defaults() -> Any:
    """The agents train like the benchmark's online baselines: ``control.methods.MethodConfig``'s defaults."""
    from control.methods import MethodConfig

    return MethodConfig()


def agent_config(steps: int) -> dict[str, Any]:
    """JSON-able description of the agents (goes into D_tau's manifest and cache key)."""
    cfg = _td3_defaults()
    return {
        "steps": steps,
        "agents": [asdict(a) for a in AGENTS],
        "td3": {"hidden": list(cfg.hidden), "update_every": cfg.update_every, "learning_starts": cfg.learning_starts},
    }


def train_agents(
    scripted: Any,
    steps: int,
    seed: int,
    workdir: str | Path,
    max_episode_steps: int | None = None,
    progress: bool = True,
) -> tuple[dict[str, Callable[[np.ndarray], np.ndarray]], dict[str, dict[str, Any]]]:
    """Train (or load) every agent of :data:`AGENTS` on the env of ``scripted`` (the scripted D_tau part,
    which fixes the observation normaliser and K).

    Returns (name -> deterministic policy ``obs -> action`` in env units, name -> training summary).
    """
    from control.methods.baselines import default_cost_penalty
    from control.methods.common import ActorPolicy, Spaces, config_hash, data_fingerprint, load_checkpoint
    from control.methods.online import OnlineConfig, save_final, train_online
    from control.td3 import TD3, TD3Config

    cfg = _td3_defaults()
    spaces = Spaces.from_data(scripted)
    K = default_cost_penalty(scripted.rew)
    online = OnlineConfig(
        steps=steps,
        learning_starts=min(cfg.learning_starts, max(1, steps // 10)),
        update_every=cfg.update_every,
        checkpoint_every=cfg.checkpoint_every,
        max_episode_steps=max_episode_steps,
    )
    policies: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
    summaries: dict[str, dict[str, Any]] = {}
    for i, spec in enumerate(AGENTS):
        folder = Path(workdir) / spec.name
        folder.mkdir(parents=True, exist_ok=True)
        agent_seed = seed * 1_000 + 17 + i
        agent = TD3(spaces.obs_dim, spaces.act_dim, TD3Config(hidden=cfg.hidden), seed=agent_seed)
        h = config_hash("behaviour-agent", spec.name, spec.penalty, online, K, data_fingerprint(scripted), agent_seed)
        penalty = spec.penalty * K
        if (found := load_checkpoint(folder / "final.safetensors", h)) is not None:
            agent.load_state_tensors(found[0])
            summary = found[1]["summary"]
        else:
            log = train_online(
                scripted.env_id, agent, spaces, lambda o, a, r, c, o2, k=penalty: r - k * c, online,
                seed=agent_seed, workdir=folder, config_hash=h, progress=progress,
                desc=f"{spec.name} ({scripted.env_id})",
            )  # fmt: skip
            summary = save_final(folder, agent.state_tensors(), log, h)
        policies[spec.name] = ActorPolicy(spaces, agent.actor)
        summaries[spec.name] = summary | {"cost_penalty": penalty}
    return policies, summaries
