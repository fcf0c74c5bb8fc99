"""The control benchmark: envs x methods (x ablation values) x seeds, resumable, then the summary.

    python -m control.benchmark --envs Run Circle --methods all --seeds 0 1 2 \\
        --crowd control/crowds/balanced.yaml --profile quick --out runs/control/bench

Per env: D_tau is generated once (cached under ``--data-root``); per seed the crowd is drawn with seed
``crowd.seed + seed`` (the same crowd for every method of that seed). Each run trains
``control.methods.train_method`` and evaluates the policy; a run is finished when its
``DIR/<env>/<method_key>/seed<k>/results.json`` exists, and is then skipped. Ablations: ``--omegas``
(RC's weight sweep), ``--beta-regs`` (our prior regulariser), ``--offline`` (our offline high level),
``--flip-prob`` / ``--num-annotators`` (crowd overrides) and an imbalanced ``--crowd`` file; crowd
ablations change every run, so give them their own ``--out``. At the end: ``summary.json``,
``RESULTS.md`` and ``reward_cost.png`` (:mod:`control.report`). ``--workers N`` trains N runs at once in
separate processes (one torch thread each); results do not depend on it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from control.crowd import CrowdSpec

__all__ = ["RunSpec", "build_parser", "crowd_config", "main", "plan_runs", "run_one", "train_method"]

DEFAULT_METHODS = ("oracle", "task-only", "rc", "sopl", "safe-vpl", "safe-cpl")
_OURS = ("safe-vpl", "safe-cpl")
_LABELS = {"oracle": "Oracle", "task-only": "Task-only", "rc": "RC", "sopl": "SOPL",
           "safe-vpl": "Safe-VPL", "safe-cpl": "Safe-CPL"}  # fmt: skip
# the "test" profile must run in CI seconds: a tiny crowd unless the user overrides it
_TEST_CROWD = {"num_annotators": 6, "pairs_per_annotator": 8, "segment_length": 10}


def train_method(method: str, data: Any, crowd: Any, profile: Any, seed: int, workdir: Path,
                 progress: bool = True, **options: Any) -> Any:  # fmt: skip
    """Forward to :func:`control.methods.train_method` (imported lazily; tests replace this function).

    Our methods get ``skills_dir``, shared by every high-level variant of one env, method and seed (with
    ``--workers``, variants that start at the same time may each fit the skills once; writes are atomic)."""
    from control.methods import train_method as impl

    return impl(method, data, crowd, profile, seed, workdir, progress=progress, **options)


def _method_names() -> tuple[str, ...]:
    try:
        from control.methods import METHODS

        return tuple(METHODS)
    except ImportError:
        return DEFAULT_METHODS


class RunSpec:
    """One (method, options) variant: its directory key and table label."""

    def __init__(self, method: str, options: dict[str, Any] | None = None) -> None:
        self.method, self.options = method, dict(options or {})

    @property
    def key(self) -> str:
        return "_".join([self.method, *(f"{k}{_fmt(v)}" for k, v in sorted(self.options.items()))])

    @property
    def label(self) -> str:
        if not self.options:
            return _LABELS.get(self.method, self.method) + ("(ω=0.5)" if self.method == "rc" else "")
        names = {"omega": "ω", "beta_reg": "β", "offline": "offline"}
        parts = [
            names.get(k, k) if v is True else f"{names.get(k, k)}={_fmt(v)}"
            for k, v in sorted(self.options.items())
        ]
        return f"{_LABELS.get(self.method, self.method)}({', '.join(parts)})"

    def __repr__(self) -> str:
        return f"RunSpec({self.key})"


def _fmt(v: Any) -> str:
    return "" if v is True else (f"{v:g}" if isinstance(v, float) else str(v))


def plan_runs(methods: list[str], omegas: list[float] | None = None, beta_regs: list[float] | None = None,
              offline: bool = False, prior_target: str | None = None,
              beta_switch: float | None = None, hl_prior: str = "vae", high_level: str = "td3",
              horizon: int | None = None, option_latents: str = "skills",
              skill_learner: str = "td3bc") -> list[RunSpec]:  # fmt: skip
    """Expand methods with the ablation sweeps (RC per omega; ours per beta_reg, optionally offline or with a
    learned beta_reg that holds a prior log-density target)."""
    out: list[RunSpec] = []
    for m in methods:
        if m == "rc" and omegas:
            out += [RunSpec("rc", {"omega": float(w)}) for w in omegas]
        elif m in _OURS:
            extra = ({"offline": True} if offline else {}) | ({"prior_target": prior_target} if prior_target else {})
            extra |= {"beta_switch": float(beta_switch)} if beta_switch else {}
            extra |= {"hl_prior": hl_prior} if hl_prior != "vae" else {}
            extra |= {"high_level": high_level} if high_level != "td3" else {}
            extra |= {"horizon": int(horizon)} if horizon else {}
            extra |= {"option_latents": option_latents} if option_latents != "skills" else {}
            extra |= {"skill_learner": skill_learner} if skill_learner != "td3bc" and m == "safe-vpl" else {}
            out += (
                [RunSpec(m, {"beta_reg": float(b), **extra}) for b in beta_regs]
                if beta_regs
                else [RunSpec(m, extra)]
            )
        else:
            out.append(RunSpec(m))
    return out


def crowd_config(spec: CrowdSpec) -> dict[str, Any]:
    """The crowd spec as a run's configuration records it; without goal overrides it is the dict of runs made
    before ``goals`` existed, so their results stay valid."""
    return {k: v for k, v in asdict(spec).items() if k != "source" and (k != "goals" or v)}


def _config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_one(env_id: str, run: RunSpec, seed: int, data: Any, crowd: Any, profile: Any, out: Path,
            progress: bool = True, dtau_replay: float | None = None) -> dict[str, Any]:  # fmt: skip
    """Train, evaluate and write ``results.json`` for one run (skips it when already finished).

    ``dtau_replay``: the online baselines' share of D_tau in every TD3 batch (None = ``MethodConfig``'s default);
    part of a baseline run's configuration, so a results directory holds one value."""
    import numpy as np

    from control.envs import get_spec
    from control.evaluate import dsrl_cost, evaluate_policy
    from control.offline import package_versions
    from safecrowd_llm.core.atomic import write_json

    run_dir = out / env_id / run.key / f"seed{seed}"
    results_path = run_dir / "results.json"
    config = {"env": env_id, "method": run.method, "options": run.options, "seed": seed,
              "profile": asdict(profile), "crowd": crowd_config(crowd.spec),
              "data": data.manifest.get("config_hash")}  # fmt: skip
    replay: dict[str, float] = {}
    if run.method not in _OURS:
        from control.methods import MethodConfig

        replay["dtau_replay"] = MethodConfig().dtau_replay if dtau_replay is None else float(dtau_replay)
        config |= replay
    chash = _config_hash(config)
    if results_path.exists():
        done = json.loads(results_path.read_text())
        if done.get("config_hash") != chash:
            raise RuntimeError(
                f"{results_path} was produced with another configuration (config_hash {done.get('config_hash')} "
                f"!= {chash}); use a new --out for a different crowd/profile, or delete the run"
            )
        skills_dir = _skills_dir(out, env_id, run, seed)
        if run.method in _OURS and (skills_dir / "skills.safetensors").exists():  # runs finished before skills_eval
            evaluate_skills(env_id, run.method, data, crowd, profile, seed, skills_dir, **_skill_options(run))
        return done
    t0 = time.perf_counter()
    shared = {"skills_dir": _skills_dir(out, env_id, run, seed)} if run.method in _OURS else {}
    policy = train_method(
        run.method, data, crowd, profile, seed, run_dir / "work", progress=progress, **shared, **run.options, **replay
    )
    t1 = time.perf_counter()
    episodes = evaluate_policy(
        env_id, policy, profile.eval_episodes, seed, max_steps=profile.max_episode_steps
    )
    t2 = time.perf_counter()
    spec = get_spec(env_id)
    results = {
        "env": env_id, "method": run.method, "method_key": run.key, "label": run.label,
        "options": run.options, "seed": seed, "config": config, "config_hash": chash,
        "versions": {"python": sys.version.split()[0], **package_versions()},
        "episodes": episodes,
        "mean_reward": float(np.mean([e["reward"] for e in episodes])),
        "mean_cost": float(np.mean([e["cost"] for e in episodes])),
        "dsrl_cost": float(np.mean([dsrl_cost(e["cost"], spec.cost_threshold) for e in episodes]))
        if spec.cost_threshold else None,
        "normalised": None,  # filled in by control.report once Oracle/Task-only of this seed exist
        "train_seconds": round(t1 - t0, 2), "eval_seconds": round(t2 - t1, 2),
    }  # fmt: skip
    write_json(results, results_path)
    if run.method in _OURS:
        evaluate_skills(env_id, run.method, data, crowd, profile, seed, shared["skills_dir"], **_skill_options(run))
    return results


def _skill_options(run: RunSpec) -> dict[str, Any]:
    """The options of ``run`` that change its skills (not just the high level over them)."""
    return {k: v for k, v in run.options.items() if k == "skill_learner"}


def _skills_dir(out: Path, env_id: str, run: RunSpec, seed: int) -> Path:
    """Where ``run``'s skills live: shared by every high-level variant of one skill fit."""
    suffix = "".join(f"_{k}{_fmt(v)}" for k, v in sorted(_skill_options(run).items()))
    return out / env_id / f"{run.method}-skills{suffix}" / f"seed{seed}"


def evaluate_skills(env_id: str, method: str, data: Any, crowd: Any, profile: Any, seed: int,
                    skills_dir: Path, **skill_options: Any) -> dict[str, Any]:  # fmt: skip
    """Each of the K skills alone (latent fixed, no high level), once per skill fit: ``skills_dir/skills_eval.json``.

    The paper's claim in one table: every skill should be safe on its own, whatever its users wanted."""
    import numpy as np

    from control.evaluate import evaluate_policy
    from control.methods import skill_policies
    from safecrowd_llm.core.atomic import write_json

    path, fit = skills_dir / "skills_eval.json", skills_dir / "skills.json"  # fit: the skill checkpoint's sidecar
    if path.exists() and fit.exists():  # checked before loading the skills: a resumed benchmark passes here per run
        done = json.loads(path.read_text())
        same = done.get("skills_hash") == json.loads(fit.read_text()).get("config_hash")
        if same and len(done["skills"][0]["episodes"]) == profile.eval_episodes:
            return done
    records, policies, h = skill_policies(method, data, crowd, profile, seed, skills_dir, **skill_options)
    kind = dict(zip(crowd.crowd.annotator_ids, crowd.annotator_types))
    rows = []
    for k, (rec, policy) in enumerate(zip(records, policies)):
        eps = evaluate_policy(env_id, policy, profile.eval_episodes, seed, max_steps=profile.max_episode_steps)
        types = [kind[a] for a in rec["annotators"]]
        rows.append({"skill": k, "annotators": len(types), "types": {t: types.count(t) for t in sorted(set(types))},
                     "log_prior": rec["log_prior"], "mean_reward": float(np.mean([e["reward"] for e in eps])),
                     "mean_cost": float(np.mean([e["cost"] for e in eps])), "episodes": eps})  # fmt: skip
    out = {"env": env_id, "method": method, "seed": seed, "skills_hash": h, "skills": rows}
    write_json(out, path)
    return out


_CACHE: dict[tuple, tuple[Any, Any]] = {}  # per process: (env, seed) -> (D_tau, crowd)


def _run_job(env_id: str, run: RunSpec, seed: int, spec: Any, profile: Any, args: argparse.Namespace,
             progress: bool, catch: bool = True) -> str | None:  # fmt: skip
    """One run (in this process or a worker): loads the cached D_tau, draws the seed's crowd, trains.

    Returns ``None`` on success, else the traceback (``catch=False`` lets the exception through)."""
    import torch

    from control.crowd import make_crowd
    from control.offline import load_or_generate

    torch.set_num_threads(1)
    try:
        key = (env_id, seed)
        if key not in _CACHE:
            data = load_or_generate(env_id, profile, root=args.data_root, seed=args.data_seed, progress=progress)
            _CACHE.clear()
            _CACHE[key] = (data, make_crowd(data, spec.with_overrides(seed=spec.seed + seed)))
        data, crowd = _CACHE[key]
        run_one(env_id, run, seed, data, crowd, profile, args.out, progress=progress,
                dtau_replay=args.dtau_replay)
        return None
    except Exception:
        if not catch:
            raise
        return traceback.format_exc()


def build_parser() -> argparse.ArgumentParser:
    from control.envs import env_names

    p = argparse.ArgumentParser(
        prog="python -m control.benchmark",
        description="Run the control benchmark (envs x methods x seeds), resumably, and write summary.json, "
        "RESULTS.md and reward_cost.png. Reward is normalised to Oracle = 1, cost to Task-only = 1.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--envs",
        nargs="+",
        default=["Run", "Circle"],
        metavar="ENV",
        help=f"env ids or aliases; valid: {', '.join(env_names())}",
    )
    p.add_argument(
        "--methods",
        nargs="+",
        default=["all"],
        metavar="METHOD",
        help=f"'all' or any of: {', '.join(DEFAULT_METHODS)}",
    )
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument(
        "--crowd",
        type=Path,
        default=Path(__file__).parent / "crowds" / "balanced.yaml",
        help="crowd spec YAML (e.g. control/crowds/imbalanced_10to1.yaml)",
    )
    p.add_argument("--profile", default="quick", choices=["test", "quick", "paper"])
    p.add_argument("--out", type=Path, required=True, help="results directory (re-run to resume)")
    p.add_argument("--data-root", type=Path, default=Path("runs/control/data"), help="D_tau cache")
    p.add_argument("--data-seed", type=int, default=0, help="seed of D_tau (shared by all runs)")
    p.add_argument("--omegas", nargs="+", type=float, help="RC sweep: one RC run per omega (Pareto curve)")
    p.add_argument("--beta-regs", nargs="+", type=float, help="our prior-regulariser sweep (Safe-VPL/CPL)")
    p.add_argument(
        "--offline", action="store_true", help="train our high-level policy offline (BC term, Eq. 12)"
    )
    p.add_argument(
        "--prior-target", choices=["annotators"],
        help="ours: learn beta_reg by dual ascent so that E[log p(z')] stays >= the annotators' mean log-density "
        "(--beta-regs then sets its start value)",
    )
    p.add_argument("--beta-switch", type=float,
                   help="ours: weight on ||pi_h(s) - pi_h(s')||^2, so the high level commits to a skill (0 = off)")
    p.add_argument("--hl-prior", choices=["vae", "aggregate"], default="vae",
                   help="ours: the p(z') the high level's regulariser reads: the VAE prior N(0, I), or the aggregate "
                   "posterior (mixture of the annotators' q(z'|S_a), whose modes are real users' skills)")
    p.add_argument("--high-level", choices=["td3", "options"], default="td3",
                   help="ours: 'td3' (a continuous z' every step, Eq. 11) or 'options' (one of the K skills, committed "
                   "to for --horizon steps, SMDP Q-learning)")
    p.add_argument("--horizon", type=int, help="ours with --high-level options: env steps per chosen skill (default 50)")
    p.add_argument("--option-latents", choices=["skills", "annotators"], default="skills",
                   help="ours with --high-level options: choose between the K selected skills or every annotator's "
                   "posterior mean")
    p.add_argument("--skill-learner", choices=["td3bc", "iql"], default="td3bc",
                   help="Safe-VPL's offline skill learner on D_tau relabelled with r_phi: TD3+BC, or implicit "
                   "Q-learning (clones D_tau's best actions per latent)")
    p.add_argument("--dtau-replay", type=float,
                   help="online baselines (Oracle, Task-only, RC, SOPL): share of every TD3 batch drawn from D_tau, "
                   "relabelled with the baseline's own reward (default 0.5; 0 = purely online, the paper's setting; "
                   "one value per --out)")
    p.add_argument("--flip-prob", type=float, help="override the crowd's label flip probability")
    p.add_argument("--num-annotators", type=int, help="override the crowd's number of annotators")
    p.add_argument("--eval-episodes", type=int, help="override the profile's evaluation episodes")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="runs trained at once, one process and one torch thread each (e.g. the number of cores)",
    )
    p.add_argument(
        "--fail-fast", action="store_true", help="stop at the first failed run (default: log and go on)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch
    from tqdm.auto import tqdm

    from control.crowd import CrowdSpec
    from control.envs import get_spec
    from control.offline import load_or_generate, return_ceiling
    from control.profiles import get_profile
    from control.report import write_report
    from safecrowd_llm.core.atomic import write_json

    torch.set_num_threads(1)
    known = _method_names()
    methods = list(known) if args.methods == ["all"] else args.methods
    bad = [m for m in methods if m not in known]
    if bad:
        raise SystemExit(f"unknown method(s) {bad}; valid: all, {', '.join(known)}")
    env_ids = [get_spec(e).env_id for e in args.envs]
    profile = get_profile(
        args.profile, **({"eval_episodes": args.eval_episodes} if args.eval_episodes else {})
    )
    overrides = dict(_TEST_CROWD) if profile.name == "test" else {}
    overrides.update({k: v for k, v in (("flip_prob", args.flip_prob), ("num_annotators", args.num_annotators))
                      if v is not None})  # fmt: skip
    spec = CrowdSpec.from_yaml(args.crowd, **overrides)
    runs = plan_runs(methods, args.omegas, args.beta_regs, args.offline, args.prior_target, args.beta_switch,
                     args.hl_prior, args.high_level, args.horizon,
                     args.option_latents, args.skill_learner)
    progress = not args.no_progress
    if args.workers < 1:
        raise SystemExit(f"--workers must be >= 1, got {args.workers}")
    failures: list[str] = []
    bar = tqdm(
        total=len(env_ids) * len(args.seeds) * len(runs), desc="benchmark", unit="run", disable=not progress
    )

    def failed(name: str, error: str) -> None:
        if args.fail_fast:
            raise RuntimeError(f"run {name} failed:\n{error}")
        failures.append(name)
        tqdm.write(f"run {name} failed:\n{error}")

    for env_id in env_ids:  # D_tau is generated once per env here, before any run (or worker) reads the cache
        data = load_or_generate(env_id, profile, root=args.data_root, seed=args.data_seed, progress=progress)
        write_json(return_ceiling(data.manifest), args.out / env_id / "dtau.json")
    jobs = [(env_id, run, seed) for env_id in env_ids for seed in args.seeds for run in runs]
    if args.workers == 1:
        for env_id, run, seed in jobs:
            bar.set_postfix_str(f"{get_spec(env_id).alias} {run.key} s{seed}")
            error = _run_job(env_id, run, seed, spec, profile, args, progress, catch=not args.fail_fast)
            if error:
                failed(f"{env_id}/{run.key}/seed{seed}", error)
            bar.update(1)
    else:
        import multiprocessing

        with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {
                pool.submit(_run_job, env_id, run, seed, spec, profile, args, False): f"{env_id}/{run.key}/seed{seed}"
                for env_id, run, seed in jobs
            }
            for future in as_completed(futures):
                error = future.result()
                if error:
                    failed(futures[future], error)
                bar.set_postfix_str(futures[future])
                bar.update(1)
    bar.close()
    write_report(args.out, title=f"Control benchmark ({profile.name}, crowd {spec.name})")
    print(f"wrote {args.out / 'summary.json'}, {args.out / 'RESULTS.md'}, {args.out / 'reward_cost.png'}")
    if failures:
        print(f"{len(failures)} run(s) failed: {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
