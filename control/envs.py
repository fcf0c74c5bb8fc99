"""The six safe-RL environments of the paper behind one seeded, gymnasium-API constructor.

``make_env(name, seed)`` returns a gymnasium env (5-tuple ``step``) whose every step carries
``info["cost"]`` as a float taken from the env itself (Bullet-Safety-Gym's task cost, or
Safety-Gymnasium's velocity cost via its ``...Gymnasium-v1`` conversion). Costs are never recomputed here.

Seeding: Safety-Gymnasium honours ``reset(seed=...)``. Bullet-Safety-Gym ignores it, draws from the
*global* ``numpy.random`` (and ``random`` at construction) and moves SafetyBallReach's obstacle by the
wall clock; each Bullet env therefore runs against private stand-ins for these globals
(:class:`DeterministicGlobals`), swapped in around construction, ``reset`` and ``step``. In both suites
the first ``reset()`` without a seed uses the seed given to :func:`make_env`, and a fresh env with the same
seed and actions reproduces the same rollouts (all episodes), whatever else uses the global RNG.
Caveat: a *used* Bullet env carries simulator state across resets (last motor command, obstacle
constraint), so ``reset(seed=s)`` on it reseeds the RNG but need not repeat an earlier episode exactly.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "ENV_SPECS",
    "ControlEnvSpec",
    "DeterministicGlobals",
    "SeededCostEnv",
    "env_names",
    "get_spec",
    "make_env",
    "vector_costs",
]


@dataclass(frozen=True)
class ControlEnvSpec:
    """Static facts about one environment.

    ``cost_threshold`` is the episode cost budget used for DSRL-style normalised cost (cost / threshold);
    ``dsrl_*`` are DSRL's reference episode returns for normalised reward (R - min) / (max - min).
    """

    env_id: str  # the paper's id
    suite: str  # "bullet" | "safety_gymnasium"
    alias: str
    gym_id: str  # the id passed to gymnasium.make
    max_episode_steps: int
    cost_threshold: float | None = None
    velocity_threshold: float | None = None  # per-step cost = 1 when x-velocity exceeds it
    dsrl_min_reward: float | None = None
    dsrl_max_reward: float | None = None
    dsrl_max_cost: float | None = None

    def dsrl_normalised(
        self, episode_reward: float, episode_cost: float
    ) -> tuple[float | None, float | None]:
        """DSRL's normalised (reward, cost): (R - R_min) / (R_max - R_min) and C / threshold; None if unknown."""
        reward = None
        if self.dsrl_min_reward is not None and self.dsrl_max_reward is not None:
            reward = (episode_reward - self.dsrl_min_reward) / (self.dsrl_max_reward - self.dsrl_min_reward)
        cost = episode_cost / self.cost_threshold if self.cost_threshold else None
        return reward, cost


# DSRL reference returns: github.com/liuzuxin/DSRL, dsrl/infos.py (MIN_/MAX_EPISODE_REWARD, MAX_EPISODE_COST,
# DEFAULT_MAX_EPISODE_STEPS agrees with the episode lengths below); DSRL has no BallReach task.
# cost_threshold 10: OSRL's default `cost_limit: int = 10` (github.com/liuzuxin/OSRL, examples/configs/*);
# DSRL normalises cost as C / threshold, so an experiment using another budget should say so.
# Velocity thresholds: safety_gymnasium/tasks/safe_velocity/*_v1.py (`_velocity_threshold`).
_BULLET, _SG = "bullet", "safety_gymnasium"
ENV_SPECS: dict[str, ControlEnvSpec] = {
    s.env_id: s
    for s in (
        ControlEnvSpec("SafetyBallReach-v0", _BULLET, "Reach", "SafetyBallReach-v0", 250),
        ControlEnvSpec(
            "SafetyCarRun-v0", _BULLET, "Run", "SafetyCarRun-v0", 200, cost_threshold=10.0,
            dsrl_min_reward=204.28726, dsrl_max_reward=574.65332, dsrl_max_cost=40.0,
        ),
        ControlEnvSpec(
            "SafetyBallCircle-v0", _BULLET, "Circle", "SafetyBallCircle-v0", 200, cost_threshold=10.0,
            dsrl_min_reward=0.38312, dsrl_max_reward=881.46338, dsrl_max_cost=80.0,
        ),
        ControlEnvSpec(
            "SafetyHalfCheetahVelocity-v1", _SG, "HalfCheetah-vel", "SafetyHalfCheetahVelocityGymnasium-v1",
            1000, cost_threshold=10.0, velocity_threshold=3.2096,
            dsrl_min_reward=5.75098, dsrl_max_reward=2806.93311, dsrl_max_cost=250.0,
        ),
        ControlEnvSpec(
            "SafetyHopperVelocity-v1", _SG, "Hopper-vel", "SafetyHopperVelocityGymnasium-v1",
            1000, cost_threshold=10.0, velocity_threshold=0.7402,
            dsrl_min_reward=37.05155, dsrl_max_reward=1911.39673, dsrl_max_cost=250.0,
        ),
        ControlEnvSpec(
            "SafetySwimmerVelocity-v1", _SG, "Swimmer-vel", "SafetySwimmerVelocityGymnasium-v1",
            1000, cost_threshold=10.0, velocity_threshold=0.2282,
            dsrl_min_reward=0.07114, dsrl_max_reward=238.95831, dsrl_max_cost=200.0,
        ),
    )
}  # fmt: skip
_BY_ALIAS = {s.alias.lower(): s for s in ENV_SPECS.values()}


def env_names() -> list[str]:
    """Valid names: the six env ids followed by their aliases."""
    return [*ENV_SPECS, *(s.alias for s in ENV_SPECS.values())]


def get_spec(name: str) -> ControlEnvSpec:
    """Look up an env by id or alias (aliases are case-insensitive); ``ValueError`` lists valid names."""
    spec = ENV_SPECS.get(name) or _BY_ALIAS.get(name.lower())
    if spec is None:
        raise ValueError(f"unknown control env {name!r}; valid names: {', '.join(env_names())}")
    return spec


def _bound_globals(module: Any, instance: object) -> tuple[str, ...]:
    """Names of ``module``'s functions that are bound methods of its hidden global generator."""
    return tuple(n for n in dir(module) if getattr(getattr(module, n), "__self__", None) is instance)


_NP_NAMES = _bound_globals(np.random, np.random.mtrand._rand)  # uniform, randint, get_state, ...
_PY_NAMES = _bound_globals(random, random._inst)  # random.uniform, random.choice, ...


class _SimClock:
    """Stands in for the ``time`` module: ``time()`` returns simulated seconds since the last reset."""

    def __init__(self) -> None:
        self.now = 0.0

    def time(self) -> float:
        return self.now


class DeterministicGlobals:
    """Private stand-ins for the process-global randomness and clock that Bullet-Safety-Gym reads.

    Inside :meth:`active`, the module-level functions of ``numpy.random`` and ``random`` are bound methods
    of this object's own ``RandomState``/``Random`` (swapping ~70 attributes is ~8x cheaper than the
    ``get_state``/``set_state`` round trips: ~30 vs ~250 us per step on the 2-core dev box), and ``bullet_safety_gym.envs.bases.time`` is a
    simulated clock: its moving obstacles (SafetyBallReach's box) follow ``time.time()``, i.e. wall-clock
    time, which makes rollouts depend on machine speed. With the clock they move at the designed 1 rad per
    *simulated* second. Not thread-safe.
    """

    def __init__(self, seed: int) -> None:
        from bullet_safety_gym.envs import bases

        self.clock = _SimClock()
        self._clock_slot = [(bases, "time", self.clock)]
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        rs, rnd = np.random.RandomState(seed), random.Random(seed)
        self._bound = [(np.random, n, getattr(rs, n)) for n in _NP_NAMES]
        self._bound += [(random, n, getattr(rnd, n)) for n in _PY_NAMES]

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        slots = self._bound + self._clock_slot
        saved = [(mod, name, getattr(mod, name)) for mod, name, _ in slots]
        for mod, name, value in slots:
            setattr(mod, name, value)
        try:
            yield
        finally:
            for mod, name, value in saved:
                setattr(mod, name, value)


def _import_suite(suite: str) -> None:
    """Import the suite so its ids are registered with gymnasium (Safety-Gymnasium behind the shim)."""
    from control import compat

    if suite == "bullet":
        with compat.original_std_streams():
            import bullet_safety_gym.envs.builder  # noqa: F401
    else:
        compat.install()
        import safety_gymnasium  # noqa: F401


try:
    import gymnasium

    _Wrapper: type = gymnasium.Wrapper
except ImportError:  # control extras missing: fail at make_env, not at import
    _Wrapper = object


class SeededCostEnv(_Wrapper):  # type: ignore[misc,valid-type]
    """Gymnasium wrapper: explicit seeding for both suites and a float ``info["cost"]`` from the env."""

    def __init__(
        self, env: Any, spec: ControlEnvSpec, seed: int, globals_: DeterministicGlobals | None
    ) -> None:
        super().__init__(env)
        self.control_spec = spec
        self.base_seed = seed
        self._globals = globals_  # stands in for numpy.random / random while the env runs (Bullet only)
        self._first_reset = True
        self.action_space.seed(seed)
        self.observation_space.seed(seed)

    def _scope(self) -> contextlib.AbstractContextManager[None]:
        return self._globals.active() if self._globals is not None else contextlib.nullcontext()

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        if seed is None and self._first_reset:
            seed = self.base_seed
        self._first_reset = False
        if self._globals is not None:
            self._globals.clock.now = 0.0
            if seed is not None:
                self._globals.reseed(seed)
        with self._scope():
            return self.env.reset(seed=seed, options=options)

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        if self._globals is not None:
            self._globals.clock.now += self.env.unwrapped.dt
        with self._scope():
            obs, reward, terminated, truncated, info = self.env.step(action)
        if "cost" not in info:
            raise RuntimeError(f"{self.control_spec.env_id} returned no info['cost']: {sorted(info)}")
        info["cost"] = float(info["cost"])
        return obs, float(reward), bool(terminated), bool(truncated), info


def make_env(name: str, seed: int = 0, **kwargs: Any) -> SeededCostEnv:
    """Make env ``name`` (id or alias) seeded with ``seed``; extra kwargs go to ``gymnasium.make``."""
    spec = get_spec(name)
    _import_suite(spec.suite)
    import gymnasium

    if spec.suite == "bullet":
        from control.compat import original_std_streams

        globals_: DeterministicGlobals | None = DeterministicGlobals(seed)
        with globals_.active(), original_std_streams():  # obstacles are placed at construction
            env = gymnasium.make(spec.gym_id, **kwargs)
    else:
        globals_ = None
        env = gymnasium.make(spec.gym_id, **kwargs)
    return SeededCostEnv(env, spec, seed, globals_)


def vector_costs(info: dict[str, Any], num_envs: int) -> np.ndarray:
    """Per-env step costs from a gymnasium 0.28 vector-env ``info``.

    An env that just auto-reset reports its reset info under ``"cost"`` (absent/masked); the cost of its
    last step is in ``info["final_info"][i]["cost"]``.
    """
    costs = np.zeros(num_envs, dtype=np.float64)
    if "cost" in info:
        mask = info.get("_cost", np.ones(num_envs, dtype=bool))
        costs[mask] = np.asarray(info["cost"], dtype=np.float64)[mask]
    for i, final in enumerate(info.get("final_info", [None] * num_envs)):
        if final is not None and info.get("_final_info", np.ones(num_envs, bool))[i]:
            costs[i] = float(final["cost"])
    return costs
