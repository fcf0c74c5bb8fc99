"""Safe-CPL: a latent-conditioned policy learned directly from crowd preferences (no reward, no RL).

For an annotator's latent z' the policy pi(y | x, z') is the base LM with the latent LoRA at z'.
Each target comparison is scored with the CPL regret likelihood (core ``cpl_log_likelihood``) on
f = alpha * sum_t gamma^t [log pi(y_t | x, y_<t, z') - log pi_ref(y_t | x, y_<t)], with conservative bias lam;
t counts from the first response token, or (``discount_from: divergence``) from the first token where the
comparison's two responses differ, the decision the annotator actually judged; ``regret_window: N`` counts only
the first N of those tokens, so the regret never pushes down the rest of a rejected response;
``regret_positions: hesitant`` sums only the tokens the base hesitated on (its choices), t counting those choices;
``support_coef`` keeps the policy's mass at those choices on the base's own options.
A behaviour-cloning term on the chosen responses keeps a small model fluent (CPL alone erodes it).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..core import cpl_log_likelihood
from ..latent_lora import latent_lora_layers, set_latent
from .base_trainer import LatentSetTrainer, masked_logp_sum, sequence_logps, shifted_log_probs
from .set_data import TokenizedPairs, _pad_right

__all__ = [
    "SafeCPLTrainer", "base_sure", "confident_positions", "continuation_weights", "first_tokens", "off_support_nll",
    "reference_logps", "regret_mask", "token_kl",
]


@torch.no_grad()
def reference_logps(
    model: torch.nn.Module, tokens: TokenizedPairs, pad_token_id: int, batch_size: int = 32, gamma: float = 1.0,
    from_divergence: bool = False, window: int = 0, hesitant_below: float | None = None,
) -> tuple[Tensor, Tensor]:
    """(Discounted) summed log-prob of every chosen and rejected response under ``model`` as it is now
    (``from_divergence``: of the tokens from where the pair's two responses first differ; ``hesitant_below``: of only
    the tokens whose top-token probability is below it; ``window``: of only the first ``window`` of them — as the
    trainer scores).

    Call it before training: a freshly injected latent LoRA is zero, so this is the base model.
    """
    shared = tokens.shared if from_divergence else [0] * len(tokens.chosen)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    if latent_lora_layers(model):
        set_latent(model, None)
    out = []
    for seqs, plens in ((tokens.chosen, tokens.chosen_prompt_len), (tokens.rejected, tokens.rejected_prompt_len)):
        sums = []
        for start in tqdm(range(0, len(seqs), batch_size), desc="reference log-probs", leave=False):
            chunk = seqs[start : start + batch_size]
            pl = [p + k for p, k in zip(plens[start : start + batch_size], shared[start : start + batch_size], strict=True)]
            ids = _pad_right(chunk, pad_token_id).to(device)
            pos = torch.arange(ids.shape[1], device=device)
            lengths = torch.tensor([len(s) for s in chunk], device=device)
            attn = pos < lengths[:, None]
            logits = model(input_ids=ids, attention_mask=attn.long()).logits
            resp = attn & (pos >= torch.tensor(pl, device=device)[:, None])
            if hesitant_below is not None:
                resp = resp & ~base_sure(logits, hesitant_below)
            resp = first_tokens(resp, window)
            sums.append(sequence_logps(logits, ids, resp, gamma)[0].cpu())
        out.append(torch.cat(sums))
    model.train(was_training)
    return out[0], out[1]


def regret_mask(
    response_mask: Tensor, divergence_mask: Tensor, sure: Tensor | None, *, from_divergence: bool, window: int
) -> Tensor:
    """The tokens f sums: from the first response token (or, ``from_divergence``, from where the pair's responses
    differ), minus those the base was ``sure`` of when the regret is on its hesitant choices only, the first
    ``window`` of them."""
    decision = (divergence_mask if from_divergence else response_mask).bool()
    if sure is not None:
        decision = decision & ~sure
    return first_tokens(decision, window)


def first_tokens(mask: Tensor, n: int) -> Tensor:
    """The first ``n`` set positions of each row of a ``(B, L)`` mask (all of them when ``n`` is 0)."""
    return mask if n <= 0 else mask & (mask.long().cumsum(-1) <= n)


def token_kl(logp: Tensor, ref_logp: Tensor, weight: Tensor) -> Tensor:
    """Weighted mean over positions of KL(pi || pi_ref), the whole vocabulary.

    ``logp``, ``ref_logp``: ``(B, L-1, V)`` log-probs from :func:`shifted_log_probs`; ``weight (B, L)`` is per token
    (e.g. the response mask, or :func:`continuation_weights`).
    """
    kl = (logp.exp() * (logp - ref_logp)).sum(-1)  # (B, L-1): position t predicts token t+1
    w = weight[:, 1:].to(kl.dtype)
    return (kl * w).sum() / w.sum().clamp(min=1e-6)


def off_support_nll(logp: Tensor, ref_logp: Tensor, weight: Tensor, min_prob: float) -> Tensor:
    """Weighted mean over positions of -log pi(S_t), S_t = {v : pi_ref(v) >= min_prob}: ~ the mass the policy puts
    on tokens the reference all but ruled out; 0 when it stays on the reference's options, whatever their order.

    ``logp``, ``ref_logp`` and ``weight`` as in :func:`token_kl`.
    """
    ruled_out = ref_logp < ref_logp.amax(-1, keepdim=True).clamp(max=math.log(min_prob))  # its top token is always an option
    nll = -logp.masked_fill(ruled_out, float("-inf")).logsumexp(-1)
    w = weight[:, 1:].to(nll.dtype)
    return (nll * w).sum() / w.sum().clamp(min=1e-6)


def continuation_weights(response_mask: Tensor, decision_mask: Tensor, gamma: float) -> Tensor:
    """Per-token KL weights that leave the judged decision free: the k-th token of ``decision_mask`` (where f's
    discount counts) weighs ``1 - gamma**k``, response tokens before it (a prefix both responses share) weigh 1."""
    d = decision_mask.float()
    k = (d.cumsum(-1) - 1).clamp(min=0)
    return response_mask.float() * (1 - d) + d * (1 - gamma**k)


def base_sure(ref_logits: Tensor, threshold: float) -> Tensor:
    """``(B, L)`` bool: token t was predicted with top-token probability >= ``threshold`` (what the base is sure of:
    grammar, copying a word from the prompt); False where it hesitated — the choices (refuse or answer, which style)
    the preferences are about — and at t = 0, which nothing predicts."""
    ref = ref_logits[:, :-1].float()  # position t predicts token t + 1
    sure = torch.zeros(ref_logits.shape[:2], dtype=torch.bool, device=ref_logits.device)
    sure[:, 1:] = ref.amax(-1) - ref.logsumexp(-1) >= math.log(threshold)  # log top-token prob, no (B, L, V) copy
    return sure


def confident_positions(ref_logits: Tensor, response_mask: Tensor, threshold: float) -> Tensor:
    """Per-token KL weights: 1 on response tokens the reference was sure of (:func:`base_sure`), 0 elsewhere."""
    return (response_mask.bool() & base_sure(ref_logits, threshold)).float()


class SafeCPLTrainer(LatentSetTrainer):
    """Trains a :class:`LatentSkillModel` of kind ``safe-cpl`` with a :class:`SafeCPLConfig`."""

    def __init__(self, model, args, train_dataset, tokens: TokenizedPairs, **kwargs) -> None:
        if args.use_reference and tokens.ref_chosen is None:
            pad = kwargs["processing_class"].pad_token_id if kwargs.get("processing_class") is not None else 0
            tokens.ref_chosen, tokens.ref_rejected = reference_logps(
                model.backbone, tokens, pad, gamma=args.gamma, from_divergence=args.discount_from == "divergence",
                window=args.regret_window,
                hesitant_below=args.kl_confidence if args.regret_positions == "hesitant" else None)
        super().__init__(model, args, train_dataset, tokens, **kwargs)

    def pair_scores(self, model, inputs, z_seq):
        logits = model.backbone(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
        logp = shifted_log_probs(logits)  # normalised once: every term below reads it (a (B, L, V) pass each)
        token_logp = logp.gather(-1, inputs["input_ids"][:, 1:].unsqueeze(-1)).squeeze(-1)
        logps, n_tokens = masked_logp_sum(token_logp, inputs["response_mask"])
        hesitant = self.args.regret_positions == "hesitant"
        if self.args.kl_coef or hesitant or self.args.support_coef:
            with torch.no_grad():
                set_latent(model.backbone, None)  # the latent LoRA off: the base
                ref_logits = model.backbone(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
            set_latent(model.backbone, z_seq)  # back on: backward may re-run the forward
        needs_sure = hesitant or self.args.support_coef or (self.args.kl_coef and self.args.kl_positions == "confident")
        sure = base_sure(ref_logits, self.args.kl_confidence) if needs_sure else None  # once for both uses
        f = logps
        from_divergence = self.args.discount_from == "divergence"
        if from_divergence or hesitant or self.args.gamma != 1.0 or self.args.regret_window:
            mask = regret_mask(inputs["response_mask"], inputs["divergence_mask"], sure if hesitant else None,
                               from_divergence=from_divergence, window=self.args.regret_window)
            f = masked_logp_sum(token_logp, mask, self.args.gamma)[0]
        ratio = f - inputs["ref_logps"] if self.args.use_reference else f
        scores = {"logps": logps, "ratio": ratio, "n_tokens": n_tokens}
        ref_logp = shifted_log_probs(ref_logits) if self.args.kl_coef or self.args.support_coef else None
        if self.args.kl_coef:
            weight = inputs["response_mask"]
            if self.args.kl_positions == "continuation":
                decision = inputs["divergence_mask"] if self.args.discount_from == "divergence" else weight
                weight = continuation_weights(weight, decision, self.args.gamma)
            elif self.args.kl_positions == "confident":
                weight = (weight.bool() & sure).float()  # = confident_positions, sure computed once above
            scores["token_kl"] = token_kl(logp, ref_logp, weight)
        if self.args.support_coef:
            choices = (inputs["response_mask"].bool() & ~sure).float()
            scores["off_support"] = off_support_nll(logp, ref_logp, choices, self.args.support_min_prob)
        return scores

    def pair_log_likelihood(self, scores, y, weights):
        f = scores["ratio"]
        m = f.shape[0] // 2
        return cpl_log_likelihood(
            f[:m, None], f[m:, None], y, alpha=self.args.alpha, lam=self.args.lam, weights=weights,
            flip_prob=self.args.flip_prob,
        )

    def extra_loss(self, scores):
        m = scores["logps"].shape[0] // 2
        nll = -scores["logps"][:m].sum() / scores["n_tokens"][:m].sum().clamp(min=1)
        f = scores["ratio"]
        metrics = {"bc_nll": nll.item(), "accuracy": (f[:m] > f[m:]).float().mean().item()}
        loss = self.args.bc_coef * nll if self.args.bc_coef else None
        if "token_kl" in scores:
            metrics["token_kl"] = scores["token_kl"].item()
            kl = self.args.kl_coef * scores["token_kl"]
            loss = kl if loss is None else loss + kl
        if "off_support" in scores:
            metrics["off_support"] = scores["off_support"].item()
            held = self.args.support_coef * scores["off_support"]
            loss = held if loss is None else loss + held
        return loss, metrics
