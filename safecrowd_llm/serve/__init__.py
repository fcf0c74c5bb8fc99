"""Serve the composed model (router + skills) behind an OpenAI-compatible API.

``python -m safecrowd_llm.serve --help``. Modules: ``config`` (ServeArguments), ``schemas`` (request /
response bodies), ``routing`` (pinned skill or router's choice), ``backends`` (interface + embedded
transformers/PEFT backend), ``vllm_backend`` (vLLM multi-LoRA server), ``app`` (FastAPI routes),
``server`` (assembly + uvicorn). Heavy modules (torch, transformers, fastapi) load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .config import BACKENDS, ServeArguments

if TYPE_CHECKING:
    from .app import SKILL_HEADER, create_app
    from .server import build_app, serve

__all__ = ["BACKENDS", "SKILL_HEADER", "ServeArguments", "build_app", "create_app", "serve"]


def __getattr__(name: str):
    if name in ("SKILL_HEADER", "create_app"):
        from . import app

        return getattr(app, name)
    if name in ("build_app", "serve"):
        from . import server

        return getattr(server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
