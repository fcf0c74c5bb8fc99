"""The main job's plan: every stage runs a shipped recipe with its shipped config, finished stages are
skipped, and the evaluation compares ours with every baseline."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import yaml

from safecrowd_llm import pipeline


def test_stages_use_existing_recipes_and_configs(tmp_path):
    todo = pipeline.stages(tmp_path, "quick", None)
    names = [s.name for s in todo]
    assert names[:5] == ["crowd", "base", "skills", "pooled_reward", "router"]
    assert names[-2:] == ["evaluate", "evaluate greedy"]
    assert not [n for n in names if "beta=" in n]  # the quick profile has no time for ours' beta_reg sweep
    full = pipeline.stages(tmp_path, "full", None)
    sweeps = [s for s in full if "beta=" in s.name]
    assert [s.name for s in sweeps] == [f"router{d} beta={b}" for d in ("", " greedy") for b in pipeline.BETAS["full"]]
    for stage in sweeps:  # each reuses its decoding's scored table instead of generating again
        table = stage.command[stage.command.index("--reward_table") + 1]
        assert table == str(tmp_path / ("router_greedy" if "greedy" in stage.name else "router") / "skill_rewards.json")
        assert full.index(stage) > [s.name for s in full].index(stage.name.split(" beta=")[0])
    assert sum(n.startswith("baseline") for n in names) == 2 + len(pipeline.OMEGAS)
    for stage in todo:
        for arg in stage.command:
            if arg.endswith((".py", ".yaml")) and "recipes" in arg:
                assert Path(arg).exists(), f"{stage.name}: {arg} missing"
    skills = next(s for s in todo if s.name == "skills")
    assert str(tmp_path / "base") in skills.command and "--max_steps" in skills.command  # quick profile override
    full = next(s for s in pipeline.stages(tmp_path, "full", None) if s.name == "skills")
    for stage in (skills, full):  # both profiles train the recipe's objective; quick only trains it for fewer steps
        assert not {"--regret_positions", "--lam", "--support_coef", "--alpha"} & set(stage.command)
    assert "--max_steps" not in full.command


def test_related_systems_are_opt_in_stages_and_evaluated(tmp_path):
    plain = [s.name for s in pipeline.stages(tmp_path, "quick", None)]
    todo = pipeline.stages(tmp_path, "quick", None, related=True)
    added = [s for s in todo if s.name not in plain]
    assert [s.name for s in added] == ["vpl_skills", *(f"related {n}" for n in pipeline.RELATED)]
    assert todo[-1].name == "evaluate greedy"
    for stage in added:
        assert all(Path(a).exists() for a in stage.command if a.endswith((".py", ".yaml")) and "recipes" in a)
        assert str(tmp_path / "world" / "crowd.jsonl") in stage.command or "--vpl_model" in stage.command
    cfg = yaml.safe_load(pipeline.write_evaluate_config(tmp_path, related=True).read_text())
    assert {"psoups", "maxmin", "safe-rlhf", "plain-vpl"} <= {m["name"] for m in cfg["methods"]}


def test_imbalanced_crowd_and_evaluation_config(tmp_path):
    crowd = pipeline.stages(tmp_path, "full", "10:1")[0]
    assert crowd.command[-2:] == ["--proportions", "thorough=10,breezy=1"]
    cfg = yaml.safe_load(pipeline.write_evaluate_config(tmp_path, betas=pipeline.BETAS["full"]).read_text())
    names = [m["name"] for m in cfg["methods"]]
    assert [m["param"] for m in cfg["methods"] if m.get("group") == "RC(omega)"] == list(pipeline.OMEGAS)
    greedy = yaml.safe_load((tmp_path / "evaluate_greedy.yaml").read_text())
    assert greedy["temperature"] == 0 and greedy["samples_per_prompt"] == 1
    assert greedy["out_dir"] != cfg["out_dir"] and [m["name"] for m in greedy["methods"]] == names
    assert {"ours", "task-only", "oracle", "base", "ours-beta-0.2"} <= set(names)
    paths = {m["name"]: m.get("path") for m in greedy["methods"]}
    assert paths["ours"] == str(tmp_path / "router_greedy") and paths["oracle"] == str(tmp_path / "baselines" / "oracle")
    for config, suffix in ((cfg, ""), (greedy, "_greedy")):  # ours' beta_reg sweep: one curve in the plot
        sweep = [m for m in config["methods"] if m.get("group") == "ours(beta_reg)"]
        beta = yaml.safe_load((pipeline.RECIPES / "textworld_router.yaml").read_text())["beta_reg"]
        assert sorted(m["param"] for m in sweep) == sorted([beta, *pipeline.BETAS["full"]])
        assert {m["path"] for m in sweep} >= {str(tmp_path / f"router{suffix}_beta{b}") for b in pipeline.BETAS["full"]}
    router = next(s for s in pipeline.stages(tmp_path, "quick", None) if s.name == "router greedy")
    assert router.command[router.command.index("--temperature") + 1] == "0"


def test_nucleus_decoding_gets_its_own_router_and_evaluation(tmp_path):
    todo = {s.name: s for s in pipeline.stages(tmp_path, "quick", None, top_p=0.95)}
    router = todo["router top p0.95"]
    assert router.command[router.command.index("--top_p") + 1] == "0.95"
    assert router.command[router.command.index("--samples_per_prompt") + 1] == "2"  # the profile's flags stay
    assert router.done == tmp_path / "router_top_p0.95" / "router.json" and "router" not in todo
    assert "--top_p" not in todo["router greedy"].command
    assert todo["evaluate"].done == tmp_path / "eval_top_p0.95" / "results.md"
    cfg = yaml.safe_load(pipeline.write_evaluate_config(tmp_path, top_p=0.95).read_text())
    assert cfg["top_p"] == 0.95 and cfg["out_dir"] == str(tmp_path / "eval_top_p0.95")
    assert next(m for m in cfg["methods"] if m["name"] == "ours")["path"] == str(tmp_path / "router_top_p0.95")
    greedy = yaml.safe_load((tmp_path / "evaluate_greedy.yaml").read_text())
    assert greedy["top_p"] == 1.0
    with pytest.raises(SystemExit, match="top_p"):
        pipeline.stages(tmp_path, "quick", None, top_p=0.0)


def test_finished_stages_are_skipped(tmp_path, monkeypatch, capsys):
    calls = []

    class Done:  # a finished subprocess
        def __init__(self, cmd, **kwargs):
            calls.append(cmd)
            self.returncode = 0

        def poll(self):
            return 0

    monkeypatch.setattr(pipeline.subprocess, "Popen", Done)
    for stage in pipeline.stages(tmp_path, "quick", None):
        if stage.name != "router":
            stage.done.parent.mkdir(parents=True, exist_ok=True)
            stage.done.write_text("done")
    pipeline.main(["--out", str(tmp_path), "--jobs", "1"])
    assert len(calls) == 1 and "train_router.py" in calls[0][1]
    assert "done already" in capsys.readouterr().out


@pytest.mark.parametrize("profile,related,task", [("quick", False, "helpfulness"), ("full", True, "concise")])
def test_each_stage_needs_the_stages_whose_outputs_it_reads(tmp_path, profile, related, task):
    todo = pipeline.stages(tmp_path, profile, None, related=related, task=task)
    names = [s.name for s in todo]
    for i, stage in enumerate(todo):
        assert set(stage.needs) <= set(names[:i]), stage.name  # listed, and earlier: the plan is a valid order
        for need in todo:  # a stage that reads another's output directory waits for it
            home = need.done.parent.parent if need.done.parent.name == "skills" else need.done.parent
            if any(a == str(home) or a.startswith(str(home) + "/") for a in stage.command[2:]) and need is not stage:
                assert need.name in stage.needs or need.name in _needs_of(todo, stage), (stage.name, need.name)
    needs = {s.name: set(s.needs) for s in todo}
    assert needs["skills"] == needs["pooled_reward"] == {"crowd", "base"}
    assert "skills" not in needs["baseline oracle"] and "pooled_reward" in needs["baseline rc_0.5"]
    assert needs["evaluate"] == needs["evaluate greedy"] == set(names[:-2])


def _needs_of(todo, stage):
    """Every stage ``stage`` waits for, directly or through others."""
    by_name, seen, stack = {s.name: s for s in todo}, set(), list(stage.needs)
    while stack:
        name = stack.pop()
        if name not in seen:
            seen.add(name)
            stack += by_name[name].needs
    return seen


def _stage(tmp_path, name, code, needs=()):
    """A stage running ``code`` in Python that logs its start and end times to ``name``.times."""
    done, times = tmp_path / f"{name}.done", tmp_path / f"{name}.times"
    script = (f"import time, pathlib; t = time.time(); {code}; "
              f"pathlib.Path({str(times)!r}).write_text(f'{{t}} {{time.time()}}'); pathlib.Path({str(done)!r}).write_text('ok')")
    return pipeline.Stage(name, [sys.executable, "-c", script], done, tuple(needs))


def _span(tmp_path, name):
    return [float(x) for x in (tmp_path / f"{name}.times").read_text().split()]


def test_independent_stages_run_side_by_side_and_dependents_wait(tmp_path, capsys):
    todo = [_stage(tmp_path, "slow", "time.sleep(1.0)"), _stage(tmp_path, "other", "time.sleep(1.0)"),
            _stage(tmp_path, "after", "print('hello', 'from', 'after')", needs=["slow"])]
    pipeline.run_stages(todo, 2, dict(os.environ), tmp_path / "logs")
    slow, other, after = (_span(tmp_path, n) for n in ("slow", "other", "after"))
    assert other[0] < slow[1] and slow[0] < other[1]  # overlapped
    assert after[0] >= slow[1]  # waited for what it reads
    assert "hello from after" in (tmp_path / "logs" / "after.log").read_text()  # each stage's output in its own log
    assert "hello from after" not in capsys.readouterr().out


def test_a_failed_stage_stops_its_dependents_but_keeps_what_finished(tmp_path):
    todo = [_stage(tmp_path, "broken", "raise SystemExit('bad config in broken')"),
            _stage(tmp_path, "fine", "time.sleep(0.5)"), _stage(tmp_path, "later", "pass", needs=["broken"])]
    with pytest.raises(SystemExit, match=r"'broken' \(exit 1; log: .*broken.log\)"):
        pipeline.run_stages(todo, 2, dict(os.environ), tmp_path / "logs")
    assert (tmp_path / "fine.done").exists() and not (tmp_path / "later.done").exists()
    assert "bad config in broken" in (tmp_path / "logs" / "broken.log").read_text()
    cycle = [_stage(tmp_path, "a", "pass", needs=["b"]), _stage(tmp_path, "b", "pass", needs=["a"])]
    with pytest.raises(SystemExit, match=r"can never start: a \(needs b\), b \(needs a\)"):
        pipeline.run_stages(cycle, 2, dict(os.environ), tmp_path / "logs")


def test_another_task_reuses_the_skills_and_trains_its_own_router_and_baselines(tmp_path):
    default = {s.name: s for s in pipeline.stages(tmp_path, "full", None)}
    todo = {s.name: s for s in pipeline.stages(tmp_path, "full", None, task="concise")}
    assert todo.keys() == default.keys()
    home = tmp_path / "tasks" / "concise"
    for name in ("crowd", "base", "skills", "pooled_reward"):  # task-free: shared with the default task's run
        assert todo[name].command == default[name].command
    for name, stage in todo.items():
        if name.startswith(("router", "baseline", "evaluate")):
            assert str(stage.done).startswith(str(home)), name
        if name.startswith(("router", "baseline")):
            assert stage.command[stage.command.index("--task_reward") + 1].endswith(".concise"), name
    cfg = yaml.safe_load(pipeline.write_evaluate_config(tmp_path, task="concise").read_text())
    assert cfg["task_reward"].endswith(".concise") and cfg["out_dir"] == str(home / "eval")
    assert cfg["base_model"] == str(tmp_path / "base")
    with pytest.raises(SystemExit, match="unknown task"):
        pipeline.stages(tmp_path, "full", None, task="poetry")


def test_jobs_must_be_positive():
    with pytest.raises(SystemExit):
        pipeline.parse_args(["--jobs", "0"])
    assert pipeline.parse_args([]).jobs >= 1
