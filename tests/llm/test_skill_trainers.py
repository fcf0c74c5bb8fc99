"""Safe-CPL / Safe-VPL trainers on a tiny untrained model: they learn, save, resume and export."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("trl", reason="needs the llm extra: pip install -e '.[llm]'")

from peft import PeftModel

from safecrowd_llm.data import build_crowd
from safecrowd_llm.embeddings import cached_embeddings, embed_texts
from safecrowd_llm.latent_lora import set_latent
from safecrowd_llm.skills_export import export_skills, load_manifest
from safecrowd_llm.textworld import TextWorld, sample_crowd, to_dataset
from safecrowd_llm.tiny_base import build_tiny_model, train_tokenizer, world_texts
from safecrowd_llm.trainers import (
    AnnotatorSetDataset,
    LatentSkillModel,
    SafeCPLConfig,
    SafeCPLTrainer,
    SafeVPLConfig,
    SafeVPLTrainer,
    tokenize_pairs,
)
from safecrowd_llm.trainers.base_trainer import shifted_log_probs as lp
from safecrowd_llm.trainers.safe_cpl_trainer import (
    confident_positions,
    continuation_weights,
    off_support_nll,
    token_kl,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def setup():
    world = TextWorld.from_yaml(**{"crowd.num_annotators": 12, "crowd.pairs_per_annotator": 10})
    ds = to_dataset(sample_crowd(world, seed=0))
    tok = train_tokenizer(world_texts(world))
    base = build_tiny_model(tok, hidden_size=32, num_layers=1, num_heads=2, seed=0)
    texts = [f"{p}\n{r}" for side in ("chosen", "rejected") for p, r in zip(ds["prompt"], ds[side])]
    emb = embed_texts(base, tok, texts, progress=False)
    n = len(ds)
    crowd = build_crowd(ds, emb[:n], emb[n:])
    tokens = tokenize_pairs(tok, ds["prompt"], ds["chosen"], ds["rejected"], 96)
    return {"tok": tok, "base_state": base.state_dict(), "config": base.config, "crowd": crowd, "tokens": tokens, "dim": emb.shape[1]}


def make_trainer(setup, kind: str, out: Path, **overrides):
    from transformers import Qwen2ForCausalLM

    base = Qwen2ForCausalLM(setup["config"])
    base.load_state_dict(setup["base_state"])
    cfg_cls, tr_cls = (SafeCPLConfig, SafeCPLTrainer) if kind == "safe-cpl" else (SafeVPLConfig, SafeVPLTrainer)
    kwargs = dict(
        output_dir=str(out), max_steps=8, per_device_train_batch_size=4, logging_steps=1, save_strategy="no",
        report_to="none", use_cpu=True, latent_dim=2, encoder_hidden_dim=16, encoder_layers=1, max_target_pairs=3,
        lora_r=4, kl_warmup_steps=4, seed=0, disable_tqdm=True,
    )
    kwargs.update(overrides)
    args = cfg_cls(**kwargs)
    model = LatentSkillModel.build(base, args, feature_dim=setup["dim"], base_model_name_or_path="tiny", kind=kind)
    data = AnnotatorSetDataset(setup["crowd"], (args.context_min, args.context_max), args.max_target_pairs, seed=0)
    return tr_cls(model=model, args=args, train_dataset=data, tokens=setup["tokens"], processing_class=setup["tok"])


@pytest.mark.parametrize("kind", ["safe-cpl", "safe-vpl"])
def test_every_trainable_parameter_changes_and_metrics_are_logged(setup, kind, tmp_path):
    trainer = make_trainer(setup, kind, tmp_path, learning_rate=1e-2)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert logged and all(k in logged[0] for k in ("elbo", "kl", "log_lik", "accuracy", "beta"))
    unchanged = [n for n, p in trainer.model.named_parameters() if p.requires_grad and torch.equal(p, before[n])]
    # Bradley-Terry sees reward differences only: the head's bias gets (numerically) no gradient
    assert [n for n in unchanged if n != "head.bias"] == []
    frozen = [n for n, p in trainer.model.backbone.named_parameters() if not p.requires_grad]
    assert frozen and all("lora" not in n for n in frozen)


def test_cpl_learns_the_crowd_preferences(setup, tmp_path):
    trainer = make_trainer(setup, "safe-cpl", tmp_path, max_steps=30, learning_rate=1e-2, logging_steps=5)
    trainer.train()
    ll = [h["log_lik"] for h in trainer.state.log_history if "log_lik" in h]
    assert ll[-1] > ll[0] + 0.05, ll


def test_token_kl_is_zero_at_the_reference_and_ignores_prompt_positions():
    logits = torch.randn(2, 5, 7)
    mask = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 1, 0]])
    assert token_kl(lp(logits), lp(logits), mask).item() == pytest.approx(0.0, abs=1e-6)
    moved = logits.clone()
    moved[0, 0] += torch.randn(7) * 3  # position t predicts token t + 1: here prompt token 1 of row 0
    moved[1, 3:] += torch.randn(2, 7) * 3  # position 4 is past the end; position 3 predicts padding
    assert token_kl(lp(moved), lp(logits), mask).item() == pytest.approx(0.0, abs=1e-6)
    moved[0, 2] += torch.randn(7) * 3
    assert token_kl(lp(moved), lp(logits), mask).item() > 0.01


def test_continuation_kl_leaves_the_first_response_token_free():
    logits = torch.randn(1, 6, 7)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1]])  # position 1 predicts response token 0
    opening, later = logits.clone(), logits.clone()
    opening[0, 1] += torch.randn(7) * 3
    later[0, 3] += torch.randn(7) * 3
    free_opening = continuation_weights(mask, mask, 0.85)
    assert token_kl(lp(opening), lp(logits), mask).item() > 0.01
    assert token_kl(lp(opening), lp(logits), free_opening).item() == pytest.approx(0.0, abs=1e-6)
    assert token_kl(lp(later), lp(logits), free_opening).item() > 0.01
    # from the divergence (token 2 of the response): the shared prefix is held, the decision is free
    decision = torch.tensor([[0, 0, 0, 0, 1, 1]])
    torch.testing.assert_close(continuation_weights(mask, decision, 0.5), torch.tensor([[0, 0, 1, 1, 0, 0.5]]))
    with pytest.raises(ValueError, match="gamma < 1"):
        SafeCPLConfig(output_dir="x", kl_coef=1.0, kl_positions="continuation", gamma=1.0)


def test_confident_kl_holds_only_what_the_base_was_sure_of(setup, tmp_path):
    ref = torch.zeros(1, 5, 4)
    ref[0, 1, 2] = 10.0  # position 1 (it predicts token 2) is sure ...
    ref[0, 2, :2] = 3.0  # ... position 2 hesitates between two vocabulary entries
    ref[0, 3, 0] = 10.0
    mask = torch.tensor([[0, 1, 1, 1, 1]])  # position 0 (prompt) predicts response token 1
    assert confident_positions(ref, mask, 0.9).tolist() == [[0, 0, 1, 0, 1]]
    moved = ref.clone()
    moved[0, 2] = torch.tensor([0.0, 5.0, 0.0, 0.0])  # a new choice where the base hesitated: free
    assert token_kl(lp(moved), lp(ref), confident_positions(ref, mask, 0.9)).item() == pytest.approx(0.0, abs=1e-6)
    moved[0, 3] = torch.tensor([0.0, 10.0, 0.0, 0.0])  # overriding what the base was sure of: held
    assert token_kl(lp(moved), lp(ref), confident_positions(ref, mask, 0.9)).item() > 1.0
    trainer = make_trainer(setup, "safe-cpl", tmp_path, max_steps=4, kl_coef=1.0, kl_positions="confident")
    trainer.train()
    assert all(math.isfinite(h["token_kl"]) for h in trainer.state.log_history if "token_kl" in h)
    with pytest.raises(ValueError, match="kl_confidence"):
        SafeCPLConfig(output_dir=str(tmp_path), kl_positions="confident", kl_confidence=1.0, use_cpu=True)


def _final_token_kl(trainer) -> float:
    trainer.args.kl_coef = trainer.args.kl_coef or 1.0  # measured also where it was not trained
    trainer.model.eval()
    for batch in trainer.get_train_dataloader():
        with torch.no_grad():
            trainer.compute_loss(trainer.model, batch)
    values = trainer._metrics["eval"]["token_kl"]
    return sum(values) / len(values)


def test_kl_to_the_base_keeps_the_policy_near_it(setup, tmp_path):
    runs = {}
    for coef in (0.0, 5.0):
        trainer = make_trainer(setup, "safe-cpl", tmp_path / str(coef), max_steps=30, learning_rate=1e-2, kl_coef=coef)
        trainer.train()
        runs[coef] = trainer
    assert "token_kl" in runs[5.0].state.log_history[0] and "token_kl" not in runs[0.0].state.log_history[0]
    free, held = _final_token_kl(runs[0.0]), _final_token_kl(runs[5.0])
    assert held < 0.5 * free, (held, free)


def test_off_support_nll_counts_only_mass_on_tokens_the_base_ruled_out():
    ref = torch.log(torch.tensor([[[0.6, 0.3, 0.095, 0.005]] * 3]))  # (1, 3, 4): token 3 is ruled out at 0.01
    mask = torch.tensor([[0, 1, 1]])
    reordered = torch.log(torch.tensor([[[0.05, 0.05, 0.9, 0.0]] * 3]) + 1e-9)
    assert off_support_nll(lp(reordered), lp(ref), mask, 0.01).item() == pytest.approx(0.0, abs=1e-6)
    leaked = torch.log(torch.tensor([[[0.3, 0.1, 0.1, 0.5]] * 3]))
    assert off_support_nll(lp(leaked), lp(ref), mask, 0.01).item() == pytest.approx(math.log(2), rel=1e-4)
    flat = torch.zeros(1, 3, 4)  # a reference sure of nothing still keeps its top token as an option: finite
    assert math.isfinite(off_support_nll(lp(leaked), lp(flat), mask, 0.9).item())
    with pytest.raises(ValueError, match="support_min_prob"):
        SafeCPLConfig(output_dir="x", support_min_prob=0.0)


def test_support_term_keeps_a_pushed_down_choice_on_the_base_options(setup, tmp_path):
    """Pushing a rejected choice down (the regret at lam 1) frees its mass onto every other token, the ones no answer
    starts with too; with the support term it goes to the base's other option."""
    vocab = 50
    ref = torch.full((1, 2, vocab), 0.05 / (vocab - 2))
    ref[0, :, :2] = torch.tensor([0.5, 0.45])  # the base's two options: tokens 0 and 1
    ref, mask = ref.log(), torch.tensor([[0, 1]])
    leaked = {}
    for coef in (0.0, 5.0):
        logits = ref.clone().requires_grad_(True)
        opt = torch.optim.Adam([logits], lr=0.05)
        for _ in range(100):
            rejected = torch.log_softmax(logits[0, 0], -1)[0]
            loss = rejected + coef * off_support_nll(lp(logits), lp(ref), mask, 0.01)
            opt.zero_grad()
            loss.backward()
            opt.step()
        probs = torch.softmax(logits[0, 0].detach(), -1)
        assert probs[0] < 0.05  # the rejected choice is pushed down either way
        leaked[coef] = 1 - probs[:2].sum().item()
    assert leaked[0.0] > 0.08 and leaked[5.0] < 0.02, leaked  # the base had 0.05 there
    trainer = make_trainer(setup, "safe-cpl", tmp_path, max_steps=4, lam=1.0, support_coef=1.0)
    trainer.train()
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert logged and all(math.isfinite(h["off_support"]) for h in logged)


def test_resume_from_checkpoint_gives_the_uninterrupted_result(setup, tmp_path):
    full = make_trainer(setup, "safe-cpl", tmp_path / "a", save_strategy="steps", save_steps=4)
    full.train()
    resumed = make_trainer(setup, "safe-cpl", tmp_path / "b")
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-4"))
    last = lambda t: [h["loss"] for h in t.state.log_history if "loss" in h][-1]  # noqa: E731
    assert last(resumed) == pytest.approx(last(full), rel=1e-4)
    for (n, p), (_, q) in zip(full.model.named_parameters(), resumed.model.named_parameters()):
        torch.testing.assert_close(p, q, msg=n)
    ckpt = tmp_path / "a" / "checkpoint-4"
    assert (ckpt / "skill_model.safetensors").exists() and not (ckpt / "model.safetensors").exists()


def test_export_writes_peft_adapters_and_manifest(setup, tmp_path):
    from transformers import Qwen2ForCausalLM

    trainer = make_trainer(setup, "safe-cpl", tmp_path, learning_rate=1e-2)
    trainer.train()
    model = trainer.model
    export_skills(model, setup["crowd"], tmp_path / "skills", num_skills=2, training_config={"a": 1})
    loaded = load_manifest(tmp_path / "skills")
    assert loaded["latent_dim"] == 2 and len(loaded["skills"]) == 2 and loaded["config_hash"]
    assert sorted(a for s in loaded["skills"] for a in s["annotators"]) == sorted(setup["crowd"].annotator_ids)
    ids = torch.tensor([setup["tokens"].chosen[0]])
    for skill in loaded["skills"]:
        base = Qwen2ForCausalLM(setup["config"])
        base.load_state_dict(setup["base_state"])
        peft_logits = PeftModel.from_pretrained(base, skill["path"]).eval()(input_ids=ids).logits
        model.eval()
        with set_latent(model.backbone, torch.tensor(skill["latent"])), torch.no_grad():
            latent_logits = model.backbone(input_ids=ids).logits
        torch.testing.assert_close(peft_logits, latent_logits, atol=1e-4, rtol=1e-4)
    assert json.loads((tmp_path / "skills" / "skills.json").read_text())["method"] == "safe-cpl"


def test_embedding_cache_is_reused(setup, tmp_path):
    from transformers import Qwen2ForCausalLM

    base = Qwen2ForCausalLM(setup["config"])
    base.load_state_dict(setup["base_state"])
    texts = ["how do i bake bread ?", "i can not help with that ."]
    first = cached_embeddings(base, setup["tok"], texts, tmp_path, progress=False)
    assert len(list(tmp_path.glob("embeddings-*.safetensors"))) == 1
    torch.testing.assert_close(cached_embeddings(base, setup["tok"], texts, tmp_path, progress=False), first)
    cached_embeddings(base, setup["tok"], texts[:1], tmp_path, progress=False)
    assert len(list(tmp_path.glob("embeddings-*.safetensors"))) == 2  # other texts, other key


def test_recipe_help_lists_method_options():
    out = subprocess.run(
        [sys.executable, str(ROOT / "recipes" / "train_skills.py"), "--method", "safe-cpl", "--help"],
        capture_output=True, text=True, check=True, env={"HF_HUB_OFFLINE": "1", "PATH": ""},
    ).stdout
    assert "--lam" in out and "--latent_dim" in out and "--kl_schedule" in out


def _train_skills_recipe():
    spec = importlib.util.spec_from_file_location("train_skills_recipe", ROOT / "recipes" / "train_skills.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_shipped_skills_config_parses():
    """The YAMLs the recipe ships (the GPU one included, which CI never runs) name only known options."""
    recipe = _train_skills_recipe()
    configs = [p for p in sorted((ROOT / "recipes").glob("*.yaml")) if f"train_skills.py --config recipes/{p.name}" in p.read_text()]
    assert any(p.name == "pku_qwen_cpl_gpu.yaml" for p in configs) and len(configs) >= 3
    for path in configs:
        argv = ["--config", str(path), "--use_cpu", "true"]  # the GPU config's bf16 is checked against the device
        data_args, training_args = recipe.make_parser(recipe.method_from_argv(argv)).parse_args_and_config(argv)
        assert data_args.dataset and training_args.output_dir, path.name
    gpu = ROOT / "recipes" / "pku_qwen_cpl_gpu.yaml"
    _, training_args = recipe.make_parser("safe-cpl").parse_args_and_config(["--config", str(gpu), "--use_cpu", "true"])
    assert training_args.bf16 and training_args.warmup_steps == 0.05  # a ratio of the total steps


def test_unknown_config_option_is_an_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: safe-cpl\ndataset: x.jsonl\nwarmup_ratio: 0.05\n")
    recipe = _train_skills_recipe()
    with pytest.raises(ValueError, match="warmup_ratio"):
        recipe.make_parser("safe-cpl").parse_args_and_config(["--config", str(bad)])


def test_sequence_logps_discounts_response_tokens_from_the_first_one() -> None:
    from safecrowd_llm.core import discounted_sum
    from safecrowd_llm.trainers.base_trainer import sequence_logps

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 7, 5, generator=g)
    ids = torch.randint(0, 5, (2, 7), generator=g)
    resp = torch.tensor([[0, 0, 1, 1, 1, 1, 0], [0, 0, 0, 1, 1, 1, 1]])  # prompt, response, padding
    token_logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    for row in range(2):
        on = resp[row, 1:].bool()
        expected = discounted_sum(token_logp[row, on], gamma=0.7)
        got, n = sequence_logps(logits, ids, resp, gamma=0.7)
        assert torch.allclose(got[row], expected) and n[row] == on.sum()
    assert torch.allclose(sequence_logps(logits, ids, resp)[0], (token_logp * resp[:, 1:]).sum(-1))


def test_divergence_mask_starts_where_chosen_and_rejected_first_differ(setup) -> None:
    from safecrowd_llm.trainers.set_data import AnnotatorSetCollator, TokenizedPairs

    hand = TokenizedPairs(chosen=[[7, 8, 1, 2, 3, 4], [7, 5, 6]], chosen_prompt_len=[2, 1],
                          rejected=[[7, 8, 1, 2, 9], [7, 9]], rejected_prompt_len=[2, 1])
    assert hand.shared == [2, 0]  # response tokens (1, 2) shared, then 3 vs 9; row 1 differs at once

    tokens = setup["tokens"]
    item = AnnotatorSetDataset(setup["crowd"], (2, 2), 4, seed=0)[0]
    batch = AnnotatorSetCollator(tokens, pad_token_id=0)([item])
    rows = item["target"].ids.tolist()
    resp, div = batch["response_mask"], batch["divergence_mask"]
    for i, row in enumerate(rows):
        for j, plen in ((i, tokens.chosen_prompt_len[row]), (i + len(rows), tokens.rejected_prompt_len[row])):
            assert int(div[j].nonzero().min()) == plen + tokens.shared[row]
            assert int(div[j].sum()) == int(resp[j].sum()) - tokens.shared[row]


def test_cpl_from_divergence_scores_only_the_tokens_after_the_shared_prefix(setup, tmp_path):
    """The reference log-probs (and hence f) leave out the shared prefix: a pair whose responses share a prefix has a
    smaller |ref log-prob| from the divergence than from the response start; training runs on that f and moves
    every latent-LoRA matrix. (Whether it learns better is measured on the text world: BENCHMARKS.md.)"""
    from safecrowd_llm.trainers.safe_cpl_trainer import reference_logps

    trainer = make_trainer(setup, "safe-cpl", tmp_path, max_steps=4, learning_rate=1e-2, logging_steps=1,
                           discount_from="divergence", gamma=0.9)
    tokens = setup["tokens"]
    full = reference_logps(trainer.model.backbone, tokens, 0, gamma=0.9)[0]
    div = reference_logps(trainer.model.backbone, tokens, 0, gamma=0.9, from_divergence=True)[0]
    shared = torch.tensor(tokens.shared)
    assert (shared > 0).any() and (shared == 0).any()
    torch.testing.assert_close(div[shared == 0], full[shared == 0])
    assert (div[shared > 0].abs() < full[shared > 0].abs()).all()
    lora = {n: p.detach().clone() for n, p in trainer.model.backbone.named_parameters() if "lora" in n and p.requires_grad}
    trainer.train()
    moved = {n: not torch.equal(p, lora[n]) for n, p in trainer.model.backbone.named_parameters() if n in lora}
    assert moved and all(moved.values()), moved
    assert all(math.isfinite(h["loss"]) for h in trainer.state.log_history if "loss" in h)
    with pytest.raises(ValueError, match="discount_from"):
        SafeCPLConfig(output_dir=str(tmp_path), discount_from="middle", use_cpu=True)


def test_hesitant_regret_scores_only_the_tokens_the_base_hesitated_on(setup, tmp_path):
    """``regret_positions: hesitant``: f (and its reference log-probs) sums only the response tokens whose base top-token
    probability is below ``kl_confidence``, the regret's gradient reaches no other position, and gamma counts those
    tokens (a token after three sure ones still weighs gamma**1 if it is the second choice)."""
    from safecrowd_llm.trainers.base_trainer import sequence_logps
    from safecrowd_llm.trainers.safe_cpl_trainer import base_sure, reference_logps

    trainer = make_trainer(setup, "safe-cpl", tmp_path, regret_positions="hesitant", gamma=0.9, bc_coef=0.0)
    batch = next(iter(trainer.get_train_dataloader()))
    with torch.no_grad():
        ref = trainer.model.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    top = (ref.amax(-1) - ref.logsumexp(-1)).exp()[:, :-1][batch["response_mask"][:, 1:].bool()]
    threshold = top.median().item()  # the random tiny base is never sure at 0.9: half its response tokens are here
    sure = base_sure(ref, threshold)
    assert not sure[:, 0].any()
    trainer = make_trainer(setup, "safe-cpl", tmp_path, regret_positions="hesitant", gamma=0.9, bc_coef=0.0,
                           kl_confidence=threshold)
    tokens = setup["tokens"]
    every = reference_logps(trainer.model.backbone, tokens, 0, gamma=0.9)[0]
    hesitant = reference_logps(trainer.model.backbone, tokens, 0, gamma=0.9, hesitant_below=threshold)[0]
    assert (hesitant != every).any()
    gaps = torch.tensor([[0, 0, 1, 0, 0, 1]])  # two choices with sure tokens between them: weights 1 and gamma
    logp = sequence_logps(torch.zeros(1, 6, 8), torch.zeros(1, 6, dtype=torch.long), gaps, 0.9)[0]
    assert logp.item() == pytest.approx(-math.log(8) * (1 + 0.9))

    captured = []

    def keep_logits(module, args, out):
        if out.logits.requires_grad:
            out.logits.retain_grad()
            captured.append(out.logits)

    hook = trainer.model.backbone.register_forward_hook(keep_logits)
    trainer.compute_loss(trainer.model, batch).backward()
    hook.remove()
    scored = (batch["response_mask"].bool() & ~sure)[:, 1:]  # logits at t predict token t + 1
    assert scored.any() and (~scored & batch["response_mask"][:, 1:].bool()).any()
    for logits in captured:
        grad = logits.grad[:, :-1].abs().sum(-1)
        assert (grad[~scored] == 0).all() and (grad[scored] > 0).all()
    with pytest.raises(ValueError, match="regret_positions"):
        SafeCPLConfig(output_dir=str(tmp_path), regret_positions="sure", use_cpu=True)


def test_evaluation_scores_a_comparison_as_training_did(setup, tmp_path):
    """The context-effect evaluation's margin is the trainer's f margin (same hesitant positions, divergence
    discount and window, read from the saved model's spec), not a plain discounted sum over the response."""
    from safecrowd_llm.evaluate_skills import _margins
    from safecrowd_llm.latent_lora import set_latent

    trainer = make_trainer(setup, "safe-cpl", tmp_path)
    batch = next(iter(trainer.get_train_dataloader()))
    with torch.no_grad():
        ref = trainer.model.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    top = (ref.amax(-1) - ref.logsumexp(-1)).exp()[:, :-1][batch["response_mask"][:, 1:].bool()]
    threshold = top.median().item()  # the random tiny base is never sure at 0.9: half its response tokens are here
    trainer = make_trainer(setup, "safe-cpl", tmp_path, regret_positions="hesitant", discount_from="divergence",
                           gamma=0.9, regret_window=3, kl_confidence=threshold)
    model = trainer.model
    assert model.spec["regret_positions"] == "hesitant" and model.spec["kl_confidence"] == threshold
    torch.manual_seed(0)
    with torch.no_grad():  # a latent LoRA that is not zero, so the skill differs from the base
        for n, p in model.backbone.named_parameters():
            if "lora" in n:
                p.add_(0.05 * torch.randn_like(p))
    batch = next(iter(trainer.get_train_dataloader()))
    m = batch["pair_set"].shape[0]
    z_seq = torch.randn(1, 2).expand(2 * m, -1)
    with torch.no_grad():
        set_latent(model.backbone, z_seq)
        f = trainer.pair_scores(model, batch, z_seq)["ratio"]
        set_latent(model.backbone, None)
        margin = _margins(model, batch, z_seq, m)
        model.spec = {**model.spec, "regret_positions": "all", "discount_from": "response", "regret_window": 0}
        plain = _margins(model, batch, z_seq, m)
    torch.testing.assert_close(margin, f[:m] - f[m:])
    assert not torch.allclose(plain, margin)


def test_regret_window_scores_only_the_first_tokens_of_the_decision(setup, tmp_path):
    """With ``regret_window: 2`` the regret's gradient reaches only the first two tokens from the divergence: the rest
    of both responses (the rejected one's above all) gets none, and the reference log-probs count the same tokens."""
    from safecrowd_llm.trainers.safe_cpl_trainer import first_tokens, reference_logps

    mask = torch.tensor([[0, 1, 1, 1, 0], [0, 0, 0, 1, 1]], dtype=torch.bool)
    assert first_tokens(mask, 2).tolist() == [[0, 1, 1, 0, 0], [0, 0, 0, 1, 1]]
    assert torch.equal(first_tokens(mask, 0), mask)
    trainer = make_trainer(setup, "safe-cpl", tmp_path, discount_from="divergence", gamma=0.9, regret_window=2,
                           bc_coef=0.0)
    tokens = setup["tokens"]
    every = reference_logps(trainer.model.backbone, tokens, 0, gamma=0.9, from_divergence=True)[0]
    window = reference_logps(trainer.model.backbone, tokens, 0, gamma=0.9, from_divergence=True, window=2)[0]
    longer = torch.tensor([len(c) - p - s > 2 for c, p, s in zip(tokens.chosen, tokens.chosen_prompt_len, tokens.shared)])
    assert longer.any() and (window[longer].abs() < every[longer].abs()).all()

    captured = []

    def keep_logits(module, args, out):
        out.logits.retain_grad()
        captured.append(out.logits)

    hook = trainer.model.backbone.register_forward_hook(keep_logits)
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.compute_loss(trainer.model, batch).backward()
    hook.remove()
    scored = first_tokens(batch["divergence_mask"], 2)[:, 1:]  # logits at t predict token t + 1
    for logits in captured:
        grad = logits.grad[:, :-1].abs().sum(-1)
        assert (grad[~scored] == 0).all() and (grad[scored] > 0).all()
    with pytest.raises(ValueError, match="regret_window"):
        SafeCPLConfig(output_dir=str(tmp_path), regret_window=-1, use_cpu=True)


def _group_objective(trainer, sets, z) -> float:
    """Mean log-likelihood of every pair of ``sets`` under the one latent ``z``, plus log p(z) / #pairs."""
    model = trainer.model
    items = [{"context": s.subset(torch.arange(1)), "target": s} for s in sets]
    inputs = trainer.data_collator(items)
    with torch.no_grad():
        ll = trainer._set_log_likelihood(model, inputs, {}, z.reshape(1, -1).expand(len(sets), -1), inputs["sets"])
        n = inputs["pair_set"].numel()
        return (ll.sum() / n + model.vae.prior.log_prob(z.reshape(1, -1)).sum() / n).item()


@pytest.mark.parametrize("kind", ["safe-cpl", "safe-vpl"])
def test_fit_group_latent_explains_the_group_better_and_trains_nothing(setup, tmp_path, kind):
    trainer = make_trainer(setup, kind, tmp_path, max_steps=20, learning_rate=1e-2)
    trainer.train()
    sets = list(setup["crowd"].sets.values())[:4]
    z0 = torch.zeros(trainer.model.latent_dim)
    weights = {n: (p.detach().clone(), p.requires_grad) for n, p in trainer.model.named_parameters()}
    z = trainer.fit_group_latent(sets, z0, steps=30, lr=0.1)
    assert z.shape == z0.shape and not torch.equal(z, z0)
    assert _group_objective(trainer, sets, z) > _group_objective(trainer, sets, z0) + 1e-3
    for n, p in trainer.model.named_parameters():
        assert torch.equal(p, weights[n][0]) and p.requires_grad == weights[n][1], n
    assert trainer.model.training
