"""D_tau: behaviour data covers safe and unsafe steps, is cached with a manifest and is seed-deterministic."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

pytest.importorskip("gymnasium")
pytest.importorskip("bullet_safety_gym")
if importlib.util.find_spec("safety_gymnasium") is None:
    pytest.skip("control extras not installed: pip install -e '.[control]' && pip install --no-deps -r control/requirements-nodeps.txt", allow_module_level=True)

import torch

from control import offline
from control.behaviour import BEHAVIOURS
from control.envs import ENV_SPECS
from control.offline import OfflineData, generate, load_or_generate
from control.profiles import get_profile

torch.set_num_threads(1)
TINY = get_profile("test", data_episodes=10)


@pytest.fixture(scope="module")
def run_data() -> OfflineData:
    return generate("Run", TINY, seed=0, progress=False)


def test_every_env_has_a_behaviour_mix_with_several_behaviours() -> None:
    assert set(BEHAVIOURS) == set(ENV_SPECS)
    for env_id, mix in BEHAVIOURS.items():
        assert len(mix) >= 2, env_id


def test_arrays_are_well_formed(run_data: OfflineData) -> None:
    d = run_data
    n = len(d)
    assert n == 10 * TINY.max_episode_steps  # Run never terminates early; episodes capped by the profile
    assert d.obs.dtype == np.float32 and d.obs.shape == (n, 7) and d.act.shape == (n, 2)
    assert np.all(np.abs(d.act) <= 1.0)
    assert d.episode_end.sum() == d.num_episodes == 10
    assert np.all(
        d.episode_end[np.flatnonzero(np.diff(d.episode))]
    )  # an episode ends where the index changes
    # next_obs of a step is the obs of the following step inside an episode
    inside = ~d.episode_end[:-1]
    np.testing.assert_array_equal(d.next_obs[:-1][inside], d.obs[1:][inside])
    assert {"x_velocity", "speed", "y"} <= set(d.features)
    assert all(v.shape == (n,) for v in d.features.values())


def test_data_covers_safe_and_unsafe_steps_and_a_range_of_speeds(run_data: OfflineData) -> None:
    assert (run_data.cost == 0).sum() > 50 and (run_data.cost > 0).sum() > 50
    speeds = run_data.features["x_velocity"]
    assert speeds.min() < 0.8 and speeds.max() > 1.6  # slow and above the 1.5 m/s limit
    behaviours = run_data.manifest["behaviours"]
    assert len(behaviours) >= 2
    assert min(b["mean_cost"] for b in behaviours.values()) < max(b["mean_cost"] for b in behaviours.values())


def test_segments_stay_inside_one_episode(run_data: OfflineData) -> None:
    T = 25
    starts = run_data.segment_starts(T)
    assert len(starts) == 10 * (TINY.max_episode_steps - T + 1)
    assert np.all(run_data.episode[starts] == run_data.episode[starts + T - 1])
    obs, act = run_data.segments(starts[:4], T)
    assert obs.shape == (4, T, 7) and act.shape == (4, T, 2)
    np.testing.assert_array_equal(obs[1, 0], run_data.obs[starts[1]])
    sums = run_data.segment_sums(run_data.cost, starts[:4], T)
    np.testing.assert_allclose(sums, [run_data.cost[s : s + T].sum() for s in starts[:4]], rtol=1e-6)
    with pytest.raises(ValueError, match="length"):
        run_data.segment_starts(0)


def test_same_seed_same_arrays_other_seed_differs(run_data: OfflineData) -> None:
    again = generate("Run", TINY, seed=0, progress=False)
    for name in ("obs", "act", "rew", "cost", "episode"):
        np.testing.assert_array_equal(getattr(again, name), getattr(run_data, name))
    other = generate("Run", TINY, seed=1, progress=False)
    assert not np.array_equal(other.act, run_data.act)


def test_cache_is_written_with_a_manifest_and_reused(tmp_path, monkeypatch) -> None:
    profile = get_profile("test")
    first = load_or_generate("Circle", profile, root=tmp_path, seed=3, progress=False)
    folder = tmp_path / "SafetyBallCircle-v0" / "test-seed3"
    manifest = json.loads((folder / "manifest.json").read_text())
    for key in ("env_id", "profile", "seed", "versions", "config", "sizes", "behaviours", "config_hash"):
        assert key in manifest
    assert manifest["sizes"]["transitions"] == len(first) and manifest["versions"]["gymnasium"]
    assert not list(folder.glob(".*tmp"))  # atomic writes leave no temporaries

    def boom(*args, **kwargs):
        raise AssertionError("regenerated although the cache matches")

    monkeypatch.setattr(offline, "generate", boom)
    cached = load_or_generate("Circle", profile, root=tmp_path, seed=3, progress=False)
    np.testing.assert_array_equal(cached.obs, first.obs)
    assert set(cached.features) == set(first.features)
    with pytest.raises(AssertionError, match="regenerated"):  # another size is another config
        load_or_generate(
            "Circle", get_profile("test", data_episodes=3), root=tmp_path, seed=3, progress=False
        )


@pytest.mark.parametrize("env", ["Reach", "HalfCheetah-vel", "Hopper-vel", "Swimmer-vel"])
def test_tiny_profile_runs_for_the_other_envs(env: str) -> None:
    d = generate(env, get_profile("test", data_episodes=3), seed=0, progress=False)
    assert len(d) > 0 and np.isfinite(d.obs).all() and np.all(np.abs(d.act) <= 1.0)
    assert d.features and all(np.isfinite(v).all() for v in d.features.values())


def test_circle_stadium_driver_is_fast_and_safe_where_the_plain_circle_is_not() -> None:
    """The wall-keeping Circle driver turns the wide circle into a cost-free stadium (D_tau's safe, fast end)."""
    from control.behaviour import _CONTROLLERS
    from control.envs import make_env

    env = make_env("Circle", 0)

    def episode(goal: dict[str, float]) -> tuple[float, float]:
        obs, _ = env.reset(seed=1)
        act, ret, cost = _CONTROLLERS["ball_circle"](env, goal), 0.0, 0.0
        for _ in range(150):
            a = np.clip(act(obs), env.action_space.low, env.action_space.high).astype(np.float32)
            obs, r, terminated, truncated, info = env.step(a)
            ret, cost = ret + r, cost + info["cost"]
            if terminated or truncated:
                break
        return ret, cost

    stadium = episode({"speed": 3.0, "radius": 7.0, "wall": 5.6})
    circle = episode({"speed": 3.0, "radius": 7.0})
    slow = episode({"speed": 1.0, "radius": 7.0, "wall": 5.6})
    env.close()
    assert stadium[1] == 0 and circle[1] > 10  # the walls at |x| = 6 cost only without wall keeping
    assert stadium[0] > 2 * slow[0] > 0


def test_behaviour_agents_join_d_tau_and_are_trained_once(tmp_path, monkeypatch) -> None:
    """With ``agent_steps`` D_tau = the scripted mix + each agent's share of noisy episodes; the agents are
    checkpointed next to the cache and reused, and a scripted-only profile keeps its old cache key."""
    from control import methods
    from control.agents import AGENTS
    from control.methods.baselines import default_cost_penalty

    profile = get_profile("test", data_episodes=12, agent_steps=300)
    data = load_or_generate("Run", profile, root=tmp_path, seed=0, progress=False)
    m = data.manifest
    assert data.num_episodes == 12 and m["config"]["agents"]["steps"] == 300
    for spec in AGENTS:
        assert m["behaviours"][spec.name]["episodes"] == max(1, round(spec.share * 12))
        assert m["agents"][spec.name]["episodes"] > 0
        assert (tmp_path / "SafetyCarRun-v0" / "test-seed0" / "agents" / spec.name / "final.safetensors").exists()
    penalties = {k: v["cost_penalty"] for k, v in m["agents"].items()}
    assert penalties["agent_task"] == 0 and penalties["agent_safe"] > 1  # K from the scripted rewards
    assert np.all(np.diff(data.episode) >= 0) and np.all(np.abs(data.act) <= 1.0)
    scripted = data.scripted_mask()  # the Oracle's K comes from these steps, as the safe agent's did
    assert set(np.unique(data.episode[~scripted])) == {10, 11}
    assert default_cost_penalty(data.rew[scripted]) == pytest.approx(penalties["agent_safe"])

    def no_training(*args, **kwargs):
        raise AssertionError("an agent was retrained although its checkpoint matches")

    monkeypatch.setattr(methods.online, "train_online", no_training)
    (tmp_path / "SafetyCarRun-v0" / "test-seed0" / "manifest.json").unlink()  # forces D_tau, not the agents
    again = load_or_generate("Run", profile, root=tmp_path, seed=0, progress=False)
    np.testing.assert_array_equal(again.act, data.act)
    assert again.manifest["agents"] == m["agents"]

    scripted = offline._config("SafetyCarRun-v0", get_profile("test", data_episodes=12), 0)
    assert "agents" not in scripted and offline._hash(scripted) != m["config_hash"]


def test_profile_rejects_negative_agent_steps() -> None:
    assert get_profile("test").agent_steps == 0
    with pytest.raises(ValueError, match="agent_steps"):
        get_profile("test", agent_steps=-1)
