"""Compare methods on a task: generate on held-out prompts, score task reward and safety cost, normalise.

A method is a router directory (ours: the composed model), a plain PEFT adapter (Task-only, RC(omega),
Oracle, pooled DPO, a single skill) or the base model. Every method answers the same prompts with the
same sampling; the task reward and the text world's judges score the answers. Normalisation follows the
paper: reward / Oracle's reward, cost / Task-only's cost. Outputs: ``results.json`` (per-prompt rows,
aggregates, config, versions), ``results.md`` and ``reward_cost.png`` (RC's omega sweep drawn as a
Pareto curve, ours' beta_reg sweep beside it).
"""

from __future__ import annotations

import json
import math
import platform
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .core.atomic import atomic_path, write_json, write_text
from .rewards import load_reward
from .textworld import TextWorld, parse_response, safety_cost
from .tiny_base import sample_completions

__all__ = ["MethodSpec", "aggregate", "evaluate_methods", "heldout_report", "markdown_table", "plot_reward_cost"]


@dataclass
class MethodSpec:
    """One row of the comparison.

    kind: ``router`` (path = router directory), ``adapter`` (path = PEFT adapter directory) or ``base``.
    group/param: methods of one sweep share a group (e.g. ``rc`` with param = omega, ``ours`` with
    param = beta_reg) and are drawn as one curve.
    """

    name: str
    kind: str
    path: str | None = None
    group: str | None = None
    param: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in ("router", "adapter", "base"):
            raise ValueError(f"method {self.name!r}: kind must be router, adapter or base, got {self.kind!r}")
        if self.kind != "base" and not self.path:
            raise ValueError(f"method {self.name!r}: kind {self.kind!r} needs a path")
        if self.path and not Path(self.path).exists():
            raise FileNotFoundError(f"method {self.name!r}: {self.path} does not exist")


def _generate(spec: MethodSpec, base_model: str, tokenizer, prompts: Sequence[str], sampling: dict) -> tuple[list, list]:
    """Completions for ``prompts`` (prompt-major, ``n`` each) and the skill that answered (or None)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_model)
    n = sampling.get("n", 1)
    if spec.kind == "base":
        return sample_completions(base, tokenizer, prompts, **sampling), [None] * len(prompts) * n
    if spec.kind == "adapter":
        model = PeftModel.from_pretrained(base, spec.path).eval()
        return sample_completions(model, tokenizer, prompts, **sampling), [None] * len(prompts) * n
    from .evaluate_skills import load_skills_model
    from .router import generate_routed, load_continuous_router, load_router

    repeated = [p for p in prompts for _ in range(n)]
    if json.loads((Path(spec.path) / "router.json").read_text()).get("kind") == "continuous":
        router = load_continuous_router(spec.path)
        texts = router.generate(repeated, **{k: v for k, v in sampling.items() if k != "n"})
        return texts, [None] * len(texts)

    model, _ = load_skills_model(base, _router_skills(spec.path))
    router = load_router(spec.path, model, tokenizer)
    texts, picks = generate_routed(router, model, tokenizer, repeated, **{k: v for k, v in sampling.items() if k != "n"})
    return texts, [router.skill_names[k] for k in picks]


def _router_skills(router_dir: str) -> str:
    return json.loads((Path(router_dir) / "router.json").read_text())["skills_dir"]


def aggregate(rows: list[dict]) -> dict[str, float]:
    """Mean task reward, mean safety cost (unsafe answers per answer), hazardous-prompt cost, parse rate."""
    n = max(len(rows), 1)
    hazardous = [r for r in rows if r["hazardous"]]
    return {
        "reward": sum(r["reward"] for r in rows) / n,
        "cost": sum(r["cost"] for r in rows) / n,
        "hazardous_cost": sum(r["cost"] for r in hazardous) / max(len(hazardous), 1),
        "parse_rate": sum(r["parsed"] for r in rows) / n,
        "samples": len(rows),
    }


def normalise(summary: dict[str, dict], oracle: str = "oracle", task_only: str = "task-only") -> None:
    """Add ``norm_reward`` (/ Oracle's reward) and ``norm_cost`` (/ Task-only's cost) where those rows exist."""
    ref_r = summary.get(oracle, {}).get("reward")
    ref_c = summary.get(task_only, {}).get("cost")
    for row in summary.values():
        row["norm_reward"] = row["reward"] / ref_r if ref_r else None
        row["norm_cost"] = row["cost"] / ref_c if ref_c else None


def evaluate_methods(
    methods: Sequence[MethodSpec],
    *,
    base_model: str,
    task_reward: str,
    prompts: Sequence[Any],
    out_dir: str | Path,
    world: Any = None,
    samples_per_prompt: int = 4,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 80,
    seed: int = 0,
) -> dict[str, Any]:
    """Generate, score and normalise every method; write ``results.json``/``results.md``/``reward_cost.png``.

    ``prompts`` are text-world ``Prompt`` objects (their hazard flag is ground truth for the cost).
    ``top_p < 1`` samples from the nucleus, as a server would with that setting.
    """
    from transformers import AutoTokenizer

    from .textworld import TextWorld, parse_response, safety_cost

    world = world or TextWorld.from_yaml()
    reward_fn = load_reward(task_reward)
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    texts = [p.text for p in prompts]
    sampling = {"n": samples_per_prompt, "temperature": temperature, "top_p": top_p, "max_new_tokens": max_new_tokens,
                "seed": seed}
    results: dict[str, Any] = {"sampling": sampling, "methods": {}, "summary": {}}
    for spec in tqdm(methods, desc="methods"):
        completions, skills = _generate(spec, base_model, tokenizer, texts, sampling)
        rows = []
        for i, (text, skill) in enumerate(zip(completions, skills)):
            p = prompts[i // samples_per_prompt]
            rows.append({
                "prompt": p.text, "hazardous": p.hazardous, "completion": text, "skill": skill,
                "reward": float(reward_fn(p.text, text)), "cost": float(safety_cost(p.text, text, world)),
                "parsed": parse_response(text, p.text, world) is not None,
            })
        results["methods"][spec.name] = {"spec": asdict(spec), "rows": rows}
        results["summary"][spec.name] = aggregate(rows) | {"group": spec.group, "param": spec.param}
    normalise(results["summary"])
    results["config"] = {
        "base_model": base_model, "task_reward": task_reward, "prompts": len(prompts), **sampling,
    }
    results["versions"] = _versions()
    out = Path(out_dir)
    write_json(results, out / "results.json")
    write_text(markdown_table(results["summary"]), out / "results.md")
    plot_reward_cost(results["summary"], out / "reward_cost.png")
    return results


def _versions() -> dict[str, str]:
    import peft
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__}


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def markdown_table(summary: dict[str, dict]) -> str:
    """The paper's layout: normalised reward (Oracle = 1) and cost (Task-only = 1), plus raw numbers."""
    lines = [
        "| method | reward (norm.) | cost (norm.) | task reward | unsafe answers | on hazardous prompts | parse rate |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in summary.items():
        lines.append(
            f"| {name} | {_fmt(r['norm_reward'])} | {_fmt(r['norm_cost'])} | {r['reward']:.3f} | {r['cost']:.3f} "
            f"| {r['hazardous_cost']:.3f} | {r['parse_rate']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def crowd_shift(reference: dict[str, dict], shifted: dict[str, dict]) -> dict[str, dict[str, float]]:
    """How far each method moves when its crowd changes (e.g. balanced -> 10:1): per method in both
    summaries, the normalised reward and cost under each and ``d_reward`` / ``d_cost`` = shifted - reference.
    The paper's robustness claim is that ours moves little and RC more."""
    out = {}
    for name, a in reference.items():
        b = shifted.get(name)
        if b is None or None in (a["norm_reward"], a["norm_cost"], b["norm_reward"], b["norm_cost"]):
            continue
        out[name] = {"reward": a["norm_reward"], "cost": a["norm_cost"], "shifted_reward": b["norm_reward"],
                     "shifted_cost": b["norm_cost"], "d_reward": b["norm_reward"] - a["norm_reward"],
                     "d_cost": b["norm_cost"] - a["norm_cost"]}
    return out


def crowd_shift_table(shift: dict[str, dict[str, float]], labels: tuple[str, str] = ("balanced", "10:1")) -> str:
    a, b = labels
    lines = [f"| method | reward {a} | reward {b} | change | cost {a} | cost {b} | change |", "|---|---|---|---|---|---|---|"]
    for name, r in shift.items():
        lines.append(f"| {name} | {r['reward']:.3f} | {r['shifted_reward']:.3f} | {r['d_reward']:+.3f} | {r['cost']:.3f} "
                     f"| {r['shifted_cost']:.3f} | {r['d_cost']:+.3f} |")
    return "\n".join(lines) + "\n"


def plot_reward_cost(summary: dict[str, dict], path: str | Path) -> Path:
    """Reward vs cost (normalised where possible); sweeps (same group) as lines ordered by param."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    norm = all(r["norm_reward"] is not None and r["norm_cost"] is not None for r in summary.values())
    rk, ck = ("norm_reward", "norm_cost") if norm else ("reward", "cost")
    fig, ax = plt.subplots(figsize=(7.0, 4.2))
    groups: dict[str, list[tuple[float, str, dict]]] = {}
    markers = iter("osD^vP*Xph<>" * 3)
    for name, r in summary.items():
        if r.get("group"):
            groups.setdefault(r["group"], []).append((r.get("param") or 0.0, name, r))
        else:  # a legend, not annotations: reward-trained baselines often land on the same spot
            ax.scatter(r[ck], r[rk], s=45, marker=next(markers), label=name, zorder=3, alpha=0.85)
    for group, items in groups.items():
        items.sort()
        ax.plot([r[ck] for _, _, r in items], [r[rk] for _, _, r in items], "o-", label=group, zorder=2)
        labels: dict[tuple[float, float], list[str]] = {}  # one label per point: "0, 0.05" where params coincide
        for param, _, r in items:
            labels.setdefault((r[ck], r[rk]), []).append(f"{param:g}")
        for xy, params in labels.items():
            ax.annotate(", ".join(params), xy, textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set_xlabel("safety cost" + (" (Task-only = 1)" if norm else " (unsafe answers per answer)"))
    ax.set_ylabel("task reward" + (" (Oracle = 1)" if norm else ""))
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return Path(path)


def heldout_report(model: Any, tokenizer: Any, world: TextWorld, task: Callable[[str, str], float],
                   samples_per_prompt: int = 4,
                   max_new_tokens: int = 64, temperature: float = 1.0, seed: int = 0) -> dict[str, float]:
    """Task reward and safety of completions sampled on the world's held-out prompts (``split_prompts()[1]``).

    ``hazardous_compliance``: fraction of completions to hazardous prompts that parse as a compliance;
    ``cost``: mean ``safety_cost`` over all completions (malformed text on a hazardous prompt costs 1), so
    at most the hazardous fraction; ``hazardous_cost``: its mean over hazardous prompts only (at most 1).
    """
    prompts = world.split_prompts()[1]
    texts = sample_completions(model, tokenizer, prompts, n=samples_per_prompt, temperature=temperature,
                               max_new_tokens=max_new_tokens, seed=seed)
    rows = [(prompts[i // samples_per_prompt], t) for i, t in enumerate(texts)]
    parsed = [parse_response(t, p.text, world) for p, t in rows]
    costs = [safety_cost(p.text, t, world) for p, t in rows]
    hazardous = [r for (p, _), r in zip(rows, parsed, strict=True) if p.hazardous]
    benign = [r for (p, _), r in zip(rows, parsed, strict=True) if not p.hazardous]

    def mean(xs: list[float]) -> float:
        return statistics.fmean(xs) if xs else math.nan

    return {
        "samples": len(rows),
        "task_reward": mean([float(task(p.text, t)) for p, t in rows]),
        "cost": mean(costs),
        "hazardous_cost": mean([c for (p, _), c in zip(rows, costs, strict=True) if p.hazardous]),
        "hazardous_compliance": mean([float(r is not None and not r.refused) for r in hazardous]),
        "benign_refusal": mean([float(r is not None and r.refused) for r in benign]),
        "parse_rate": mean([float(r is not None) for r in parsed]),
    }
