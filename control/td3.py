"""TD3 and TD3+BC, CleanRL-style: one actor, twin critics, target policy smoothing, delayed updates.

The agent works in *normalised* spaces: inputs ``x`` are standardised observations (optionally with a
latent z' appended, for the skills), actions ``u`` are scaled to [-1, 1]. The online loop in
``control.methods.online`` converts to and from the env. Reference: Fujimoto et al. 2018 (TD3) and
Fujimoto & Gu 2021 (TD3+BC, ``bc_alpha``): actor loss ``-lambda Q(s, pi(s)) + (pi(s) - a)^2`` with
``lambda = bc_alpha / mean|Q|``.

Subclasses change *what the actor is* by overriding three hooks -- :meth:`TD3.policy` (the
differentiable action), :meth:`TD3.target_policy` (the smoothed target action) and
:meth:`TD3.actor_loss` -- as the high-level policy over frozen skills does
(``control.methods.composition``). The critic update is shared.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from control.networks import DeterministicActor, TwinCritic

__all__ = ["TD3", "ReplayBuffer", "TD3Config", "optimizer_from_tensors", "optimizer_to_tensors"]


@dataclass(frozen=True)
class TD3Config:
    """Hyper-parameters of TD3 / TD3+BC (CleanRL's defaults, smaller networks for a 2-core CPU)."""

    hidden: tuple[int, ...] = (128, 128)  # actor and critic widths; 256x256 costs ~9 ms/update on one thread
    gamma: float = 0.99  # discount
    tau: float = 0.005  # Polyak rate of the target networks
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    batch_size: int = 256
    policy_noise: float = 0.2  # target policy smoothing noise (scaled action units)
    noise_clip: float = 0.5  # clip of that noise
    policy_freq: int = 2  # one actor / target update every `policy_freq` critic updates
    exploration_noise: float = 0.1  # Gaussian exploration noise (scaled action units)
    learning_starts: int = 1_000  # env steps of random actions before the first update (online)
    buffer_size: int = 1_000_000
    bc_alpha: float | None = None  # TD3+BC's alpha (offline); None = plain TD3

    def __post_init__(self) -> None:
        if not 0 < self.gamma <= 1 or not 0 < self.tau <= 1:
            raise ValueError(f"need 0 < gamma <= 1 and 0 < tau <= 1, got {self.gamma}, {self.tau}")
        if self.policy_freq < 1 or self.batch_size < 1:
            raise ValueError("policy_freq and batch_size must be >= 1")


class ReplayBuffer:
    """A fixed-size FIFO of ``(x, u, r, x', terminal)`` transitions in numpy, sampled with its own RNG."""

    def __init__(self, obs_dim: int, act_dim: int, capacity: int, seed: int = 0) -> None:
        self.capacity, self.size, self.pos = capacity, 0, 0
        self.obs = np.zeros((capacity, obs_dim), np.float32)
        self.act = np.zeros((capacity, act_dim), np.float32)
        self.rew = np.zeros(capacity, np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), np.float32)
        self.terminal = np.zeros(capacity, np.float32)
        self.rng = np.random.default_rng(seed)

    _FIELDS = ("obs", "act", "rew", "next_obs", "terminal")

    def add(self, obs: np.ndarray, act: np.ndarray, rew: float, next_obs: np.ndarray, terminal: bool) -> None:
        i = self.pos
        self.obs[i], self.act[i], self.rew[i], self.next_obs[i], self.terminal[i] = (
            obs,
            act,
            rew,
            next_obs,
            terminal,
        )
        self.pos = (self.pos + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int) -> dict[str, Tensor]:
        if self.size == 0:
            raise RuntimeError("cannot sample from an empty replay buffer")
        idx = self.rng.integers(0, self.size, batch_size)
        return {k: torch.from_numpy(getattr(self, k)[idx]) for k in self._FIELDS}

    def arrays(self) -> dict[str, np.ndarray]:
        """The filled part, for a checkpoint."""
        return {k: getattr(self, k)[: self.size].copy() for k in self._FIELDS}

    def load_arrays(self, arrays: dict[str, np.ndarray], pos: int) -> None:
        n = len(arrays["rew"])
        if n > self.capacity:
            raise ValueError(f"checkpointed buffer holds {n} transitions, capacity is {self.capacity}")
        for k in self._FIELDS:
            getattr(self, k)[:n] = arrays[k]
        self.size, self.pos = n, pos


def optimizer_to_tensors(opt: torch.optim.Optimizer, prefix: str) -> dict[str, Tensor]:
    """Flatten an optimiser's per-parameter state into named tensors (safetensors holds no pickles)."""
    out: dict[str, Tensor] = {}
    for idx, state in opt.state_dict()["state"].items():
        for key, value in state.items():
            out[f"{prefix}.{idx}.{key}"] = torch.as_tensor(value).clone()
    return out


def optimizer_from_tensors(opt: torch.optim.Optimizer, tensors: dict[str, Tensor], prefix: str) -> None:
    """Inverse of :func:`optimizer_to_tensors` (hyper-parameters come from the config, not the file)."""
    sd = opt.state_dict()
    state: dict[int, dict[str, Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith(prefix + "."):
            idx, key = name[len(prefix) + 1 :].split(".", 1)
            state.setdefault(int(idx), {})[key] = value.clone()
    sd["state"] = state
    opt.load_state_dict(sd)


class TD3:
    """TD3 (or TD3+BC with ``config.bc_alpha``) over inputs ``x (B, in_dim)`` and actions ``u (B, act_dim)``.

    Args:
        in_dim: input size of actor and critic (normalised obs [+ latent]).
        act_dim: action size.
        config: hyper-parameters.
        seed: seeds torch (network init) and the exploration RNG.
        actor: optional actor module (default: a tanh MLP ``in_dim -> act_dim``).
    """

    def __init__(
        self, in_dim: int, act_dim: int, config: TD3Config, seed: int = 0, actor: nn.Module | None = None
    ) -> None:
        torch.manual_seed(seed)
        self.config, self.in_dim, self.act_dim = config, in_dim, act_dim
        self.actor = actor if actor is not None else DeterministicActor(in_dim, act_dim, config.hidden)
        self.critic = TwinCritic(in_dim, act_dim, config.hidden)
        self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_opt = torch.optim.Adam(self.actor_params(), lr=config.actor_lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=config.critic_lr)
        self.noise_gen = torch.Generator().manual_seed(seed + 1)
        self.num_updates = 0

    # ---- hooks a subclass may override -------------------------------------------------------------
    def actor_params(self) -> list[nn.Parameter]:
        return [p for p in self.actor.parameters() if p.requires_grad]

    def policy(self, x: Tensor) -> Tensor:
        """The differentiable action of the current actor, ``(B, act_dim)`` in [-1, 1]."""
        return self.actor(x)

    def target_policy(self, x: Tensor) -> Tensor:
        """Target action with clipped Gaussian smoothing noise (TD3's target policy smoothing)."""
        c = self.config
        noise = (torch.randn(x.shape[0], self.act_dim, generator=self.noise_gen) * c.policy_noise).clamp(
            -c.noise_clip, c.noise_clip
        )
        return (self.actor_target(x) + noise).clamp(-1.0, 1.0)

    def explore(self, x: Tensor) -> Tensor:
        """Behaviour action for the online loop: the policy plus Gaussian exploration noise."""
        with torch.no_grad():
            u = self.policy(x)
        noise = torch.randn(u.shape, generator=self.noise_gen) * self.config.exploration_noise
        return (u + noise).clamp(-1.0, 1.0)

    def warmup_action(self, x: Tensor) -> Tensor:
        """Action during the online warm-up (before ``learning_starts``): uniform in [-1, 1]."""
        return torch.rand(x.shape[0], self.act_dim, generator=self.noise_gen) * 2 - 1

    def actor_loss(self, x: Tensor, u_data: Tensor) -> tuple[Tensor, dict[str, float]]:
        """``-Q1(x, pi(x))``; with ``bc_alpha`` TD3+BC's ``-lambda Q + ||pi(x) - u_data||^2``."""
        u = self.policy(x)
        q = self.critic.q1_only(x, u)
        if self.config.bc_alpha is None:
            return -q.mean(), {"actor_q": q.mean().item()}
        lam = self.config.bc_alpha / q.abs().mean().detach().clamp(min=1e-6)
        bc = ((u - u_data) ** 2).sum(-1).mean()
        return -lam * q.mean() + bc, {"actor_q": q.mean().item(), "bc": bc.item()}

    def soft_update_targets(self) -> None:
        for net, target in ((self.actor, self.actor_target), (self.critic, self.critic_target)):
            for p, tp in zip(net.parameters(), target.parameters()):
                tp.data.mul_(1 - self.config.tau).add_(p.data, alpha=self.config.tau)

    # ---- one gradient step ---------------------------------------------------------------------------
    def update(self, batch: dict[str, Tensor]) -> dict[str, float]:
        """One critic step (and every ``policy_freq``-th call an actor + target step) on a batch with keys
        ``obs (B, in_dim), act (B, act_dim), rew (B,), next_obs (B, in_dim), terminal (B,)``."""
        c = self.config
        x, u, r, x2, done = batch["obs"], batch["act"], batch["rew"], batch["next_obs"], batch["terminal"]
        with torch.no_grad():
            q1_t, q2_t = self.critic_target(x2, self.target_policy(x2))
            target = r + c.gamma * (1.0 - done) * torch.min(q1_t, q2_t)
        q1, q2 = self.critic(x, u)
        critic_loss = F.mse_loss(q1, target) + F.mse_loss(q2, target)
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_opt.step()
        self.num_updates += 1
        metrics = {"critic_loss": critic_loss.item(), "q": q1.mean().item()}
        if self.num_updates % c.policy_freq == 0:
            loss, actor_metrics = self.actor_loss(x, u)
            self.actor_opt.zero_grad(set_to_none=True)
            loss.backward()
            self.actor_opt.step()
            self.soft_update_targets()
            metrics.update(actor_metrics, actor_loss=loss.item())
        return metrics

    # ---- checkpoints -----------------------------------------------------------------------------------
    def modules(self) -> dict[str, nn.Module]:
        return {
            "actor": self.actor,
            "actor_target": self.actor_target,
            "critic": self.critic,
            "critic_target": self.critic_target,
        }

    def state_tensors(self) -> dict[str, Tensor]:
        """Everything needed to resume, as flat named tensors (for safetensors)."""
        out = {
            f"{m}.{k}": v.detach().clone()
            for m, mod in self.modules().items()
            for k, v in mod.state_dict().items()
        }
        out |= optimizer_to_tensors(self.actor_opt, "actor_opt") | optimizer_to_tensors(
            self.critic_opt, "critic_opt"
        )
        out["noise_gen"] = self.noise_gen.get_state()
        out["num_updates"] = torch.tensor(self.num_updates)
        return out

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        for m, mod in self.modules().items():
            sd = {k[len(m) + 1 :]: v for k, v in tensors.items() if k.startswith(m + ".")}
            mod.load_state_dict(sd)
        optimizer_from_tensors(self.actor_opt, tensors, "actor_opt")
        optimizer_from_tensors(self.critic_opt, tensors, "critic_opt")
        self.noise_gen.set_state(tensors["noise_gen"])
        self.num_updates = int(tensors["num_updates"])
