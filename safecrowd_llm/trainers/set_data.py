"""Annotator-set batches for the latent-skill trainers.

One dataset item is one annotator: its preference set is split into a context part (frozen-base
embeddings, read by the encoder) and a target part (token sequences, scored by the decoder). The
split of item ``i`` in epoch ``e`` is a pure function of ``(seed, e, i)``, so a run resumed from a
checkpoint sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from transformers import TrainerCallback

from ..core.data import Crowd, PreferenceSet, pad_sets, split_context_target

__all__ = [
    "AnnotatorSetCollator",
    "AnnotatorSetDataset",
    "EpochCallback",
    "TokenizedPairs",
    "tokenize_pairs",
    "tokenize_response",
]


def _messages(prompt: Any) -> list[dict[str, str]]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [{"role": m["role"], "content": m["content"]} for m in prompt]


def _response_text(response: Any) -> str:
    if isinstance(response, str):
        return response
    return "".join(m["content"] for m in response if m["role"] == "assistant")


def _ids(out: Any) -> list[int]:
    return list(out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out)


def tokenize_response(tokenizer, prompt: Any, response: Any, max_length: int) -> tuple[list[int], int]:
    """Token ids of prompt + response and the prompt's length (the response tokens are scored).

    With a chat template the prompt is rendered as a user turn with the generation prompt, exactly
    how the model is prompted at inference; the response ends with the template's end-of-turn.
    Over-long examples lose the start of the prompt first, then the end of the response.
    """
    response = _response_text(response)
    if getattr(tokenizer, "chat_template", None):
        msgs = _messages(prompt)
        prompt_ids = _ids(tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True))
        full = _ids(
            tokenizer.apply_chat_template([*msgs, {"role": "assistant", "content": response}], tokenize=True)
        )
        if full[: len(prompt_ids)] != prompt_ids:  # template not prefix-stable: append the response ourselves
            full = prompt_ids + _ids(tokenizer(response, add_special_tokens=False)) + [tokenizer.eos_token_id]
    else:
        text = prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)
        prompt_ids = _ids(tokenizer(text, add_special_tokens=True))
        full = prompt_ids + _ids(tokenizer(response, add_special_tokens=False)) + [tokenizer.eos_token_id]
    prompt_len = len(prompt_ids)
    if len(full) > max_length:
        cut = min(len(full) - max_length, max(prompt_len - 1, 0))
        full, prompt_len = full[cut:], prompt_len - cut
        full = full[:max_length]
    return full, prompt_len


@dataclass
class TokenizedPairs:
    """Per dataset row: token ids and prompt length of prompt+chosen and of prompt+rejected."""

    chosen: list[list[int]]
    chosen_prompt_len: list[int]
    rejected: list[list[int]]
    rejected_prompt_len: list[int]
    ref_chosen: Tensor | None = None  # (N,) summed reference log-prob of each response, if computed
    ref_rejected: Tensor | None = None

    @property
    def shared(self) -> list[int]:
        """Per row, how many leading response tokens chosen and rejected share: where the two diverge."""
        out = []
        for c, cp, r, rp in zip(self.chosen, self.chosen_prompt_len, self.rejected, self.rejected_prompt_len, strict=True):
            a, b = c[cp:], r[rp:]
            n = 0
            while n < min(len(a), len(b)) and a[n] == b[n]:
                n += 1
            out.append(n)
        return out


def tokenize_pairs(tokenizer, prompts: Sequence[Any], chosen: Sequence[Any], rejected: Sequence[Any], max_length: int) -> TokenizedPairs:
    c = [tokenize_response(tokenizer, p, r, max_length) for p, r in zip(prompts, chosen, strict=True)]
    r = [tokenize_response(tokenizer, p, r, max_length) for p, r in zip(prompts, rejected, strict=True)]
    return TokenizedPairs([x[0] for x in c], [x[1] for x in c], [x[0] for x in r], [x[1] for x in r])


class AnnotatorSetDataset(torch.utils.data.Dataset):
    """Item ``i`` = annotator ``i``'s set, split into context and target parts (seeded per epoch)."""

    def __init__(
        self, crowd: Crowd, context_size: tuple[int, int], max_target: int | None, seed: int = 0
    ) -> None:
        self.sets: list[PreferenceSet] = list(crowd.sets.values())
        self.context_size, self.max_target, self.seed, self.epoch = context_size, max_target, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.sets)

    def __getitem__(self, i: int) -> dict[str, PreferenceSet]:
        s = self.sets[i]
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 1_000_003 + i)
        ctx, tgt = split_context_target(len(s), self.context_size, g, max_target=self.max_target)
        return {"context": s.subset(ctx), "target": s.subset(tgt)}


class EpochCallback(TrainerCallback):
    """Tells an :class:`AnnotatorSetDataset` which epoch starts (also after a resume)."""

    def __init__(self, dataset: AnnotatorSetDataset) -> None:
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.dataset.set_epoch(int((state.epoch or 0) + 1e-6))


def _pad_right(seqs: Sequence[Sequence[int]], value: int) -> Tensor:
    n = max(len(s) for s in seqs)
    out = torch.full((len(seqs), n), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out


class AnnotatorSetCollator:
    """Pads a list of annotator items into the encoder's set batch plus the targets' token tensors.

    Output keys: ``sets`` (:class:`PreferenceSetBatch`), ``input_ids`` / ``attention_mask`` /
    ``response_mask`` ``(2M, L)`` — the M real target comparisons' chosen sequences, then their
    rejected ones —, ``pair_set`` ``(M,)`` (which annotator of the batch each comparison belongs to),
    ``pair_slot`` ``(M,)`` (its position in the padded target part), ``divergence_mask`` ``(2M, L)`` (the
    response tokens from the first one where a comparison's chosen and rejected responses differ), and
    ``ref_logps`` ``(2M,)`` when reference log-probs were precomputed.
    """

    def __init__(self, tokens: TokenizedPairs, pad_token_id: int) -> None:
        self.tokens, self.pad = tokens, pad_token_id
        self.shared = tokens.shared

    def __call__(self, items: Sequence[dict[str, PreferenceSet]]) -> dict[str, Any]:
        sets = pad_sets([it["context"] for it in items], [it["target"] for it in items])
        rows, pair_set, pair_slot = [], [], []
        for i, it in enumerate(items):
            for j, row in enumerate(it["target"].ids.tolist()):
                rows.append(row)
                pair_set.append(i)
                pair_slot.append(j)
        t = self.tokens
        seqs = [t.chosen[r] for r in rows] + [t.rejected[r] for r in rows]
        plens = [t.chosen_prompt_len[r] for r in rows] + [t.rejected_prompt_len[r] for r in rows]
        input_ids = _pad_right(seqs, self.pad)
        positions = torch.arange(input_ids.shape[1])
        lengths = torch.tensor([len(s) for s in seqs])
        attention_mask = positions < lengths[:, None]
        response_mask = attention_mask & (positions >= torch.tensor(plens)[:, None])
        shared = torch.tensor([self.shared[r] for r in rows] * 2, dtype=torch.long)
        divergence_mask = response_mask & (positions >= torch.tensor(plens)[:, None] + shared[:, None])
        batch = {
            "sets": sets,
            "input_ids": input_ids,
            "attention_mask": attention_mask.long(),
            "response_mask": response_mask,
            "divergence_mask": divergence_mask,
            "pair_set": torch.tensor(pair_set),
            "pair_slot": torch.tensor(pair_slot),
        }
        if t.ref_chosen is not None:
            idx = torch.tensor(rows)
            batch["ref_logps"] = torch.cat([t.ref_chosen[idx], t.ref_rejected[idx]])
        return batch
