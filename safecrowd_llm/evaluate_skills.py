"""Evaluate exported skills on the text world, and the encoder's context effect on held-out annotators.

* Skills: sample from every skill adapter on held-out prompts; the world's judges read back refusal,
  style and well-formedness, so "every skill is safe" and "skills differ in style" are measured, not
  assumed.
* Context: VPL's central effect — preference accuracy on a held-out annotator's target pairs with z'
  inferred from their other pairs, versus the same model at z' = 0 (no context; the mean of an N(0, I) prior).
* Probe: do the encoder's posterior means separate the hidden user types (where the data has them)?
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers.generation.logits_process import TopPLogitsWarper

from .core import Crowd, pad_sets, split_context_target
from .latent_lora import set_latent
from .skills_export import load_manifest
from .textworld import TextWorld, parse_response, safety_cost
from .textworld.judges import archetype_reward
from .tiny_base import sample_completions
from .trainers.base_trainer import sequence_logps
from .trainers.safe_cpl_trainer import base_sure, regret_mask
from .trainers.set_data import AnnotatorSetCollator, TokenizedPairs, tokenize_response
from .trainers.skill_model import LatentSkillModel

__all__ = [
    "behaviour_distribution",
    "context_effect",
    "evaluate_skills",
    "exact_skill_report",
    "latent_probe",
    "load_skills_model",
]


def load_skills_model(base_model: torch.nn.Module, skills_dir: str | Path) -> tuple[PeftModel, dict[str, Any]]:
    """Every skill of a skills directory as a named adapter on one ``PeftModel``."""
    manifest = load_manifest(skills_dir)
    skills = manifest["skills"]
    model = PeftModel.from_pretrained(base_model, skills[0]["path"], adapter_name=skills[0]["name"])
    for s in skills[1:]:
        model.load_adapter(s["path"], adapter_name=s["name"])
    return model.eval(), manifest


@torch.no_grad()
def behaviour_distribution(
    model: torch.nn.Module,
    tokenizer,
    world: TextWorld,
    prompts: Sequence,
    *,
    batch_size: int = 64,
    log: bool = False,
    top_p: float = 1.0,
) -> torch.Tensor:
    """Exact probability ``(P, S)`` that the model answers prompt p with behaviour s (``world.specs``).

    Every behaviour has one canonical text, so its probability is one teacher-forced pass — no
    sampling noise. ``1 - row.sum()`` is the mass on malformed text. ``log=True`` returns log-probabilities
    (an untrained model's would underflow to 0). ``top_p < 1`` scores nucleus sampling exactly: each
    next-token distribution is cut to its top-p set and renormalised, as ``generate(top_p=...)`` does, so
    a text that needs a cut token has probability 0 (log-probability ``-inf``).
    """
    rows = [
        tokenize_response(tokenizer, p.text, world.render(p, spec), max_length=10_000)
        for p in prompts
        for spec in world.specs
    ]
    pad = tokenizer.pad_token_id
    nucleus = TopPLogitsWarper(top_p) if top_p < 1.0 else None
    logps = []
    for i in range(0, len(rows), batch_size):
        chunk = rows[i : i + batch_size]
        n = max(len(ids) for ids, _ in chunk)
        ids = torch.tensor([r + [pad] * (n - len(r)) for r, _ in chunk])
        attn = torch.tensor([[1] * len(r) + [0] * (n - len(r)) for r, _ in chunk])
        resp = torch.tensor([[0] * k + [1] * (len(r) - k) + [0] * (n - len(r)) for r, k in chunk])
        logits = model(input_ids=ids.to(model.device), attention_mask=attn.to(model.device)).logits[:, :-1]
        if top_p < 1.0:
            logits = nucleus(None, logits.flatten(0, 1)).view_as(logits)
        token_logp = torch.log_softmax(logits.float(), -1).gather(-1, ids[:, 1:, None].to(model.device))[..., 0]
        # masked_fill, not a product: a cut token's -inf times a 0 weight would be nan
        logps.append(token_logp.masked_fill(resp[:, 1:].to(model.device) == 0, 0.0).sum(-1).cpu())
    out = torch.cat(logps).view(len(prompts), len(world.specs))
    return out if log else out.exp()


def _style(parsed) -> str:
    return f"{parsed.length}/{parsed.tone}/{parsed.format}"


@torch.no_grad()
def evaluate_skills(
    model: PeftModel,
    manifest: dict[str, Any],
    tokenizer,
    world: TextWorld,
    prompts: Sequence,
    *,
    samples_per_prompt: int = 1,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 80,
    seed: int = 0,
) -> dict[str, Any]:
    """Per skill: parse rate, refusal rate on hazardous / benign prompts, safety cost, style histogram,
    and mean utility under every archetype; plus which skill each archetype likes best. The hazardous
    cost counts malformed samples as unsafe, so ``1 - hazardous_cost`` is the share of all samples that
    are well-formed refusals."""
    hazardous = [p for p in prompts if p.hazardous]
    benign = [p for p in prompts if not p.hazardous]
    utilities = {a.name: archetype_reward(a.name, world) for a in world.archetypes}
    report: dict[str, Any] = {"skills": {}}
    for skill in manifest["skills"]:
        model.set_adapter(skill["name"])
        row: dict[str, Any] = {}
        for group, ps in (("hazardous", hazardous), ("benign", benign)):
            texts = sample_completions(
                model, tokenizer, [p.text for p in ps], n=samples_per_prompt, temperature=temperature,
                max_new_tokens=max_new_tokens, seed=seed, top_p=top_p,
            )
            ptexts = [p.text for p in ps for _ in range(samples_per_prompt)]
            parsed = [parse_response(t, pt, world) for t, pt in zip(texts, ptexts)]
            ok = [r for r in parsed if r is not None]
            row[f"{group}_parse_rate"] = len(ok) / max(len(parsed), 1)
            row[f"{group}_refusal_rate"] = sum(r.refused for r in ok) / max(len(ok), 1)
            row[f"{group}_cost"] = sum(safety_cost(pt, t, world) for pt, t in zip(ptexts, texts)) / max(len(texts), 1)
            if group == "benign":
                styles = Counter(_style(r) for r in ok if not r.refused)
                row["styles"] = dict(styles.most_common())
                row["top_style"] = styles.most_common(1)[0][0] if styles else None
                row["utility"] = {
                    a: sum(f(pt, t) for pt, t in zip(ptexts, texts)) / max(len(texts), 1) for a, f in utilities.items()
                }
        report["skills"][skill["name"]] = row
    rows = report["skills"]
    report["min_hazardous_refusal"] = min(r["hazardous_refusal_rate"] for r in rows.values())
    report["favourite_skill"] = {a: max(rows, key=lambda s, a=a: rows[s]["utility"][a]) for a in utilities}
    fav_styles = {a.name: _style(world.favourite(a.name)) for a in world.archetypes}
    report["archetype_style_found"] = {a: any(r["top_style"] == st for r in rows.values()) for a, st in fav_styles.items()}
    return report


@torch.no_grad()
def exact_skill_report(
    model: PeftModel,
    manifest: dict[str, Any],
    tokenizer,
    world: TextWorld,
    prompts: Sequence,
    *,
    top_p: float = 1.0,
) -> dict[str, Any]:
    """Per skill, from the exact behaviour distribution (:func:`behaviour_distribution`), no sampling:
    well-formed mass, refusal rate among well-formed answers (mean and worst prompt) on hazardous and
    benign prompts, the share of *all* hazardous text that is a well-formed refusal (what sampling would
    count: malformed text cannot be verified as a refusal), the benign answers' style distribution and its
    most likely style, and expected utility under every archetype (malformed mass scores the archetype's
    minimum). ``top_p < 1``: the same under nucleus sampling."""
    specs = world.specs
    refused = torch.tensor([s.refused for s in specs])
    report: dict[str, Any] = {"top_p": top_p, "skills": {}}
    groups = {"hazardous": [p for p in prompts if p.hazardous], "benign": [p for p in prompts if not p.hazardous]}
    for skill in manifest["skills"]:
        model.set_adapter(skill["name"])
        row: dict[str, Any] = {}
        utility = dict.fromkeys((a.name for a in world.archetypes), 0.0)
        for group, ps in groups.items():
            logp = behaviour_distribution(model, tokenizer, world, ps, log=True, top_p=top_p)  # (P, S)
            dist = logp.exp()
            well_formed = dist.sum(1)
            # in log space: an untrained or broken skill's probabilities underflow to 0 (nan: no text at all)
            refusal = (logp[:, refused].logsumexp(1) - logp.logsumexp(1)).exp().nan_to_num(0.0)
            row[f"{group}_well_formed"] = well_formed.mean().item()
            row[f"{group}_refusal"] = refusal.mean().item()
            row[f"{group}_worst_refusal" if group == "hazardous" else f"{group}_max_refusal"] = (
                refusal.min() if group == "hazardous" else refusal.max()
            ).item()
            if group == "hazardous":
                all_text = dist[:, refused].sum(1)
                row["hazardous_refusal_all_text"] = all_text.mean().item()
                row["hazardous_worst_refusal_all_text"] = all_text.min().item()
            for a in utility:
                u = torch.tensor([[world.utility(a, p.hazardous, s) for s in specs] for p in ps])
                expected = (dist * u).sum(1) + (1 - well_formed) * world.min_utility(a)
                utility[a] += expected.sum().item() / len(prompts)
            if group == "benign":
                answers = torch.softmax(logp[:, ~refused], -1).mean(0)
                styles = [f"{s.length}/{s.tone}/{s.format}" for s, r in zip(specs, refused) if not r]
                row["top_style"] = styles[int(answers.argmax())]
                row["answer_styles"] = {st: round(m, 4) for st, m in zip(styles, answers.tolist())}
        row["utility"] = utility
        report["skills"][skill["name"]] = row
    rows = report["skills"]
    report["min_hazardous_refusal"] = min(r["hazardous_refusal"] for r in rows.values())
    report["min_hazardous_refusal_all_text"] = min(r["hazardous_refusal_all_text"] for r in rows.values())
    report["favourite_skill"] = {a: max(rows, key=lambda s, a=a: rows[s]["utility"][a]) for a in utility}
    fav = {a.name: world.favourite(a.name) for a in world.archetypes}
    report["archetype_style_found"] = {
        a: any(r["top_style"] == f"{s.length}/{s.tone}/{s.format}" for r in rows.values()) for a, s in fav.items()
    }
    return report


@torch.no_grad()
def context_effect(
    model: LatentSkillModel, crowd: Crowd, tokens: TokenizedPairs, pad_token_id: int, *, seed: int = 0
) -> dict[str, float]:
    """Preference accuracy on held-out annotators' target halves: z' from the context half vs z' = 0.

    The score of a comparison is the decoder's: CPL's log-ratio margin (or summed log-prob without a
    reference) on the tokens training summed (discount, hesitant positions, window from the model's spec),
    and Safe-VPL's reward margin.
    """
    model.eval()
    g = torch.Generator().manual_seed(seed)
    collate = AnnotatorSetCollator(tokens, pad_token_id)
    hits = {"with_context": 0, "without_context": 0}
    total = 0
    for s in crowd.sets.values():
        ctx, tgt = split_context_target(len(s), len(s) // 2, g)
        batch = collate([{"context": s.subset(ctx), "target": s.subset(tgt)}])
        z_post = model.vae.posterior(pad_sets([s.subset(ctx)], [s.subset(tgt)])).mean  # (1, D)
        m = batch["pair_set"].shape[0]
        scored = _regret_tokens(model, batch)  # once per batch: the base's hesitant tokens do not depend on z'
        for key, z in (("with_context", z_post), ("without_context", torch.zeros_like(z_post))):
            margin = _margins(model, batch, z.expand(2 * m, -1), m, scored)
            hits[key] += int((margin > 0).sum())
        total += m
    return {k: v / max(total, 1) for k, v in hits.items()} | {"pairs": total}


def _regret_tokens(model: LatentSkillModel, batch: dict[str, Any]) -> torch.Tensor | None:
    """The tokens CPL's f summed in training (discount start, hesitant positions, window from the model's spec);
    None for a Safe-VPL reward model."""
    if model.head is not None:
        return None
    spec, sure = model.spec, None
    if spec.get("regret_positions") == "hesitant":
        set_latent(model.backbone, None)  # the base, to find the tokens it hesitated on
        logits = model.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        sure = base_sure(logits, spec.get("kl_confidence", 0.9))
    return regret_mask(batch["response_mask"], batch["divergence_mask"], sure,
                       from_divergence=spec.get("discount_from") == "divergence", window=spec.get("regret_window", 0))


def _margins(model: LatentSkillModel, batch: dict[str, Any], z_seq: torch.Tensor, m: int,
             scored: torch.Tensor | None = None) -> torch.Tensor:
    if model.head is None and scored is None:
        scored = _regret_tokens(model, batch)
    set_latent(model.backbone, z_seq)
    if model.head is not None:
        mask = batch["attention_mask"]
        hidden = model.backbone.base_model(input_ids=batch["input_ids"], attention_mask=mask).last_hidden_state
        h_last = hidden[torch.arange(hidden.shape[0]), mask.sum(1) - 1]
        score = model.reward(h_last, z_seq)
    else:
        ids = batch["input_ids"]
        logits = model.backbone(input_ids=ids, attention_mask=batch["attention_mask"]).logits
        score = sequence_logps(logits, ids, scored, model.spec.get("gamma", 1.0))[0]  # CPL's f, as trained
        if "ref_logps" in batch:
            score = score - batch["ref_logps"]
    set_latent(model.backbone, None)
    return score[:m] - score[m:]


@torch.no_grad()
def latent_probe(model: LatentSkillModel, crowd: Crowd, labels: dict[str, str], held_out: Crowd | None = None,
                 folds: int = 5, seed: int = 0) -> dict[str, Any]:
    """How well the posterior means E[z' | S_a] (each read from the annotator's whole set) separate the hidden
    user types ``labels[annotator]``: a logistic-regression probe fitted on ``crowd``'s means, scored on
    ``held_out``'s when given, else cross-validated (``chance`` = the majority type's share there), and the
    silhouette of the types in latent space."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import silhouette_score
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    model.eval()

    def means(c: Crowd) -> tuple[Any, list[str]]:
        names = [a for a in c.sets if a in labels]
        z = [model.vae.posterior(pad_sets([c.sets[a]], [c.sets[a]])).mean for a in names]
        return (torch.cat(z).numpy() if z else None), [labels[a] for a in names]

    z, y = means(crowd)
    if len(set(y)) < 2:
        raise ValueError(f"the probe needs annotators of >= 2 types, got {dict(Counter(y))}")
    report: dict[str, Any] = {"annotators": len(y), "types": dict(Counter(y)), "silhouette": float(silhouette_score(z, y))}
    probe = LogisticRegression(max_iter=1000)
    if held_out is not None:
        z_test, y_test = means(held_out)
        if not y_test:
            raise ValueError("no held-out annotator has a type label")
        report |= {"held_out_annotators": len(y_test), "probe_accuracy": float(probe.fit(z, y).score(z_test, y_test)),
                   "chance": max(Counter(y_test).values()) / len(y_test)}
        return report
    k = min(folds, min(Counter(y).values()))
    cv = StratifiedKFold(n_splits=max(k, 2), shuffle=True, random_state=seed)
    return report | {"probe_accuracy": float(cross_val_score(probe, z, y, cv=cv).mean()), "folds": max(k, 2),
                     "chance": max(Counter(y).values()) / len(y)}
