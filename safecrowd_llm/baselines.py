"""Downstream baselines that train one policy directly on one scalar reward, with TRL ``GRPOTrainer`` or
best-of-n fine-tuning (:mod:`.best_of_n`, TRL ``SFTTrainer`` on each prompt's best sampled completion).

The paper compares its skill router with policies trained on a reward:

* **Task-only**: the new task reward r_new alone (high reward, ignores safety).
* **RC(omega)**, reward combination: r' = (1 - omega) r_new + omega s(r_hat), where r_hat is the pooled
  Bradley-Terry reward model (``recipes/train_skills.py --method pooled-reward``) and s an affine map
  fitted once, before training, that puts r_hat on r_new's scale (see :func:`fit_scale`).
* **Oracle**: r_new - penalty * cost with the true safety cost (text world only).

Each is a LoRA adapter on the same base as the skills, trained by TRL (no hand-written RL loop) and
saved as a plain PEFT adapter directory (``PeftModel.from_pretrained(base, output_dir)`` loads it)
plus ``policy.json`` (what was trained, how, and held-out reward / cost before and after), written
last and atomically: a directory without ``policy.json`` is an unfinished run.
"""

from __future__ import annotations

import functools
import hashlib
import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from accelerate import PartialState
from peft import LoraConfig, PeftModel
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, set_seed
from trl import GRPOConfig, GRPOTrainer

from .best_of_n import train_best_of_n
from .core.atomic import write_json
from .evaluate_methods import heldout_report
from .rewards import BatchRewardFn, RewardFn, as_text, as_trl_reward, load_reward
from .textworld import TextWorld, safety_cost
from .textworld.judges import make_oracle_reward
from .tiny_base import sample_completions
from .trainers.cpu_defaults import CPUFriendlyDefaults

__all__ = [
    "METHODS",
    "SCALINGS",
    "AffineScale",
    "BaselineConfig",
    "PooledRewardModel",
    "RewardCombination",
    "build_objective",
    "combine_with_task",
    "fit_scale",
    "heldout_report",
    "load_prompts",
    "train_baseline",
]

METHODS = ("task-only", "rc", "oracle")
OPTIMIZERS = ("grpo", "best-of-n")
SCALINGS = ("match-task", "standardize", "minmax")
TEXTWORLD = "textworld"


@dataclass
class BaselineConfig(CPUFriendlyDefaults, GRPOConfig):
    """TRL ``GRPOConfig`` + what the baseline optimises, the base it adapts and the LoRA it trains.

    ``reward_weights`` is set by :func:`train_baseline` (the objective gets weight 1, monitors 0).
    Subclasses that add methods (``safecrowd_llm.related``) extend ``methods``.
    """

    methods: ClassVar[tuple[str, ...]] = METHODS

    method: str = field(
        default="task-only",
        metadata={"help": f"Which baseline: one of {METHODS}; recipes/train_baseline.py also takes the related "
                  "systems maxmin, safe-rlhf and vpl (safecrowd_llm.related)."},
    )
    task_reward: str = field(
        default="safecrowd_llm.textworld.judges.helpfulness",
        metadata={"help": "Dotted name of the task reward r_new, a callable (prompt: str, completion: str) -> float."},
    )
    omega: float = field(default=0.5, metadata={"help": "RC (and the related baselines that mix a learned reward): r' = (1 - omega) r_new + omega * scaled r_hat."})
    pooled_reward: str = field(
        default="",
        metadata={"help": "RC only: the pooled reward model, a PEFT SEQ_CLS adapter (train_skills --method pooled-reward)."},
    )
    pooled_reward_scaling: str = field(
        default="match-task",
        metadata={
            "help": "How r_hat is put on r_new's scale, fitted on reference completions of the training prompts: "
            "'match-task' (affine map giving r_hat r_new's mean and std), 'standardize' (mean 0, std 1) or "
            "'minmax' (reference min -> 0, max -> 1).",
            "choices": list(SCALINGS),
        },
    )
    pooled_reward_format: str = field(
        default="standard",
        metadata={
            "help": "How the pooled reward model reads a pair, as TRL's RewardTrainer rendered its training rows: "
            "'standard' (prompt + completion + eos, for string rows) or 'conversational' (chat template).",
            "choices": ["standard", "conversational"],
        },
    )
    scaling_prompts: int = field(
        default=256, metadata={"help": "RC and learned-reward mixes: at most this many training prompts to fit the r_hat scaling on."}
    )
    scaling_samples: int = field(
        default=4, metadata={"help": "RC and learned-reward mixes: reference completions sampled per prompt to fit the r_hat scaling."}
    )
    oracle_penalty: float = field(default=1.0, metadata={"help": "Oracle only: r = r_new - penalty * safety cost."})
    optimizer: str = field(
        default="grpo",
        metadata={"help": "How the reward is optimised: 'grpo' (TRL GRPOTrainer; max_steps, num_generations, beta) or "
                  "'best-of-n' (RAFT: bon_rounds rounds of SFT on each prompt's best of bon_samples completions; "
                  "learns prompt-conditioned refusals on the tiny text-world base where GRPO does not).",
                  "choices": list(OPTIMIZERS)},
    )
    bon_rounds: int = field(default=3, metadata={"help": "best-of-n: rounds of sample -> score -> SFT."})
    bon_samples: int = field(default=8, metadata={"help": "best-of-n: completions sampled per prompt per round."})
    bon_epochs: float = field(default=8.0, metadata={"help": "best-of-n: SFT epochs over a round's best completions."})
    base_model: str = field(default="", metadata={"help": "Base causal LM (the skills' base): local path or hub name."})
    dtype: str = field(default="float32", metadata={"help": "Base model dtype: float32, bfloat16 or float16."})
    prompts: str = field(
        default=TEXTWORLD,
        metadata={
            "help": "Training prompts: 'textworld' (the world's train split) or a JSONL/JSON/Parquet file, a saved "
            "dataset directory or a hub dataset with a 'prompt' column (strings or message lists)."
        },
    )
    prompts_split: str = field(default="train", metadata={"help": "Split to read when prompts name a dataset."})
    world_config: str | None = field(
        default=None,
        metadata={"help": "Text-world YAML (prompts, held-out split, safety cost); unset = the packaged world."},
    )
    eval_samples_per_prompt: int = field(
        default=4,
        metadata={"help": "Text world: completions per held-out prompt scored before and after training; 0 = skip."},
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA scale numerator."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["all-linear"], metadata={"help": "Modules to adapt, or 'all-linear'."}
    )
    cpu_threads: int = field(
        default=0,
        metadata={"help": "torch CPU threads (0 = torch's default). On a small shared CPU, 1 avoids oversubscription."},
    )

    def __post_init__(self) -> None:
        if self.method not in self.methods:
            raise ValueError(f"method must be one of {self.methods}, got {self.method!r}")
        if not 0.0 <= self.omega <= 1.0:
            raise ValueError(f"omega must be in [0, 1], got {self.omega}")
        if self.method == "rc" and not self.pooled_reward:
            raise ValueError("method 'rc' needs pooled_reward: the adapter saved by train_skills --method pooled-reward")
        if self.pooled_reward_scaling not in SCALINGS:
            raise ValueError(f"pooled_reward_scaling must be one of {SCALINGS}, got {self.pooled_reward_scaling!r}")
        if self.pooled_reward_format not in ("standard", "conversational"):
            raise ValueError(f"pooled_reward_format must be standard or conversational, got {self.pooled_reward_format!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.optimizer == "best-of-n" and (self.bon_rounds < 1 or self.bon_samples < 2):
            raise ValueError(f"best-of-n needs bon_rounds >= 1 and bon_samples >= 2, got {self.bon_rounds}, {self.bon_samples}")
        if self.reward_weights is not None:
            raise ValueError("reward_weights is set by the method (objective 1, monitors 0); leave it unset")
        super().__post_init__()


# ----------------------------------------------------------------------------------------- rewards
@dataclass(frozen=True)
class AffineScale:
    """y = a * x + b, with the reference statistics it was fitted on (saved in ``policy.json``)."""

    a: float = 1.0
    b: float = 0.0
    mode: str = "identity"
    stats: dict[str, float] = field(default_factory=dict)

    def __call__(self, x: float) -> float:
        return self.a * x + self.b


def fit_scale(r_hat: Sequence[float], task: Sequence[float] | None = None, mode: str = "match-task") -> AffineScale:
    """Affine map s with s(r_hat) on the task reward's scale, from scores of the same reference completions.

    ``match-task``: s(r_hat) has the mean and (population) std of ``task``; ``standardize``: mean 0,
    std 1; ``minmax``: min -> 0, max -> 1 (values outside the reference range go outside [0, 1]).
    A constant ``r_hat`` (zero spread) gets slope 0, so RC then adds a constant and equals Task-only.
    """
    if mode not in SCALINGS:
        raise ValueError(f"mode must be one of {SCALINGS}, got {mode!r}")
    xs = [float(x) for x in r_hat]
    if not xs:
        raise ValueError("fit_scale needs at least one reference score")
    mu, sd = statistics.fmean(xs), statistics.pstdev(xs)
    stats = {"r_hat_mean": mu, "r_hat_std": sd, "r_hat_min": min(xs), "r_hat_max": max(xs), "n": float(len(xs))}
    if mode == "minmax":
        span = max(xs) - min(xs)
        a = 1.0 / span if span > 0 else 0.0
        return AffineScale(a, -a * min(xs) if span > 0 else 0.5, mode, stats)
    target_mu, target_sd = 0.0, 1.0
    if mode == "match-task":
        if task is None or len(task) != len(xs):
            raise ValueError("match-task scaling needs the task reward of the same reference completions")
        target_mu, target_sd = statistics.fmean(task), statistics.pstdev(task)
        stats |= {"task_mean": target_mu, "task_std": target_sd}
    a = target_sd / sd if sd > 0 else 0.0
    return AffineScale(a, target_mu - a * mu, mode, stats)


class PooledRewardModel:
    """The pooled Bradley-Terry reward r_hat: base ``AutoModelForSequenceClassification`` + the PEFT adapter
    saved by ``train_pooled``, reading each pair the way TRL's ``RewardTrainer`` rendered its training rows."""

    def __init__(self, model: Any, tokenizer: Any, fmt: str = "standard", batch_size: int = 64) -> None:
        self.model, self.tokenizer, self.fmt, self.batch_size = model.eval(), tokenizer, fmt, batch_size

    @classmethod
    def from_pretrained(cls, adapter: str | Path, base_model: str, fmt: str = "standard", dtype: str = "float32",
                        trust_remote_code: bool = False) -> PooledRewardModel:
        if not (Path(adapter) / "adapter_config.json").exists():
            raise FileNotFoundError(f"{adapter} is not a PEFT adapter directory (no adapter_config.json)")
        tokenizer = AutoTokenizer.from_pretrained(base_model, trust_remote_code=trust_remote_code)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        base = AutoModelForSequenceClassification.from_pretrained(
            base_model, num_labels=1, dtype=getattr(torch, dtype), trust_remote_code=trust_remote_code
        )
        base.config.pad_token_id = tokenizer.pad_token_id  # as train_pooled set it: the score reads the last real token
        return cls(PeftModel.from_pretrained(base, str(adapter)), tokenizer, fmt)

    def render(self, prompt: str, completion: str) -> str:
        if self.fmt == "conversational":
            messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
            return self.tokenizer.apply_chat_template(messages, tokenize=False)
        return prompt + completion + self.tokenizer.eos_token  # RewardTrainer: prompt + chosen + eos

    @torch.inference_mode()
    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        texts = [self.render(p, c) for p, c in zip(prompts, completions, strict=True)]
        out: list[float] = []
        for i in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(texts[i : i + self.batch_size], padding=True, return_tensors="pt")
            out += self.model(**batch.to(self.model.device)).logits[:, 0].float().tolist()  # (B,)
        return out


class RewardCombination:
    """RC(omega): r'(x, y) = (1 - omega) * r_new(x, y) + omega * s(r_hat(x, y)).

    ``pooled`` scores a batch ``(prompts, completions) -> list[float]`` (a :class:`PooledRewardModel`'s
    ``score``); ``scale`` is the fitted :class:`AffineScale`. Called per pair or, by TRL, per batch
    (then the mean scaled r_hat is logged as ``rc/scaled_r_hat``).
    """

    def __init__(self, task: RewardFn, pooled: Callable[[Sequence[str], Sequence[str]], list[float]],
                 omega: float, scale: AffineScale) -> None:
        if not 0.0 <= omega <= 1.0:
            raise ValueError(f"omega must be in [0, 1], got {omega}")
        self.task, self.pooled, self.omega, self.scale = task, pooled, omega, scale
        self.__name__ = f"rc_{omega:g}"

    def batch(self, prompts: Sequence[Any], completions: Sequence[Any], log_metric: Callable | None = None,
              **_: Any) -> list[float]:
        ps, cs = [as_text(p) for p in prompts], [as_text(c) for c in completions]
        r_hat = [self.scale(r) for r in self.pooled(ps, cs)]
        if log_metric is not None and r_hat:
            log_metric("rc/scaled_r_hat", statistics.fmean(r_hat))
        w = self.omega
        return [(1 - w) * float(self.task(p, c)) + w * h for p, c, h in zip(ps, cs, r_hat, strict=True)]

    def __call__(self, prompt: Any, completion: Any) -> float:
        return self.batch([prompt], [completion])[0]

    def as_trl(self) -> BatchRewardFn:
        """The batched reward for ``GRPOTrainer``, named ``rc_<omega>`` (TRL logs ``rewards/<name>/mean``)."""

        def reward(prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
            return self.batch(prompts, completions, **kwargs)

        reward.__name__ = self.__name__
        return reward


# ------------------------------------------------------------------------------------------ prompts
def load_prompts(args: BaselineConfig, world: TextWorld) -> list[Any]:
    """The training prompts: the world's train split, or a dataset's ``prompt`` column."""
    if args.prompts == TEXTWORLD:
        return [p.text for p in world.split_prompts()[0]]
    from datasets import load_dataset, load_from_disk

    path = Path(args.prompts)
    suffix = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
    if path.is_dir():
        ds = load_from_disk(str(path))
        ds = ds[args.prompts_split] if hasattr(ds, "keys") else ds
    elif path.suffix in suffix:
        ds = load_dataset(suffix[path.suffix], data_files=str(path), split="train")
    else:
        ds = load_dataset(args.prompts, split=args.prompts_split)
    if "prompt" not in ds.column_names:
        raise ValueError(f"prompts {args.prompts!r} have no 'prompt' column (columns: {ds.column_names})")
    return list(ds["prompt"])


def _as_conversation(prompt: Any, tokenizer: Any) -> Any:
    """String prompts become one user message when the tokenizer has a chat template, so TRL renders them
    with ``add_generation_prompt=True``, exactly as ``sample_completions`` (and SFT) did."""
    if isinstance(prompt, str) and getattr(tokenizer, "chat_template", None):
        return [{"role": "user", "content": prompt}]
    return prompt


# ---------------------------------------------------------------------------------------- objective
Reference = tuple[Sequence[str], Sequence[str]]
ObjectiveBuilder = Callable[..., tuple[BatchRewardFn, dict]]


def combine_with_task(args: BaselineConfig, task: RewardFn, learned: Callable[[Sequence[str], Sequence[str]], list[float]],
                      reference: Reference | Callable[[], Reference] | None,
                      name: str = "r_hat") -> tuple[RewardCombination, dict]:
    """RC's mix (1 - omega) r_new + omega s(learned) for any learned crowd reward ``learned(prompts, completions)``,
    with s fitted (``args.pooled_reward_scaling``) on the reference completions (``.as_trl()`` gives GRPO's form).
    RC uses it with the pooled r_hat; the related baselines with MaxMin's min-over-mixture reward, plain VPL's
    latent reward, or Safe RLHF's reward model."""
    if callable(reference):
        reference = reference()
    if reference is None:
        raise ValueError(f"{args.method} needs reference completions to fit the {name} scaling")
    ref_prompts, ref_completions = reference
    r_hat = learned(ref_prompts, ref_completions)
    r_task = [float(task(p, c)) for p, c in zip(ref_prompts, ref_completions, strict=True)]
    scale = fit_scale(r_hat, r_task, args.pooled_reward_scaling)
    rc = RewardCombination(task, learned, args.omega, scale)
    info = {"omega": args.omega, f"{name}_scaling": {"mode": scale.mode, "a": scale.a, "b": scale.b, **scale.stats}}
    return rc, info


def build_objective(args: BaselineConfig, task: RewardFn, world: TextWorld | None = None,
                    reference: Reference | Callable[[], Reference] | None = None) -> tuple[BatchRewardFn, dict]:
    """The method's reward in TRL's batched form, and what describes it in ``policy.json``.

    ``reference``: (prompts, completions) sampled from the base on training prompts, or a function that
    samples them when called; RC fits its r_hat scaling on them. ``world``: the text world the Oracle's
    safety cost is judged in.
    """
    info: dict[str, Any] = {"method": args.method, "task_reward": args.task_reward}
    if args.method == "task-only":
        return as_trl_reward(task, "task"), info
    if args.method == "oracle":
        info["oracle_penalty"] = args.oracle_penalty
        return as_trl_reward(make_oracle_reward(task, args.oracle_penalty, world), "oracle"), info
    if args.method != "rc":
        raise ValueError(f"build_objective knows {METHODS}; {args.method!r} needs its own builder")
    rm = PooledRewardModel.from_pretrained(args.pooled_reward, args.base_model, args.pooled_reward_format,
                                           args.dtype, args.trust_remote_code)
    rc, mix = combine_with_task(args, task, rm.score, reference, "pooled_reward")
    info |= {"pooled_reward": str(args.pooled_reward), "pooled_reward_format": rm.fmt, **mix}
    return rc.as_trl(), info


def _monitors(args: BaselineConfig, task: RewardFn, world: TextWorld | None) -> list[BatchRewardFn]:
    """Zero-weight reward functions TRL computes and logs (``rewards/<name>/mean``) without optimising them:
    the task reward (when the objective is not it) and, in the text world, the safety cost."""
    out = [] if args.method == "task-only" else [as_trl_reward(task, "task")]
    if world is not None:
        out.append(as_trl_reward(lambda p, c: safety_cost(p, c, world), "safety_cost"))
    return out


# ------------------------------------------------------------------------------------------- training
def _lora(args: BaselineConfig) -> LoraConfig:
    targets = "all-linear" if args.lora_target_modules == ["all-linear"] else args.lora_target_modules
    return LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, target_modules=targets, task_type="CAUSAL_LM")


def _versions() -> dict[str, str]:
    import peft
    import transformers
    import trl

    return {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
            "peft": peft.__version__}


def _train_grpo(args: BaselineConfig, model: Any, tokenizer: Any, objective: BatchRewardFn,
                monitors: list[BatchRewardFn], prompts: list[Any]) -> tuple[Any, list[dict], int, bool]:
    """GRPO + LoRA on the objective (monitors logged at weight 0): policy, reward curve, steps, main process?"""
    from datasets import Dataset

    dataset = Dataset.from_list([{"prompt": _as_conversation(p, tokenizer)} for p in prompts])
    trainer = GRPOTrainer(model=model, reward_funcs=[objective, *monitors], args=args, train_dataset=dataset,
                          processing_class=tokenizer, peft_config=_lora(args))
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    trainer.accelerator.wait_for_everyone()
    keep = ("reward", "rc/", "safe_rlhf/")  # rewards and what a mixed or constrained objective logs
    curve = [{k: v for k, v in h.items() if k == "step" or k.startswith(keep)}
             for h in trainer.state.log_history if "reward" in h]
    policy = trainer.accelerator.unwrap_model(trainer.model)
    return policy, curve, trainer.state.global_step, trainer.accelerator.is_main_process


def train_baseline(args: BaselineConfig, build: ObjectiveBuilder = build_objective) -> Path:
    """Train the baseline named by ``args.method`` (GRPO or best-of-n, + LoRA) and save it to ``args.output_dir``.

    ``build(args, task, world, reference)`` makes the objective (:func:`build_objective`'s signature;
    ``reference()`` samples base completions of the training prompts on first call).
    Writes the adapter (``adapter_config.json``, ``adapter_model.safetensors``) and then ``policy.json``.
    Returns ``output_dir``.
    """
    if not args.base_model:
        raise ValueError("set base_model (YAML key or --base_model)")
    if args.cpu_threads:
        torch.set_num_threads(args.cpu_threads)
    set_seed(args.seed)
    task = load_reward(args.task_reward)
    world = TextWorld.from_yaml(args.world_config)
    in_world = args.prompts == TEXTWORLD or args.method == "oracle"
    tokenizer = AutoTokenizer.from_pretrained(args.base_model, trust_remote_code=args.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(
        args.base_model, dtype=getattr(torch, args.dtype), trust_remote_code=args.trust_remote_code
    )
    prompts = load_prompts(args, world)
    sampling = {"temperature": args.temperature, "max_new_tokens": args.max_completion_length, "seed": args.seed}

    @functools.cache
    def reference() -> Reference:  # completions of the base policy: what a learned reward's scaling is fitted on
        ref_prompts = [as_text(p) for p in prompts[: args.scaling_prompts]]
        ref_completions = sample_completions(model, tokenizer, ref_prompts, n=args.scaling_samples, **sampling)
        return [p for p in ref_prompts for _ in range(args.scaling_samples)], ref_completions

    objective, info = build(args, task, world, reference)
    monitors = _monitors(args, task, world if in_world else None) if args.optimizer == "grpo" else []
    args.reward_weights = [1.0] + [0.0] * len(monitors)

    before = None
    if args.eval_samples_per_prompt > 0 and args.prompts == TEXTWORLD:
        before = heldout_report(model, tokenizer, world, task, args.eval_samples_per_prompt, **sampling)

    out = Path(args.output_dir)
    (out / "policy.json").unlink(missing_ok=True)  # a directory without policy.json is an unfinished run
    start = time.perf_counter()
    if args.optimizer == "best-of-n":
        policy, curve, steps = train_best_of_n(args, model, tokenizer, objective, prompts, _lora(args))
        main_process = PartialState().is_main_process
    else:
        policy, curve, steps, main_process = _train_grpo(args, model, tokenizer, objective, monitors, prompts)
    seconds = time.perf_counter() - start
    if not main_process:
        return out
    policy.save_pretrained(str(out), safe_serialization=True)  # adapter only: what a skill directory holds
    training = args.to_dict()
    manifest = {
        "kind": "baseline-policy",
        **info,
        "base_model": args.base_model,
        "adapter": ".",
        "prompts": {"source": args.prompts, "count": len(prompts)},
        "monitors": [m.__name__ for m in monitors],
        "metrics": {"train_seconds": round(seconds, 1), "steps": steps, "reward_curve": curve},
        "config_hash": hashlib.sha256(json.dumps(training, sort_keys=True, default=str).encode()).hexdigest()[:16],
        "training": training,
        "versions": _versions(),
    }
    if before is not None:
        after = heldout_report(policy, tokenizer, world, task, args.eval_samples_per_prompt, **sampling)
        manifest["heldout"] = {"reference": before, "policy": after}
    write_json(manifest, out / "policy.json")
    return out
