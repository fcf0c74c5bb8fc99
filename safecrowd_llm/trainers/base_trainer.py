"""What the Safe-VPL and Safe-CPL trainers share: set batches in, the core's ELBO out.

A ``transformers.Trainer`` whose batch is a handful of annotators (see ``set_data``). The loss is the
core's negative ELBO; a subclass only says how to score one target comparison for a latent z'
(``pair_scores``) and turns scores into a log-likelihood (``pair_log_likelihood``). Checkpoints hold
only the trained parts (:class:`LatentSkillModel`), and ``resume_from_checkpoint`` works as usual.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
from torch import Tensor
from transformers import Trainer

from ..core import KLSchedule, PreferenceSet, PreferenceSetBatch
from ..latent_lora import set_latent
from .set_data import AnnotatorSetCollator, AnnotatorSetDataset, EpochCallback, TokenizedPairs
from .skill_model import SKILL_MODEL_WEIGHTS, LatentSkillModel

__all__ = ["LatentSetTrainer", "masked_logp_sum", "sequence_logps", "shifted_log_probs"]


def shifted_log_probs(logits: Tensor) -> Tensor:
    """``(B, L-1, V)`` log-probs in float32: position t predicts token t+1 (``logits`` is ``(B, L, V)``).
    One full-vocabulary normalisation that every per-token term of a step can share."""
    return torch.log_softmax(logits[:, :-1].float(), -1)


def masked_logp_sum(token_logp: Tensor, mask: Tensor, gamma: float = 1.0) -> tuple[Tensor, Tensor]:
    """``(B,)`` sums of ``token_logp (B, L-1)`` (token t+1's log-prob at t) over ``mask (B, L)`` and their count;
    ``gamma < 1`` discounts the k-th masked token by ``gamma**k``."""
    m = mask[:, 1:].to(token_logp.dtype)
    weight = m if gamma == 1.0 else m * gamma ** (m.cumsum(-1) - 1).clamp(min=0)
    return (token_logp * weight).sum(-1), m.sum(-1)


def sequence_logps(
    logits: Tensor, input_ids: Tensor, response_mask: Tensor, gamma: float = 1.0
) -> tuple[Tensor, Tensor]:
    """Summed log-prob of the response tokens ``(B,)`` and their count ``(B,)``.

    ``logits (B, L, V)`` predict token t+1 at position t, so they are compared with ``input_ids[:, 1:]``.
    ``gamma < 1`` discounts the k-th response token by ``gamma**k`` (CPL's discounted regret): early
    tokens — where a response commits to refusing or answering — weigh more than its continuation.
    """
    token_logp = shifted_log_probs(logits).gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)  # (B, L-1)
    return masked_logp_sum(token_logp, response_mask, gamma)


class LatentSetTrainer(Trainer):
    """Base trainer: builds the collator, runs the ELBO, logs metrics, saves only trained weights."""

    def __init__(
        self,
        model: LatentSkillModel,
        args,
        train_dataset: AnnotatorSetDataset,
        tokens: TokenizedPairs,
        eval_dataset: AnnotatorSetDataset | None = None,
        processing_class=None,
        callbacks: list | None = None,
    ) -> None:
        pad = processing_class.pad_token_id if processing_class is not None else 0
        super().__init__(
            model=model,
            args=args,
            data_collator=AnnotatorSetCollator(tokens, pad),
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            callbacks=[EpochCallback(train_dataset), *(callbacks or [])],
        )
        self.kl_schedule = KLSchedule(args.kl_beta, args.kl_schedule, args.kl_warmup_steps, args.kl_cycle_steps)
        self._metrics: dict[str, dict[str, list[float]]] = {"train": defaultdict(list), "eval": defaultdict(list)}

    # ------------------------------------------------------------------ subclass hooks

    def pair_scores(self, model: LatentSkillModel, inputs: dict[str, Any], z_seq: Tensor) -> dict[str, Tensor]:
        """Score the ``2M`` target sequences under per-sequence latents ``z_seq (2M, D)``."""
        raise NotImplementedError

    def pair_log_likelihood(self, scores: dict[str, Tensor], y: Tensor, weights: Tensor) -> Tensor:
        """``(M,)`` log-likelihood of the M comparisons (chosen = first half of the sequences)."""
        raise NotImplementedError

    def extra_loss(self, scores: dict[str, Tensor]) -> tuple[Tensor | None, dict[str, float]]:
        """An additional loss term (e.g. CPL's BC term) computed from the same forward pass."""
        return None, {}

    # ------------------------------------------------------------------ the loss

    def _set_log_likelihood(self, model: LatentSkillModel, inputs: dict[str, Any], cache: dict, z: Tensor, sets: PreferenceSetBatch) -> Tensor:
        pair_set, pair_slot = inputs["pair_set"], inputs["pair_slot"]
        z_pairs = z[pair_set]  # (M, D)
        z_seq = torch.cat([z_pairs, z_pairs])  # (2M, D): chosen sequences, then rejected
        # no `with`: backward runs after compute_loss returns and may re-run forwards (checkpointing)
        set_latent(model.backbone, z_seq)
        scores = self.pair_scores(model, inputs, z_seq)
        y = sets.tgt_y[pair_set, pair_slot]
        w = sets.tgt_weights[pair_set, pair_slot]
        ll_pairs = self.pair_log_likelihood(scores, y, w)
        cache.setdefault("scores", []).append(scores)
        ll = sets.tgt_y.new_zeros(sets.tgt_y.shape)
        return ll.index_put((pair_set, pair_slot), ll_pairs)  # (A, Nt), zero on padding

    def _loss(self, inputs: dict[str, Any], model: LatentSkillModel) -> tuple[Tensor, dict[str, float]]:
        sets: PreferenceSetBatch = inputs["sets"].to(self.args.device)
        cache: dict[str, list] = {}
        loss, metrics = model.vae.loss(
            sets,
            partial(self._set_log_likelihood, model, inputs, cache),
            self.kl_schedule(self.state.global_step),
            num_samples=self.args.num_latent_samples if model.training else 1,
            deterministic=not model.training,
        )
        extra, extra_metrics = self.extra_loss(cache["scores"][-1])
        return (loss if extra is None else loss + extra), {**metrics, **extra_metrics}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # the whole loss runs inside the (possibly DDP-wrapped) model's forward, so a distributed
        # wrapper sees exactly one forward per backward and synchronises every gradient
        loss, metrics = model(partial(self._loss, inputs))
        mode = "train" if model.training else "eval"
        for k, v in metrics.items():
            self._metrics[mode][k].append(v)
        return (loss, {}) if return_outputs else loss

    def fit_group_latent(self, sets: Sequence[PreferenceSet], z0: Tensor, steps: int, lr: float) -> Tensor:
        """The one latent that best explains a group of annotators' preferences under the trained decoder: MAP of
        sum over the group's pairs of log p(pair | z') + log p(z'), by ``steps`` Adam steps on z' alone from ``z0``.

        Why: a skill stands for a group (a k-means cluster), but its centroid averages posterior means that the
        amortised encoder shrinks toward the prior from one annotator's few pairs each; a taste the group shares
        weakly (breezy's prose over bullets) can then sit on the other side of a neighbour's. Fitted on the whole
        group's pairs, the likelihood outweighs the prior. The decoder's extra terms (:meth:`extra_loss`) count as in
        training, so the fitted latent stays where the policy is fluent. Every weight stays frozen.
        """
        model = self.accelerator.unwrap_model(self.model)
        trainable = [q for q in model.parameters() if q.requires_grad]
        was_training = model.training
        model.eval()
        for q in trainable:
            q.requires_grad_(False)
        device = self.args.device
        z = z0.detach().clone().float().to(device).reshape(1, -1).requires_grad_(True)
        opt = torch.optim.Adam([z], lr=lr)
        g = torch.Generator().manual_seed(self.args.seed)
        n_pairs = sum(len(s) for s in sets)
        per_step = self.args.per_device_train_batch_size
        try:
            for _ in range(steps):
                items = []
                for i in torch.randperm(len(sets), generator=g)[:per_step].tolist():
                    target = torch.randperm(len(sets[i]), generator=g)[: self.args.max_target_pairs]
                    items.append({"context": sets[i].subset(target[:1]), "target": sets[i].subset(target)})
                inputs = self._prepare_inputs(self.data_collator(items))
                batch = inputs["sets"].to(device)
                cache: dict[str, list] = {}
                ll = self._set_log_likelihood(model, inputs, cache, z.expand(len(items), -1), batch)
                # the training loss at a fixed z': per annotator -sum log p(pairs | z'), the prior's share of the
                # group's total, and the decoder's own extra terms (CPL's BC, KL and support terms keep it fluent)
                per_set = inputs["pair_set"].numel() / len(items)
                loss = -(ll.sum() / len(items) + per_set * model.vae.prior.log_prob(z).sum() / n_pairs)
                extra, _ = self.extra_loss(cache["scores"][-1])
                loss = loss if extra is None else loss + extra
                opt.zero_grad()
                loss.backward()
                opt.step()
        finally:
            set_latent(model.backbone, None)
            for q in trainable:
                q.requires_grad_(True)
            model.train(was_training)
        return z.detach().reshape(-1).cpu()

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        metrics = {k: sum(v) / len(v) for k, v in self._metrics[mode].items() if v}
        if mode == "eval":
            metrics = {f"eval_{k}": v for k, v in metrics.items()}
        logs = {**logs, **metrics}
        super().log(logs, start_time)
        self._metrics[mode].clear()

    # ------------------------------------------------------------------ checkpoints: trained parts only

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        output_dir = output_dir or self.args.output_dir
        if not self.args.should_save:
            return
        self.accelerator.unwrap_model(self.model).save_pretrained(output_dir)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        if not os.path.isfile(os.path.join(resume_from_checkpoint, SKILL_MODEL_WEIGHTS)):
            raise ValueError(f"no {SKILL_MODEL_WEIGHTS} in checkpoint {resume_from_checkpoint}")
        self.accelerator.unwrap_model(model or self.model).load_trainable(resume_from_checkpoint)

    def _load_best_model(self) -> None:
        self._load_from_checkpoint(self.state.best_model_checkpoint)
