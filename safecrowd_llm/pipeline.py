"""The main job: the whole method on the crowd text world, end to end on a CPU.

    safecrowd-pipeline                        # quick profile into runs/pipeline
    safecrowd-pipeline --profile full --out runs/full
    safecrowd-pipeline --crowd 10:1           # a crowd whose 'thorough' archetype outnumbers 'breezy' 10:1
    safecrowd-pipeline --related              # also P-Soups, MaxMin-RLHF, Safe RLHF and plain VPL
    safecrowd-pipeline --task concise         # another new task on the same skills (in OUT/tasks/concise)
    safecrowd-pipeline --top_p 0.95           # the sampled comparison from the nucleus, as a server would decode

Stages (each a recipe a user can also run by hand; a finished stage is skipped, so a stopped run resumes):
crowd -> SFT tiny base -> Safe-CPL skills -> pooled reward r_hat -> router (task reward only; one for sampled
and one for greedy decoding) -> baselines (Task-only, Oracle, RC(omega) by best-of-n fine-tuning) [-> related
systems, with --related] -> evaluation tables (sampled and greedy) + reward-vs-cost plots. Stages that do not read
each other's outputs run side by side (``--jobs``; e.g. the baselines train while the skills do).
Runs from a checkout (the recipes and their YAML configs live in ``recipes/``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .textworld.judges import TASKS

__all__ = ["PROFILES", "Stage", "main", "stages"]

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
OMEGAS = (0.25, 0.5, 0.75)
BETAS = {"full": (0.0, 0.2, 1.0), "quick": ()}  # ours' beta_reg sweep, beside the router config's own value
GREEDY = ["--temperature", "0", "--samples_per_prompt", "1"]  # the greedy router's flags (replacing the profile's)
RELATED = ("psoups", "maxmin", "safe_rlhf", "plain_vpl")
JUDGES = "safecrowd_llm.textworld.judges"  # the text world's task rewards: JUDGES.<task>

# Per-profile overrides of the recipes' YAML values. "full" = the YAMLs as they are (what the README's
# measured numbers come from); "quick" trades quality for time so the whole job fits ~15 minutes on 2 cores.
PROFILES: dict[str, dict[str, list[str]]] = {
    "full": {},
    "quick": {
        "world": ["--num-annotators", "32", "--pairs-per-annotator", "32"],
        "base": ["--max_steps", "400"],
        # the recipe's objective as it is, shorter: on 32 annotators x 200 steps its composed model is 0.86-0.95 / 0.000
        # greedy and 0.79-0.83 / 0.083 sampled over two runs (regret on every token with lam 0.5: 0.492 / 0.000 and
        # 0.612 / 0.083; README, BENCHMARKS.md)
        # no skill refinement: on this crowd it finds no further style (2/4 either way) and makes a less safe skill the
        # greedy router's pick (0.862 / 0.000 -> 0.908 / 0.167); it gives 4/4 on the 256 crowd (safecrowd_llm/RESULTS.md)
        "skills": ["--max_steps", "200", "--per_device_train_batch_size", "8", "--skill_refine_steps", "0"],
        "pooled_reward": ["--max_steps", "100"],
        "router": ["--samples_per_prompt", "2"],
        "baseline": ["--max_steps", "40"],  # GRPO steps (related systems); best-of-n keeps its 3 rounds (2 leave the Oracle unsafe)
        "vpl_skills": ["--max_steps", "200", "--per_device_train_batch_size", "8"],
        "psoups": ["--max_steps", "40", "--grid_step", "0.5", "--search_prompts", "16"],
        "evaluate": ["--samples_per_prompt", "2"],
    },
}


@dataclass
class Stage:
    """One step of the job: a command and the file whose existence means it is done."""

    name: str
    command: list[str]
    done: Path
    needs: tuple[str, ...] = ()  # stages whose outputs this one reads; stages with nothing between them run side by side
    extra: list[str] = field(default_factory=list)


def _recipe(name: str) -> str:
    path = RECIPES / name
    if not path.exists():
        raise SystemExit(f"{path} not found: run the pipeline from a checkout of safecrowd (recipes/ holds its configs)")
    return str(path)


def task_home(out: Path, task: str) -> Path:
    """Where a task's routers, baselines and evaluations live: the run itself for the default task, else
    ``out/tasks/<task>`` (the crowd, base, skills and pooled reward are shared by every task)."""
    if task not in TASKS:
        raise SystemExit(f"unknown task {task!r}; the text world ships {', '.join(TASKS)}")
    return out if task == TASKS[0] else out / "tasks" / task


def sampled_suffix(top_p: float = 1.0) -> str:
    """Suffix of the sampled decoding's router and eval directories: none for pure sampling (T = 1), else
    ``_top_p<P>``, so nucleus runs sit beside pure ones in the same run."""
    if not 0.0 < top_p <= 1.0:
        raise SystemExit(f"--top_p must be in (0, 1], got {top_p}")
    return "" if top_p == 1.0 else f"_top_p{top_p:g}"


def stages(
    out: Path, profile: str, crowd: str | None, related: bool = False, task: str = "helpfulness", top_p: float = 1.0
) -> list[Stage]:
    over = PROFILES[profile]
    sampled = sampled_suffix(top_p)
    py = sys.executable
    home, reward = task_home(out, task), ["--task_reward", f"{JUDGES}.{task}"]
    world, base, skills = out / "world", out / "base", out / "skills_cpl"
    proportions = {"10:1": ["--proportions", "thorough=10,breezy=1"]}.get(crowd or "", [])
    if crowd and not proportions:
        proportions = ["--proportions", crowd]
    common = ["--base_model", str(base)]
    result = [
        Stage("crowd", [py, "-m", "safecrowd_llm.textworld", "--out", str(world), "--no-sft", *proportions,
                        *over.get("world", [])], world / "crowd.jsonl"),
        Stage("base", [py, _recipe("sft_base.py"), "--config", _recipe("textworld_sft.yaml"), "--output_dir", str(base),
                       *over.get("base", [])], base / "tiny_base.json"),  # the world's own texts, not the crowd
        Stage("skills", [py, _recipe("train_skills.py"), "--config", _recipe("textworld_cpl.yaml"), *common,
                         "--dataset", str(world / "crowd.jsonl"), "--output_dir", str(skills), *over.get("skills", [])],
              skills / "skills" / "skills.json", ("crowd", "base")),
        Stage("pooled_reward", [py, _recipe("train_skills.py"), "--method", "pooled-reward", *common,
                                "--dataset", str(world / "crowd.jsonl"), "--output_dir", str(out / "pooled_reward"),
                                "--use_cpu", "true", "--report_to", "none", "--save_strategy", "no",
                                # TRL's fine-tuning lr barely moves a LoRA on the tiny base (pair accuracy 0.55)
                                "--learning_rate", "2e-3", "--per_device_train_batch_size", "32",
                                "--max_steps", "300", *over.get("pooled_reward", [])],
              out / "pooled_reward" / "adapter_config.json", ("crowd", "base")),
    ]
    # one router for sampled decoding and one for greedy (each skill scored on its most likely answer),
    # each with its beta_reg sweep (the sweep reuses the router's scored table)
    nucleus = ["--top_p", str(top_p)] if sampled else []
    for suffix, flags in ((sampled, [*over.get("router", []), *nucleus]), ("_greedy", GREEDY)):
        router = home / f"router{suffix}"
        command = [py, _recipe("train_router.py"), "--config", _recipe("textworld_router.yaml"), *reward,
                   "--skills_dir", str(skills / "skills"), *flags]
        name = "router" + suffix.replace("_", " ")
        result.append(Stage(name, [*command, "--output_dir", str(router)], router / "router.json", ("skills",)))
        for beta in BETAS[profile]:
            target = home / f"router{suffix}_beta{beta}"
            result.append(Stage(f"{name} beta={beta}", [*command, "--output_dir", str(target), "--beta_reg", str(beta),
                                                        "--reward_table", str(router / "skill_rewards.json")],
                                target / "router.json", (name,)))
    baselines = [("task_only", "textworld_task_only.yaml", [], ()), ("oracle", "textworld_oracle.yaml", [], ())]
    baselines += [(f"rc_{w}", "textworld_rc.yaml", ["--omega", str(w), "--pooled_reward", str(out / "pooled_reward")],
                   ("pooled_reward",)) for w in OMEGAS]
    for name, cfg, extra, needs in baselines:
        target = home / "baselines" / name
        result.append(Stage(f"baseline {name}", [py, _recipe("train_baseline.py"), "--config", _recipe(cfg), *common,
                                                 *reward, "--output_dir", str(target), *extra, *over.get("baseline", [])],
                            target / "policy.json", ("base", *needs)))
    if related:
        result += related_stages(out, over, common, task)
    trained = tuple(s.name for s in result)
    result.append(Stage("evaluate", [py, _recipe("evaluate.py"), "--config", str(home / f"evaluate{sampled}.yaml"),
                                     *over.get("evaluate", [])], home / f"eval{sampled}" / "results.md", trained))
    result.append(Stage("evaluate greedy", [py, _recipe("evaluate.py"), "--config", str(home / "evaluate_greedy.yaml")],
                        home / "eval_greedy" / "results.md", trained))
    return result


def related_stages(out: Path, over: dict[str, list[str]], common: list[str], task: str = "helpfulness") -> list[Stage]:
    """P-Soups, MaxMin-RLHF, Safe RLHF and plain VPL (which needs a Safe-VPL reward model first)."""
    py, crowd, vpl = sys.executable, ["--dataset", str(out / "world" / "crowd.jsonl")], out / "skills_vpl"
    home, reward = task_home(out, task), ["--task_reward", f"{JUDGES}.{task}"]
    result = [
        Stage("vpl_skills", [py, _recipe("train_skills.py"), "--config", _recipe("textworld_vpl_skills.yaml"), *common,
                             *crowd, "--output_dir", str(vpl), *over.get("vpl_skills", [])], vpl / "skills" / "skills.json",
              ("crowd", "base")),
        Stage("related psoups", [py, _recipe("train_psoups.py"), "--config", _recipe("textworld_psoups.yaml"), *common,
                                 *crowd, *reward, "--output_dir", str(home / "related" / "psoups"), *over.get("psoups", [])],
              home / "related" / "psoups" / "policy.json", ("crowd", "base")),
    ]
    for name, cfg, extra, needs in (("maxmin", "textworld_maxmin.yaml", crowd, "crowd"),
                                    ("safe_rlhf", "textworld_safe_rlhf.yaml", crowd, "crowd"),
                                    ("plain_vpl", "textworld_plain_vpl.yaml", ["--vpl_model", str(vpl)], "vpl_skills")):
        target = home / "related" / name
        result.append(Stage(f"related {name}", [py, _recipe("train_baseline.py"), "--config", _recipe(cfg), *common,
                                                *reward, "--output_dir", str(target), *extra, *over.get("baseline", [])],
                            target / "policy.json", ("base", needs)))
    return result


def write_evaluate_config(
    out: Path, related: bool = False, betas: tuple[float, ...] = (), task: str = "helpfulness", top_p: float = 1.0
) -> Path:
    """The comparison of this run on ``task``: ours against every baseline, on the world's held-out prompts,
    decoded by sampling (``evaluate.yaml``; ``evaluate_top_p<P>.yaml`` from the nucleus, with the router
    trained on nucleus samples) and greedily (``evaluate_greedy.yaml``: every method's most likely answer,
    and the router trained on the skills' greedy answers); both in :func:`task_home`."""
    sampled = sampled_suffix(top_p)
    home = task_home(out, task)
    home.mkdir(parents=True, exist_ok=True)
    methods = [
        {"name": "ours", "kind": "router", "path": str(home / "router")},
        {"name": "task-only", "kind": "adapter", "path": str(home / "baselines" / "task_only")},
        {"name": "oracle", "kind": "adapter", "path": str(home / "baselines" / "oracle")},
        *({"name": f"rc-{w}", "kind": "adapter", "path": str(home / "baselines" / f"rc_{w}"), "group": "RC(omega)",
           "param": w} for w in OMEGAS),
        {"name": "base", "kind": "base"},
    ]
    if related:
        methods[-1:-1] = [{"name": name.replace("_", "-"), "kind": "adapter", "path": str(home / "related" / name)}
                          for name in RELATED]
    cfg = {"base_model": str(out / "base"), "task_reward": f"{JUDGES}.{task}",
           "out_dir": str(home / f"eval{sampled}"), "samples_per_prompt": 16, "temperature": 1.0, "top_p": top_p,
           "max_new_tokens": 80, "seed": 0, "cpu_threads": 1, "methods": methods}
    path = home / f"evaluate{sampled}.yaml"
    greedy = {**cfg, "out_dir": str(home / "eval_greedy"), "samples_per_prompt": 1, "temperature": 0.0, "top_p": 1.0,
              "methods": _with_beta_sweep(methods, home, "_greedy", betas)}
    cfg["methods"] = _with_beta_sweep(methods, home, sampled, betas)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    (home / "evaluate_greedy.yaml").write_text(yaml.safe_dump(greedy, sort_keys=False))
    return path


def _with_beta_sweep(methods: list[dict], out: Path, suffix: str, betas: tuple[float, ...]) -> list[dict]:
    """``methods`` with ours pointed at ``router<suffix>`` and its beta_reg sweep after it (one plot curve)."""
    beta = yaml.safe_load(Path(_recipe("textworld_router.yaml")).read_text())["beta_reg"]
    group = {"group": "ours(beta_reg)"}
    result = []
    for m in methods:
        if m["name"] != "ours":
            result.append(m)
            continue
        result.append({**m, "path": str(out / f"router{suffix}"), **group, "param": beta})
        result += [{"name": f"ours-beta-{b}", "kind": "router", "path": str(out / f"router{suffix}_beta{b}"), **group,
                    "param": b} for b in betas]
    return result


def run_stages(todo: list[Stage], jobs: int, env: dict[str, str], logs: Path) -> None:
    """Run the unfinished stages of ``todo``, up to ``jobs`` at a time, each once the stages it needs are done.

    Every recipe uses one thread, so on a 2-core machine the skills and the baselines train side by side (the
    quick profile: ~16 -> ~10 min). With ``jobs > 1`` each stage writes to ``logs/<stage>.log``; with one job it
    prints to the terminal. After a failure the running stages finish (their outputs are kept) and nothing new starts.
    """
    total, index = len(todo), {s.name: i for i, s in enumerate(todo, 1)}
    pending, finished, running, failed = [], set(), {}, []
    for stage in todo:
        if stage.done.exists():
            print(f"[{index[stage.name]}/{total}] {stage.name}: done already ({stage.done})", flush=True)
            finished.add(stage.name)
        else:
            pending.append(stage)
    finished |= {n for s in todo for n in s.needs if n not in index}  # not in this run (``--only``): assumed done
    while pending or running:
        for stage in [s for s in pending if set(s.needs) <= finished]:
            if len(running) >= jobs or failed:
                break
            pending.remove(stage)
            log, out = None, None
            if jobs > 1:
                logs.mkdir(parents=True, exist_ok=True)
                log = logs / f"{stage.name.replace(' ', '_').replace('=', '')}.log"
                out = log.open("w")
            print(f"[{index[stage.name]}/{total}] {stage.name}: {' '.join(stage.command[1:])}"
                  + (f"\n    log: {log}" if log else ""), flush=True)
            proc = subprocess.Popen(stage.command, env=env, stdout=out, stderr=subprocess.STDOUT if out else None)
            running[proc] = (stage, time.perf_counter(), out, log)
        if not running:
            if failed:
                break
            stuck = ", ".join(f"{s.name} (needs {', '.join(sorted(set(s.needs) - finished))})" for s in pending)
            raise SystemExit(f"stages that can never start: {stuck}")
        proc = next((p for p in running if p.poll() is not None), None)
        if proc is None:
            time.sleep(0.2)
            continue
        stage, t, out, log = running.pop(proc)
        if out:
            out.close()
        if proc.returncode == 0:
            finished.add(stage.name)
            print(f"[{index[stage.name]}/{total}] {stage.name}: {time.perf_counter() - t:.0f} s", flush=True)
        else:
            failed.append(f"{stage.name!r} (exit {proc.returncode}{f'; log: {log}' if log else ''})")
    if failed:
        raise SystemExit(f"stage {', '.join(failed)} failed; fix it and rerun: finished stages are kept")


def _cpus() -> int:
    """CPUs this process may run on (its affinity, which containers set; not the host's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/pipeline", help="run directory (stages already done there are skipped)")
    p.add_argument("--profile", choices=sorted(PROFILES), default="quick", help="quick: ~10 min on 2 cores (~15 with one free); full: the recipes' settings")
    p.add_argument("--crowd", default=None, help="crowd proportions: '10:1' (thorough:breezy) or e.g. 'thorough=3,formal=1'; default balanced")
    p.add_argument("--related", action="store_true",
                   help="also train and evaluate the related systems: P-Soups, MaxMin-RLHF, Safe RLHF, plain VPL")
    p.add_argument("--task", choices=TASKS, default=TASKS[0],
                   help="the new task the router and the baselines are trained on (text-world judges: helpfulness = "
                        "answer everything in detail, concise = briefly, structured = as a formal bulleted list); "
                        "tasks other than helpfulness live in OUT/tasks/TASK and reuse OUT's crowd, base and skills")
    p.add_argument("--top_p", type=float, default=1.0,
                   help="decode the sampled comparison from the nucleus (e.g. 0.95, as servers do): its router is "
                        "trained on nucleus samples too; router and eval go to router_top_pP / eval_top_pP beside the "
                        "pure-sampling ones (default 1: pure sampling at T = 1)")
    p.add_argument("--only", nargs="*", default=None, help="run only these stages (names as printed)")
    p.add_argument("--jobs", type=int, default=min(4, _cpus()),
                   help="stages run side by side when none needs the other's output (each uses one thread; default: "
                        "the CPU count, at most 4); with more than one, each stage's output goes to OUT/logs/")
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error(f"--jobs must be at least 1, got {args.jobs}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_evaluate_config(out, args.related, BETAS[args.profile], args.task, args.top_p)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    todo = stages(out, args.profile, args.crowd, args.related, args.task, args.top_p)
    home, sampled = task_home(out, args.task), sampled_suffix(args.top_p)
    if args.only:
        todo = [s for s in todo if s.name in args.only or s.name.split()[0] in args.only]
    start = time.perf_counter()
    run_stages(todo, args.jobs, env, out / "logs")
    nucleus = f", top_p {args.top_p:g}" if sampled else ""
    for folder, decoding in ((f"eval{sampled}", f"sampled at temperature 1{nucleus}"), ("eval_greedy", "greedy")):
        if (home / folder / "results.md").exists():
            print(f"\nTask {args.task}, decoded {decoding}:\n{(home / folder / 'results.md').read_text()}\n"
                  f"results: {home / folder / 'results.json'}; plot: {home / folder / 'reward_cost.png'}")
    print(f"pipeline finished in {time.perf_counter() - start:.0f} s ({args.profile} profile) -> {out}")


if __name__ == "__main__":
    main()
