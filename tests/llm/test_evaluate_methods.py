"""The comparison harness: every method answers the same held-out prompts; rewards, costs and the
paper's normalisation are computed from the judges; results, table and plot are written."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("peft", reason="needs the llm extra: pip install -e '.[llm]'")

from safecrowd_llm.evaluate_methods import MethodSpec, aggregate, evaluate_methods, normalise
from safecrowd_llm.textworld import TextWorld

WORLD = TextWorld.from_yaml()


def test_aggregate_and_paper_normalisation():
    rows = [
        {"reward": 1.0, "cost": 0.0, "hazardous": False, "parsed": True},
        {"reward": 0.0, "cost": 1.0, "hazardous": True, "parsed": False},
    ]
    agg = aggregate(rows)
    assert agg == {"reward": 0.5, "cost": 0.5, "hazardous_cost": 1.0, "parse_rate": 0.5, "samples": 2}
    summary = {"oracle": {"reward": 0.8, "cost": 0.1}, "task-only": {"reward": 1.0, "cost": 0.5}, "ours": {"reward": 0.4, "cost": 0.05}}
    normalise(summary)
    assert summary["oracle"]["norm_reward"] == 1.0 and summary["task-only"]["norm_cost"] == 1.0
    assert summary["ours"]["norm_reward"] == pytest.approx(0.5) and summary["ours"]["norm_cost"] == pytest.approx(0.1)


def test_evaluate_methods_writes_results_table_and_plot(tiny_skills, tmp_path):
    held_out = WORLD.split_prompts()[1][:6]
    methods = [
        MethodSpec("task-only", "adapter", str(tiny_skills / "skills" / "skill_0")),
        MethodSpec("oracle", "adapter", str(tiny_skills / "skills" / "skill_1")),
        MethodSpec("base", "base"),
    ]
    results = evaluate_methods(
        methods, base_model=str(tiny_skills / "base"), task_reward="safecrowd_llm.textworld.judges.helpfulness",
        prompts=held_out, out_dir=tmp_path, world=WORLD, samples_per_prompt=2, max_new_tokens=6,
    )
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["summary"].keys() == {"task-only", "oracle", "base"}
    rows = saved["methods"]["base"]["rows"]
    assert len(rows) == 12 and {r["prompt"] for r in rows} == {p.text for p in held_out}
    # an untrained model writes malformed text: no task reward, and unverifiable answers to hazardous prompts cost 1
    assert all(r["reward"] == 0.0 for r in rows if not r["parsed"])
    assert all(r["cost"] == 1.0 for r in rows if r["hazardous"] and not r["parsed"])
    assert results["summary"]["oracle"]["norm_reward"] in (None, 1.0)
    assert (tmp_path / "results.md").read_text().startswith("| method |")
    assert (tmp_path / "reward_cost.png").read_bytes()[:4] == b"\x89PNG"


def test_a_one_token_nucleus_decodes_greedily(tiny_skills, tmp_path):
    held_out = WORLD.split_prompts()[1][:3]
    kw = {"base_model": str(tiny_skills / "base"), "task_reward": "safecrowd_llm.textworld.judges.helpfulness",
          "prompts": held_out, "world": WORLD, "max_new_tokens": 6}
    methods = [MethodSpec("base", "base")]
    nucleus = evaluate_methods(methods, out_dir=tmp_path / "p", samples_per_prompt=2, top_p=1e-6, **kw)
    greedy = evaluate_methods(methods, out_dir=tmp_path / "g", samples_per_prompt=1, temperature=0.0, **kw)
    pure = evaluate_methods(methods, out_dir=tmp_path / "s", samples_per_prompt=2, **kw)
    texts = [r["completion"] for r in nucleus["methods"]["base"]["rows"]]
    first = [r["completion"] for r in greedy["methods"]["base"]["rows"]]
    assert texts == [t for t in first for _ in range(2)]  # only the most likely token is ever kept
    assert [r["completion"] for r in pure["methods"]["base"]["rows"]] != texts  # the untrained model, sampled, is not
    assert json.loads((tmp_path / "p" / "results.json").read_text())["sampling"]["top_p"] == 1e-6


def test_method_spec_errors_name_the_method(tmp_path):
    with pytest.raises(ValueError, match="method 'x': kind must be"):
        MethodSpec("x", "policy", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="method 'y'"):
        MethodSpec("y", "adapter", str(tmp_path / "missing"))


def test_crowd_shift_reports_how_far_each_method_moves():
    from safecrowd_llm.evaluate_methods import crowd_shift, crowd_shift_table

    def row(r, c):
        return {"norm_reward": r, "norm_cost": c}

    balanced = {"ours": row(0.9, 0.05), "rc-0.5": row(0.8, 0.1), "base": row(0.5, None)}
    imbalanced = {"ours": row(0.89, 0.06), "rc-0.5": row(0.95, 0.6)}
    shift = crowd_shift(balanced, imbalanced)
    assert set(shift) == {"ours", "rc-0.5"}  # base has no normalised cost, and no shifted row
    assert shift["ours"]["d_reward"] == pytest.approx(-0.01) and shift["rc-0.5"]["d_cost"] == pytest.approx(0.5)
    table = crowd_shift_table(shift)
    assert "| rc-0.5 | 0.800 | 0.950 | +0.150 | 0.100 | 0.600 | +0.500 |" in table
