"""Goal-conditioned scripted behaviour policies that produce D_tau, and the per-step user features.

Each env has a *behaviour mix*: named controllers with a goal-parameter sampler (speed, lane, radius,
approach path, gait amplitude) plus Gaussian action noise whose scale is drawn per episode, and a small
share of uniformly random actions for state coverage. Goals are drawn so that the mix spans slow and
fast, safe and unsafe behaviour (the envs' own costs decide what is unsafe; nothing is labelled here).
Controllers may read the simulator state (privileged, like a scripted expert); learners only ever see
the recorded observations and actions.

``step_features`` returns the named per-step quantities that the simulated users of :mod:`control.crowd`
read (``x_velocity``, ``y``, ``radius``, ...); they are stored in ``OfflineData.features``.

Recipes and their measured tracking are in /work/shared/FINDINGS.md; the gait constants below were
found by hill-climbing open-loop sinusoid gaits (:mod:`control.gaits`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from control.gaits import GAITS, GaitController

__all__ = ["BEHAVIOURS", "Behaviour", "behaviour_config", "rollout_behaviour", "step_features"]

Goal = dict[str, float]


@dataclass(frozen=True)
class Behaviour:
    """One controller family of an env's mix.

    ``goals`` maps goal-parameter names to inclusive uniform ranges ``(low, high)``; ``noise`` lists the
    per-episode action-noise scales to pick from; ``weight`` is the share of episodes it gets.
    """

    name: str
    controller: str  # key into _CONTROLLERS
    weight: float
    goals: dict[str, tuple[float, float]] = field(default_factory=dict)
    noise: tuple[float, ...] = (0.0, 0.1, 0.3)

    def draw(self, rng: np.random.Generator) -> Goal:
        goal = {k: float(rng.uniform(lo, hi)) for k, (lo, hi) in self.goals.items()}
        goal["noise"] = float(self.noise[rng.integers(len(self.noise))])
        return goal


# ----------------------------------------------------------------------------------------------- controllers
# A controller is built per episode: make(env, goal) -> act(obs) -> action (before noise and clipping).
Controller = Callable[[np.ndarray], np.ndarray]


def _wrap(angle: float) -> float:
    return (angle + math.pi) % (2 * math.pi) - math.pi


def _random(env: Any, goal: Goal) -> Controller:
    rng = np.random.default_rng(int(goal["rng"]))
    low, high = env.action_space.low, env.action_space.high
    return lambda obs: rng.uniform(low, high)


def _still(env: Any, goal: Goal) -> Controller:
    """Zero action (plus the episode's action noise): the safe, slow end where no gait is slow enough."""
    zero = np.zeros(env.action_space.shape)
    return lambda obs: zero


def _car_run(env: Any, goal: Goal) -> Controller:
    """SafetyCarRun: reverse-drive along +x at speed ``speed`` in lane ``lane`` (integral speed + P lane).

    Observation: [0.1x, 0.1y, vx, vy, sin yaw, cos yaw, 0.1 yaw-rate]; the car starts facing -x, so
    negative throttle drives it towards +x (the rewarded direction) and ~3.7 m/s per unit of throttle.
    """
    v_star, y_star = goal["speed"], goal["lane"]
    state = {"i": 0.0}

    def act(obs: np.ndarray) -> np.ndarray:
        y, vx = 10.0 * obs[1], obs[2]
        psi = _wrap(math.atan2(obs[4], obs[5]) - math.pi)  # direction of (reverse) motion
        state["i"] = float(np.clip(state["i"] + 0.02 * (v_star - vx), -0.5, 0.5))
        throttle = -(v_star / 3.7 + state["i"])
        psi_d = float(np.clip(0.6 * (y_star - y), -0.5, 0.5))
        steer = -2.0 * _wrap(psi_d - psi)
        return np.array([throttle, steer])

    return act


def _ball_velocity(
    env: Any, v_des: Callable[[np.ndarray, np.ndarray], np.ndarray], gain: float = 1.5
) -> Controller:
    """Ball agents are pushed by a world-frame force: a P controller on velocity towards ``v_des(pos, vel)``."""
    agent = env.unwrapped.agent

    def act(obs: np.ndarray) -> np.ndarray:
        pos, vel = agent.get_position()[:2], agent.get_linear_velocity()[:2]
        return gain * (v_des(pos, vel) - vel)

    return act


def _ball_circle(env: Any, goal: Goal) -> Controller:
    """SafetyBallCircle: clockwise velocity field with speed ``speed`` that pulls onto radius ``radius``.

    With a ``wall`` goal the driver also keeps ``|x| <= wall``: near it the outward x-speed is capped
    and the rest of the speed goes along y, so a wide circle becomes a stadium (fast and cost-free)."""
    v_star, r_star, wall = goal["speed"], goal["radius"], goal.get("wall", math.inf)

    def v_des(pos: np.ndarray, vel: np.ndarray) -> np.ndarray:
        r = float(np.linalg.norm(pos)) + 1e-6
        tangent = np.array([pos[1], -pos[0]]) / r  # clockwise
        radial = pos / r
        v = v_star * tangent + float(np.clip(1.0 * (r_star - r), -1.5, 1.5)) * radial
        cap = 1.5 * (wall - abs(pos[0]))  # outward x-speed allowed at this distance from the wall
        if math.copysign(1.0, pos[0]) * v[0] > cap:
            vx = math.copysign(cap, pos[0])
            v = np.array([vx, math.copysign(math.sqrt(max(v_star**2 - vx**2, 0.0)), v[1])])
        return v

    return _ball_velocity(env, v_des)


def _ball_reach(env: Any, goal: Goal) -> Controller:
    """SafetyBallReach: head for the goal at ``speed``, bent by ``bend`` rad (fading near the goal), and
    pushed away from obstacles with gain ``avoid`` (0 = straight through puddles)."""
    task = env.unwrapped.task
    v_star, bend, avoid = goal["speed"], goal["bend"], goal["avoid"]

    def v_des(pos: np.ndarray, vel: np.ndarray) -> np.ndarray:
        delta = task.goal.get_position()[:2] - pos
        dist = float(np.linalg.norm(delta)) + 1e-6
        angle = bend * min(1.0, dist / 6.0)
        c, s = math.cos(angle), math.sin(angle)
        heading = np.array([c * delta[0] - s * delta[1], s * delta[0] + c * delta[1]]) / dist
        v = v_star * min(1.0, dist / 1.5) * heading
        for ob in task.obstacles:
            away = pos - ob.get_position()[:2]
            d = float(np.linalg.norm(away)) + 1e-6
            clearance = d - 1.5  # puddle radius 1 + ball radius 0.5
            if clearance < 1.5:  # push away and slide round it on the goal's side (no dead ends)
                unit = away / d
                perp = np.array([-unit[1], unit[0]])
                perp = perp if perp @ heading >= 0 else -perp
                v = v + avoid * (1.5 - clearance) / 1.5 * (2.0 * unit + v_star * perp)
        return v

    return _ball_velocity(env, v_des)


def _gait(env: Any, goal: Goal) -> Controller:
    """MuJoCo velocity envs: a hill-climbed open-loop sinusoid gait whose amplitude is steered by an
    integral controller so the forward speed tracks ``speed`` (a clean speed dial)."""
    gait = GAITS[env.control_spec.env_id]
    if "alpha" in goal:  # fixed amplitude (Hopper's lunge: no speed to track before it falls)
        return GaitController(gait, env, alpha=goal["alpha"])
    return GaitController(gait, env, speed=goal["speed"])


def _hopper_stand(env: Any, goal: Goal) -> Controller:
    """SafetyHopper: PD posture control (joints to [lean, 0, 0], hip keeps the torso upright): stays up
    for the whole episode at ~0 m/s, i.e. the safe end of Hopper's behaviour."""
    data, kp, lean = env.unwrapped.data, goal["kp"], goal["lean"]

    def act(obs: np.ndarray) -> np.ndarray:
        q, qd = data.qpos, data.qvel
        a = -kp * (q[3:6] - np.array([lean, 0.0, 0.0])) - 0.1 * kp * qd[3:6]
        a[0] += 2.0 * q[2]
        return a

    return act


_CONTROLLERS: dict[str, Callable[[Any, Goal], Controller]] = {
    "random": _random,
    "still": _still,
    "car_run": _car_run,
    "ball_circle": _ball_circle,
    "ball_reach": _ball_reach,
    "gait": _gait,
    "hopper_stand": _hopper_stand,
}

# ----------------------------------------------------------------------------------------------- the mixes
_RANDOM = Behaviour("random", "random", 0.05, noise=(0.0,))
BEHAVIOURS: dict[str, tuple[Behaviour, ...]] = {
    # speed limit 1.5 m/s, lane |y| <= 2 (cost beyond): slow..fast x inside..outside the lane
    "SafetyCarRun-v0": (
        Behaviour("cruise", "car_run", 0.55, {"speed": (0.3, 1.45), "lane": (-1.5, 1.5)}),
        Behaviour("speeding", "car_run", 0.25, {"speed": (1.5, 2.6), "lane": (-1.5, 1.5)}),
        Behaviour("off_lane", "car_run", 0.15, {"speed": (0.3, 2.0), "lane": (-3.0, 3.0)}),
        _RANDOM,
    ),
    # wall at |x| > 6: radius <= 5 is safe, >= 6.5 crosses it
    "SafetyBallCircle-v0": (
        Behaviour("inner", "ball_circle", 0.3, {"speed": (0.5, 3.0), "radius": (1.5, 5.5)}),
        Behaviour("outer", "ball_circle", 0.35, {"speed": (0.5, 4.0), "radius": (5.5, 9.0)}),
        # wall-keeping drivers: the wide, fast and safe stadium (0 cost up to speed 4, return up to ~350)
        Behaviour(
            "stadium", "ball_circle", 0.3, {"speed": (0.5, 4.0), "radius": (6.3, 7.5), "wall": (5.3, 5.8)}
        ),
        _RANDOM,
    ),
    # puddles/box cost on contact: avoidance gain 0 drives straight through them
    "SafetyBallReach-v0": (
        Behaviour(
            "careful", "ball_reach", 0.5, {"speed": (0.8, 2.5), "bend": (-0.8, 0.8), "avoid": (0.7, 1.5)}
        ),
        Behaviour(
            "direct", "ball_reach", 0.45, {"speed": (0.8, 2.5), "bend": (-0.8, 0.8), "avoid": (0.0, 0.2)}
        ),
        _RANDOM,
    ),
}
_CHEETAH, _HOPPER, _SWIMMER = 3.2096, 0.7402, 0.2282  # velocity thresholds (cost when exceeded)
BEHAVIOURS.update({
    # gait speed dial up to ~3.8 m/s (1.19 x the limit); faster amplitudes flip the cheetah over
    "SafetyHalfCheetahVelocity-v1": (
        Behaviour("slow", "gait", 0.5, {"speed": (0.2 * _CHEETAH, 0.95 * _CHEETAH)}),
        Behaviour("fast", "gait", 0.45, {"speed": (1.02 * _CHEETAH, 1.18 * _CHEETAH)}),
        _RANDOM,
    ),
    # the stroke's instantaneous speed oscillates, so even slow swimming has costly steps; only keeping
    # still (zero action, small noise) gives safe episodes
    "SafetySwimmerVelocity-v1": (
        Behaviour("slow", "gait", 0.45, {"speed": (0.1 * _SWIMMER, 0.9 * _SWIMMER)}),
        Behaviour("fast", "gait", 0.4, {"speed": (1.05 * _SWIMMER, 1.3 * _SWIMMER)}),
        Behaviour("still", "still", 0.1, noise=(0.0, 0.05, 0.1)),
        _RANDOM,
    ),
    # standing (safe, full-length episodes) vs open-loop lunges (fast, fall after ~40-90 steps)
    "SafetyHopperVelocity-v1": (
        Behaviour("stand", "hopper_stand", 0.15, {"kp": (1.0, 3.0), "lean": (0.0, 0.3)}),
        Behaviour("lunge", "gait", 0.8, {"alpha": (0.2, 1.3)}),
        _RANDOM,
    ),
})  # fmt: skip


def behaviour_config(env_id: str) -> dict[str, Any]:
    """JSON-able description of an env's mix (goes into the manifest and the cache key)."""
    mix = [asdict(b) for b in BEHAVIOURS[env_id]]
    out: dict[str, Any] = {"mix": mix}
    if any(b.controller == "gait" for b in BEHAVIOURS[env_id]) and env_id in GAITS:
        out["gait"] = asdict(GAITS[env_id])
    return out


# ----------------------------------------------------------------------------------------------- features
def step_features(env: Any, info: dict[str, Any]) -> dict[str, float]:
    """Named per-step quantities after a step (what the simulated users' goals read)."""
    u = env.unwrapped
    suite = env.control_spec.suite
    if suite == "safety_gymnasium":
        out = {"x_velocity": float(info["x_velocity"])}
        if "y_velocity" in info:
            out["y_velocity"] = float(info["y_velocity"])
        return out
    pos, vel = u.agent.get_position()[:2], u.agent.get_linear_velocity()[:2]
    name = env.control_spec.alias
    if name == "Run":
        return {"x_velocity": float(vel[0]), "speed": float(np.linalg.norm(vel)), "y": float(pos[1])}
    if name == "Circle":
        r = float(np.linalg.norm(pos)) + 1e-9
        return {
            "radius": r,
            "speed": float(np.linalg.norm(vel)),
            "tangential_velocity": float((pos[1] * vel[0] - pos[0] * vel[1]) / r),  # > 0 clockwise
            "x": float(pos[0]),
        }
    # Reach
    delta = u.task.goal.get_position()[:2] - pos
    dist = float(np.linalg.norm(delta)) + 1e-9
    speed = float(np.linalg.norm(vel))
    heading_error = (
        math.atan2(delta[0] * vel[1] - delta[1] * vel[0], float(delta @ vel)) if speed > 1e-3 else 0.0
    )
    return {
        "goal_distance": dist,
        "speed": speed,
        "approach_speed": float(delta @ vel) / dist,
        "heading_error": heading_error,  # signed angle from the straight line to the goal to the velocity
    }


# ----------------------------------------------------------------------------------------------- rollouts
def rollout_behaviour(
    env_id: str,
    episodes: int,
    seed: int,
    max_steps: int | None = None,
    progress: bool = True,
    *,
    mix: tuple[Behaviour, ...] | None = None,
    controllers: dict[str, Callable[[Any, Goal], Controller]] | None = None,
    first_episode: int = 0,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], list[dict[str, Any]]]:
    """Roll out ``episodes`` episodes of a behaviour mix (default: the env's scripted one), deterministically
    from ``seed``; ``controllers`` adds controller factories (e.g. trained agents) the mix may name, and
    episodes are numbered (and reset-seeded) from ``first_episode``, so a second part can follow a first.

    Returns (transition arrays for :class:`control.offline.OfflineData`, per-step features, per-episode
    records ``{"behaviour", "goal", "reward", "cost", "length"}``).
    """
    from tqdm.auto import tqdm

    from control.envs import make_env

    mix = BEHAVIOURS[env_id] if mix is None else mix
    factories = {**_CONTROLLERS, **(controllers or {})}
    weights = np.array([b.weight for b in mix])
    weights = weights / weights.sum()
    rng = np.random.default_rng(seed if first_episode == 0 else (seed, first_episode))
    env = make_env(env_id, seed)
    low, high = env.action_space.low.astype(np.float32), env.action_space.high.astype(np.float32)
    cols: dict[str, list] = {
        k: [] for k in ("obs", "act", "rew", "cost", "next_obs", "terminal", "episode_end", "episode")
    }
    feats: dict[str, list[float]] = {}
    records: list[dict[str, Any]] = []
    bar = tqdm(total=episodes, desc=f"D_tau {env_id}", unit="ep", disable=not progress)
    for ep in range(first_episode, first_episode + episodes):
        behaviour = mix[rng.choice(len(mix), p=weights)]
        goal = behaviour.draw(rng)
        goal["rng"] = int(rng.integers(2**31))
        obs, _ = env.reset(seed=int(seed * 1_000_003 + ep))
        act_fn = factories[behaviour.controller](env, goal)
        ep_rew = ep_cost = 0.0
        t = 0
        while True:
            a = np.asarray(act_fn(obs), dtype=np.float64)
            if goal["noise"] > 0:
                a = a + rng.normal(0.0, goal["noise"], size=a.shape)
            a = np.clip(a, low, high).astype(np.float32)
            next_obs, r, terminated, truncated, info = env.step(a)
            t += 1
            end = terminated or truncated or (max_steps is not None and t >= max_steps)
            for k, v in (("obs", obs), ("act", a), ("rew", r), ("cost", info["cost"]), ("next_obs", next_obs),
                         ("terminal", terminated), ("episode_end", end), ("episode", ep)):  # fmt: skip
                cols[k].append(v)
            for k, v in step_features(env, info).items():
                feats.setdefault(k, []).append(v)
            ep_rew, ep_cost = ep_rew + r, ep_cost + info["cost"]
            obs = next_obs
            if end:
                break
        goal.pop("rng")
        records.append(
            {"behaviour": behaviour.name, "goal": goal, "reward": ep_rew, "cost": ep_cost, "length": t}
        )
        bar.update(1)
        bar.set_postfix(R=f"{ep_rew:.0f}", C=f"{ep_cost:.0f}")
    bar.close()
    env.close()
    arrays = {
        "obs": np.asarray(cols["obs"], dtype=np.float32),
        "act": np.asarray(cols["act"], dtype=np.float32),
        "rew": np.asarray(cols["rew"], dtype=np.float32),
        "cost": np.asarray(cols["cost"], dtype=np.float32),
        "next_obs": np.asarray(cols["next_obs"], dtype=np.float32),
        "terminal": np.asarray(cols["terminal"], dtype=bool),
        "episode_end": np.asarray(cols["episode_end"], dtype=bool),
        "episode": np.asarray(cols["episode"], dtype=np.int64),
    }
    return arrays, {k: np.asarray(v, dtype=np.float32) for k, v in feats.items()}, records
