"""Compute profiles of the control track: how much data, how many gradient and env steps.

One :class:`Profile` sizes every stage of a benchmark run so the same code serves CI ("test": seconds),
a CPU sanity run ("quick": minutes per env and method) and the paper-scale run ("paper"). The data
half (D_tau, crowds) reads ``data_episodes``; the methods half reads the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

__all__ = ["PROFILES", "Profile", "get_profile"]


@dataclass(frozen=True)
class Profile:
    """Sizes of one benchmark run.

    Attributes:
        name: "test" (tiny, for CI), "quick" (CPU minutes) or "paper".
        data_episodes: behaviour episodes per env in D_tau, spread over the env's behaviour mix.
        vae_steps: gradient steps for the VAE / CPL / BT reward fits.
        skill_steps: offline RL steps for Safe-VPL's low-level TD3+BC.
        td3_steps: env steps for every online TD3 run (high-level policy and TD3 baselines).
        eval_episodes: evaluation episodes per trained policy.
        num_skills: K, skills selected from the latent space.
        latent_dim: dimension of the VAE latent z'.
        max_episode_steps: optional cap on behaviour-episode length (None = the env's own limit); "test"
            caps it so CI never simulates 1000-step MuJoCo episodes.
        agent_steps: env steps of each behaviour agent's TD3 training (:mod:`control.agents`); 0 = D_tau
            holds the scripted drivers only.
    """

    name: str
    data_episodes: int
    vae_steps: int
    skill_steps: int
    td3_steps: int
    eval_episodes: int
    num_skills: int
    latent_dim: int
    max_episode_steps: int | None = None
    agent_steps: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("name", "max_episode_steps"):
                continue
            if f.name == "agent_steps" and value == 0:
                continue
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"profile {self.name!r}: {f.name} must be a positive int, got {value!r}")
        if self.max_episode_steps is not None and self.max_episode_steps < 2:
            raise ValueError(f"profile {self.name!r}: max_episode_steps must be >= 2 or None")


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile("test", data_episodes=6, vae_steps=20, skill_steps=20, td3_steps=200, eval_episodes=2,
                num_skills=2, latent_dim=2, max_episode_steps=60),
        Profile("quick", data_episodes=120, vae_steps=2_000, skill_steps=5_000, td3_steps=20_000,
                eval_episodes=5, num_skills=4, latent_dim=4),
        # sized to the budget of <= 45 min per env and seed on 2 cores (`--workers 2`): 100k env steps
        # per online run (measured 630-820 s per TD3 run; the paper's 3e5 would take ~2 h per env and seed)
        # behaviour agents as long as the Oracle's run: D_tau then holds the task's safe optimum (see control.agents)
        Profile("paper", data_episodes=400, vae_steps=10_000, skill_steps=30_000, td3_steps=100_000,
                eval_episodes=10, num_skills=8, latent_dim=8, agent_steps=100_000),
    )
}  # fmt: skip


def get_profile(name: str, **overrides: Any) -> Profile:
    """The named profile with ``overrides`` applied (e.g. ``get_profile("quick", td3_steps=5000)``)."""
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; valid: {', '.join(PROFILES)}")
    valid = {f.name for f in fields(Profile)} - {"name"}
    bad = sorted(set(overrides) - valid)
    if bad:
        raise ValueError(f"unknown profile field(s) {bad}; valid: {sorted(valid)}")
    return replace(PROFILES[name], **overrides)
