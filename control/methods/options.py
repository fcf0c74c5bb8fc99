"""Composition by options: pi_h(k|s) picks one of the K selected skills and commits to it for ``horizon`` steps.

The TD3 high level (:mod:`.composition`) chooses a continuous z' at every env step. Two things we measured
make that hard: the regulariser that keeps z' on the prior also pins it near the prior's mode (slow), and
when it is loosened pi_h switches between individually cost-free skills from one state to the next, which
is where the cost comes from. This variant is the control twin of the language-model router: the actions
of pi_h are the K skill latents z'_k chosen from the annotators' posteriors (core ``select_skills``), and a
chosen skill runs for ``horizon`` env steps (an option), so the executed behaviour is a sequence of whole
skills. It is learned by SMDP Q-learning on the new task's reward only:

    Q(s, k) <- R + gamma^n Q'(s', k*),   R = sum_{t<n} gamma^t r_t over the option's n steps
    k*(s)   =  argmax_k  Q(s, k) / mean_j |Q(s, j)|  +  beta_reg log p(z'_k)

i.e. the prior regulariser of Eq. 11 enters the choice, relative to the normalised value as in the TD3
variant. Exploration is epsilon-greedy over skills; nothing but the skill ever produces an action.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from control.methods.common import Spaces, load_checkpoint, save_checkpoint
from control.networks import mlp
from control.td3 import optimizer_from_tensors, optimizer_to_tensors

__all__ = ["OptionsConfig", "OptionsPolicy", "SkillValues", "train_options"]


@dataclass(frozen=True)
class OptionsConfig:
    """The options high level (sizes for a 2-core CPU)."""

    horizon: int = 50  # env steps a chosen skill runs before pi_h chooses again
    hidden: tuple[int, ...] = (128, 128)
    lr: float = 1e-3
    gamma: float = 0.99  # per env step; an option of n steps is discounted by gamma^n
    batch_size: int = 128
    updates_per_option: int = 8
    tau: float = 0.01  # Polyak rate of the target network
    epsilon_start: float = 1.0
    epsilon_end: float = 0.05
    epsilon_fraction: float = 0.5  # of the env steps over which epsilon decays linearly
    beta_reg: float = 0.1

    def __post_init__(self) -> None:
        if self.horizon < 1 or self.updates_per_option < 0 or self.batch_size < 1:
            raise ValueError("horizon and batch_size must be >= 1 and updates_per_option >= 0")


class SkillValues(nn.Module):
    """Q(s, .) over the K skills, and the prior-regularised greedy choice."""

    def __init__(self, obs_dim: int, latents: Tensor, log_prior: Tensor, config: OptionsConfig) -> None:
        super().__init__()
        self.net = mlp(obs_dim, latents.shape[0], config.hidden)
        self.register_buffer("latents", latents.detach().clone().float())
        self.register_buffer("log_prior", log_prior.detach().clone().float())
        self.beta_reg = config.beta_reg

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def score(self, q: Tensor) -> Tensor:
        """``(B, K)``: the normalised value plus ``beta_reg log p(z'_k)``."""
        return q / q.abs().mean(-1, keepdim=True).clamp(min=1e-6) + self.beta_reg * self.log_prior

    def choose(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return self.score(self(x)).argmax(-1)


class OptionsPolicy:
    """The evaluated :data:`Policy`: greedy skill choice every ``horizon`` steps (``reset()`` at episode starts)."""

    def __init__(self, spaces: Spaces, values: SkillValues, skill: nn.Module, horizon: int) -> None:
        self.spaces, self.values, self.skill, self.horizon = spaces, values.eval(), skill.eval(), horizon
        self.reset()

    def reset(self) -> None:
        self.t, self.z = 0, None

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            x = self.spaces.obs(torch.as_tensor(np.asarray(obs, np.float32)).unsqueeze(0))
            if self.t % self.horizon == 0:
                self.z = self.values.latents[self.values.choose(x)]
            self.t += 1
            return self.spaces.act.unscale(self.skill(x, self.z)).squeeze(0).numpy().astype(np.float32)


def train_options(
    env_name: str | Callable[[int], Any],
    values: SkillValues,
    skill: nn.Module,
    spaces: Spaces,
    steps: int,
    config: OptionsConfig,
    *,
    seed: int,
    workdir: Path | None = None,
    config_hash: str = "",
    checkpoint_every: int = 10_000,
    max_episode_steps: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``values`` online for ``steps`` env steps on the env reward; returns the training log.

    ``env_name`` is a control env (``make_env``) or a factory ``seed -> env`` with gymnasium's API and
    ``info["cost"]``.

    Resumable like the TD3 loop: a checkpoint at the first episode end after every ``checkpoint_every`` steps.
    """
    from control.envs import make_env

    skill = skill.eval().requires_grad_(False)
    target = SkillValues(spaces.obs_dim, values.latents, values.log_prior, config)
    target.load_state_dict(values.state_dict())
    opt = torch.optim.Adam(values.parameters(), lr=config.lr)
    rng = np.random.default_rng(seed + 7)
    cap = steps  # at most one option per env step
    buf = {
        "x": np.zeros((cap, spaces.obs_dim), np.float32),
        "k": np.zeros(cap, np.int64),
        "ret": np.zeros(cap, np.float32),
        "x2": np.zeros((cap, spaces.obs_dim), np.float32),
        "disc": np.zeros(cap, np.float32),
    }  # fmt: skip  (disc = gamma^n, 0 at a terminal state)
    size, step, episode = 0, 0, 0
    log: dict[str, Any] = {"episodes": [], "updates": 0, "options": 0, "wall_s": 0.0}
    ckpt = workdir / "options_checkpoint.safetensors" if workdir is not None and checkpoint_every else None
    if ckpt is not None and (found := load_checkpoint(ckpt, config_hash)) is not None:
        tensors, meta = found
        values.load_state_dict({k[7:]: v for k, v in tensors.items() if k.startswith("values.")})
        target.load_state_dict({k[7:]: v for k, v in tensors.items() if k.startswith("target.")})
        optimizer_from_tensors(opt, tensors, "opt")
        size, step, episode, log = meta["size"], meta["step"], meta["episode"], meta["log"]
        for k in buf:
            buf[k][:size] = tensors[f"buf.{k}"].numpy()
        rng.bit_generator.state = meta["rng"]
    last_ckpt = step
    env = make_env(env_name, seed) if isinstance(env_name, str) else env_name(seed)

    def to_model(o: np.ndarray) -> Tensor:
        return spaces.obs(torch.as_tensor(np.asarray(o, np.float32)).unsqueeze(0))

    def update() -> float:
        idx = torch.as_tensor(rng.integers(0, size, min(config.batch_size, size)))
        b = {k: torch.as_tensor(v[idx]) for k, v in buf.items()}
        with torch.no_grad():
            k_next = values.score(values(b["x2"])).argmax(-1, keepdim=True)  # double-DQN style target
            y = b["ret"] + b["disc"] * target(b["x2"]).gather(-1, k_next).squeeze(-1)
        loss = F.smooth_l1_loss(values(b["x"]).gather(-1, b["k"].unsqueeze(-1)).squeeze(-1), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for p, tp in zip(values.parameters(), target.parameters()):
                tp.lerp_(p, config.tau)
        return loss.item()

    t0 = time.perf_counter() - log["wall_s"]
    obs, _ = env.reset(seed=seed * 100_000 + episode)
    ep_rew = ep_cost = 0.0
    ep_len = 0
    bar = tqdm(total=steps, initial=step, desc="options high-level", disable=not progress, leave=False)
    with torch.no_grad():
        x = to_model(obs)
    while step < steps:
        eps = max(config.epsilon_end, config.epsilon_start - (config.epsilon_start - config.epsilon_end)
                  * step / max(1.0, config.epsilon_fraction * steps))  # fmt: skip
        k = int(rng.integers(values.latents.shape[0])) if rng.random() < eps else int(values.choose(x))
        x0, ret, n, terminated, truncated = x, 0.0, 0, False, False
        while n < config.horizon and step < steps and not (terminated or truncated):
            with torch.no_grad():
                u = skill(x, values.latents[k : k + 1])
            obs, rew, terminated, truncated, info = env.step(spaces.act.unscale(u).squeeze(0).numpy())
            ret += config.gamma**n * rew
            n, step, ep_len = n + 1, step + 1, ep_len + 1
            ep_rew, ep_cost = ep_rew + rew, ep_cost + float(info["cost"])
            truncated = truncated or (max_episode_steps is not None and ep_len >= max_episode_steps)
            with torch.no_grad():
                x = to_model(obs)
            bar.update(1)
        done = terminated or truncated
        row = {"x": x0.squeeze(0).numpy(), "k": k, "ret": ret, "x2": x.squeeze(0).numpy(),
               "disc": 0.0 if terminated else config.gamma**n}  # fmt: skip
        for key, value in row.items():
            buf[key][size] = value
        size += 1
        log["options"] += 1
        for _ in range(config.updates_per_option):
            log["last_loss"] = update()
            log["updates"] += 1
        if done:
            log["episodes"].append({"step": step, "reward": ep_rew, "cost": ep_cost, "length": ep_len})
            bar.set_postfix(ep_reward=f"{ep_rew:.1f}", ep_cost=f"{ep_cost:.1f}")
            episode += 1
            ep_rew = ep_cost = 0.0
            ep_len = 0
            if ckpt is not None and step - last_ckpt >= checkpoint_every and step < steps:
                log["wall_s"] = time.perf_counter() - t0
                tensors = {f"values.{k}": v for k, v in values.state_dict().items()}
                tensors |= {f"target.{k}": v for k, v in target.state_dict().items()}
                tensors |= optimizer_to_tensors(opt, "opt")
                tensors |= {f"buf.{k}": torch.from_numpy(v[:size]) for k, v in buf.items()}
                meta = {"config_hash": config_hash, "size": size, "step": step, "episode": episode, "log": log,
                        "rng": rng.bit_generator.state}  # fmt: skip
                save_checkpoint(ckpt, tensors, meta)
                last_ckpt = step
            obs, _ = env.reset(seed=seed * 100_000 + episode)
            with torch.no_grad():
                x = to_model(obs)
    bar.close()
    env.close()
    log["wall_s"] = time.perf_counter() - t0
    if ckpt is not None:
        ckpt.unlink(missing_ok=True)
        ckpt.with_suffix(".json").unlink(missing_ok=True)
    return log
