"""Benchmark CLI with a stand-in ``train_method``: resumability, normalisation, summary, report files."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gymnasium")
pytest.importorskip("bullet_safety_gym")
pytest.importorskip("matplotlib")
if importlib.util.find_spec("safety_gymnasium") is None:
    pytest.skip("control extras not installed: pip install -e '.[control]' && pip install --no-deps -r control/requirements-nodeps.txt", allow_module_level=True)

import torch

from control import benchmark
from control.evaluate import evaluate_policy

torch.set_num_threads(1)
# SafetyCarRun: negative throttle drives towards +x; full throttle is above the 1.5 m/s limit (cost)
THROTTLE = {"oracle": -0.3, "task-only": -1.0, "rc": -0.5, "sopl": -0.35, "safe-vpl": -0.3, "safe-cpl": -0.3}


class FakeTrainer:
    """Records its calls; returns constant-throttle policies (RC's throttle moves with omega)."""

    def __init__(self, fail: str | None = None, throttle: dict[str, float] | None = None) -> None:
        self.calls: list[tuple[str, int, dict]] = []
        self.fail = fail
        self.throttle = throttle or THROTTLE

    def __call__(self, method, data, crowd, profile, seed, workdir, progress=True, **options):
        assert len(data) > 0 and crowd.labels.shape[0] == crowd.pairs.shape[0]
        self.calls.append((method, seed, options))
        if method == self.fail:
            raise RuntimeError("boom")
        throttle = -0.2 - 0.8 * options["omega"] if "omega" in options else self.throttle[method]
        return lambda obs: np.array([throttle, 0.0], dtype=np.float32)


def _run(tmp: Path, trainer: FakeTrainer, monkeypatch, *extra: str) -> int:
    monkeypatch.setattr(benchmark, "train_method", trainer)
    args = ["--envs", "Run", "--methods", "oracle", "task-only", "rc", "--seeds", "0", "1", "--profile", "test",
            "--out", str(tmp / "bench"), "--data-root", str(tmp / "data"), "--no-progress", *extra]  # fmt: skip
    return benchmark.main(args)


def test_help_lists_the_ablation_flags(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        benchmark.main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for flag in (
        "--omegas",
        "--beta-regs",
        "--flip-prob",
        "--num-annotators",
        "--crowd",
        "--profile",
        "--out",
        "--skill-learner",
    ):
        assert flag in text


def test_plan_expands_sweeps() -> None:
    runs = benchmark.plan_runs(
        ["oracle", "rc", "safe-vpl"], omegas=[0.2, 0.8], beta_regs=[0.0, 1.0], offline=True
    )
    assert [r.key for r in runs] == ["oracle", "rc_omega0.2", "rc_omega0.8", "safe-vpl_beta_reg0_offline",
                                     "safe-vpl_beta_reg1_offline"]  # fmt: skip
    assert runs[1].label == "RC(ω=0.2)" and benchmark.RunSpec("rc").label == "RC(ω=0.5)"


def test_another_skill_learner_gets_its_own_skills() -> None:
    """--skill-learner iql is Safe-VPL's: its runs and skill fits sit apart from TD3+BC's (same env and seed)."""
    runs = benchmark.plan_runs(["safe-vpl", "safe-cpl"], high_level="options", skill_learner="iql")
    assert [r.key for r in runs] == ["safe-vpl_high_leveloptions_skill_learneriql", "safe-cpl_high_leveloptions"]
    dirs = {benchmark._skills_dir(Path("out"), "E", r, 0) for r in [*runs, benchmark.RunSpec("safe-vpl")]}
    assert dirs == {Path("out/E/safe-vpl-skills_skill_learneriql/seed0"), Path("out/E/safe-cpl-skills/seed0"),
                    Path("out/E/safe-vpl-skills/seed0")}  # fmt: skip


def test_benchmark_runs_normalises_and_resumes(tmp_path: Path, monkeypatch) -> None:
    trainer = FakeTrainer()
    assert _run(tmp_path, trainer, monkeypatch, "--omegas", "0.1", "0.9") == 0
    assert len(trainer.calls) == 2 * 4  # seeds x (oracle, task-only, rc x 2)
    out = tmp_path / "bench"
    res = json.loads((out / "SafetyCarRun-v0" / "rc_omega0.9" / "seed1" / "results.json").read_text())
    assert res["seed"] == 1 and res["options"] == {"omega": 0.9} and len(res["episodes"]) == 2
    assert {"reward", "cost", "length"} <= set(res["episodes"][0]) and res["versions"]["gymnasium"]
    assert res["config"]["crowd"]["num_annotators"] == 6  # the test profile's tiny crowd
    assert res["config"]["dtau_replay"] == 0.5 and ("rc", 1, {"omega": 0.9, "dtau_replay": 0.5}) in trainer.calls
    assert res["normalised"]["cost"] is not None and len(res["normalised"]["episodes"]) == 2

    summary = json.loads((out / "summary.json").read_text())["SafetyCarRun-v0"]
    assert summary["oracle"]["reward"] == pytest.approx(1.0) and summary["oracle"][
        "reward_std"
    ] == pytest.approx(0.0)
    assert summary["task-only"]["cost"] == pytest.approx(1.0)
    assert summary["task-only"]["reward"] > 1.0 and summary["oracle"]["cost"] < 1.0  # faster, costlier
    assert summary["rc_omega0.9"]["cost"] > summary["rc_omega0.1"]["cost"]
    assert summary["oracle"]["seeds"] == [0, 1]
    assert summary["task-only"]["dsrl_cost"] == pytest.approx(summary["task-only"]["raw_cost"] / 10.0)
    # normalisation by hand for one run: mean reward / Oracle's mean reward of the same seed
    oracle0 = json.loads((out / "SafetyCarRun-v0" / "oracle" / "seed0" / "results.json").read_text())
    rc0 = json.loads((out / "SafetyCarRun-v0" / "rc_omega0.1" / "seed0" / "results.json").read_text())
    assert rc0["normalised"]["reward"] == pytest.approx(rc0["mean_reward"] / oracle0["mean_reward"])

    md = (out / "RESULTS.md").read_text()
    assert "| SafetyCarRun-v0 |" in md and "Oracle" in md and "RC(ω=0.9)" in md and "**Average**" in md
    assert (out / "reward_cost.png").stat().st_size > 1000
    # D_tau's ceiling: its best cost-free episode, raw and relative to the Oracle
    ceiling = json.loads((out / "SafetyCarRun-v0" / "dtau.json").read_text())
    assert ceiling["best_return"] >= ceiling["best_safe_return"] > 0 and 0 < ceiling["safe_episode_fraction"] <= 1
    ratio = ceiling["best_safe_return"] / summary["oracle"]["raw_reward"]
    assert f"- SafetyCarRun-v0: {ceiling['best_safe_return']:.1f} ({ratio:.2f})" in md

    # resume: everything finished -> nothing retrained; one results.json removed -> only that run
    again = FakeTrainer()
    assert _run(tmp_path, again, monkeypatch, "--omegas", "0.1", "0.9") == 0
    assert again.calls == []
    (out / "SafetyCarRun-v0" / "task-only" / "seed1" / "results.json").unlink()
    assert _run(tmp_path, again, monkeypatch, "--omegas", "0.1", "0.9") == 0
    assert again.calls == [("task-only", 1, {"dtau_replay": 0.5})]  # the baselines' default share of D_tau


def test_changed_config_is_refused_and_failures_are_reported(tmp_path: Path, monkeypatch) -> None:
    assert _run(tmp_path, FakeTrainer(fail="rc"), monkeypatch) == 1  # rc failed, the rest finished
    out = tmp_path / "bench" / "SafetyCarRun-v0"
    assert (out / "oracle" / "seed1" / "results.json").exists() and not (out / "rc" / "seed0").exists()
    with pytest.raises(RuntimeError, match="another configuration"):
        _run(tmp_path, FakeTrainer(), monkeypatch, "--flip-prob", "0.3", "--fail-fast")
    with pytest.raises(RuntimeError, match="another configuration"):  # purely online baselines: another --out
        _run(tmp_path, FakeTrainer(), monkeypatch, "--dtau-replay", "0", "--fail-fast")


def test_goal_overrides_are_part_of_a_runs_config_and_their_absence_is_not() -> None:
    from control.crowd import CrowdSpec

    plain = benchmark.crowd_config(CrowdSpec())
    assert "goals" not in plain and "source" not in plain  # runs made before goal overrides keep their hash
    over = benchmark.crowd_config(CrowdSpec(goals={"Circle": {"tight": {"speed": [0.8, 6.0]}}}))
    assert over["goals"] == {"Circle": {"tight": {"speed": [0.8, 6.0]}}}
    assert {k: v for k, v in over.items() if k != "goals"} == plain


def test_evaluate_policy_is_deterministic_and_checks_shapes() -> None:
    policy = lambda obs: np.array([-1.0, 0.1], dtype=np.float32)  # noqa: E731
    a = evaluate_policy("Run", policy, episodes=2, seed=0, max_steps=40)
    b = evaluate_policy("Run", policy, episodes=2, seed=0, max_steps=40)
    assert a == b and a[0]["length"] == 40 and a[0]["cost"] > 0
    with pytest.raises(ValueError, match="action of shape"):
        evaluate_policy("Run", lambda obs: np.zeros(3), episodes=1, seed=0, max_steps=5)


def test_parallel_workers_give_the_same_results_as_one_process(tmp_path: Path, monkeypatch) -> None:
    """--workers trains runs in spawned processes (real methods, test profile): same numbers as serially."""
    common = ["--envs", "Circle", "--methods", "task-only", "safe-cpl", "--seeds", "0", "--profile", "test",
              "--data-root", str(tmp_path / "data"), "--no-progress"]  # fmt: skip
    assert benchmark.main([*common, "--out", str(tmp_path / "serial")]) == 0
    assert benchmark.main([*common, "--out", str(tmp_path / "parallel"), "--workers", "2"]) == 0
    for method in ("task-only", "safe-cpl"):
        a, b = (json.loads((tmp_path / d / "SafetyBallCircle-v0" / method / "seed0" / "results.json").read_text())
                for d in ("serial", "parallel"))  # fmt: skip
        assert a["episodes"] == b["episodes"] and a["config_hash"] == b["config_hash"]
    # every skill is also evaluated alone, once per skill fit, and listed in the report
    a, b = (json.loads((tmp_path / d / "SafetyBallCircle-v0" / "safe-cpl-skills" / "seed0" / "skills_eval.json")
                       .read_text()) for d in ("serial", "parallel"))  # fmt: skip
    assert a["skills"] == b["skills"] and len(a["skills"]) == 2  # the test profile's K
    for row in a["skills"]:
        assert len(row["episodes"]) == 2 and sum(row["types"].values()) == row["annotators"] >= 1
        assert row["mean_cost"] == pytest.approx(np.mean([e["cost"] for e in row["episodes"]]))
    assert "Each skill alone" in (tmp_path / "serial" / "RESULTS.md").read_text()

    def no_eval(*args, **kwargs):
        raise AssertionError("re-evaluated although nothing changed")

    monkeypatch.setattr("control.evaluate.evaluate_policy", no_eval)
    assert benchmark.main([*common, "--out", str(tmp_path / "serial")]) == 0
    with pytest.raises(SystemExit, match="--workers"):
        benchmark.main([*common, "--out", str(tmp_path / "x"), "--workers", "0"])


def test_crowd_shift_reports_how_far_each_method_moves(tmp_path: Path, monkeypatch, capsys) -> None:
    from control import report

    assert _run(tmp_path, FakeTrainer(), monkeypatch) == 0
    shifted = FakeTrainer(throttle=dict(THROTTLE, rc=-0.9))  # RC follows the majority: faster and costlier
    monkeypatch.setattr(benchmark, "train_method", shifted)
    args = ["--envs", "Run", "--methods", "oracle", "task-only", "rc", "--seeds", "0", "--profile", "test",
            "--crowd", "control/crowds/imbalanced_10to1.yaml", "--out", str(tmp_path / "shifted"),
            "--data-root", str(tmp_path / "data"), "--no-progress"]  # fmt: skip
    assert benchmark.main(args) == 0
    report.main([str(tmp_path / "bench"), "--shift", str(tmp_path / "shifted")])
    shift = json.loads((tmp_path / "shifted" / "crowd_shift.json").read_text())["SafetyCarRun-v0"]
    seed0 = {"SafetyCarRun-v0": {"rc": {0}}}  # seed 1 is not in the shifted runs
    base0 = report.summarise(tmp_path / "bench", False, seed0)["SafetyCarRun-v0"]
    assert shift["rc"]["reward"] == pytest.approx(base0["rc"]["reward"])
    assert shift["oracle"]["d_reward"] == pytest.approx(0.0) and shift["task-only"]["d_cost"] == pytest.approx(0.0)
    assert shift["rc"]["d_cost"] > 0.1 and shift["rc"]["d_reward"] > 0
    assert shift["rc"]["shifted_cost"] == pytest.approx(shift["rc"]["cost"] + shift["rc"]["d_cost"])
    assert "Δ cost" in (tmp_path / "shifted" / "crowd_shift.md").read_text() and "RC(ω=0.5)" in capsys.readouterr().out


def test_merging_a_rerun_anchor_renormalises_the_rows_it_did_not_rerun() -> None:
    from control.report import merge_env

    def entry(method: str, reward: float, cost: float, seeds=(0,)) -> dict:
        return {"raw_reward": reward, "raw_cost": cost, "seeds": list(seeds), "reward": None, "cost": None,
                "reward_std": 0.0, "cost_std": 0.0, "label": method, "method": method, "options": {}}

    env = "SafetyHopperVelocity-v1"
    table = {env: {"oracle": entry("oracle", 400.0, 0.0), "task-only": entry("task-only", 200.0, 80.0),
                   "safe-vpl": entry("safe-vpl", 1000.0, 0.0)},
             "Other": {"oracle": entry("oracle", 1.0, 0.0)}}
    rerun = {env: {"oracle": entry("oracle", 1000.0, 0.0), "task-only": entry("task-only", 250.0, 40.0)}}
    merged = merge_env(table, rerun, env)
    assert merged[env]["safe-vpl"]["reward"] == pytest.approx(1.0)  # was 2.5 against the old Oracle
    assert merged[env]["task-only"]["reward"] == pytest.approx(0.25) and merged[env]["task-only"]["cost"] == 1.0
    assert merged["Other"] == table["Other"] and table[env]["safe-vpl"]["reward"] is None  # inputs untouched
    with pytest.raises(ValueError, match="one seed"):
        merge_env(table, {env: {"rc": entry("rc", 1.0, 1.0, seeds=(0, 1))}}, env)


def test_a_refused_merge_copies_nothing(tmp_path: Path) -> None:
    from control.report import _merge_dirs

    env, src, table = "SafetyBallReach-v0", tmp_path / "bench", tmp_path / "table"
    (src / env / "rc" / "seed1").mkdir(parents=True)
    (src / env / "rc" / "seed1" / "results.json").write_text("{}")
    entry = {"raw_reward": 1.0, "raw_cost": 1.0, "seeds": [0, 1], "reward": None, "cost": None}
    (src / "summary.json").write_text(json.dumps({env: {"rc": entry}}))
    with pytest.raises(ValueError, match="one seed"):
        _merge_dirs(table, src, env, "")
    assert not (table / env).exists()
