"""Exact skill evaluation: each canonical behaviour's probability is a teacher-forced pass whose
probabilities match the model's own step-by-step next-token distribution."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("peft", reason="needs the llm extra: pip install -e '.[llm]'")

from transformers import AutoModelForCausalLM, AutoTokenizer

from safecrowd_llm.evaluate_skills import behaviour_distribution, exact_skill_report, load_skills_model
from safecrowd_llm.textworld import TextWorld
from safecrowd_llm.trainers.set_data import tokenize_response

WORLD = TextWorld.from_yaml()
_HELD_OUT = WORLD.split_prompts()[1]
PROMPTS = [p for p in _HELD_OUT if not p.hazardous][:2] + [p for p in _HELD_OUT if p.hazardous][:2]


def test_behaviour_probability_is_the_product_of_next_token_probabilities(tiny_skills):
    base = str(tiny_skills / "base")
    tok, model = AutoTokenizer.from_pretrained(base), AutoModelForCausalLM.from_pretrained(base).eval()
    dist = behaviour_distribution(model, tok, WORLD, PROMPTS, log=True)
    assert dist.shape == (len(PROMPTS), len(WORLD.specs))
    assert torch.isfinite(dist).all() and (dist.exp().sum(1) <= 1 + 1e-6).all()
    prompt, spec = PROMPTS[1], WORLD.specs[5]
    ids, plen = tokenize_response(tok, prompt.text, WORLD.render(prompt, spec), max_length=10_000)
    logp = 0.0
    with torch.no_grad():
        for t in range(plen, len(ids)):  # one step at a time, as generation would
            logits = model(input_ids=torch.tensor([ids[:t]])).logits[0, -1]
            logp += torch.log_softmax(logits, -1)[ids[t]].item()
    assert dist[1, 5].item() == pytest.approx(logp, rel=1e-4)


def test_nucleus_probability_matches_step_by_step_top_p_sampling(tiny_skills):
    from transformers.generation.logits_process import TopPLogitsWarper

    base = str(tiny_skills / "base")
    tok, model = AutoTokenizer.from_pretrained(base), AutoModelForCausalLM.from_pretrained(base).eval()
    pure = behaviour_distribution(model, tok, WORLD, PROMPTS, log=True)
    top_p = 0.997  # the untrained model is near uniform: this nucleus cuts a token of some texts, not of others
    cut = behaviour_distribution(model, tok, WORLD, PROMPTS, log=True, top_p=top_p)
    kept = torch.isfinite(cut)
    assert kept.any() and (~kept).any()
    assert (cut[kept] >= pure[kept]).all() and (cut[kept] > pure[kept]).any()  # renormalising raises what is kept
    assert (cut.exp().sum(1) <= 1 + 1e-6).all()

    def step_by_step(i: int, j: int) -> float:  # what generate(do_sample=True, top_p=top_p) gives the text
        ids, plen = tokenize_response(tok, PROMPTS[i].text, WORLD.render(PROMPTS[i], WORLD.specs[j]), max_length=10_000)
        logp, warp = 0.0, TopPLogitsWarper(top_p)
        with torch.no_grad():
            for t in range(plen, len(ids)):
                logits = warp(None, model(input_ids=torch.tensor([ids[:t]])).logits[:, -1])[0]
                logp += torch.log_softmax(logits, -1)[ids[t]].item()
        return logp

    i, j = kept.nonzero()[0].tolist()
    assert cut[i, j].item() == pytest.approx(step_by_step(i, j), rel=1e-4)
    i, j = (~kept).nonzero()[0].tolist()
    assert step_by_step(i, j) == float("-inf")


def test_exact_report_reads_refusal_from_the_distribution(tiny_skills):
    base = str(tiny_skills / "base")
    tok = AutoTokenizer.from_pretrained(base)
    model, manifest = load_skills_model(AutoModelForCausalLM.from_pretrained(base), tiny_skills / "skills")
    report = exact_skill_report(model, manifest, tok, WORLD, PROMPTS)
    refused = torch.tensor([s.refused for s in WORLD.specs])
    model.set_adapter("skill_1")
    logp = behaviour_distribution(model, tok, WORLD, [p for p in PROMPTS if p.hazardous], log=True)
    expected = torch.softmax(logp, -1)[:, refused].sum(1).mean().item()  # refusal among well-formed answers
    assert report["skills"]["skill_1"]["hazardous_refusal"] == pytest.approx(expected, abs=1e-4)
    all_text = logp.exp()[:, refused].sum(1)  # malformed text counts as not refusing
    assert report["skills"]["skill_1"]["hazardous_refusal_all_text"] == pytest.approx(all_text.mean().item(), abs=1e-5)
    assert report["skills"]["skill_1"]["hazardous_worst_refusal_all_text"] == pytest.approx(all_text.min().item(), abs=1e-5)
    assert report["top_p"] == 1.0
    assert set(report["favourite_skill"]) == {a.name for a in WORLD.archetypes}
    styles = report["skills"]["skill_1"]["answer_styles"]  # a distribution over the 8 answer styles
    assert len(styles) == 8 and sum(styles.values()) == pytest.approx(1.0, abs=1e-3)
    assert report["skills"]["skill_1"]["top_style"] == max(styles, key=styles.get)
    assert report["min_hazardous_refusal"] == min(r["hazardous_refusal"] for r in report["skills"].values())


class _MeanOfContext:
    """A stand-in latent model whose posterior mean is the mean of the context's chosen features."""

    def __init__(self) -> None:
        from types import SimpleNamespace

        self.vae = SimpleNamespace(posterior=lambda b: SimpleNamespace(mean=b.ctx_a[:, :, :2].mean(1)))

    def eval(self):
        return self


def test_latent_probe_separates_planted_types_and_not_shuffled_ones():
    from safecrowd_llm.core import Crowd, PreferenceSet
    from safecrowd_llm.evaluate_skills import latent_probe

    g = torch.Generator().manual_seed(0)
    centres = {"a": (3.0, 0.0), "b": (-3.0, 0.0), "c": (0.0, 3.0)}
    sets, labels = {}, {}
    for i in range(45):
        kind = "abc"[i % 3]
        feats = torch.randn(6, 4, generator=g) + torch.tensor([*centres[kind], 0.0, 0.0])
        sets[f"u{i}"] = PreferenceSet(f"u{i}", feats, torch.randn(6, 4, generator=g), torch.ones(6))
        labels[f"u{i}"] = kind
    crowd = Crowd(sets)
    train, held = crowd.split(0.3, seed=0)
    model = _MeanOfContext()
    probe = latent_probe(model, train, labels, held_out=held)
    assert probe["probe_accuracy"] >= 0.9 and probe["silhouette"] > 0.5 and probe["chance"] < 0.6
    cv = latent_probe(model, crowd, labels)
    assert cv["probe_accuracy"] >= 0.9 and cv["folds"] == 5
    perm = torch.randperm(45, generator=g).tolist()  # types no longer follow the features
    shuffled = {f"u{i}": labels[f"u{perm[i]}"] for i in range(45)}
    assert latent_probe(model, crowd, shuffled)["probe_accuracy"] < 0.7
    with pytest.raises(ValueError, match=">= 2 types"):
        latent_probe(model, crowd, dict.fromkeys(labels, "a"))
