"""Control methods: skill fits (Safe-CPL, Safe-VPL), the prior-regularised high-level policy, the
baselines' reward definitions, seeding and stage caching.

Skill fits run on the synthetic 1-D "action level" world of ``tests/control/synthetic.py``, where a step
is unsafe when its action exceeds 0.5 and one user type wants 0.9: a skill learned from its preferences
has picked up the shared safety principle when it prefers a safe segment to an unsafe one that its
personal goal alone would favour.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from control.methods import METHODS, MethodConfig, train_method
from control.methods.baselines import default_cost_penalty, fit_segment_model, match_scale, rc_mix
from control.methods.common import Spaces, config_hash, model_crowd
from control.methods.composition import CompositionConfig, HighLevelTD3
from control.methods.latent import LatentConfig, pick_skills
from control.methods.skills_cpl import CPLConfig, fit_cpl_skills
from control.methods.skills_vpl import VPLConfig, fit_vpl_reward, train_vpl_skills
from control.td3 import ReplayBuffer, TD3Config
from safecrowd_llm.core import GaussianMixturePrior, StandardNormalPrior
from tests.control import synthetic as syn

TINY_LATENT = LatentConfig(
    encoder_hidden=32, encoder_layers=0, annotators_per_batch=8, lr=3e-3, kl_warmup_fraction=0.2
)


@pytest.fixture(scope="module")
def world():
    data = syn.make_data()
    crowd = syn.make_crowd(data)
    spaces = Spaces.from_data(data, np.array([-1.0]), np.array([1.0]))
    return data, crowd, spaces, model_crowd(crowd.crowd, spaces), spaces.tensors(data)


def _held_out_segments(spaces: Spaces, levels: np.ndarray, seed: int) -> torch.Tensor:
    """Model-space features ``(n, T, 3)`` of segments holding each action level."""
    rng = np.random.default_rng(seed)
    obs = rng.standard_normal((len(levels), syn.T, 2)).astype(np.float32)
    act = np.clip(levels[:, None, None] + 0.05 * rng.standard_normal((len(levels), syn.T, 1)), -1, 1)
    return spaces.features(torch.from_numpy(obs), torch.from_numpy(act.astype(np.float32)))


def _falls(history: list[dict[str, float]], key: str = "loss", n: int = 30) -> tuple[float, float]:
    values = [m[key] for m in history]
    return float(np.mean(values[:n])), float(np.mean(values[-n:]))


@pytest.fixture(scope="module")
def cpl_fit(world):
    _, _, _, mcrowd, dtau = world
    cfg = CPLConfig(latent=TINY_LATENT, policy_hidden=(32, 32), alpha=1.0, lam=0.75, bc_weight=0.1)
    return fit_cpl_skills(mcrowd, dtau, 1, 2, 200, cfg, seed=0, progress=False)


def test_cpl_skills_loss_falls_and_every_skill_prefers_the_safe_segment(world, cpl_fit) -> None:
    _, _, spaces, mcrowd, _ = world
    vae, policy, history = cpl_fit
    first, last = _falls(history)
    assert last < 0.8 * first
    selection, means, _ = pick_skills(vae, mcrowd, 3, seed=0)
    safe, unsafe = syn.held_out_pairs()
    xs, xu = _held_out_segments(spaces, safe, 1), _held_out_segments(spaces, unsafe, 2)
    with torch.no_grad():
        for z in selection.latents:
            f_safe = policy.log_prob(xs[..., :2], z, xs[..., 2:]).sum(-1)
            f_unsafe = policy.log_prob(xu[..., :2], z, xu[..., 2:]).sum(-1)
            assert (f_safe > f_unsafe).float().mean() > 0.8
            assert policy.mean(torch.zeros(1, 2), z[None]).item() < syn.UNSAFE  # the decoded skill is safe
    # the latent tells user types apart: decoded at their posterior means, "low" users act lower than "fast" ones
    with torch.no_grad():
        acts = policy.mean(torch.zeros(len(means), 2), means).squeeze(-1)
    kind = np.array([a.split("-")[0] for a in mcrowd.annotator_ids])
    assert acts[kind == "low"].mean() < acts[kind == "fast"].mean() - 0.2


def test_vpl_reward_loss_falls_and_every_skill_reward_prefers_the_safe_segment(world) -> None:
    _, _, spaces, mcrowd, dtau = world
    cfg = VPLConfig(
        latent=TINY_LATENT, reward_hidden=32, td3=TD3Config(hidden=(32, 32), batch_size=64, bc_alpha=2.5)
    )
    vae, reward, history = fit_vpl_reward(mcrowd, 2, 200, cfg, seed=0, progress=False)
    first, last = _falls(history)
    assert last < 0.8 * first
    selection, means, stds = pick_skills(vae, mcrowd, 3, seed=0)
    safe, unsafe = syn.held_out_pairs()
    xs, xu = _held_out_segments(spaces, safe, 1), _held_out_segments(spaces, unsafe, 2)
    with torch.no_grad():
        for z in selection.latents:
            prefers_safe = reward.step_reward(xs, z).sum(-1) > reward.step_reward(xu, z).sum(-1)
            assert prefers_safe.float().mean() > 0.8
    skill, skill_history = train_vpl_skills(vae, reward, means, stds, dtau, 100, cfg, seed=0, progress=False)
    assert len(skill_history) == 100
    u = skill(torch.zeros(4, 2), selection.latents[:1])
    assert u.shape == (4, 1) and not u.requires_grad and (u.abs() <= 1).all()


class _TanhSkill(nn.Module):
    """A stand-in frozen skill: the action is tanh of the latent's first coordinate."""

    def forward(self, s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z[..., :1]).expand(*s.shape[:-1], 1)


def _train_high_level(beta_reg: float, prior=None, *, latents: bool = False, **target):
    """Train pi_h where the task rewards the largest action; returns mean |z'| (or the latents themselves)."""
    cfg = CompositionConfig(
        td3=TD3Config(hidden=(32, 32), batch_size=64, actor_lr=1e-3, critic_lr=3e-3), beta_reg=beta_reg, **target
    )
    agent = HighLevelTD3(2, 1, _TanhSkill(), prior or StandardNormalPrior(2), cfg, seed=0)
    rng = np.random.default_rng(0)
    buf = ReplayBuffer(2, 1, 1000, seed=0)
    for _ in range(1000):
        x = (0.1 * rng.standard_normal(2)).astype(np.float32)
        u = rng.uniform(-1, 1, 1).astype(np.float32)
        buf.add(x, u, float(u[0]), x, True)
    for _ in range(250):
        agent.update(buf.sample(64))
    with torch.no_grad():
        z = agent.latent(0.1 * torch.randn(128, 2))
    return z if latents else float(z.norm(dim=-1).mean())


def test_prior_regulariser_pulls_the_high_level_latent_towards_the_prior_mode() -> None:
    free, regularised = _train_high_level(0.0), _train_high_level(10.0)
    assert free > 1.5  # the task alone drives z' out towards the bound (tanh(z) -> 1)
    assert regularised < 0.5  # a large beta_reg keeps z' near the prior's mode 0


def test_an_aggregate_posterior_prior_holds_the_high_level_on_the_annotator_mode_the_task_prefers() -> None:
    """Two annotator modes at z'_0 = -1 and +1 (the task prefers larger tanh(z'_0)): under N(0, I) a strong
    regulariser pulls z' to the origin, between the users; under their aggregate posterior it stays on +1."""
    means = torch.tensor([[-1.0, 0.0], [1.0, 0.0]])
    aggregate = GaussianMixturePrior.from_components(means, torch.full((2, 2), 0.2))
    z = _train_high_level(10.0, aggregate, latents=True)
    assert torch.allclose(z.mean(0), means[1], atol=0.15), z.mean(0)
    assert _train_high_level(10.0) < 0.5


def test_a_prior_target_learns_beta_reg_that_holds_the_log_density() -> None:
    """With beta_reg starting at 0 the task drives z' to the bound (|z'| > 1.5 above); a log-density target
    of N(0, I) at |z'| = 1 (log p = -log 2 pi - 1/2) makes dual ascent raise beta_reg until z' comes back."""
    target = -math.log(2 * math.pi) - 0.5
    held = _train_high_level(0.0, prior_target=target, beta_lr=0.05, beta_max=20.0)
    assert held < 1.3, held


def _switching_gap(beta_switch: float) -> float:
    """pi_h where the best action's sign follows the state's, and every transition flips the state:
    returns mean ||pi_h(s) - pi_h(s')|| on fresh states."""
    cfg = CompositionConfig(td3=TD3Config(hidden=(32, 32), batch_size=64, actor_lr=1e-3, critic_lr=3e-3),
                            beta_reg=0.0, beta_switch=beta_switch)
    agent = HighLevelTD3(2, 1, _TanhSkill(), StandardNormalPrior(2), cfg, seed=0)
    rng = np.random.default_rng(0)
    buf = ReplayBuffer(2, 1, 1000, seed=0)
    for _ in range(1000):
        x = rng.standard_normal(2).astype(np.float32)
        u = rng.uniform(-1, 1, 1).astype(np.float32)
        buf.add(x, u, float(u[0] * np.sign(x[0])), -x, True)
    for _ in range(300):
        agent.update(buf.sample(64))
    with torch.no_grad():
        x = torch.randn(256, 2)
        return float((agent.latent(x) - agent.latent(-x)).norm(dim=-1).mean())


def test_the_persistence_term_keeps_the_high_level_from_switching_skills_between_states() -> None:
    free, persistent = _switching_gap(0.0), _switching_gap(10.0)
    assert free > 1.0, free  # the task alone flips z' with the state
    assert persistent < 0.5 * free, (free, persistent)


def test_rc_mixes_rewards_as_defined() -> None:
    assert rc_mix(2.0, -4.0, 0.0) == 2.0
    assert rc_mix(2.0, -4.0, 1.0) == -4.0
    assert rc_mix(2.0, -4.0, 0.5) == pytest.approx(-1.0)
    assert rc_mix(2.0, -4.0, 0.25) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="omega"):
        rc_mix(1.0, 1.0, 1.5)
    g = np.array([0.0, 1.0, 2.0, 5.0])
    target = np.array([10.0, 12.0, 9.0, 13.0])
    a, b = match_scale(g, target)
    assert np.mean(a * g + b) == pytest.approx(target.mean()) and np.std(a * g + b) == pytest.approx(
        target.std()
    )
    assert default_cost_penalty(np.array([0.5, -3.0, 1.0])) == pytest.approx(
        2 * np.quantile([0.5, 3.0, 1.0], 0.99)
    )


def test_sopl_cost_model_ranks_costly_segments_higher(world) -> None:
    data, crowd, spaces, _, _ = world
    from control.methods.common import segment_features

    pairs = crowd.pairs
    sa, sb = (
        segment_features(spaces, data, pairs[:, 0], syn.T),
        segment_features(spaces, data, pairs[:, 1], syn.T),
    )
    from control.methods.baselines import RewardModelConfig

    model, history = fit_segment_model(
        sa, sb, torch.as_tensor(crowd.safety_labels), 200, RewardModelConfig(hidden=(32, 32)), seed=0, cost=True,
        progress=False,
    )  # fmt: skip
    first, last = _falls(history)
    assert last < first
    safe, unsafe = syn.held_out_pairs()
    with torch.no_grad():
        c_safe = model(_held_out_segments(spaces, safe, 1)).sum(-1)
        c_unsafe = model(_held_out_segments(spaces, unsafe, 2)).sum(-1)
    assert (c_unsafe > c_safe).float().mean() > 0.9
    assert (c_safe >= 0).all()


def test_same_seed_same_skill_fit(world) -> None:
    _, _, _, mcrowd, dtau = world
    cfg = CPLConfig(latent=TINY_LATENT, policy_hidden=(16, 16))
    runs = [fit_cpl_skills(mcrowd, dtau, 1, 2, 10, cfg, seed=4, progress=False) for _ in range(2)]
    assert [m["loss"] for m in runs[0][2]] == [m["loss"] for m in runs[1][2]]
    for p, q in zip(runs[0][1].parameters(), runs[1][1].parameters()):
        assert torch.equal(p, q)
    other = fit_cpl_skills(mcrowd, dtau, 1, 2, 10, cfg, seed=5, progress=False)
    assert [m["loss"] for m in other[2]] != [m["loss"] for m in runs[0][2]]


def test_options_are_validated() -> None:
    assert METHODS == ("oracle", "task-only", "rc", "sopl", "safe-vpl", "safe-cpl")
    with pytest.raises(ValueError, match="unknown method option"):
        MethodConfig.from_options(omgea=0.3)
    with pytest.raises(ValueError, match="unknown method 'ppo'"):
        train_method("ppo", None, None, None, 0, "/tmp/unused")
    assert MethodConfig.from_options(omega=0.3, offline=True).omega == 0.3
    with pytest.raises(ValueError, match="hl_prior must be"):
        MethodConfig.from_options(hl_prior="uniform")
    with pytest.raises(ValueError, match="dtau_replay must be"):
        MethodConfig.from_options(dtau_replay=1.0)
    with pytest.raises(ValueError, match="skill_learner must be"):
        MethodConfig.from_options(skill_learner="cql")
    assert config_hash(MethodConfig()) == config_hash(MethodConfig())
    assert config_hash(MethodConfig()) != config_hash(replace(MethodConfig(), beta_reg=1.0))


# ---- on a real env (tiny budgets) ------------------------------------------------------------------------
def _real_env_inputs(tmp_path_factory):
    pytest.importorskip("gymnasium")
    pytest.importorskip("bullet_safety_gym")
    from control.crowd import CrowdSpec, make_crowd
    from control.offline import load_or_generate
    from control.profiles import get_profile

    profile = get_profile("test", td3_steps=150)
    data = load_or_generate("Circle", profile, root=tmp_path_factory.mktemp("data"), progress=False)
    crowd = make_crowd(data, CrowdSpec(num_annotators=6, pairs_per_annotator=8, segment_length=10))
    return data, crowd, profile


@pytest.fixture(scope="module")
def real_env(tmp_path_factory):
    return _real_env_inputs(tmp_path_factory)


def _actions(policy, data) -> np.ndarray:
    return np.stack([policy(o) for o in data.obs[:20]])


@pytest.mark.parametrize(
    "method",
    [pytest.param(m, marks=pytest.mark.slow) if m in ("oracle", "task-only") else m for m in METHODS],
)
def test_every_method_trains_on_a_real_env_and_acts_in_bounds(real_env, tmp_path, method) -> None:
    data, crowd, profile = real_env
    policy = train_method(method, data, crowd, profile, 0, tmp_path / method, progress=False)
    acts = _actions(policy, data)
    assert acts.shape == (20, data.act_dim) and np.isfinite(acts).all() and (np.abs(acts) <= 1.0 + 1e-6).all()
    log = (tmp_path / method / "train_log.json").read_text()
    assert '"online"' in log or '"high_level_offline"' in log


def test_iql_skills_train_on_a_real_env_apart_from_td3_bc_and_only_for_safe_vpl(real_env, tmp_path) -> None:
    import json

    data, crowd, profile = real_env
    policy = train_method("safe-vpl", data, crowd, profile, 0, tmp_path / "iql", progress=False, skill_learner="iql")
    acts = _actions(policy, data)
    assert np.isfinite(acts).all() and (np.abs(acts) <= 1.0 + 1e-6).all()
    h_iql = json.loads((tmp_path / "iql" / "skills.json").read_text())["config_hash"]
    train_method("safe-vpl", data, crowd, profile, 0, tmp_path / "td3bc", progress=False)
    assert json.loads((tmp_path / "td3bc" / "skills.json").read_text())["config_hash"] != h_iql
    with pytest.raises(ValueError, match="Safe-VPL's"):
        train_method("safe-cpl", data, crowd, profile, 0, tmp_path / "cpl", progress=False, skill_learner="iql")


def test_the_options_high_level_trains_on_a_real_env_is_seeded_and_cached(real_env, tmp_path) -> None:
    import json

    data, crowd, profile = real_env
    run = lambda d, **kw: train_method("safe-vpl", data, crowd, profile, 0, tmp_path / d, progress=False,  # noqa: E731
                                       high_level="options", horizon=7, **kw)
    policy = run("a")
    a = _actions(policy, data)
    assert np.isfinite(a).all() and (np.abs(a) <= 1.0 + 1e-6).all()
    np.testing.assert_array_equal(a, _actions(run("b"), data))
    run("a")
    assert json.loads((tmp_path / "a" / "train_log.json").read_text())["stages"]["online"]["cached"] is True
    with pytest.raises(ValueError, match="online only"):
        run("c", offline=True)
    library = run("d", option_latents="annotators")  # every annotator's posterior mean is a skill
    assert library.values.latents.shape[0] == len(crowd.crowd.annotator_ids) > policy.values.latents.shape[0]
    with pytest.raises(ValueError, match="option_latents must be"):
        run("e", option_latents="all")
    aggregate = run("f", hl_prior="aggregate")  # the choice reads the annotators' mixture, not N(0, I)
    torch.testing.assert_close(aggregate.values.latents, policy.values.latents)
    assert not torch.allclose(aggregate.values.log_prior, policy.values.log_prior)


def test_train_method_is_seeded_and_reuses_finished_stages(real_env, tmp_path) -> None:
    import json

    data, crowd, profile = real_env
    a = _actions(train_method("safe-cpl", data, crowd, profile, 1, tmp_path / "a", progress=False), data)
    b = _actions(train_method("safe-cpl", data, crowd, profile, 1, tmp_path / "b", progress=False), data)
    np.testing.assert_array_equal(a, b)
    again = _actions(train_method("safe-cpl", data, crowd, profile, 1, tmp_path / "a", progress=False), data)
    np.testing.assert_array_equal(a, again)
    assert json.loads((tmp_path / "a" / "train_log.json").read_text())["stages"]["online"]["cached"] is True
    other = _actions(train_method("safe-cpl", data, crowd, profile, 2, tmp_path / "c", progress=False), data)
    assert not np.array_equal(a, other)
    offline = train_method("safe-cpl", data, crowd, profile, 1, tmp_path / "d", progress=False, offline=True)
    assert np.isfinite(_actions(offline, data)).all()
    # high-level variants share one skill fit through skills_dir
    shared = tmp_path / "skills"
    for name, beta in (("e", 0.0), ("f", 1.0)):
        train_method("safe-cpl", data, crowd, profile, 1, tmp_path / name, progress=False, skills_dir=shared, beta_reg=beta)
    stages = [json.loads((tmp_path / n / "train_log.json").read_text())["stages"]["skills"] for n in "ef"]
    assert [s["cached"] for s in stages] == [False, True] and not (tmp_path / "f" / "skills.safetensors").exists()


@pytest.mark.parametrize("method", ["oracle", "rc", "sopl"])
def test_a_baseline_relabels_dtau_with_its_own_training_reward(real_env, tmp_path, method) -> None:
    """The batch relabelling of D_tau (the baselines' share of offline replay) is the per-step reward, row by row."""
    from control.methods import _Run
    from control.methods.online import relabelled

    data, crowd, profile = real_env
    spaces = Spaces.from_data(data)
    run = _Run(method, data, crowd, profile, 0, tmp_path, False, MethodConfig(), spaces)
    reward_fn = run.training_reward()
    batch = relabelled(spaces, data, reward_fn)
    rows = [reward_fn(data.obs[i], data.act[i], data.rew[i], data.cost[i], data.next_obs[i]) for i in range(0, len(data), 7)]
    np.testing.assert_allclose(batch["rew"][::7], np.asarray(rows, np.float32), rtol=1e-5, atol=1e-5)
    if method == "oracle":  # r - K c: the costly steps are exactly the ones pushed below the env reward
        np.testing.assert_array_equal(batch["rew"] < data.rew - 1e-6, data.cost > 0)
    assert batch["obs"].shape == data.obs.shape and batch["terminal"].shape == (len(data),)


@pytest.mark.parametrize("with_dtau", [False, True], ids=["online", "dtau-replay"])
def test_online_training_resumes_from_its_checkpoint(real_env, tmp_path, with_dtau) -> None:
    from control.methods.online import OnlineConfig, relabelled, train_online
    from control.td3 import TD3

    data, _, _ = real_env
    spaces = Spaces.from_data(data)
    cfg = OnlineConfig(steps=450, learning_starts=50, checkpoint_every=200)
    td3 = TD3Config(hidden=(16, 16), batch_size=32)
    reward = lambda o, a, r, c, o2: r - c  # noqa: E731
    offline = relabelled(spaces, data, reward) if with_dtau else None

    def run() -> tuple[dict, TD3]:
        agent = TD3(spaces.obs_dim, spaces.act_dim, td3, seed=0)
        return train_online(
            "Circle", agent, spaces, reward, cfg, seed=0, workdir=tmp_path, config_hash="h", offline=offline
        ), agent

    full, _ = run()
    assert (tmp_path / "online_checkpoint.safetensors").exists()  # written at the episode end at step 400
    resumed, _ = run()  # picks up at step 400 and runs the last 50 steps only
    assert resumed["updates"] == full["updates"] == 450 - 50 + 1
    assert resumed["episodes"][:2] == full["episodes"][:2]
    assert [e["step"] for e in resumed["episodes"]] == [200, 400]


def test_seeded_short_circle_run_safe_cpl_cost_is_well_below_task_only(tmp_path_factory) -> None:
    """The issue's end-to-end check on the fastest env, at a CI budget: same seed, same numbers, and
    Safe-CPL (no cost signal anywhere) far safer than TD3 on the env reward alone."""
    pytest.importorskip("gymnasium")
    pytest.importorskip("bullet_safety_gym")
    from control.crowd import CrowdSpec, make_crowd
    from control.evaluate import evaluate_policy
    from control.offline import load_or_generate
    from control.profiles import get_profile

    profile = get_profile("test", data_episodes=30, vae_steps=400, td3_steps=3000, num_skills=4, latent_dim=4,
                          max_episode_steps=None)  # fmt: skip
    data = load_or_generate("Circle", profile, root=tmp_path_factory.mktemp("data"), progress=False)
    crowd = make_crowd(data, CrowdSpec(num_annotators=30, pairs_per_annotator=24, segment_length=25))
    work = tmp_path_factory.mktemp("runs")

    def run(method: str, name: str) -> list[dict]:
        policy = train_method(method, data, crowd, profile, 0, work / name, progress=False)
        return evaluate_policy("Circle", policy, 3, seed=0)

    task_only, ours = run("task-only", "task-only"), run("safe-cpl", "safe-cpl")
    cost = {k: float(np.mean([e["cost"] for e in v])) for k, v in (("task-only", task_only), ("ours", ours))}
    assert cost["task-only"] > 20 and cost["ours"] < 0.25 * cost["task-only"], cost
    assert run("safe-cpl", "safe-cpl-again") == ours
