"""Simulated crowds: type proportions, Bradley-Terry labels with flip noise, the shared safety penalty."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("yaml")

import torch

from control.crowd import USER_TYPES, CrowdSpec, label_stats, make_crowd, segment_returns, user_types
from control.offline import OfflineData

torch.set_num_threads(1)
CROWDS = Path(__file__).resolve().parents[2] / "control" / "crowds"
ALL_FEATURES = ("x_velocity", "y_velocity", "speed", "y", "radius", "tangential_velocity", "x",
                "goal_distance", "approach_speed", "heading_error")  # fmt: skip


def synthetic_data(env_id: str, episodes: int = 40, length: int = 50, seed: int = 0,
                   unsafe_episodes: tuple[int, ...] | None = None) -> OfflineData:  # fmt: skip
    """Random features; cost > 0 wherever the user goal of the env's unsafe type would be satisfied-ish,
    or on whole episodes listed in ``unsafe_episodes``."""
    rng = np.random.default_rng(seed)
    n = episodes * length
    episode = np.repeat(np.arange(episodes), length)
    feats = {k: rng.normal(1.0, 1.0, n).astype(np.float32) for k in ALL_FEATURES}
    cost = (rng.random(n) < 0.3).astype(np.float32)
    if unsafe_episodes is not None:
        cost = np.isin(episode, unsafe_episodes).astype(np.float32)
    end = np.zeros(n, bool)
    end[length - 1 :: length] = True
    obs = rng.normal(size=(n, 3)).astype(np.float32)
    return OfflineData(env_id, obs, rng.uniform(-1, 1, (n, 2)).astype(np.float32), rng.normal(size=n).astype(np.float32),
                       cost, obs, np.zeros(n, bool), end, episode.astype(np.int64), feats)  # fmt: skip


@pytest.fixture(scope="module")
def cheetah() -> OfflineData:
    return synthetic_data("SafetyHalfCheetahVelocity-v1")


def test_shipped_specs_load_and_fit_every_env() -> None:
    for name in ("balanced", "imbalanced_10to1"):
        spec = CrowdSpec.from_yaml(CROWDS / f"{name}.yaml")
        assert spec.name == name
        for env_id in USER_TYPES:
            shares = spec.type_shares(env_id)
            assert len(shares) >= 2 and abs(sum(shares.values()) - 1) < 1e-9
    for env_id, types in USER_TYPES.items():
        assert any(t.unsafe_goal for t in types) and any(not t.unsafe_goal for t in types), env_id


@pytest.mark.parametrize(("name", "expected"), [("balanced", {"slow": 30, "fast": 30}),
                                                ("imbalanced_10to1", {"fast": 60, "slow": 6})])  # fmt: skip
def test_type_proportions_are_honoured(cheetah: OfflineData, name: str, expected: dict[str, int]) -> None:
    crowd = make_crowd(cheetah, CrowdSpec.from_yaml(CROWDS / f"{name}.yaml", pairs_per_annotator=5))
    assert crowd.type_counts() == expected
    assert len(crowd.crowd) == sum(expected.values())
    counts = np.bincount(crowd.annotator)
    assert np.all(counts == 5)


def test_type_name_proportions_and_a_small_minority_survive(cheetah: OfflineData) -> None:
    spec = CrowdSpec(proportions={"fast": 20, "slow": 1}, num_annotators=10, pairs_per_annotator=3)
    crowd = make_crowd(cheetah, spec)
    assert crowd.type_counts()["slow"] == 1 and crowd.type_counts()["fast"] == 9


def test_crowd_format_matches_the_contract(cheetah: OfflineData) -> None:
    spec = CrowdSpec(num_annotators=4, pairs_per_annotator=6, segment_length=7)
    crowd = make_crowd(cheetah, spec)
    P = 24
    assert crowd.pairs.shape == (P, 2) and crowd.labels.shape == (P,) and crowd.safety_labels.shape == (P,)
    assert crowd.pairs.dtype == np.int64 and crowd.labels.dtype == np.float32
    assert np.all(cheetah.episode[crowd.pairs] == cheetah.episode[crowd.pairs + 6])  # segments in one episode
    assert np.all(crowd.pairs[:, 0] != crowd.pairs[:, 1])
    for pref in crowd.crowd.sets.values():
        assert pref.feature_shape == (7, 3 + 2)
        for row, a, b, y in zip(pref.ids.tolist(), pref.a, pref.b, pref.y, strict=True):
            sa, sb = crowd.pairs[row]
            np.testing.assert_array_equal(
                a.numpy(), np.concatenate([cheetah.obs, cheetah.act], 1)[sa : sa + 7]
            )
            np.testing.assert_array_equal(b[0].numpy()[:3], cheetah.obs[sb])
            assert y.item() == crowd.labels[row]
    ca = cheetah.segment_sums(cheetah.cost, crowd.pairs[:, 0], 7)
    cb = cheetah.segment_sums(cheetah.cost, crowd.pairs[:, 1], 7)
    np.testing.assert_array_equal(crowd.safety_labels, np.where(ca < cb, 1.0, np.where(ca > cb, 0.0, 0.5)))


def test_flip_noise_rate_is_as_specified(cheetah: OfflineData) -> None:
    base = CrowdSpec(num_annotators=20, pairs_per_annotator=200, temperature=0.0, seed=4)
    clean = make_crowd(cheetah, base)
    noisy = make_crowd(cheetah, base.with_overrides(flip_prob=0.2))
    np.testing.assert_array_equal(clean.pairs, noisy.pairs)  # same draws apart from the flips
    decided = clean.labels != 0.5
    rate = np.mean(clean.labels[decided] != noisy.labels[decided])
    assert abs(rate - 0.2) < 0.03, rate
    # noiseless labels follow the true segment return exactly
    r = clean.returns
    np.testing.assert_array_equal(clean.labels[decided], (r[decided, 0] > r[decided, 1]).astype(np.float32))


def test_temperature_makes_labels_noisier(cheetah: OfflineData) -> None:
    agree = []
    for temperature in (0.1, 1.0, 30.0):
        c = make_crowd(
            cheetah, CrowdSpec(num_annotators=10, pairs_per_annotator=200, temperature=temperature)
        )
        agree.append(np.mean(c.labels == (c.returns[:, 0] > c.returns[:, 1])))
    assert agree[0] > agree[1] > agree[2] and agree[0] > 0.95 and agree[2] < 0.8


@pytest.mark.parametrize("env_id", list(USER_TYPES))
def test_shared_penalty_makes_every_type_prefer_the_safe_segment(env_id: str) -> None:
    # episodes 2k and 2k+1 carry identical features; only the odd ones have cost
    base = synthetic_data(env_id, episodes=2, length=30, unsafe_episodes=(1,))
    feats = {k: np.concatenate([v[:30], v[:30]]) for k, v in base.features.items()}
    data = OfflineData(env_id, base.obs, base.act, base.rew, base.cost, base.next_obs, base.terminal,
                       base.episode_end, base.episode, feats)  # fmt: skip
    rng = np.random.default_rng(0)
    for utype in user_types(env_id):
        goal = utype.draw(rng)
        starts = np.arange(0, 20)
        safe = segment_returns(data, starts, 10, utype, goal, K=1.0)
        unsafe = segment_returns(data, starts + 30, 10, utype, goal, K=1.0)
        np.testing.assert_allclose(safe - unsafe, 10.0, rtol=1e-5)  # K per costly step, nothing else differs
    spec = CrowdSpec(num_annotators=8, pairs_per_annotator=40, segment_length=10, temperature=0.0, K=1.0)
    crowd = make_crowd(data, spec)
    mixed = data.episode[crowd.pairs[:, 0]] != data.episode[crowd.pairs[:, 1]]
    assert mixed.sum() > 50
    np.testing.assert_array_equal(crowd.labels[mixed], crowd.safety_labels[mixed])


def test_same_seed_same_crowd(cheetah: OfflineData) -> None:
    spec = CrowdSpec(num_annotators=6, pairs_per_annotator=10, flip_prob=0.1)
    a, b = make_crowd(cheetah, spec), make_crowd(cheetah, spec)
    np.testing.assert_array_equal(a.pairs, b.pairs)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.annotator_types == b.annotator_types and a.annotator_goals == b.annotator_goals
    c = make_crowd(cheetah, spec.with_overrides(seed=1))
    assert not np.array_equal(a.pairs, c.pairs)


def test_spec_errors_name_the_file_and_field(tmp_path: Path, cheetah: OfflineData) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("proportions: {safe_goal: 1}\nnum_annotatorz: 3\n")
    with pytest.raises(ValueError, match=r"bad\.yaml.*unknown field 'num_annotatorz'"):
        CrowdSpec.from_yaml(bad)
    bad.write_text("flip_prob: 0.9\n")
    with pytest.raises(ValueError, match=r"bad\.yaml.*'flip_prob'.*\[0.0, 0.5\]"):
        CrowdSpec.from_yaml(bad)
    bad.write_text("proportions: {safe_goal: -1}\n")
    with pytest.raises(ValueError, match=r"bad\.yaml.*'proportions.safe_goal'.*> 0"):
        CrowdSpec.from_yaml(bad)
    bad.write_text("proportions: {turbo: 1}\n")
    spec = CrowdSpec.from_yaml(bad)
    with pytest.raises(ValueError, match=r"bad\.yaml.*'proportions.turbo'.*slow, fast"):
        make_crowd(cheetah, spec)
    bad.write_text("- a list\n")
    with pytest.raises(ValueError, match=r"bad\.yaml.*mapping"):
        CrowdSpec.from_yaml(bad)
    with pytest.raises(FileNotFoundError, match=r"nope\.yaml"):
        CrowdSpec.from_yaml(tmp_path / "nope.yaml")
    with pytest.raises(ValueError, match="need >= 2"):
        make_crowd(cheetah, CrowdSpec(segment_length=500))


def test_goal_overrides_change_only_the_named_type(tmp_path: Path, cheetah: OfflineData) -> None:
    path = tmp_path / "fast_slow.yaml"
    path.write_text("goals:\n  HalfCheetah-vel:\n    slow: {speed: [2.0, 2.5]}\n")
    spec = CrowdSpec.from_yaml(path, num_annotators=10, pairs_per_annotator=5)
    slow, fast = spec.user_types("SafetyHalfCheetahVelocity-v1")
    assert slow.goals == {"speed": (2.0, 2.5)} and fast == user_types("HalfCheetah-vel")[1]
    assert spec.user_types("Hopper-vel") == user_types("Hopper-vel")  # other envs keep their defaults
    crowd = make_crowd(cheetah, spec)
    default = make_crowd(cheetah, spec.with_overrides(goals={}))
    got = {t: [g["speed"] for tt, g in zip(crowd.annotator_types, crowd.annotator_goals) if tt == t] for t in ("slow", "fast")}
    assert got["slow"] and all(2.0 <= v <= 2.5 for v in got["slow"])
    assert not all(2.0 <= g["speed"] <= 2.5 for t, g in zip(default.annotator_types, default.annotator_goals) if t == "slow")
    assert got["fast"] == [g["speed"] for t, g in zip(default.annotator_types, default.annotator_goals) if t == "fast"]


@pytest.mark.parametrize(
    ("goals", "match"),
    [
        ("{Moon: {slow: {speed: [1, 2]}}}", r"'goals.Moon'.*unknown control env"),
        ("{HalfCheetah-vel: {turbo: {speed: [1, 2]}}}", r"'goals.HalfCheetah-vel.turbo'.*slow, fast"),
        ("{HalfCheetah-vel: {slow: {lane: [1, 2]}}}", r"'goals.HalfCheetah-vel.slow.lane'.*speed"),
        ("{HalfCheetah-vel: {slow: {speed: [2, 1]}}}", r"'goals.HalfCheetah-vel.slow.speed'.*lo <= hi"),
        ("{HalfCheetah-vel: {slow: {speed: 3}}}", r"'goals.HalfCheetah-vel.slow.speed'.*\[lo, hi\]"),
    ],
)
def test_bad_goal_overrides_name_the_file_and_field(tmp_path: Path, goals: str, match: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(f"goals: {goals}\n")
    with pytest.raises(ValueError, match=r"bad\.yaml.*" + match):
        CrowdSpec.from_yaml(path)


def test_label_stats_show_the_shared_principle_and_its_absence() -> None:
    data = synthetic_data("SafetyHalfCheetahVelocity-v1", unsafe_episodes=tuple(range(0, 40, 2)))
    spec = CrowdSpec(num_annotators=8, pairs_per_annotator=40, segment_length=10, temperature=0.0, K=10.0)
    stats = label_stats(make_crowd(data, spec), data)
    assert set(stats) == {"all", "slow", "fast"} and stats["all"]["pairs"] == 320
    assert 0.2 < stats["all"]["differ"] < 0.8  # half the episodes are costly
    assert stats["all"]["follows_safer"] == 1.0 and stats["all"]["conflict"] > 0.05
    assert stats["all"]["follows_safer_in_conflict"] == 1.0  # K = 10 outweighs any goal (r_user >= -2 per step)
    blind = label_stats(make_crowd(data, spec.with_overrides(K=0.0)), data)
    assert blind["all"]["follows_safer_in_conflict"] == 0.0  # without the penalty the goal decides
    assert blind["all"]["follows_safer"] < 0.9
