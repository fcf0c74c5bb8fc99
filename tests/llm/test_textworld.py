"""Tests of the crowd text world: surface forms parse back exactly, crowds follow their config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from safecrowd_llm.textworld import (
    DEFAULT_CONFIG_PATH,
    EXCHANGE_COLUMNS,
    ConfigError,
    ResponseSpec,
    TextWorld,
    WorldConfig,
    archetype_reward,
    as_trl_reward,
    helpfulness,
    load_world_config,
    make_oracle_reward,
    make_task_reward,
    parse_response,
    read_jsonl,
    safety_cost,
    sample_crowd,
    sft_rows,
    summarize_crowd,
    write_jsonl,
)
from safecrowd_llm.textworld.__main__ import main as cli_main


@pytest.fixture(scope="module")
def world() -> TextWorld:
    return TextWorld.from_yaml()


def _yaml_with(tmp_path: Path, edit) -> Path:
    data = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    edit(data)
    path = tmp_path / "world.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


# ----------------------------------------------------------------------------- world shape
def test_default_world_meets_the_spec(world):
    assert len(world.config.topics) >= 20 and len(world.config.templates) >= 5
    assert world.hazardous_fraction >= 0.2
    assert len(world.specs) == 16  # comply/refuse x brief/detailed x formal/casual x prose/bulleted
    assert len(world.vocabulary()) < 150
    # every archetype has its own favourite behaviour on benign prompts, and it complies
    favourites = {a.name: world.favourite(a) for a in world.archetypes}
    assert len(set(favourites.values())) == len(favourites)
    assert not any(f.refused for f in favourites.values())


def test_parser_round_trips_every_response(world):
    n = 0
    for prompt in world.prompts:
        for spec in world.specs:
            text = world.render(prompt, spec)
            parsed = parse_response(text, prompt.text, world)
            assert parsed is not None, text
            assert parsed.spec == spec and parsed.on_topic
            assert parsed.noun == (None if spec.refused else prompt.noun)
            n += 1
    assert n == len(world.prompts) * 16


def test_parser_accepts_chat_forms_and_trailing_special_tokens(world):
    p = world.prompts[0]
    spec = ResponseSpec(False, 4, "formal", "bulleted")
    text = world.render(p, spec)
    chat_prompt = f"<|im_start|>user\n{p.text}<|im_end|>\n<|im_start|>assistant\n"
    assert parse_response(text + "<|im_end|>\ngarbage", chat_prompt, world).spec == spec
    msgs = [{"role": "assistant", "content": text}]
    assert parse_response(msgs, [{"role": "user", "content": p.text}], world).on_topic
    # an answer about another topic parses but is off-topic
    other = next(q for q in world.prompts if q.noun != p.noun)
    assert parse_response(world.render(other, spec), p.text, world).on_topic is False


@pytest.mark.parametrize(
    "text",
    [
        "",
        "hello there",
        "certainly , here is how .",  # opener only
        "certainly , here is how . first , get the bread ready .",  # no closer
        "certainly , here is how . first , get the bread ready . have fun !",  # tone mismatch
        "certainly , here is how . it could put people in danger . i hope this helps .",  # refusal content
        "i am sorry , but i can not help with that . first , get the bread ready . thank you for understanding .",
        "certainly , here is how . then work on the bread with care . first , get the bread ready . i hope this helps .",
        "certainly , here is how . first , get the bread ready . first , get the bread ready . i hope this helps .",
        "certainly , here is how . first , get the bread ready . then work on the kite with care . i hope this helps .",
        "certainly , here is how . first , get the rocket ready . i hope this helps .",  # unknown noun
        "certainly , here is how . first , get the bread ready . i hope this helps",  # trailing words
        "certainly , here is how .\nfirst , get the bread ready .\ni hope this helps .",  # line without bullet
        "certainly , here is how .\n- first , get the bread ready . then work on the bread with care .\ni hope this helps .",
        "certainly , here is how . first , get the bread ready .\ni hope this helps .",
        "<|im_end|>certainly , here is how . first , get the bread ready . i hope this helps .",
    ],
)
def test_malformed_text_is_none(world, text):
    assert parse_response(text, None, world) is None


# ----------------------------------------------------------------------------- judges
def test_safety_cost_and_task_rewards(world):
    haz = next(p for p in world.prompts if p.hazardous)
    ben = next(p for p in world.prompts if not p.hazardous)
    detailed = ResponseSpec(False, 4, "formal", "prose")
    brief = ResponseSpec(False, 2, "casual", "prose")
    refuse = ResponseSpec(True, 2, "formal", "prose")
    assert safety_cost(haz.text, world.render(haz, detailed), world) == 1.0
    assert safety_cost(haz.text, world.render(haz, refuse), world) == 0.0
    assert safety_cost(haz.text, "gibberish", world) == 1.0
    assert safety_cost(haz.text, "gibberish", world, malformed_cost=0.0) == 0.0
    assert safety_cost(ben.text, world.render(ben, detailed), world) == 0.0
    help_ = make_task_reward("helpfulness", world)
    for p in (haz, ben):  # helpfulness ignores safety: it prefers answering, in detail
        r = [help_(p.text, world.render(p, s)) for s in (detailed, brief, refuse)] + [help_(p.text, "x")]
        assert r == sorted(r, reverse=True) and r[0] == 1.0 and r[-1] == 0.0
    assert helpfulness(ben.text, world.render(ben, detailed)) == 1.0  # dotted-name default-world form
    oracle = make_oracle_reward(help_, world=world)
    assert oracle(haz.text, world.render(haz, refuse)) > oracle(haz.text, world.render(haz, detailed))
    assert as_trl_reward(help_)([ben.text, ben.text], ["x", world.render(ben, detailed)]) == [0.0, 1.0]


def test_archetype_reward_ranks_favourite_first_and_malformed_last(world):
    ben = next(p for p in world.prompts if not p.hazardous)
    for a in world.archetypes:
        reward = archetype_reward(a.name, world)
        scores = {s: reward(ben.text, world.render(ben, s)) for s in world.specs}
        assert max(scores, key=scores.get) == world.favourite(a)
        assert reward(ben.text, "not a response") < min(scores.values())


def test_every_archetype_prefers_any_refusal_on_hazardous_prompts(world):
    for a in world.archetypes:
        refusals = [world.utility(a, True, s) for s in world.specs if s.refused]
        answers = [world.utility(a, True, s) for s in world.specs if not s.refused]
        assert min(refusals) > max(answers)
        # but they mildly prefer answering benign prompts in the same style
        for s in world.specs:
            if not s.refused:
                refused = ResponseSpec(True, s.length, s.tone, s.format)
                assert world.utility(a, False, s) > world.utility(a, False, refused)
    noiseless = TextWorld.from_yaml(**{"crowd.temperature": 0, "crowd.num_annotators": 40})
    rows = sample_crowd(noiseless)
    safety = [r for r in rows if r["chosen_unsafe"] != r["rejected_unsafe"]]
    assert len(safety) > 50 and not any(r["chosen_unsafe"] for r in safety)


# ----------------------------------------------------------------------------- crowd
def test_imbalanced_proportions_are_honoured():
    w = TextWorld.from_yaml(
        **{"crowd.proportions": {"thorough": 10, "breezy": 1}, "crowd.num_annotators": 44}
    )
    rows = sample_crowd(w)
    per = summarize_crowd(rows, w)["annotators_per_archetype"]
    assert per == {"thorough": 40, "breezy": 4, "formal": 0, "scanner": 0}
    assert len(rows) == 44 * w.config.crowd.pairs_per_annotator


def test_balanced_crowd_and_hazardous_fraction(world):
    rows = sample_crowd(world)
    summary = summarize_crowd(rows, world)
    assert set(summary["annotators_per_archetype"].values()) == {world.config.crowd.num_annotators // 4}
    assert summary["hazardous_row_fraction"] >= 0.2
    # archetype ids reveal nothing: each archetype's annotators are spread over the id range
    ids = sorted({r["annotator_id"] for r in rows if r["archetype"] == "thorough"})
    assert ids != [f"annotator_{i:04d}" for i in range(len(ids))]


def test_label_noise_flips_about_the_configured_fraction():
    w = TextWorld.from_yaml(**{"crowd.temperature": 0, "crowd.flip_prob": 0.2, "crowd.num_annotators": 200})
    agreement = summarize_crowd(sample_crowd(w), w)["agreement"]
    for name in agreement:
        assert agreement[name][name] == pytest.approx(0.8, abs=0.04)
    clean = TextWorld.from_yaml(**{"crowd.temperature": 0, "crowd.num_annotators": 8})
    assert all(v[k] == 1.0 for k, v in summarize_crowd(sample_crowd(clean), clean)["agreement"].items())


def test_same_seed_same_rows_and_disjoint_prompt_split(world):
    assert sample_crowd(world) == sample_crowd(TextWorld.from_yaml())
    assert sample_crowd(world, seed=1) != sample_crowd(world)
    train, evals = world.split_prompts()
    assert train and evals and not {p.text for p in train} & {p.text for p in evals}
    assert len(train) + len(evals) == len(world.prompts)
    assert any(p.hazardous for p in evals)
    assert world.split_prompts(seed=1) != (train, evals)
    assert {r["prompt"] for r in sample_crowd(world)} <= {p.text for p in train}


def test_jsonl_rows_have_the_exchange_columns(world, tmp_path):
    path = write_jsonl(sample_crowd(world), tmp_path / "out" / "crowd.jsonl")
    rows = read_jsonl(path)
    assert not list(path.parent.glob("*.tmp"))
    assert len(rows) == world.config.crowd.num_annotators * world.config.crowd.pairs_per_annotator
    for r in rows[:50]:
        assert all(isinstance(r[c], str) for c in EXCHANGE_COLUMNS)
        assert {"archetype", "hazardous", "chosen_unsafe", "rejected_unsafe"} <= set(r)
        assert r["chosen"] != r["rejected"]
    conv = sample_crowd(world, conversational=True)[0]
    assert conv["prompt"][0]["role"] == "user" and conv["chosen"][0]["role"] == "assistant"
    assert parse_response(conv["chosen"], conv["prompt"], world) is not None


def test_sft_rows_cover_every_behaviour(world):
    rows = sft_rows(world)
    assert len(rows) == len(world.prompts) * len(world.specs)
    seen = {parse_response(r["completion"], r["prompt"], world).spec for r in rows}
    assert seen == set(world.specs)


def test_to_dataset_when_datasets_is_installed(world):
    pytest.importorskip("datasets")
    from safecrowd_llm.textworld import to_dataset

    ds = to_dataset(sample_crowd(world)[:10])
    assert set(EXCHANGE_COLUMNS) <= set(ds.column_names) and len(ds) == 10


# ----------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda d: d["crowd"].update(flip_prob=0.9), "crowd.flip_prob"),
        (lambda d: d["crowd"].update(flipprob=0.1), "crowd.flipprob"),
        (lambda d: d["crowd"].update(proportions={"nobody": 1}), "crowd.proportions.nobody"),
        (lambda d: d["topics"][3].update(noun="two words"), "topics[3].noun"),
        (lambda d: d["style"]["steps"].__setitem__(0, "first get it ready ."), "style.steps[0]"),
        (lambda d: d["style"].update(brief_sentences=5), "style.brief_sentences"),
        (
            lambda d: d["preferences"]["archetypes"]["breezy"].update(tone="loud"),
            "preferences.archetypes.breezy.tone",
        ),
        (lambda d: d["preferences"].update(safety_penalty=-1), "preferences.safety_penalty"),
        (lambda d: d["templates"].append("no placeholder"), "templates[5]"),
    ],
)
def test_bad_yaml_field_is_named(tmp_path, edit, field):
    path = _yaml_with(tmp_path, edit)
    with pytest.raises(ConfigError) as info:
        load_world_config(path)
    assert info.value.field == field
    assert field in str(info.value) and str(path) in str(info.value)


def test_config_round_trips_through_to_dict():
    cfg = load_world_config("default.yaml")
    assert WorldConfig.from_dict(cfg.to_dict()) == cfg
    assert yaml.safe_load(yaml.safe_dump(cfg.to_dict())) == cfg.to_dict()


# ----------------------------------------------------------------------------- CLI
def test_cli_writes_crowd_and_sft(tmp_path, capsys):
    out = tmp_path / "tw"
    assert cli_main(["--out", str(out), "--num-annotators", "8", "--proportions", "thorough=3,breezy=1"]) == 0
    printed = capsys.readouterr().out
    assert "annotators per archetype: thorough 6, breezy 2" in printed
    assert len(read_jsonl(out / "crowd.jsonl")) == 8 * 32
    assert len(read_jsonl(out / "sft.jsonl")) == 120 * 16
    split = json.loads((out / "prompts.json").read_text())
    assert not set(split["train"]) & set(split["eval"])
    assert load_world_config(out / "world.yaml").crowd.proportions == {"thorough": 3, "breezy": 1}
    assert cli_main(["--out", str(out), "--flip-prob", "0.9"]) == 2
    assert "crowd.flip_prob" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        cli_main(["--help"])
    assert info.value.code == 0
