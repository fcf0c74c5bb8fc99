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
    assert set(report["favourite_skill"]) == {a.name for a in WORLD.archetypes}
    assert report["min_hazardous_refusal"] == min(r["hazardous_refusal"] for r in report["skills"].values())
