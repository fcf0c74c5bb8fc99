"""Tests of the latent-conditioned LoRA on a tiny Qwen2 built from a config (no hub, no tokenizer).

The central one is exactness: at any fixed z' the latent model and the exported PEFT adapter, loaded by
``PeftModel.from_pretrained`` into a fresh copy of the base, give the same logits.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2ForSequenceClassification

from safecrowd_llm.latent_lora import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    LatentLoraConfig,
    export_skill,
    inject_latent_lora,
    latent_lora_layers,
    load_latent_lora,
    save_latent_lora,
    set_latent,
)

D = 3  # latent dim
SUFFIXES = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


def tiny_config(**overrides) -> Qwen2Config:
    return Qwen2Config(
        vocab_size=100,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        **overrides,
    )


@pytest.fixture(scope="module")
def base_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(1234)
    return {k: v.clone() for k, v in Qwen2ForCausalLM(tiny_config()).state_dict().items()}


def fresh_base(state: dict[str, torch.Tensor]) -> Qwen2ForCausalLM:
    model = Qwen2ForCausalLM(tiny_config())
    model.load_state_dict(state)
    return model.eval()


def latent_model(state: dict[str, torch.Tensor], randomise: bool = True, **cfg) -> Qwen2ForCausalLM:
    config = LatentLoraConfig(**{"latent_dim": D, "r": 4, "lora_alpha": 8, **cfg})
    model = inject_latent_lora(fresh_base(state), config)
    if randomise:  # B_0 and B_j non-zero, so every part of ΔW(z') matters
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.normal_(0.0, 0.2)
    return model.eval()


@pytest.fixture
def ids() -> torch.Tensor:
    return torch.randint(0, 100, (3, 7))


def logits(model: torch.nn.Module, ids: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
    with torch.no_grad(), set_latent(model, z):
        return model(input_ids=ids).logits


def logits_plain(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Logits of a model without latent-LoRA layers (the base, or a PeftModel)."""
    with torch.no_grad():
        return model(input_ids=ids).logits


def load_peft(state: dict[str, torch.Tensor], adapter_dir: Path) -> PeftModel:
    """``PeftModel.from_pretrained`` on a fresh base, failing on any PEFT warning about keys."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        peft_model = PeftModel.from_pretrained(fresh_base(state), str(adapter_dir))
    assert not [w for w in caught if "key" in str(w.message).lower()], [str(w.message) for w in caught]
    result = peft_model.load_adapter(str(adapter_dir), adapter_name="check")
    assert result.missing_keys == [] and result.unexpected_keys == []
    peft_model.set_adapter("default")
    return peft_model.eval()


# ----------------------------------------------------------------------------- (1) exactness of export


@pytest.mark.parametrize(
    ("targets", "expected_targets"),
    [("all-linear", SUFFIXES), (["layers.0.self_attn.q_proj", "v_proj"], None)],
)
def test_export_matches_latent_model(base_state, ids, tmp_path, targets, expected_targets) -> None:
    model = latent_model(base_state, target_modules=targets)
    zs = [torch.tensor([1.0, -0.5, 2.0]), torch.tensor([-1.5, 0.8, 0.3])]
    outs = []
    for k, z in enumerate(zs):
        adapter = export_skill(model, z, tmp_path / f"skill{k}", "tiny-qwen2")
        peft_logits = logits_plain(load_peft(base_state, adapter), ids)
        outs.append(logits(model, ids, z))
        torch.testing.assert_close(outs[-1], peft_logits, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(outs[0], outs[1], atol=1e-3)

    cfg = json.loads((tmp_path / "skill0" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["task_type"] == "CAUSAL_LM" and cfg["bias"] == "none"
    assert (cfg["r"], cfg["lora_alpha"], cfg["base_model_name_or_path"]) == (4, 8, "tiny-qwen2")
    assert not cfg["modules_to_save"] and not cfg["use_dora"]  # vLLM rejects both
    layer_names = list(latent_lora_layers(model))
    assert cfg["target_modules"] == (expected_targets or sorted(layer_names))  # sorted: same bytes every run
    tensors = load_file(tmp_path / "skill0" / "adapter_model.safetensors")
    assert set(tensors) == {f"base_model.model.{n}.lora_{ab}.weight" for n in layer_names for ab in "AB"}
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in tensors
    assert sorted(p.name for p in tmp_path.iterdir()) == ["skill0", "skill1"]  # no temp folders left


def test_export_overwrites_atomically(base_state, tmp_path) -> None:
    model = latent_model(base_state)
    export_skill(model, torch.zeros(D), tmp_path / "skill", "tiny-qwen2")
    (tmp_path / "skill" / "stale.txt").write_text("old")
    export_skill(model, torch.ones(D), tmp_path / "skill", "tiny-qwen2")
    assert sorted(p.name for p in (tmp_path / "skill").iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["skill"]


# ----------------------------------------------------------------------------- (2) latent semantics


def test_zero_latent_is_the_b0_lora_and_rows_are_independent(base_state, ids) -> None:
    model = latent_model(base_state)
    at_none = logits(model, ids, None)
    torch.testing.assert_close(logits(model, ids, torch.zeros(D)), at_none, atol=1e-6, rtol=0)
    z = torch.randn(D)
    torch.testing.assert_close(
        logits(model, ids, z), logits(model, ids, z.expand(3, D)), atol=1e-5, rtol=1e-5
    )
    assert not torch.allclose(logits(model, ids, z), at_none, atol=1e-3)

    rows = torch.randn(3, D)  # one latent per example in one batch == each example alone
    batched = logits(model, ids, rows)
    for i in range(3):
        torch.testing.assert_close(
            batched[i : i + 1], logits(model, ids[i : i + 1], rows[i]), atol=1e-5, rtol=1e-5
        )

    with torch.no_grad():  # with every B_j = 0, any latent gives the B_0-only LoRA
        for layer in latent_lora_layers(model).values():
            layer.lora_B_latent.zero_()
    torch.testing.assert_close(logits(model, ids, rows), at_none, atol=1e-6, rtol=0)

    with pytest.raises(ValueError, match="latent batch 2"):
        logits(model, ids, torch.randn(2, D))
    with pytest.raises(ValueError, match="shape"):
        set_latent(model, torch.randn(D + 1))


def test_set_latent_context_restores_previous(base_state) -> None:
    model = latent_model(base_state)
    z = torch.randn(D)
    set_latent(model, z)
    with set_latent(model, None):
        assert all(layer.latent is None for layer in latent_lora_layers(model).values())
    assert all(torch.equal(layer.latent, z[None]) for layer in latent_lora_layers(model).values())


# ----------------------------------------------------------------------------- (3) training


def test_only_lora_trains_and_every_trainable_parameter_changes(base_state, ids) -> None:
    model = latent_model(base_state, randomise=False).train()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.rsplit(".", 1)[-1] in {"lora_A", "lora_B", "lora_B_latent"} for n in trainable)
    assert len(trainable) == 3 * 14  # 7 Linears per layer x 2 layers, lm_head excluded
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    z = torch.randn(3, D, requires_grad=True)  # stands in for the encoder's reparameterised sample
    optimizer = torch.optim.AdamW(trainable.values(), lr=1e-2)
    for _ in range(3):
        optimizer.zero_grad()
        with set_latent(model, z):
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
        optimizer.step()
    assert z.grad is not None and z.grad.abs().sum() > 0  # gradient reaches the latent (the encoder)
    for n, p in model.named_parameters():
        changed = not torch.equal(p, before[n])
        assert changed == (n in trainable), f"{n}: changed={changed}, trainable={n in trainable}"


def test_gradient_checkpointing_gives_the_same_gradients(base_state, ids) -> None:
    z = torch.randn(3, D)
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(5)
        model = latent_model(base_state).train()
        if checkpointing:
            enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5.x name
            if enable is None:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            else:
                enable(activation_checkpointing_kwargs={"use_reentrant": False})
        with set_latent(model, z):  # backward inside: the recomputation reads the same latent
            model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad]))
    torch.testing.assert_close(grads[1], grads[0], atol=1e-6, rtol=1e-5)


# ----------------------------------------------------------------------------- (4) save / load


def test_save_load_round_trip(base_state, ids, tmp_path) -> None:
    model = latent_model(base_state, lora_dropout=0.1, target_modules=["q_proj", "mlp.down_proj"])
    out = save_latent_lora(model, tmp_path / "latent")
    assert sorted(p.name for p in out.iterdir()) == sorted([CONFIG_NAME, WEIGHTS_NAME])
    loaded = load_latent_lora(fresh_base(base_state), out).eval()
    assert loaded.latent_lora_config == model.latent_lora_config
    z = torch.randn(3, D)
    assert torch.equal(logits(loaded, ids, z), logits(model, ids, z))

    other = inject_latent_lora(fresh_base(base_state), LatentLoraConfig(latent_dim=D, r=2))
    with pytest.raises(ValueError, match="was saved with"):
        load_latent_lora(other, out)


# ----------------------------------------------------------------------------- (5) validation


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"latent_dim": 0}, "latent_dim"),
        ({"latent_dim": 2, "r": 0}, "r must"),
        ({"latent_dim": 2, "r": 2.5}, "r must"),
        ({"latent_dim": 2, "lora_alpha": -1}, "lora_alpha"),
        ({"latent_dim": 2, "lora_dropout": 1.0}, "lora_dropout"),
        ({"latent_dim": 2, "target_modules": "q_proj"}, "wrap a single name"),
        ({"latent_dim": 2, "target_modules": []}, "non-empty list"),
        ({"latent_dim": 2, "init_latent_B": "ones"}, "init_latent_B"),
        ({"latent_dim": 2, "latent_init_std": -0.1}, "latent_init_std"),
    ],
)
def test_config_validation(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        LatentLoraConfig(**kwargs)


def test_config_round_trip_and_injection_errors(base_state) -> None:
    config = LatentLoraConfig(latent_dim=2, target_modules=("q_proj",), init_latent_B="gaussian")
    assert config.target_modules == ["q_proj"]
    assert LatentLoraConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="unknown LatentLoraConfig fields"):
        LatentLoraConfig.from_dict({**config.to_dict(), "rank": 3})
    with pytest.raises(ValueError, match="match no module"):
        inject_latent_lora(fresh_base(base_state), LatentLoraConfig(latent_dim=2, target_modules=["q_prj"]))
    with pytest.raises(ValueError, match=r"not nn\.Linear"):
        inject_latent_lora(fresh_base(base_state), LatentLoraConfig(latent_dim=2, target_modules=["mlp"]))
    model = inject_latent_lora(fresh_base(base_state), config)
    with pytest.raises(ValueError, match="already"):
        inject_latent_lora(model, config)


def test_all_linear_skips_classification_head() -> None:
    model = Qwen2ForSequenceClassification(tiny_config(num_labels=1, pad_token_id=0))
    inject_latent_lora(model, LatentLoraConfig(latent_dim=2))
    names = list(latent_lora_layers(model))
    assert len(names) == 14 and not any("score" in n for n in names)


# ----------------------------------------------------------------------------- (6) starts at the base


def test_fresh_injection_equals_base_model(base_state, ids) -> None:
    base_logits = logits_plain(fresh_base(base_state), ids)
    model = latent_model(base_state, randomise=False)
    assert torch.equal(logits(model, ids, None), base_logits)
    assert torch.equal(logits(model, ids, torch.randn(3, D)), base_logits)
