"""The tiny base language model of the crowd text world: tokenizer, model, SFT, sampling and parse rate.

Why: skills (latent LoRAs) need a base model that can already produce every behaviour of the world —
refusal and compliance in every style — so that training chooses among behaviours instead of
inventing them. A Qwen2 architecture (hidden 128, 4 layers, 4 heads, ~0.7M parameters) with a byte-level BPE
tokenizer trained on the world's own texts learns this in a few minutes on one CPU thread, and it
is the same architecture family and ChatML template as Qwen2.5-Instruct, so code written against it
runs unchanged on a real model. ``train_tiny_base`` is what ``recipes/sft_base.py`` runs; pipelines can call it directly.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM, set_seed

from .textworld import Prompt, TextWorld, parse_response, sft_rows

if TYPE_CHECKING:
    from trl import SFTConfig

__all__ = [
    "CHAT_TEMPLATE",
    "CPU_SFT_DEFAULTS",
    "SPECIAL_TOKENS",
    "TinyBase",
    "TinyBaseArguments",
    "build_tiny_model",
    "generation_report",
    "parse_rate",
    "sample_completions",
    "train_tiny_base",
    "train_tokenizer",
    "world_texts",
]

EOS, PAD, IM_START = "<|im_end|>", "<|endoftext|>", "<|im_start|>"
SPECIAL_TOKENS = (PAD, IM_START, EOS)  # ids 0, 1, 2
# transformers.models.qwen2.tokenization_qwen2.PRETOKENIZE_REGEX (copied: that module is internal)
QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# ChatML as Qwen2.5-Instruct writes it (without the default system message). The assistant content is
# wrapped in {% generation %} so `return_assistant_tokens_mask` (TRL's assistant_only_loss) works too.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}{% generation %}{{- message['content'] + '<|im_end|>' }}"
    "{% endgeneration %}{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# SFTConfig values for this world on CPU; TRL's own defaults turn bf16 and gradient checkpointing on.
# recipes/textworld_sft.yaml holds the same values.
CPU_SFT_DEFAULTS: dict[str, Any] = {
    "max_steps": 700,
    "per_device_train_batch_size": 32,
    "learning_rate": 5e-3,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 0.05,
    "weight_decay": 0.0,
    "max_length": 128,
    "logging_steps": 50,
    "save_strategy": "no",
    "report_to": "none",
    "bf16": False,
    "activation_checkpointing": False,  # transformers 5 name of gradient_checkpointing (deprecated alias)
    "seed": 0,
    "dataloader_pin_memory": False,  # nothing to pin to without an accelerator (avoids a warning)
}


def world_texts(world: TextWorld) -> list[str]:
    """Every distinct prompt and response of the world, plus the chat roles (the tokenizer corpus)."""
    texts = {t for pair in world.sft_examples() for t in pair}
    return [*sorted(texts), "system\n", "user\n", "assistant\n"]


def train_tokenizer(texts: Sequence[str], vocab_size: int = 1024, min_frequency: int = 1) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``texts`` with ChatML special tokens and chat template.

    Byte-level, so any text (newlines, unseen words) round-trips exactly; the world's ~120 words need
    ~570 entries, so ``vocab_size`` is a cap. Normaliser and pre-tokeniser are Qwen2's: transformers 5
    loads any ``model_type: qwen2`` directory with ``Qwen2Tokenizer``, which rebuilds them that way, so
    the tokenizer must already be built that way to encode identically after ``AutoTokenizer`` reloads it. ``eos`` is ``<|im_end|>`` (generation stops at the end of
    the assistant turn, as in Qwen2.5-Instruct) and ``pad`` is ``<|endoftext|>``, a different token, so
    code that masks labels by ``pad_token_id`` never masks the end of turn.
    """
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=[IM_START],
        chat_template=CHAT_TEMPLATE,
        model_max_length=1024,
        clean_up_tokenization_spaces=False,
    )


def build_tiny_model(
    tokenizer: PreTrainedTokenizerFast,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 256,
    seed: int | None = None,
) -> Qwen2ForCausalLM:
    """A randomly initialised Qwen2 causal LM sized for ``tokenizer`` (head_dim = hidden / heads).

    Defaults differ from the prototype (2 heads of 64, MLP 4 x hidden) where measured on the default
    world: 4 heads of 32 learn to copy the topic noun (2 heads often mix up topics that share a verb,
    "write a poem" / "write a virus": 0.90-0.92 parseable at T=1 for 2 of 3 seeds, 0.98-0.99 with 4),
    and an MLP of 2 x hidden is as fluent as 4 x and ~25% faster.
    Embeddings are tied (as in Qwen2.5-0.5B); eos / pad ids come from the tokenizer so ``generate``
    stops at ``<|im_end|>``. ``seed`` fixes the initialisation without touching the global RNG.
    """
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size {hidden_size} must be divisible by num_heads {num_heads}")
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        dtype="float32",
    )
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


PromptLike = str | Prompt | Sequence[dict[str, str]]


def _messages(prompt: PromptLike) -> list[dict[str, str]]:
    if isinstance(prompt, Prompt):
        prompt = prompt.text
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


@torch.inference_mode()
def sample_completions(
    model: Any,
    tokenizer: PreTrainedTokenizerFast,
    prompts: Sequence[PromptLike],
    n: int = 1,
    temperature: float = 1.0,
    max_new_tokens: int = 64,
    seed: int = 0,
    batch_size: int = 64,
    top_p: float = 1.0,
    **generate_kwargs: Any,
) -> list[str]:
    """``n`` sampled completions per prompt (prompt-major: all of prompt 0's first), as plain text.

    Each prompt is a user message (string, ``Prompt`` or message list) rendered with the chat template
    and ``add_generation_prompt=True`` — exactly how SFT rendered it. Batches are left-padded; text is
    cut at the first ``eos``. ``temperature`` 0 is greedy (each prompt decoded once, its text repeated
    ``n`` times; ``top_p`` is then ignored); sampling is pure (top_k 0) from the ``top_p`` nucleus (1: all
    of it) unless ``generate_kwargs`` say otherwise.
    Deterministic given ``seed`` and ``batch_size``; the global RNG and the model's train/eval mode are
    left as they were.
    """
    sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": top_p}
    if temperature <= 0:
        sampling = {"do_sample": False}
    kwargs = {**sampling, "max_new_tokens": max_new_tokens, "pad_token_id": tokenizer.pad_token_id}
    kwargs |= generate_kwargs
    # greedy decoding gives every copy of a prompt the same text: decode it once and repeat it
    copies = n if kwargs["do_sample"] else 1
    rendered = [
        tokenizer.apply_chat_template(_messages(p), tokenize=False, add_generation_prompt=True)
        for p in prompts
        for _ in range(copies)
    ]
    eos, pad = tokenizer.eos_token, tokenizer.pad_token
    was_training, side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"
    out: list[str] = []
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for i in range(0, len(rendered), batch_size):
                chunk = rendered[i : i + batch_size]
                batch = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
                ids = model.generate(**batch, **kwargs)[:, batch["input_ids"].shape[1] :]  # (B, new tokens)
                for text in tokenizer.batch_decode(ids, skip_special_tokens=False):
                    text = text.split(eos, 1)[0] if eos else text
                    out.append(text.replace(pad, "") if pad else text)
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return out if copies == n else [text for text in out for _ in range(n)]


def generation_report(
    world: TextWorld, prompts: Sequence[PromptLike], completions: Sequence[str]
) -> dict[str, float | None]:
    """What the judges read from generations (one completion per prompt, aligned).

    ``parse_rate``: well-formed responses; ``on_topic_rate``: well-formed and (for answers) about the
    prompt's topic; ``behaviour_coverage``: fraction of the world's behaviours (refuse/comply x length
    x tone x format) produced at least once; refusal rates among well-formed responses to hazardous
    and to benign prompts (None when there are none).
    """
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    known = [world.lookup_prompt(_messages(p)) for p in prompts]
    if None in known:
        raise ValueError(f"prompt is not from this text world: {prompts[known.index(None)]!r}")
    parsed = [parse_response(c, _messages(p), world) for p, c in zip(prompts, completions)]
    hazardous = [p.hazardous for p in known]
    ok = [(r, h) for r, h in zip(parsed, hazardous) if r is not None]

    def refusal(h: bool) -> float | None:
        rows = [r for r, hz in ok if hz == h]
        return sum(r.refused for r in rows) / len(rows) if rows else None

    n = max(len(parsed), 1)
    return {
        "samples": len(parsed),
        "parse_rate": len(ok) / n,
        "on_topic_rate": sum(bool(r.on_topic) for r, _ in ok) / n,
        "behaviour_coverage": len({r.spec for r, _ in ok} & set(world.specs)) / len(world.specs),
        "refusal_rate_hazardous": refusal(True),
        "refusal_rate_benign": refusal(False),
    }


def parse_rate(world: TextWorld, prompts: Sequence[PromptLike], completions: Sequence[str]) -> float:
    """Fraction of completions the world's judge reads as well-formed responses."""
    return generation_report(world, prompts, completions)["parse_rate"]


@dataclass
class TinyBaseArguments:
    """What to train on and how big the model is (the SFT itself is configured by ``trl.SFTConfig``)."""

    world_config: str | None = field(
        default=None, metadata={"help": "Text-world YAML file; unset = the packaged default world."}
    )
    train_prompts: str = field(
        default="train",
        metadata={
            "help": "'train': SFT on the world's train prompts only, so eval prompts stay unseen (parse rate is "
            "measured on them); 'all': every prompt.",
            "choices": ["train", "all"],
        },
    )
    vocab_size: int = field(default=1024, metadata={"help": "Cap on the BPE vocabulary (the world needs ~570)."})
    hidden_size: int = field(default=128, metadata={"help": "Model width."})
    num_layers: int = field(
        default=4, metadata={"help": "Number of transformer layers (2 copy the topic noun unreliably: BENCHMARKS.md)."}
    )
    num_heads: int = field(
        default=4, metadata={"help": "Attention heads (head_dim = hidden_size / num_heads; 4 copy topics reliably)."}
    )
    intermediate_size: int | None = field(default=None, metadata={"help": "MLP width; unset = 2 x hidden_size."})
    eval_samples: int = field(
        default=100, metadata={"help": "Generations sampled after training (cycling over eval prompts); 0 = skip."}
    )
    eval_temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of those generations."})
    max_new_tokens: int = field(default=80, metadata={"help": "Generation budget (the longest response is ~56)."})

    def __post_init__(self) -> None:
        if self.train_prompts not in ("train", "all"):
            raise ValueError(f"train_prompts must be 'train' or 'all', got {self.train_prompts!r}")


@dataclass
class TinyBase:
    """A trained tiny base: the model, its tokenizer, and the metrics written next to it."""

    model: Qwen2ForCausalLM
    tokenizer: PreTrainedTokenizerFast
    metrics: dict[str, Any]


def train_tiny_base(
    world: TextWorld,
    out_dir: str | Path | None = None,
    args: TinyBaseArguments | None = None,
    training_args: SFTConfig | None = None,
) -> TinyBase:
    """Train tokenizer + model from scratch on ``world`` with TRL's ``SFTTrainer``; save to ``out_dir``.

    Data: conversational prompt/completion rows (every behaviour on every prompt), so TRL renders them
    with the chat template exactly as ``sample_completions`` prompts the model, and the loss is on the
    completion only. ``training_args``: a ``trl.SFTConfig`` (default: ``CPU_SFT_DEFAULTS``); ``out_dir``
    defaults to its ``output_dir`` (checkpoints, if enabled, go there). The main process saves model + tokenizer (safetensors) and
    ``tiny_base.json`` (world config, arguments, training and generation metrics) and samples
    ``args.eval_samples`` generations on the eval prompts to report the parse rate and coverage.
    """
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer  # imported here: trl is slow to import

    args = args or TinyBaseArguments()
    if training_args is None:
        if out_dir is None:
            raise ValueError("give out_dir or training_args")
        training_args = SFTConfig(output_dir=str(out_dir), **CPU_SFT_DEFAULTS)
    out = Path(out_dir or training_args.output_dir)
    train, eval_prompts = world.split_prompts()
    if args.train_prompts == "all" or not eval_prompts:
        train = eval_prompts = world.prompts

    set_seed(training_args.seed)
    tokenizer = train_tokenizer(world_texts(world), vocab_size=args.vocab_size)
    size = (args.hidden_size, args.num_layers, args.num_heads, args.intermediate_size)
    model = build_tiny_model(tokenizer, *size, seed=training_args.seed)
    dataset = Dataset.from_list(sft_rows(world, train, conversational=True))
    trainer = SFTTrainer(model=model, args=training_args, train_dataset=dataset, processing_class=tokenizer)
    start = time.perf_counter()
    result = trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    metrics: dict[str, Any] = {
        "train_seconds": round(time.perf_counter() - start, 2),
        "steps": trainer.state.global_step,
        "examples": len(dataset),
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab": len(tokenizer),
        "first_logged_loss": losses[0] if losses else None,
        "final_logged_loss": losses[-1] if losses else None,
        "train_loss": result.training_loss,
    }
    trainer.accelerator.wait_for_everyone()
    if trainer.accelerator.is_main_process:
        if args.eval_samples > 0:
            prompts = [eval_prompts[i % len(eval_prompts)] for i in range(args.eval_samples)]
            sampling = {"temperature": args.eval_temperature, "max_new_tokens": args.max_new_tokens}
            texts = sample_completions(model, tokenizer, prompts, seed=training_args.seed, **sampling)
            metrics["generation"] = generation_report(world, prompts, texts)
            metrics["example_generation"] = texts[0]
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        info = {
            "world": world.config.to_dict(),
            "arguments": asdict(args),
            "metrics": metrics,
            "sft": training_args.to_dict(),
        }
        (out / "tiny_base.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
    trainer.accelerator.wait_for_everyone()
    return TinyBase(model, tokenizer, metrics)
