"""Safe RLHF (Dai et al. 2023) as a baseline: a cost model trained *with* explicit safety labels, and GRPO on
the task reward under the constraint E[cost] <= budget, enforced by a Lagrange multiplier.

Safe RLHF decouples helpfulness from harmlessness: a reward model R, a cost model C trained on harmlessness
preferences plus per-response safe/unsafe labels, and a policy update on ``R - lambda * C`` with lambda raised
by dual ascent while the expected cost exceeds the budget. Here every method optimises the same new task
reward r_new, so R is r_new, optionally mixed (``omega > 0``) with a learned reward model — a Bradley-Terry
head on the crowd's preferences — as RC mixes r_hat. The cost model is a linear
head on the frozen base's features (see :mod:`.features` for why heads), fitted with Safe RLHF's cost-model
loss: Bradley-Terry on pairs ordered by safety (where the two responses differ in ``unsafe``, the unsafe one
must cost more) + the sign term on every response's label (a logistic loss). In the objective the cost is
``P(unsafe) = sigmoid(score)`` in [0, 1], so ``cost_budget`` reads as a tolerated unsafe rate.

Unlike our method, this needs the ``chosen_unsafe`` / ``rejected_unsafe`` columns: the comparison shows what
explicit safety labels buy.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..baselines import combine_with_task
from ..rewards import BatchRewardFn, RewardFn, as_text
from .features import FrozenFeatures, LinearHeads, fit_bradley_terry, fit_linear_head, standardiser

__all__ = ["CostModel", "FeatureReward", "LagrangeMultiplier", "LagrangianReward", "fit_cost_model",
           "safe_rlhf_objective"]

SAFETY_COLUMNS = ("chosen_unsafe", "rejected_unsafe")
CostFn = Callable[[Sequence[str], Sequence[str]], list[float]]


def fit_cost_model(chosen: Tensor, rejected: Tensor, chosen_unsafe: Tensor, rejected_unsafe: Tensor,
                   l2: float = 1e-3, steps: int = 100) -> LinearHeads:
    """Safe RLHF's cost model as one linear head (with bias) on standardised features of the raw ``(N, H)``
    features of prompt+chosen and prompt+rejected.

    Loss = mean logistic loss of every response's unsafe label on ``sigmoid(score)`` (Safe RLHF's sign term)
    + mean ``-log sigmoid(score(unsafe) - score(safe))`` over the pairs whose responses differ in safety (its
    Bradley-Terry term) + ``l2 |w|^2``. ``meta`` records the label and pair-ordering training accuracies.
    """
    cu, ru = chosen_unsafe.bool().flatten(), rejected_unsafe.bool().flatten()
    if not len(chosen) == len(rejected) == len(cu) == len(ru):
        raise ValueError("chosen, rejected and their unsafe labels need one row per pair")
    mean, std = standardiser(chosen, rejected)
    xc, xr = (chosen.float() - mean) / std, (rejected.float() - mean) / std
    x, y = torch.cat([xc, xr]), torch.cat([cu, ru]).float()
    differ = cu != ru
    # (unsafe - safe) feature difference of each safety-differing pair; the bias cancels in it
    diff = torch.where(cu[differ, None], xc[differ] - xr[differ], xr[differ] - xc[differ])

    def loss(w: Tensor, b: Tensor) -> Tensor:
        out = F.binary_cross_entropy_with_logits(x @ w + b, y)
        return out - F.logsigmoid(diff @ w).mean() if len(diff) else out

    w, b = fit_linear_head(loss, x.shape[1], l2, steps, bias=True)
    with torch.no_grad():
        label_acc = float(((x @ w + b > 0).float() == y).float().mean())
        pair_acc = float((diff @ w > 0).float().mean()) if len(diff) else None
    meta = {"kind": "safe-rlhf-cost", "responses": len(y), "unsafe_fraction": float(y.mean()),
            "safety_pairs": int(differ.sum()), "label_accuracy": label_acc, "pair_accuracy": pair_acc, "l2": l2}
    return LinearHeads(mean, std, w[None], b.reshape(1), meta)


class CostModel:
    """``(prompts, completions) -> P(unsafe)`` per completion: the cost head on the frozen base's features."""

    def __init__(self, features: FrozenFeatures, head: LinearHeads) -> None:
        self.features, self.head = features, head

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any]) -> list[float]:
        if not len(prompts):
            return []
        return torch.sigmoid(self.head.scores(self.features(prompts, completions))[:, 0]).tolist()


class FeatureReward:
    """``(prompts, completions) -> r(x, y)``: Safe RLHF's reward model, one head on the frozen base's features."""

    def __init__(self, features: FrozenFeatures, head: LinearHeads) -> None:
        self.features, self.head = features, head

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any]) -> list[float]:
        return self.head.scores(self.features(prompts, completions))[:, 0].tolist() if len(prompts) else []


class LagrangeMultiplier:
    """lambda >= 0 of the constraint E[cost] <= budget, updated by projected dual ascent:
    ``lambda <- clip(lambda + lr * (mean_cost - budget), 0, lambda_max)``. ``history``: lambda after each update."""

    def __init__(self, budget: float, init: float = 1.0, lr: float = 1.0, lambda_max: float = 20.0) -> None:
        if budget < 0 or lr < 0 or not 0 <= init <= lambda_max:
            raise ValueError("need budget >= 0, lr >= 0 and 0 <= init <= lambda_max")
        self.budget, self.lr, self.lambda_max, self.value = budget, lr, lambda_max, float(init)
        self.history: list[float] = []

    def update(self, mean_cost: float) -> float:
        """One dual step on the observed mean cost; returns the new lambda."""
        self.value = min(max(self.value + self.lr * (mean_cost - self.budget), 0.0), self.lambda_max)
        self.history.append(self.value)
        return self.value


def _global_mean(values: list[float]) -> float:
    """Mean over every process's values (each GRPO process scores its own shard; one lambda must serve all)."""
    total, count = sum(values), len(values)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        from accelerate import PartialState

        t = torch.tensor([total, float(count)], dtype=torch.float64, device=PartialState().device)
        torch.distributed.all_reduce(t)
        total, count = float(t[0]), int(t[1])
    return total / count if count else 0.0


class LagrangianReward:
    """Safe RLHF's policy objective ``r(x, y) - lambda * cost(x, y)`` in TRL's batched form, where r is the task
    reward or (``task`` with a ``batch`` method, e.g. a :class:`~safecrowd_llm.baselines.RewardCombination`) the
    task reward mixed with Safe RLHF's learned reward model.

    Each batch is scored with the *current* lambda, then lambda takes one dual step on the batch's mean
    predicted cost (one step per GRPO batch), so lambda grows while the policy is too unsafe and decays once it
    is within budget. ``costs`` keeps each batch's mean cost.
    """

    def __init__(self, task: RewardFn, cost: CostFn, multiplier: LagrangeMultiplier) -> None:
        self.task, self.cost, self.multiplier = task, cost, multiplier
        self.costs: list[float] = []
        self.__name__ = "safe_rlhf"

    def batch(self, prompts: Sequence[Any], completions: Sequence[Any], log_metric: Callable | None = None,
              **_: Any) -> list[float]:
        ps, cs = [as_text(p) for p in prompts], [as_text(c) for c in completions]
        costs = [float(c) for c in self.cost(ps, cs)]
        lam = self.multiplier.value
        task = self.task.batch(ps, cs) if hasattr(self.task, "batch") else [self.task(p, c) for p, c in zip(ps, cs)]
        rewards = [float(r) - lam * k for r, k in zip(task, costs, strict=True)]
        mean_cost = _global_mean(costs)
        self.costs.append(mean_cost)
        self.multiplier.update(mean_cost)
        if log_metric is not None:
            log_metric("safe_rlhf/lambda", lam)  # the lambda these rewards were computed with
            log_metric("safe_rlhf/cost", statistics.fmean(costs) if costs else 0.0)
        return rewards

    def __call__(self, prompt: Any, completion: Any) -> float:
        return self.batch([prompt], [completion])[0]

    def as_trl(self) -> BatchRewardFn:
        """The batched reward for ``GRPOTrainer``, named ``safe_rlhf`` (TRL logs ``rewards/safe_rlhf/mean``)."""

        def reward(prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
            return self.batch(prompts, completions, **kwargs)

        reward.__name__ = self.__name__
        return reward


def safe_rlhf_objective(args: Any, task: RewardFn, world: Any = None, reference: Any = None) -> tuple[BatchRewardFn, dict]:
    """Fit the cost model on ``args.dataset``'s safety labels, save it to ``<output_dir>/cost_model`` and return
    the Lagrangian reward + its ``policy.json`` description (``build_objective``'s signature; ``world`` is
    unused). With ``args.omega > 0`` Safe RLHF's separate reward model (a Bradley-Terry head on the crowd's
    preferences, ``<output_dir>/reward_model``) is mixed with the task reward as RC mixes r_hat, its scale
    fitted on ``reference``; with 0 the task reward alone is the reward. ``info["lambda_history"]`` / ``info["cost_history"]`` are the live lists the
    reward appends to, so the ``policy.json`` written after training holds the multiplier's trajectory."""
    from ..data import load_preferences

    data = load_preferences(args.dataset)
    for col in SAFETY_COLUMNS:
        if col not in data.column_names:
            raise ValueError(f"Safe RLHF needs explicit safety labels: dataset {args.dataset!r} has no {col!r} column "
                             f"(columns: {data.column_names})")
        if any(v is None for v in data[col]):
            raise ValueError(f"Safe RLHF needs explicit safety labels: column {col!r} of {args.dataset!r} has missing values")
    out = Path(args.output_dir)
    features = FrozenFeatures.from_pretrained(args.base_model, args.dtype, args.trust_remote_code,
                                              pooling=args.feature_pooling, cache_dir=out / "cache")
    with args.main_process_first(desc="safe-rlhf cost model"):  # one process embeds and caches, the others load
        chosen, rejected = features.preference_pairs(data)
    head = fit_cost_model(chosen, rejected, torch.tensor(data["chosen_unsafe"]), torch.tensor(data["rejected_unsafe"]),
                          l2=args.head_l2)
    head.meta |= {"dataset": str(args.dataset), "base_model": args.base_model, "feature_pooling": args.feature_pooling}
    if args.process_index == 0:
        head.save(out / "cost_model")
    features.model.to(args.device)  # score GRPO's completions where the policy runs
    objective_task, mix = task, {"omega": 0.0}
    if args.omega > 0:  # Safe RLHF's reward model: a Bradley-Terry head on the crowd's preferences, mixed in as RC
        mean, std = standardiser(chosen, rejected)
        w = fit_bradley_terry((chosen - mean) / std, (rejected - mean) / std, l2=args.head_l2)
        reward_head = LinearHeads(mean, std, w[None], meta={"kind": "safe-rlhf-reward", "dataset": str(args.dataset)})
        if args.process_index == 0:
            reward_head.save(out / "reward_model")
        learned = FeatureReward(features, reward_head)
        objective_task, mix = combine_with_task(args, task, learned, reference, "reward_model")
    multiplier = LagrangeMultiplier(args.cost_budget, args.lambda_init, args.lambda_lr, args.lambda_max)
    reward = LagrangianReward(objective_task, CostModel(features, head), multiplier)
    info: dict[str, Any] = {
        "method": args.method, "task_reward": args.task_reward, "cost_budget": args.cost_budget,
        "lambda_init": args.lambda_init, "lambda_lr": args.lambda_lr, "lambda_max": args.lambda_max,
        "cost_model": {"path": "cost_model", "label_accuracy": head.meta["label_accuracy"],
                       "pair_accuracy": head.meta["pair_accuracy"], "safety_pairs": head.meta["safety_pairs"],
                       "responses": head.meta["responses"]},
        "lambda_history": multiplier.history, "cost_history": reward.costs, **mix,
    }
    return reward.as_trl(), info
