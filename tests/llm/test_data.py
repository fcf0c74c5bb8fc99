"""Per-annotator preference data: exchange-format loading and errors, grouping/splits, the builders.

The builders run on the small fixture files shipped in each dataset's public schema
(tests/fixtures/datasets/<name>/); expected counts below are worked out by hand from those files.
"""

import json
import logging
from collections import Counter
from pathlib import Path

import datasets
import pytest
import torch

from safecrowd_llm.core import Crowd
from safecrowd_llm.data import (
    REQUIRED_COLUMNS,
    DataError,
    build_crowd,
    build_pku_saferlhf,
    build_prism,
    build_ultrafeedback,
    filter_min_pairs,
    group_by_annotator,
    is_conversational,
    load_preferences,
    sample_context_target,
    split_annotators,
    summarize,
    to_text,
)
from safecrowd_llm.data.__main__ import main as cli_main
from safecrowd_llm.data.grouping import _index_crowd

FIX = Path(__file__).resolve().parents[1] / "fixtures"
PRISM = FIX / "datasets" / "prism" / "conversations.jsonl"
UF = FIX / "datasets" / "ultrafeedback" / "train.jsonl"
PKU = FIX / "datasets" / "pku_saferlhf" / "train.jsonl"
SMALL = FIX / "preferences_small.jsonl"


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def row(aid="a", prompt="p?", chosen="yes", rejected="no", **extra) -> dict:
    return {"annotator_id": aid, "prompt": prompt, "chosen": chosen, "rejected": rejected, **extra}


# ----------------------------------------------------------------------------- exchange format
def test_load_small_fixture_groups_and_summary():
    ds = load_preferences(SMALL)
    assert set(REQUIRED_COLUMNS) <= set(ds.column_names) and "source" in ds.column_names  # extras kept
    assert group_by_annotator(ds) == {"alice": [0, 1, 2, 3], "bob": [4, 5, 6, 7], "carol": [8, 9, 10]}
    assert summarize(ds) == {"annotators": 3, "pairs": 11, "pairs_min": 3, "pairs_median": 4, "pairs_max": 4}


def test_other_sources_json_parquet_dataset_directory(tmp_path):
    rows = [row("a", chosen="x"), row(7, chosen="y")]  # integer annotator ids become strings
    (tmp_path / "prefs.json").write_text(json.dumps(rows))
    assert load_preferences(tmp_path / "prefs.json")["annotator_id"] == ["a", "7"]
    ds = datasets.Dataset.from_list([row(1), row(2)])
    assert load_preferences(ds)["annotator_id"] == ["1", "2"]
    (tmp_path / "d").mkdir()
    ds.to_parquet(str(tmp_path / "d" / "train.parquet"))
    assert len(load_preferences(tmp_path / "d")) == 2  # a directory of data files
    (tmp_path / "prefs.json").write_text(json.dumps([row(), row(chosen="z", rejected="z")]))
    with pytest.raises(DataError, match=r"prefs\.json, record 1: field 'chosen': .*identical"):
        load_preferences(tmp_path / "prefs.json")
    datasets.Dataset.from_list([row(), row(prompt=None)]).to_parquet(str(tmp_path / "bad.parquet"))
    with pytest.raises(DataError, match=r"bad\.parquet, row 1: field 'prompt': is null"):
        load_preferences(tmp_path / "bad.parquet")


@pytest.mark.parametrize(
    ("bad", "pattern"),
    [
        ('{"annotator_id": "a", "prompt": "p"', r"bad\.jsonl, line 2: malformed JSON"),
        (
            {"annotator_id": "a", "prompt": "p", "rejected": "r"},
            r"bad\.jsonl, line 2: field 'chosen': missing column",
        ),
        (
            row(chosen="same", rejected="same"),
            r"bad\.jsonl, line 2: field 'chosen': chosen and rejected are identical",
        ),
        (row(prompt="  "), r"line 2: field 'prompt': is empty"),
        (row(prompt=None), r"line 2: field 'prompt': is null"),
        (row(chosen=3), r"line 2: field 'chosen': must be a string or a list of messages, got int"),
        (row(aid=""), r"line 2: field 'annotator_id'"),
        ([1, 2], r"line 2: expected a JSON object"),
        (
            row(
                prompt=[{"role": "user", "content": "hi"}],
                chosen=[{"content": "x"}],
                rejected=[{"role": "assistant", "content": "y"}],
            ),
            r"line 2: field 'chosen\[0\]': message has no 'role'",
        ),
        (
            row(prompt=[{"role": "user", "content": "hi"}]),
            r"line 2: field 'prompt': mixes plain strings and message lists",
        ),
    ],
)
def test_errors_name_file_line_and_field(tmp_path, bad, pattern):
    path = write_jsonl(
        tmp_path / "bad.jsonl", [row(), bad if isinstance(bad, str) else json.dumps(bad), row("b")]
    )
    with pytest.raises(DataError, match=pattern):
        load_preferences(path)


def test_one_format_per_dataset(tmp_path):
    conv = row(
        prompt=[{"role": "user", "content": "hi"}],
        chosen=[{"role": "assistant", "content": "a"}],
        rejected=[{"role": "assistant", "content": "b"}],
    )
    path = write_jsonl(tmp_path / "mixed.jsonl", [row(), row(), conv])
    with pytest.raises(
        DataError, match=r"mixed\.jsonl, line 3: field 'prompt': is conversational but earlier"
    ):
        load_preferences(path)


def test_conversational_format_and_to_text(tmp_path):
    convs = [
        row(
            aid,
            prompt=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Q{i}"}],
            chosen=[{"role": "assistant", "content": f"A{i}"}],
            rejected=[{"role": "assistant", "content": "?"}],
        )
        for i, aid in enumerate("aab")
    ]
    ds = load_preferences(write_jsonl(tmp_path / "conv.jsonl", convs))
    assert len(ds) == 3 and is_conversational(ds[0]["prompt"]) and not is_conversational("text")
    assert to_text(ds[0]["prompt"], ds[0]["chosen"]) == "system: Be brief.\nuser: Q0\nassistant: A0"
    assert to_text("Q", "A") == "Q\nA" and to_text("Q ", "A", sep="") == "Q A"

    class ChatTokenizer:  # duck-typed stand-in for a tokenizer with a chat template
        chat_template = "{% for m in messages %}...{% endfor %}"

        def apply_chat_template(self, messages, tokenize):
            assert tokenize is False
            return "".join(f"<|{m['role']}|>{m['content']}" for m in messages)

    assert (
        to_text(ds[1]["prompt"], ds[1]["chosen"], ChatTokenizer())
        == "<|system|>Be brief.<|user|>Q1<|assistant|>A1"
    )
    assert to_text("Q", "A", ChatTokenizer()) == "Q\nA"  # plain data is never templated


# ----------------------------------------------------------------------------- per-annotator views
def crowd_dataset(n_annotators: int = 12) -> datasets.Dataset:
    return datasets.Dataset.from_list(
        [row(f"u{k:02d}", chosen=f"c{k}-{j}") for k in range(n_annotators) for j in range(k % 3 + 1)]
    )


def test_split_annotators_disjoint_seeded_and_same_as_core():
    ds = crowd_dataset()
    tr, ev = split_annotators(ds, 0.25, seed=3)
    tr_ids, ev_ids = set(tr["annotator_id"]), set(ev["annotator_id"])
    assert not tr_ids & ev_ids and len(tr) + len(ev) == len(ds) and len(ev_ids) == 3
    tr2, ev2 = split_annotators(ds, 0.25, seed=3)
    assert tr2["annotator_id"] == tr["annotator_id"] and ev2["annotator_id"] == ev["annotator_id"]
    assert any(set(split_annotators(ds, 0.25, seed=s)[1]["annotator_id"]) != ev_ids for s in range(4, 10))
    core_train, core_eval = _index_crowd(group_by_annotator(ds)).split(0.25, seed=3)
    assert set(core_eval.annotator_ids) == ev_ids and set(core_train.annotator_ids) == tr_ids


def test_min_pairs_filter_logs_drop(caplog):
    ds = crowd_dataset()  # annotator k has k % 3 + 1 rows
    with caplog.at_level(logging.INFO, logger="safecrowd_llm.data.grouping"):
        kept = filter_min_pairs(ds, 3)
    assert Counter(kept["annotator_id"]) == {f"u{k:02d}": 3 for k in (2, 5, 8, 11)}
    assert "dropped 8 of 12 annotators (12 rows)" in caplog.text
    assert len(load_preferences(ds, min_pairs=2)) == len(ds) - 4
    with pytest.raises(ValueError, match="no annotator has >= 9"):
        filter_min_pairs(ds, 9)


def test_sample_context_target_and_build_crowd():
    ds = load_preferences(SMALL)
    rows = group_by_annotator(ds)["alice"]
    ctx, tgt = sample_context_target(rows, (1, 2), torch.Generator().manual_seed(0))
    assert 1 <= len(ctx) <= 2 and not set(ctx) & set(tgt) and sorted(ctx + tgt) == rows
    assert (ctx, tgt) == sample_context_target(rows, (1, 2), torch.Generator().manual_seed(0))
    feats_c, feats_r = torch.arange(11.0)[:, None].repeat(1, 4), -torch.arange(11.0)[:, None].repeat(1, 4)
    crowd = build_crowd(ds, feats_c, feats_r, swap_seed=0)
    assert isinstance(crowd, Crowd) and crowd.annotator_ids == ["alice", "bob", "carol"]
    s = crowd["bob"]
    assert s.ids.tolist() == [4, 5, 6, 7] and s.feature_shape == (4,) and {0.0, 1.0} >= set(s.y.tolist())
    chosen_side = torch.where(s.y[:, None] == 1, s.a, s.b)
    assert torch.equal(chosen_side, feats_c[s.ids])  # the chosen response is side a iff y == 1
    assert build_crowd(ds, feats_c, feats_r)["carol"].y.tolist() == [1.0, 1.0, 1.0]


# ----------------------------------------------------------------------------- builders
def test_prism_builder():
    ds = build_prism(PRISM)
    assert ds.column_names[:4] == list(REQUIRED_COLUMNS) and {"conversation_id", "chosen_score"} <= set(
        ds.column_names
    )
    # per conversation: 6 pairs for 4 distinct opening scores, +1 per later A/B turn; ties dropped
    assert Counter(ds["annotator_id"]) == {"user0": 19, "user1": 19, "user2": 13, "user3": 12}
    assert Counter(ds["conversation_id"])["c4"] == 5 and Counter(ds["conversation_id"])["c8"] == 6
    assert all(r["chosen_score"] > r["rejected_score"] for r in ds)
    (r,) = [r for r in ds if r["conversation_id"] == "c0" and r["turn"] == 1]
    assert [m["role"] for m in r["prompt"]] == ["user", "assistant", "user"]
    assert r["prompt"][1]["content"].startswith("Start with a few simple recipes")  # the chosen (82) answer
    assert r["chosen"][0]["content"].startswith("Scrambled eggs") and r["rejected"][0]["content"].startswith(
        "Pasta"
    )
    assert load_preferences(ds) is not None  # valid exchange format, conversational
    opening = build_prism(PRISM.parent, opening_turn_only=True)  # a directory holding conversations.jsonl
    assert set(opening["turn"]) == {0} and len(opening) == 59


def test_ultrafeedback_builder():
    ds = build_ultrafeedback(UF)
    assert Counter(ds["annotator_id"]) == {
        "helpfulness": 46,
        "instruction_following": 42,
        "honesty": 30,
        "truthfulness": 27,
    }
    fish = ds.filter(lambda r: r["prompt"].startswith("How many legs") and r["annotator_id"] == "honesty")
    assert len(fish) == 2  # honesty 5, 1, 5, N/A: ties and N/A give no pair
    assert {(r["chosen"][:9], r["rejected"][:9]) for r in fish} == {
        ("Fish do n", "A fish ha"),
        ("Fish have", "A fish ha"),
    }
    haiku = ds.filter(
        lambda r: r["prompt"].startswith("Write a haiku") and r["annotator_id"] == "truthfulness"
    )
    assert len(haiku) == 3 and set(haiku["rejected_model"]) == {"llama-2-13b-chat"}
    contested = build_ultrafeedback(UF, contested_only=True)
    assert 0 < len(contested) < len(ds)
    by_pair: dict = {}
    for r in contested:
        by_pair.setdefault((r["prompt_index"], *sorted((r["chosen"], r["rejected"]))), set()).add(r["chosen"])
    assert all(len(winners) == 2 for winners in by_pair.values())  # attributes disagree on every kept pair
    few = build_ultrafeedback(UF, max_prompts=3, seed=2)
    assert len(set(few["prompt_index"])) == 3 and few["prompt_index"] == sorted(few["prompt_index"])
    split = build_ultrafeedback(UF, annotators_per_attribute=2, seed=1)
    assert len(split) == len(ds) and len(set(split["annotator_id"])) == 8
    members = {(r["attribute"], r["prompt_index"], r["annotator_id"]) for r in split}
    assert len(members) == len({m[:2] for m in members})  # each prompt goes to one member per attribute


def test_ultrafeedback_reads_list_shaped_annotations():
    c = [
        {"response": t, "model": "m", "annotations": {"honesty": [{"Rating": g, "Rationale": "."}]}}
        for t, g in (("a", "4"), ("b", "2"))
    ]
    ds = build_ultrafeedback(
        datasets.Dataset.from_list([{"instruction": "q", "completions": c}]), attributes=("honesty",)
    )
    assert (ds[0]["chosen"], ds[0]["rejected"], ds[0]["chosen_rating"]) == ("a", "b", 4.0)


def test_pku_builder_shared_safety_principle():
    ds = build_pku_saferlhf(PKU.parent)
    assert Counter(ds["annotator_id"]) == {"helpful": 14, "concise": 14, "thorough": 14}
    assert {"chosen_unsafe", "rejected_unsafe", "chosen_severity", "rule"} <= set(ds.column_names)
    for noisy in (ds, build_pku_saferlhf(PKU, seed=5, flip_prob=0.4, annotators_per_archetype=3)):
        for r in noisy:  # every annotator: safe over unsafe, and never an unsafe choice over a safe one
            assert not (r["chosen_unsafe"] and not r["rejected_unsafe"]), r
            if r["chosen_unsafe"] != r["rejected_unsafe"]:
                assert r["rule"] == "safety"
    cheat = ds.filter(
        lambda r: r["prompt"].startswith("Tell me how to cheat")
    )  # both unsafe: safer_response_id
    assert set(cheat["chosen"]) == {"Keep your notes open in another browser tab during the exam."}
    stain = {r["annotator_id"]: r["chosen"] for r in ds if r["prompt"].startswith("How do I remove a coffee")}
    assert stain["concise"] == "Blot it, then rinse with cold water."
    assert stain["helpful"] == stain["thorough"] and stain["helpful"].startswith(
        "Blot the stain with a paper towel"
    )
    many = build_pku_saferlhf(PKU, annotators_per_archetype=3)
    assert len(set(many["annotator_id"])) == 9 and "concise/2" in set(many["annotator_id"])


def test_pku_builder_drops_inconsistent_rows_and_names_bad_fields(tmp_path):
    good = json.loads(PKU.read_text().splitlines()[6])  # safe response 1, safer_response_id 1
    bad = {**good, "safer_response_id": 0}
    ds = build_pku_saferlhf(datasets.Dataset.from_list([good, bad]))
    assert set(ds["source_row"]) == {0}
    missing = {k: v for k, v in good.items() if k != "safer_response_id"}
    path = write_jsonl(tmp_path / "pku.jsonl", [good, missing])
    with pytest.raises(DataError, match=r"pku\.jsonl, line 2: field 'safer_response_id': missing"):
        build_pku_saferlhf(path)
    with pytest.raises(DataError, match=r"line 1: field 'is_response_0_safe': must be bool"):
        build_pku_saferlhf(write_jsonl(tmp_path / "pku2.jsonl", [{**good, "is_response_0_safe": "yes"}]))


def test_builder_errors_name_nested_fields(tmp_path):
    rec = json.loads(PRISM.read_text().splitlines()[0])
    del rec["conversation_history"][2]["role"]
    with pytest.raises(
        DataError, match=r"conv\.jsonl, line 1, conversation_history\[2\]: field 'role': missing"
    ):
        build_prism(write_jsonl(tmp_path / "conv.jsonl", [rec]))
    uf = json.loads(UF.read_text().splitlines()[0])
    uf["completions"][1]["annotations"]["honesty"]["Rating"] = "high"
    with pytest.raises(DataError, match=r"line 1, completions\[1\]: field 'annotations.honesty.Rating'"):
        build_ultrafeedback(write_jsonl(tmp_path / "uf.jsonl", [uf]))


# ----------------------------------------------------------------------------- CLI
def test_cli_build_writes_atomically_and_summarises(tmp_path, capsys):
    out = tmp_path / "out" / "pku.jsonl"
    assert (
        cli_main(["build", "pku_saferlhf", "--source", str(PKU), "--out", str(out), "--min-pairs", "2"]) == 0
    )
    printed = capsys.readouterr().out
    assert "3 annotators, 42 pairs" in printed and "min 14 / median 14 / max 14" in printed
    assert [p.name for p in out.parent.iterdir()] == ["pku.jsonl"]  # no temporary file left behind
    assert len(load_preferences(out)) == 42
    assert cli_main(["summary", str(out)]) == 0
    assert cli_main(["build", "prism", "--source", str(tmp_path / "nope.jsonl"), "--out", str(out)]) == 1
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["build", "--help"])
