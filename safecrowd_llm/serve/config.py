"""What ``python -m safecrowd_llm.serve`` is told: one dataclass, every field with a ``help`` string.

Parsed by ``transformers.HfArgumentParser`` (TRL's ``TrlParser`` in ``recipes/serve.py``, which adds
``--config file.yaml``), and validated in ``__post_init__`` so a bad combination fails before any
model is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["BACKENDS", "ServeArguments"]

BACKENDS = ("embedded", "vllm")


@dataclass
class ServeArguments:
    """Server, model and backend options of the composed-model server."""

    skills_dir: str = field(
        metadata={
            "help": "Skills directory: one PEFT LoRA adapter per skill plus skills.json (export_skills)."
        }
    )
    router: str | None = field(
        default=None,
        metadata={
            "help": "Router directory (router.json + router.safetensors). Unset: the composed model picks the skill "
            "of highest prior log-density in skills.json for every request."
        },
    )
    base_model: str | None = field(
        default=None, metadata={"help": "Base model name or path; unset = skills.json's base_model."}
    )
    served_model_name: str = field(
        default="safecrowd",
        metadata={
            "help": "Model name that routes (clients may also name a skill, e.g. 'skill_2', to pin it)."
        },
    )
    backend: str = field(
        default="embedded",
        metadata={
            "help": "'embedded': transformers + PEFT in this process, per-row adapters in one batch (CPU is fine). "
            "'vllm': forward to a vLLM OpenAI server with the skills as LoRA modules (spawned, or --vllm_url).",
            "choices": list(BACKENDS),
        },
    )
    host: str = field(
        default="127.0.0.1", metadata={"help": "Bind address (loopback unless you mean otherwise)."}
    )
    port: int = field(default=8000, metadata={"help": "Port to listen on (0 = any free port)."})
    max_model_len: int | None = field(
        default=None,
        metadata={
            "help": "Prompt + completion token limit; unset = the base model's max_position_embeddings."
        },
    )
    default_max_tokens: int = field(
        default=256,
        metadata={"help": "Completion length when a request gives no max_tokens (capped by the context)."},
    )
    default_top_p: float = field(
        default=1.0,
        metadata={"help": "Nucleus (top_p) of a request that sets none, as vLLM takes it from a model's generation "
                          "config: e.g. 0.95 cuts the long tail of stray tokens a small model samples at temperature 1 "
                          "(on the text world's tiny base, every malformed refusal of the skills). 1 = OpenAI's default."},
    )
    max_batch_size: int = field(
        default=8, metadata={"help": "Embedded backend: most requests generated together in one batch."}
    )
    batch_wait_ms: float = field(
        default=5.0,
        metadata={"help": "Embedded backend: how long the first queued request waits for company."},
    )
    dtype: str = field(
        default="auto", metadata={"help": "Weights dtype: auto, float32, bfloat16 or float16."}
    )
    device: str = field(
        default="cpu", metadata={"help": "Embedded backend: torch device, e.g. cpu or cuda:0."}
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Allow model / tokenizer code from the model directory (off by default)."},
    )
    vllm_url: str | None = field(
        default=None,
        metadata={
            "help": "vLLM backend: base URL of a running vLLM OpenAI server started with the skills as "
            "--lora-modules (e.g. http://127.0.0.1:8001). Unset: spawn one."
        },
    )
    vllm_python: str = field(
        default="python",
        metadata={
            "help": "vLLM backend: interpreter of the environment that has vLLM (scripts/setup_vllm_cpu.sh "
            "builds .venv-vllm); it runs `-m vllm.entrypoints.openai.api_server`."
        },
    )
    vllm_port: int = field(
        default=0, metadata={"help": "vLLM backend: port of the spawned vLLM server (0 = free)."}
    )
    vllm_args: str = field(
        default="",
        metadata={
            "help": "vLLM backend: extra arguments for the spawned server, one string, e.g. "
            "'--enforce-eager --max-num-seqs 8'."
        },
    )
    vllm_startup_timeout: float = field(
        default=600.0, metadata={"help": "vLLM backend: seconds to wait for the spawned server to answer."}
    )
    request_timeout: float = field(
        default=600.0, metadata={"help": "vLLM backend: seconds one forwarded request may take."}
    )
    graceful_shutdown_timeout: float = field(
        default=30.0, metadata={"help": "Seconds in-flight requests get to finish after SIGINT / SIGTERM."}
    )
    log_level: str = field(default="info", metadata={"help": "uvicorn log level."})

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, got {self.dtype!r}")
        for name in ("default_max_tokens", "max_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 < self.default_top_p <= 1.0:
            raise ValueError(f"default_top_p must be in (0, 1], got {self.default_top_p}")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ValueError(f"max_model_len must be >= 2, got {self.max_model_len}")
        if not 0 <= self.port < 65536 or not 0 <= self.vllm_port < 65536:
            raise ValueError("ports must be in 0..65535")
        if not self.served_model_name:
            raise ValueError("served_model_name must not be empty")
