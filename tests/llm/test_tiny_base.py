"""The tiny base LM: tokenizer, chat template, save/load, sampling, a short SFT, and the recipe's CLI."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("trl")

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from safecrowd_llm.textworld import TextWorld, WorldConfig, sft_rows
from safecrowd_llm.tiny_base import (
    CPU_SFT_DEFAULTS,
    TinyBaseArguments,
    build_tiny_model,
    generation_report,
    parse_rate,
    sample_completions,
    train_tiny_base,
    train_tokenizer,
    world_texts,
)

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "sft_base.py"
CONFIG = ROOT / "recipes" / "textworld_sft.yaml"
ODD_TEXTS = ["hello  world 12345\n\n- café ünïcode", "  leading spaces and tabs\t!", "日本語 😀"]


@pytest.fixture(scope="module")
def world() -> TextWorld:
    return TextWorld.from_yaml()


@pytest.fixture(scope="module")
def tokenizer(world):
    return train_tokenizer(world_texts(world))


def test_tokenizer_round_trips_and_words_are_tokens(world, tokenizer):
    texts = world_texts(world)
    for text in [*texts, *ODD_TEXTS]:
        assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    # BPE merged every word of the world into one token: at most one token per word (or line break)
    assert len(tokenizer) < 600
    for text in texts:
        assert len(tokenizer(text)["input_ids"]) <= len(text.split()) + text.count("\n"), text
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    for special in ("<|im_start|>", "<|im_end|>", "<|endoftext|>"):
        assert len(tokenizer(special)["input_ids"]) == 1


def test_chat_template_renders_chatml(tokenizer):
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "how do i brew tea ?"},
        {"role": "assistant", "content": "sure thing , here you go !\n- first , get the tea ready ."},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert text == (
        "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhow do i brew tea ?<|im_end|>\n"
        "<|im_start|>assistant\nsure thing , here you go !\n- first , get the tea ready .<|im_end|>\n"
    )
    prompt = tokenizer.apply_chat_template(messages[1:2], tokenize=False, add_generation_prompt=True)
    assert prompt == "<|im_start|>user\nhow do i brew tea ?<|im_end|>\n<|im_start|>assistant\n"
    # {% generation %} marks the assistant content and its <|im_end|> (TRL's assistant_only_loss)
    out = tokenizer.apply_chat_template(messages[1:], return_assistant_tokens_mask=True, return_dict=True)
    marked = [t for t, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert tokenizer.decode(marked) == messages[2]["content"] + "<|im_end|>"


def test_prompt_tokens_are_a_prefix_of_prompt_plus_completion(world, tokenizer):
    """What TRL's completion mask relies on: the rendered prompt tokenizes the same inside the full row."""
    for row in sft_rows(world, world.prompts[::7], conversational=True):
        prompt = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, return_dict=True)
        full = tokenizer.apply_chat_template(row["prompt"] + row["completion"], return_dict=True)
        assert full["input_ids"][: len(prompt["input_ids"])] == prompt["input_ids"]
        assert full["input_ids"][-2] == tokenizer.eos_token_id  # ... <|im_end|> \n


def test_build_tiny_model_is_seeded_and_sized_for_the_tokenizer(tokenizer):
    model = build_tiny_model(tokenizer, seed=0)
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size) == (128, 2, 4, 256)
    assert cfg.vocab_size == len(tokenizer) and cfg.tie_word_embeddings
    assert sum(p.numel() for p in model.parameters()) < 500_000
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    same = build_tiny_model(tokenizer, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), same.parameters()))


def test_save_load_round_trip_gives_identical_logits(world, tokenizer, tmp_path):
    model = build_tiny_model(tokenizer, seed=1)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert not list(tmp_path.glob("*.bin")) and (tmp_path / "model.safetensors").exists()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    loaded_tok = AutoTokenizer.from_pretrained(tmp_path)  # transformers 5 picks Qwen2Tokenizer here
    for text in [*world_texts(world)[::5], *ODD_TEXTS]:
        assert loaded_tok(text)["input_ids"] == tokenizer(text)["input_ids"], text
    assert loaded_tok.chat_template == tokenizer.chat_template
    assert (loaded_tok.eos_token, loaded_tok.pad_token) == (tokenizer.eos_token, tokenizer.pad_token)
    msgs = [[{"role": "user", "content": p.text}] for p in world.prompts[:4]]
    texts = [tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in msgs]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, loaded(**batch).logits)


def test_sample_completions_is_seeded_ordered_and_side_effect_free(world, tokenizer):
    model = build_tiny_model(tokenizer, seed=0).train()
    prompts = [p.text for p in world.prompts[:3]]
    state = torch.random.get_rng_state()
    a = sample_completions(model, tokenizer, prompts, n=2, max_new_tokens=6, seed=3, batch_size=4)
    assert torch.equal(state, torch.random.get_rng_state())
    assert model.training and tokenizer.padding_side == "right"
    b = sample_completions(model, tokenizer, prompts, n=2, max_new_tokens=6, seed=3, batch_size=4)
    assert a == b and len(a) == 6
    assert a != sample_completions(model, tokenizer, prompts, n=2, max_new_tokens=6, seed=4, batch_size=4)
    # prompt-major order: row i*n + j is prompt i; one prompt alone gives the same first rows
    greedy = sample_completions(model, tokenizer, prompts, n=2, temperature=0, max_new_tokens=6)
    assert greedy[0] == greedy[1]
    assert greedy[2:4] == sample_completions(model, tokenizer, prompts[1:2], n=2, temperature=0, max_new_tokens=6)
    rows, generate = [], model.generate  # greedy copies are decoded once
    model.generate = lambda **kw: rows.append(len(kw["input_ids"])) or generate(**kw)
    assert sample_completions(model, tokenizer, prompts, n=4, temperature=0, max_new_tokens=6)[::4] == greedy[::2]
    assert sum(rows) == len(prompts)


def test_generation_report_reads_canonical_responses(world):
    prompts = [p for p in world.prompts[:2] for _ in world.specs]
    texts = [world.render(p, s) for p in world.prompts[:2] for s in world.specs]
    report = generation_report(world, prompts, texts)
    assert report["parse_rate"] == report["on_topic_rate"] == report["behaviour_coverage"] == 1.0
    assert report["refusal_rate_benign"] == 0.5
    half = texts[:16] + ["certainly , here is how ."] * 16
    assert parse_rate(world, prompts, half) == 0.5
    assert generation_report(world, prompts[:16], texts[:16])["behaviour_coverage"] == 1.0
    assert generation_report(world, prompts[:4], texts[:4])["behaviour_coverage"] == 0.25


SHORT = {"hidden_size": 64, "num_layers": 2, "num_heads": 2, "intermediate_size": 128}


@pytest.fixture(scope="module")
def trained(world, tmp_path_factory):
    """A short SFT of a smaller model through the recipe's code path: ~15-20 s on one thread."""
    from trl import SFTConfig

    out = tmp_path_factory.mktemp("tiny_base")
    sft = {**CPU_SFT_DEFAULTS, "max_steps": 200, "per_device_train_batch_size": 16, "learning_rate": 1e-2}
    args = TinyBaseArguments(**SHORT, eval_samples=48, eval_temperature=0.7)
    training_args = SFTConfig(output_dir=str(out), disable_tqdm=True, **{**sft, "logging_steps": 10})
    return out, train_tiny_base(world, out, args, training_args)


def completion_nll(model, tokenizer, world: TextWorld, prompts) -> float:
    """Mean NLL per completion token of every behaviour on ``prompts`` (teacher-forced, chat template)."""
    rows = sft_rows(world, prompts, conversational=True)
    rendered = [tokenizer.apply_chat_template(r["prompt"], add_generation_prompt=True, return_dict=True) for r in rows]
    prompt_lens = [len(r["input_ids"]) for r in rendered]
    texts = [tokenizer.apply_chat_template(r["prompt"] + r["completion"], tokenize=False) for r in rows]
    batch = tokenizer(texts, return_tensors="pt", padding=True)  # right padding
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    for i, n in enumerate(prompt_lens):
        labels[i, :n] = -100
    with torch.no_grad():
        return float(model(**batch, labels=labels).loss)


def test_short_sft_lowers_loss_and_makes_generations_parseable(world, trained):
    _, result = trained
    m, tok = result.metrics, result.tokenizer
    assert m["steps"] == 200
    assert m["first_logged_loss"] > 4.0 and m["final_logged_loss"] < 0.3  # floor ~0.075: the choice of behaviour
    untrained = build_tiny_model(tok, **SHORT, seed=0)
    held_out = world.split_prompts()[1]
    # held-out prompts, every behaviour: the model generalises to unseen template x topic pairs
    assert completion_nll(untrained, tok, world, held_out[:8]) > 5.0
    assert completion_nll(result.model, tok, world, held_out[:8]) < 0.3
    before = sample_completions(untrained, tok, held_out, temperature=0.7, max_new_tokens=60)
    assert parse_rate(world, held_out, before) == 0.0
    gen = m["generation"]  # 48 samples on held-out prompts at T=0.7; measured 0.54 (the full recipe: ~0.98 at T=1)
    assert gen["parse_rate"] >= 0.3 and gen["behaviour_coverage"] >= 0.25, gen


def test_short_sft_changes_every_parameter_and_saves_a_loadable_artifact(world, trained):
    out, result = trained
    initial = build_tiny_model(result.tokenizer, **SHORT, seed=CPU_SFT_DEFAULTS["seed"])
    for (name, before), after in zip(initial.named_parameters(), result.model.parameters()):
        assert not torch.allclose(before, after), f"{name} did not change"
    info = json.loads((out / "tiny_base.json").read_text())
    assert info["arguments"]["hidden_size"] == 64 and info["metrics"]["steps"] == 200
    assert TextWorld(WorldConfig.from_dict(info["world"])).prompts == world.prompts  # the artifact names its world
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    prompts = world.split_prompts()[1][:8]
    texts = sample_completions(model, tok, prompts, temperature=0.7, max_new_tokens=60)
    assert texts == sample_completions(result.model, result.tokenizer, prompts, temperature=0.7, max_new_tokens=60)


def _load_recipe():
    spec = importlib.util.spec_from_file_location("sft_base_recipe", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_recipe_yaml_is_cpu_safe_and_matches_the_programmatic_defaults():
    script_args, training_args = _load_recipe().make_parser().parse_args_and_config(
        ["--config", str(CONFIG), "--max_steps", "5"]
    )
    assert training_args.max_steps == 5  # the command line wins over the YAML
    assert not training_args.bf16 and not training_args.gradient_checkpointing
    assert training_args.save_strategy == "no" and training_args.report_to in ([], ["none"], "none")
    for key, value in CPU_SFT_DEFAULTS.items():
        if key not in ("max_steps", "save_strategy", "report_to"):  # parsed to an enum / a list
            assert getattr(training_args, key) == value, key
    assert script_args == TinyBaseArguments()  # the YAML spells out the dataclass defaults


def test_recipe_help_lists_every_option():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    proc = subprocess.run(
        [sys.executable, str(RECIPE), "--help"], capture_output=True, text=True, env=env, timeout=120, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr
    for option in ("--config", "--world_config", "--vocab_size", "--hidden_size", "--eval_samples", "--max_steps",
                   "--learning_rate", "--output_dir", "--max_length", "--bf16"):
        assert option in proc.stdout, option


@pytest.mark.slow
def test_recipe_yaml_defaults_reach_the_prototype_fluency(tmp_path):
    """The full recipe (~3 min on one thread): >= 95% parseable generations at temperature 1."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(RECIPE), "--config", str(CONFIG), "--output_dir", str(tmp_path), "--disable_tqdm", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1200, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    gen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert gen["parse_rate"] >= 0.95 and gen["behaviour_coverage"] == 1.0, gen
