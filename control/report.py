"""Benchmark summary: normalise every run, write ``summary.json``, ``RESULTS.md`` and a reward-vs-cost plot.

Reads ``DIR/<env>/<method_key>/seed<k>/results.json`` (see :mod:`control.benchmark`). Per env and seed
a run's mean episode reward is divided by Oracle's and its mean cost by Task-only's (same env, same
seed); ratios are then averaged over the seeds that have both the run and its anchors. The paper's
normalised numbers are also written back into each ``results.json`` (``"normalised"``).

``summary.json``: ``{env: {method_key: {"reward", "reward_std", "cost", "cost_std", "seeds",
"dsrl_cost", "dsrl_cost_std", "raw_reward", "raw_cost", "label", "method", "options"}}}``.

    python -m control.report DIR                         # rewrite DIR's summary, table and plot
    python -m control.report BALANCED --shift IMBALANCED   # how far each method moves with the crowd
    python -m control.report TABLE --merge DIR --env ENV   # bring ENV's runs of DIR into a combined table
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from control.evaluate import mean_std, ratio

__all__ = [
    "collect_runs", "crowd_shift", "merge_env", "plot_reward_cost", "summarise", "write_markdown", "write_report",
]

ORACLE, TASK_ONLY = "oracle", "task-only"
_ORDER = ("oracle", "task-only", "sopl", "rc", "safe-vpl", "safe-cpl")


def collect_runs(out: str | Path) -> dict[str, dict[str, dict[int, dict[str, Any]]]]:
    """``{env: {method_key: {seed: results}}}`` for every finished run under ``out``."""
    runs: dict[str, dict[str, dict[int, dict[str, Any]]]] = {}
    for path in sorted(Path(out).glob("*/*/seed*/results.json")):
        try:
            res = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from None
        res["_path"] = str(path)
        runs.setdefault(res["env"], {}).setdefault(res["method_key"], {})[int(res["seed"])] = res
    return runs


def _finite(x: float) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def summarise(
    out: str | Path, rewrite_results: bool = True, only: dict[str, dict[str, set[int]]] | None = None
) -> dict[str, dict[str, dict[str, Any]]]:
    """Normalise every run (and write the numbers back into its results.json); return the summary.

    ``only[env][method_key]`` restricts a method's runs to those seeds (e.g. the ones two crowds have in
    common); the anchors (Oracle, Task-only) keep all their seeds."""
    from safecrowd_llm.core.atomic import write_json

    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for env, methods in collect_runs(out).items():
        if only is not None:
            keep = only.get(env, {})
            methods = {k: ({s: r for s, r in runs.items() if s in keep.get(k, set())} if k not in (ORACLE, TASK_ONLY)
                           else runs) for k, runs in methods.items()}  # fmt: skip
            methods = {k: runs for k, runs in methods.items() if runs}
        anchors = {
            seed: (methods.get(ORACLE, {}).get(seed), methods.get(TASK_ONLY, {}).get(seed))
            for seed in {s for runs in methods.values() for s in runs}
        }
        summary[env] = {}
        for key in sorted(methods, key=_sort_key):
            rew_ratios, cost_ratios, dsrl, raw_r, raw_c, seeds = [], [], [], [], [], []
            for seed, res in sorted(methods[key].items()):
                oracle, task = anchors[seed]
                r_norm = ratio(res["mean_reward"], oracle["mean_reward"]) if oracle else float("nan")
                c_norm = ratio(res["mean_cost"], task["mean_cost"]) if task else float("nan")
                rew_ratios.append(r_norm)
                cost_ratios.append(c_norm)
                dsrl.append(res["dsrl_cost"] if res.get("dsrl_cost") is not None else float("nan"))
                raw_r.append(res["mean_reward"])
                raw_c.append(res["mean_cost"])
                seeds.append(seed)
                if rewrite_results:
                    norm = {
                        "reward": _finite(r_norm),
                        "cost": _finite(c_norm),
                        "oracle_mean_reward": oracle["mean_reward"] if oracle else None,
                        "task_only_mean_cost": task["mean_cost"] if task else None,
                        "episodes": [
                            {"reward": _finite(ratio(e["reward"], oracle["mean_reward"])) if oracle else None,
                             "cost": _finite(ratio(e["cost"], task["mean_cost"])) if task else None}
                            for e in res["episodes"]
                        ],
                    }  # fmt: skip
                    if res.get("normalised") != norm:
                        path = res.pop("_path")
                        res["normalised"] = norm
                        write_json(res, path)
            (rm, rs), (cm, cs), (dm, ds) = mean_std(rew_ratios), mean_std(cost_ratios), mean_std(dsrl)
            first = next(iter(methods[key].values()))
            summary[env][key] = {
                "reward": _finite(rm), "reward_std": _finite(rs),
                "cost": _finite(cm), "cost_std": _finite(cs),
                "seeds": seeds,
                "dsrl_cost": _finite(dm), "dsrl_cost_std": _finite(ds),
                "raw_reward": float(np.mean(raw_r)), "raw_cost": float(np.mean(raw_c)),
                "label": first.get("label", key), "method": first.get("method", key),
                "options": first.get("options", {}),
            }  # fmt: skip
    return summary


def _sort_key(key: str) -> tuple[int, str]:
    base = key.split("_")[0]
    return (_ORDER.index(base) if base in _ORDER else len(_ORDER), key)


def _cell(entry: dict[str, Any] | None, metric: str) -> str:
    if entry is None or entry.get(metric) is None:
        return "–"
    std = entry.get(f"{metric}_std")
    return f"{entry[metric]:.2f}" + (f"±{std:.2f}" if std else "")


def write_markdown(summary: dict[str, dict[str, dict[str, Any]]], path: str | Path, title: str = "") -> str:
    """The paper's layout: one row per env (+ Average), one column per method, cells "reward / cost"."""
    from safecrowd_llm.core.atomic import write_text

    if not summary:
        text = f"# {title or 'Control benchmark'}\n\nNo finished runs yet.\n"
        write_text(text, path)
        return text
    keys = sorted({k for methods in summary.values() for k in methods}, key=_sort_key)
    labels = {k: next(m[k]["label"] for m in summary.values() if k in m) for k in keys}
    lines = [f"# {title or 'Control benchmark'}", ""]
    lines += [
        "Reward normalised to Oracle's mean = 1 and cost to Task-only's mean = 1 (per env and seed, then "
        "mean±std over seeds). Cells: reward / cost.", "",
        "| Env | " + " | ".join(labels[k] for k in keys) + " |",
        "|---|" + "---|" * len(keys),
    ]  # fmt: skip
    for env, methods in summary.items():
        cells = [f"{_cell(methods.get(k), 'reward')} / {_cell(methods.get(k), 'cost')}" for k in keys]
        lines.append(f"| {env} | " + " | ".join(cells) + " |")
    avg = []
    for k in keys:
        r = [m[k]["reward"] for m in summary.values() if k in m and m[k]["reward"] is not None]
        c = [m[k]["cost"] for m in summary.values() if k in m and m[k]["cost"] is not None]
        avg.append(f"{np.mean(r):.2f} / {np.mean(c):.2f}" if r and c else "–")
    lines += ["| **Average** | " + " | ".join(avg) + " |", ""]
    lines += [
        "DSRL normalised cost (episode cost / cost threshold) and raw means (reward, cost):", "",
        "| Env | " + " | ".join(labels[k] for k in keys) + " |",
        "|---|" + "---|" * len(keys),
    ]  # fmt: skip
    for env, methods in summary.items():
        cells = [
            f"{_cell(methods[k], 'dsrl_cost')} ({methods[k]['raw_reward']:.1f}, {methods[k]['raw_cost']:.1f})"
            if k in methods else "–"
            for k in keys
        ]  # fmt: skip
        lines.append(f"| {env} | " + " | ".join(cells) + " |")
    seeds = sorted({s for m in summary.values() for e in m.values() for s in e["seeds"]})
    lines += [
        "",
        f"Seeds: {seeds}. Missing anchors (Oracle / Task-only) or zero Task-only cost show as –.",
        "",
    ]
    ceilings = _ceilings(Path(path).parent, summary)
    if ceilings:
        lines += [
            "D_tau's best cost-free behaviour episode (raw return, and / Oracle's mean reward): skills learned "
            "offline from D_tau can hardly beat it, so ours is data-limited where it is well below 1.", "",
        ]  # fmt: skip
        lines += [f"- {env}: {raw:.1f}" + (f" ({norm:.2f})" if norm is not None else "") for env, raw, norm in ceilings]
        lines.append("")
    lines += _skill_lines(Path(path).parent, summary)
    text = "\n".join(lines)
    write_text(text, path)
    return text


def _skill_lines(out: Path, summary: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """A table of every skill evaluated alone (``<env>/<method>-skills[_<option>]/seed<k>/skills_eval.json``)."""
    rows = []
    for env, methods in summary.items():
        oracle = methods.get(ORACLE, {}).get("raw_reward")
        task = methods.get(TASK_ONLY, {}).get("raw_cost")
        for path in sorted((out / env).glob("*-skills*/seed*/skills_eval.json")):
            ev = json.loads(path.read_text())
            for sk in ev["skills"]:
                r, c = sk["mean_reward"], sk["mean_cost"]
                norm = f"{r / oracle:.2f}" if oracle else "–"
                norm += f" / {c / task:.2f}" if task else " / –"
                types = ", ".join(f"{t} {n}" for t, n in sk["types"].items())
                fit = path.parent.parent.name.replace("-skills", "")  # the method, and a skill option if any
                rows.append(f"| {env} | {fit} | {ev['seed']} | {sk['skill']} | {types} | {norm} | {r:.1f}, {c:.1f} |")
    if not rows:
        return []
    return [
        "Each skill alone (its latent fixed, no high level), normalised by the env's Oracle / Task-only means: "
        "the method's claim is that every skill is safe whatever its annotators wanted.", "",
        "| Env | Method | Seed | Skill | Annotators it covers | reward / cost | raw reward, cost |",
        "|---|---|---|---|---|---|---|", *rows, "",
    ]  # fmt: skip


def _ceilings(out: Path, summary: dict[str, dict[str, dict[str, Any]]]) -> list[tuple[str, float, float | None]]:
    """``(env, best cost-free D_tau return, that / Oracle's mean reward)`` from ``out/<env>/dtau.json``."""
    rows = []
    for env, methods in summary.items():
        path = out / env / "dtau.json"
        best = json.loads(path.read_text()).get("best_safe_return") if path.exists() else None
        if best is not None:
            oracle = methods.get(ORACLE, {}).get("raw_reward")
            rows.append((env, best, _finite(ratio(best, oracle)) if oracle else None))
    return rows


def plot_reward_cost(summary: dict[str, dict[str, dict[str, Any]]], path: str | Path) -> None:
    """One panel per env: normalised cost (x) vs reward (y) with seed std bars; RC's omega sweep and our
    beta_reg sweeps are drawn as lines (Pareto curves)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from safecrowd_llm.core.atomic import atomic_path

    envs = list(summary)
    fig, axes = plt.subplots(1, max(1, len(envs)), figsize=(4.2 * max(1, len(envs)), 3.8), squeeze=False)
    for ax, env in zip(axes[0], envs, strict=False):
        groups: dict[str, list[tuple[float, float, float, float, str]]] = {}
        for e in summary[env].values():
            if e["reward"] is None or e["cost"] is None:
                continue
            point = (e["cost"], e["reward"], e["cost_std"] or 0.0, e["reward_std"] or 0.0, e["label"])
            groups.setdefault(e["method"], []).append(point)
        for method, points in groups.items():
            points.sort()
            xs, ys, xe, ye, labels = zip(*points, strict=True)
            style = "-o" if len(points) > 1 else "o"
            ax.errorbar(xs, ys, xerr=xe, yerr=ye, fmt=style, capsize=2, label=method)
            if len(points) > 1:
                for x, y, lab in zip(xs, ys, labels, strict=True):
                    ax.annotate(lab.split("(")[-1].rstrip(")"), (x, y), fontsize=6, alpha=0.7)
        ax.set_title(env)
        ax.set_xlabel("cost (Task-only = 1)")
        ax.set_ylabel("reward (Oracle = 1)")
        ax.grid(alpha=0.3)
    handles, labels = [], []
    for ax in axes[0]:  # one legend entry per method across the panels
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:
        fig.legend(handles, labels, loc="center right", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1 - 0.9 / fig.get_figwidth(), 1))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def write_report(out: str | Path, title: str = "") -> dict[str, dict[str, dict[str, Any]]]:
    """summary.json + RESULTS.md + reward_cost.png under ``out``; returns the summary."""
    from safecrowd_llm.core.atomic import write_json

    out = Path(out)
    summary = summarise(out)
    write_json(summary, out / "summary.json")
    write_markdown(summary, out / "RESULTS.md", title)
    if summary:
        plot_reward_cost(summary, out / "reward_cost.png")
    return summary


def merge_env(
    summary: dict[str, dict[str, dict[str, Any]]], new: dict[str, dict[str, dict[str, Any]]], env: str
) -> dict[str, dict[str, dict[str, Any]]]:
    """``summary`` with ``new[env]``'s entries added (replacing same-key ones) and every ``env`` entry normalised
    again against the merged Oracle / Task-only, so a rerun anchor renormalises the rows it did not rerun.

    Every entry of ``env`` must have one seed, the same one: a mean of per-seed ratios cannot be rebuilt from
    the means a summary keeps (``summarise`` over the run directories does that)."""
    entries = {k: dict(v) for k, v in {**summary.get(env, {}), **new[env]}.items()}
    seeds = {tuple(e["seeds"]) for e in entries.values()}
    if len(seeds) != 1 or len(next(iter(seeds))) != 1:
        raise ValueError(f"{env}: merging needs one seed shared by every method, got seeds {sorted(seeds)}")
    oracle, task = entries.get(ORACLE), entries.get(TASK_ONLY)
    for e in entries.values():
        e["reward"] = _finite(ratio(e["raw_reward"], oracle["raw_reward"])) if oracle else None
        e["cost"] = _finite(ratio(e["raw_cost"], task["raw_cost"])) if task else None
    return dict(sorted({**summary, env: dict(sorted(entries.items(), key=lambda kv: _sort_key(kv[0])))}.items()))


def _merge_dirs(table: Path, src: Path, env: str, title: str) -> None:
    """Copy ``src``'s per-run files of ``env`` into ``table`` and rewrite its summary, RESULTS.md and plot."""
    import shutil

    from safecrowd_llm.core.atomic import write_json

    root = src / env
    found = [*root.glob("*/seed*/results.json"), *root.glob("*-skills*/seed*/skills_eval.json")]
    copies = {p: table / env / p.relative_to(root) for p in found}  # the benchmark's own layout
    if (root / "dtau.json").exists():
        copies[root / "dtau.json"] = table / env / "dtau.json"
    old = json.loads((table / "summary.json").read_text()) if (table / "summary.json").exists() else {}
    summary = merge_env(old, json.loads((src / "summary.json").read_text()), env)  # raises before anything is copied
    for path, dest in sorted(copies.items()):
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, dest)
    write_json(summary, table / "summary.json")
    write_markdown(summary, table / "RESULTS.md", title)
    plot_reward_cost(summary, table / "reward_cost.png")


def crowd_shift(
    base: dict[str, dict[str, dict[str, Any]]], shifted: dict[str, dict[str, dict[str, Any]]]
) -> dict[str, dict[str, dict[str, Any]]]:
    """Per env and method in both summaries: normalised reward and cost under each crowd and the change
    (``shifted - base``), e.g. balanced vs 10:1 (the issue's robustness check: ours should move <= 0.02)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for env in base.keys() & shifted.keys():
        for key in sorted(base[env].keys() & shifted[env].keys(), key=_sort_key):
            a, b = base[env][key], shifted[env][key]
            row = {"label": a["label"], "reward": a["reward"], "cost": a["cost"],
                   "shifted_reward": b["reward"], "shifted_cost": b["cost"]}  # fmt: skip
            for m in ("reward", "cost"):
                row[f"d_{m}"] = b[m] - a[m] if a[m] is not None and b[m] is not None else None
            out.setdefault(env, {})[key] = row
    return out


def crowd_shift_markdown(shift: dict[str, dict[str, dict[str, Any]]], base: str, shifted: str) -> str:
    """One table per env: reward / cost under each crowd and the change."""
    f = lambda x: "–" if x is None else f"{x:+.2f}"  # noqa: E731
    g = lambda x: "–" if x is None else f"{x:.2f}"  # noqa: E731
    lines = [f"# Crowd shift: {base} -> {shifted}", "",
             "Normalised reward / cost (Oracle = 1, Task-only = 1 within each crowd's own runs), each method over "
             "the seeds it has under both crowds.", ""]  # fmt: skip
    for env, rows in shift.items():
        lines += [f"## {env}", "", "| Method | base | shifted | Δ reward | Δ cost |", "|---|---|---|---|---|"]
        for row in rows.values():
            lines.append(
                f"| {row['label']} | {g(row['reward'])} / {g(row['cost'])} | {g(row['shifted_reward'])} / "
                f"{g(row['shifted_cost'])} | {f(row['d_reward'])} | {f(row['d_cost'])} |"
            )
        lines.append("")
    return "\n".join(lines)


def _seeds(out: Path) -> dict[str, dict[str, set[int]]]:
    return {env: {k: set(runs) for k, runs in methods.items()} for env, methods in collect_runs(out).items()}


def _common(a: dict[str, dict[str, set[int]]], b: dict[str, dict[str, set[int]]]) -> dict[str, dict[str, set[int]]]:
    return {env: {k: a[env][k] & b[env][k] for k in a[env].keys() & b[env].keys()} for env in a.keys() & b.keys()}


def main(argv: list[str] | None = None) -> None:
    import argparse

    from safecrowd_llm.core.atomic import write_json, write_text

    p = argparse.ArgumentParser(prog="python -m control.report", description=__doc__.split("\n")[0])
    p.add_argument("out", type=Path, help="benchmark results directory (python -m control.benchmark --out)")
    p.add_argument("--shift", type=Path, help="a second results directory (e.g. the 10:1 crowd) to compare with")
    p.add_argument("--title", default="", help="title of RESULTS.md (default: keep the current one)")
    p.add_argument("--merge", type=Path, metavar="DIR",
                   help="merge DIR's runs of --env into OUT, a combined table (e.g. control/results/paper_agents)")
    p.add_argument("--env", help="the env id --merge takes (e.g. SafetyHopperVelocity-v1)")
    args = p.parse_args(argv)
    previous = args.out / "RESULTS.md"
    title = args.title or (previous.read_text().splitlines()[0].lstrip("# ") if previous.exists() else "")
    if args.merge:
        if not args.env:
            p.error("--merge needs --env")
        _merge_dirs(args.out, args.merge, args.env, title)
        print(f"merged {args.env} from {args.merge} into {args.out}")
        return
    write_report(args.out, title)
    print(f"wrote {args.out / 'summary.json'}, {args.out / 'RESULTS.md'}")
    if args.shift:  # compare the seeds both crowds have, so a change is the crowd's, not the seeds'
        common = _common(_seeds(args.out), _seeds(args.shift))
        shift = crowd_shift(summarise(args.out, False, common), summarise(args.shift, only=common))
        write_json(shift, args.shift / "crowd_shift.json")
        text = crowd_shift_markdown(shift, str(args.out), str(args.shift))
        write_text(text, args.shift / "crowd_shift.md")
        print(text)


if __name__ == "__main__":
    main()
