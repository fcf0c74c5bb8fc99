"""Env layer of the control track: the six envs, their env-reported costs, seeding and the import shim."""

from __future__ import annotations

import importlib.util
import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

_HOW = "control extras not installed (pip install -e '.[control]' && pip install --no-deps -r control/requirements-nodeps.txt)"
pytest.importorskip("gymnasium", reason=_HOW)
pytest.importorskip("bullet_safety_gym", reason=_HOW)
if importlib.util.find_spec("safety_gymnasium") is None:
    pytest.skip(_HOW, allow_module_level=True)

from control import compat  # noqa: E402
from control.envs import ENV_SPECS, env_names, get_spec, make_env, vector_costs  # noqa: E402


def _bodies(env: object) -> list[np.ndarray]:
    """Poses of every body in a Bullet env's simulator (obstacles included, which observations may miss)."""
    bc = env.unwrapped.bc
    return [np.concatenate(bc.getBasePositionAndOrientation(i)) for i in range(bc.getNumBodies())]


def _rollout(name: str, seed: int, steps: int, disturb: bool = True) -> np.ndarray:
    """Observations of a fresh env under its own seeded random actions, resets included (+ Bullet poses)."""
    env = make_env(name, seed)
    obs = [env.reset()[0]]
    for _ in range(steps):
        if disturb:  # the caller's use of the global RNGs must not leak into the env
            np.random.rand()
            random.random()
        o, _, terminated, truncated, _ = env.step(env.action_space.sample())
        obs.append(o)
        if terminated or truncated:
            obs.append(env.reset()[0])
    if env.control_spec.suite == "bullet":
        obs += _bodies(env)
    env.close()
    return np.concatenate([np.ravel(o) for o in obs])


@pytest.mark.parametrize("name", list(ENV_SPECS))
def test_env_resets_steps_and_reports_float_cost(name: str) -> None:
    env = make_env(name, seed=0)
    obs, _ = env.reset()
    assert env.observation_space.contains(obs.astype(env.observation_space.dtype))
    for _ in range(5):
        out = env.step(env.action_space.sample())
        assert len(out) == 5
        cost = out[4]["cost"]
        assert isinstance(cost, float) and cost >= 0.0
    assert env.spec.max_episode_steps == get_spec(name).max_episode_steps
    env.close()


def test_aliases_and_unknown_name() -> None:
    assert {s.alias for s in ENV_SPECS.values()} == {
        "Reach",
        "Run",
        "Circle",
        "HalfCheetah-vel",
        "Hopper-vel",
        "Swimmer-vel",
    }
    assert get_spec("hopper-vel").env_id == "SafetyHopperVelocity-v1"
    with pytest.raises(
        ValueError, match=r"unknown control env 'Walker-vel'.*SafetyBallReach-v0.*Swimmer-vel"
    ):
        make_env("Walker-vel")
    assert len(env_names()) == 12
    assert get_spec("Reach").dsrl_normalised(100.0, 5.0) == (None, None)
    reward, cost = get_spec("Run").dsrl_normalised(574.65332, 5.0)
    assert reward == pytest.approx(1.0) and cost == 0.5


@pytest.mark.parametrize("name", ["Reach", "HalfCheetah-vel"])
def test_same_seed_same_rollout(name: str) -> None:
    """Fresh envs with one seed agree; Reach also checks its wall-clock-driven moving box (sim clock)."""
    steps = 260 if name == "Reach" else 60  # Reach: past its 250-step episode, so one reset is covered
    a = _rollout(name, 7, steps)
    time.sleep(0.2)
    np.testing.assert_array_equal(a, _rollout(name, 7, steps, disturb=False))
    assert not np.array_equal(a, _rollout(name, 8, steps))


def test_velocity_cost_comes_from_env() -> None:
    """Full throttle makes the Hopper lunge past its speed limit; standing still never does."""
    env = make_env("Hopper-vel", seed=0)
    threshold = env.control_spec.velocity_threshold
    total = {}
    for label, action in [("idle", np.zeros(3)), ("throttle", np.ones(3))]:
        env.reset(seed=0)
        total[label] = 0.0
        for _ in range(40):
            _, _, terminated, truncated, info = env.step(action)
            assert info["cost"] == float(info["x_velocity"] > threshold)
            total[label] += info["cost"]
            if terminated or truncated:
                break
    assert total["idle"] == 0.0 and total["throttle"] > 0.0


def test_vector_env_costs_include_autoreset_steps() -> None:
    import gymnasium

    venv = gymnasium.vector.SyncVectorEnv([lambda s=s: make_env("Hopper-vel", s) for s in (0, 1)])
    venv.reset()
    vec_total = np.zeros(2)
    for _ in range(60):  # full throttle ends Hopper episodes after ~20 steps: several autoresets
        vec_total += vector_costs(venv.step(np.ones((2, 3)))[4], 2)
    venv.close()
    for i, seed in enumerate((0, 1)):
        env, total = make_env("Hopper-vel", seed), 0.0
        env.reset()
        for _ in range(60):
            _, _, terminated, truncated, info = env.step(np.ones(3))
            total += info["cost"]
            if terminated or truncated:
                env.reset()
        assert vec_total[i] == total > 0


def test_shim_makes_import_work_and_is_idempotent() -> None:
    if not compat.needs_shim():
        pytest.skip(f"installed safety-gymnasium is not one of {sorted(compat.AFFECTED_VERSIONS)}")
    code = textwrap.dedent(
        """
        import sys
        from control import compat
        assert compat.needs_shim(), "safety-gymnasium version not known to need the shim"
        try:
            import safety_gymnasium
            raise SystemExit("import worked without the shim")
        except ValueError as err:
            assert "mutable default" in str(err)
        for m in [m for m in sys.modules if m.startswith("safety_gymnasium")]:
            del sys.modules[m]
        assert compat.install() and compat.install()
        assert sum(getattr(f, "_safecrowd_compat", False) for f in sys.meta_path) == 1
        import safety_gymnasium
        from safety_gymnasium.assets.color import COLOR
        from safety_gymnasium.assets.geoms import hazards
        a, b = hazards.Hazards(), hazards.Hazards()
        assert (a.color == COLOR["hazard"]).all() and a.color is not b.color
        assert type(hazards.__spec__.loader).__name__ == "_PatchedLoader"
        print("ok")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


def test_shim_is_noop_for_unaffected_versions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        sys, "meta_path", [f for f in sys.meta_path if not getattr(f, "_safecrowd_compat", 0)]
    )
    monkeypatch.setattr(compat, "AFFECTED_VERSIONS", frozenset({"0.0.0"}))
    assert not compat.needs_shim() and not compat.install() and not compat.is_installed()
