"""Assemble and run the server: skills directory + router + backend -> FastAPI app -> uvicorn.

``build_app`` is what tests and other programs call (it accepts a router object directly);
``serve`` runs it with uvicorn, which shuts down gracefully on SIGINT / SIGTERM: it stops
accepting connections, lets in-flight requests finish (up to ``graceful_shutdown_timeout``), then
the app's lifespan closes the backend (and stops a spawned vLLM server).
"""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI

from ..skills_export import load_manifest
from .app import create_app
from .config import ServeArguments
from .routing import PriorRouter, RouterLike, SkillPicker, load_router

__all__ = ["build_app", "load_skill_adapters", "serve"]

log = logging.getLogger(__name__)


def load_skill_adapters(base_model: torch.nn.Module, skills: dict[str, str]) -> Any:
    """Every skill as a named adapter of one ``PeftModel`` (safetensors only).

    The same as ``evaluate_skills.load_skills_model``, without importing the training stack (TRL).
    """
    from peft import PeftModel

    (first, path), *rest = skills.items()
    model = PeftModel.from_pretrained(base_model, path, adapter_name=first)
    for name, p in rest:
        model.load_adapter(p, adapter_name=name)
    return model.eval()


def build_app(args: ServeArguments, router: RouterLike | None = None) -> FastAPI:
    """Load tokenizer, backend and router as ``args`` say; ``router`` overrides ``args.router``."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    manifest = load_manifest(args.skills_dir)
    skills = {s["name"]: s["path"] for s in manifest["skills"]}
    if not skills:
        raise ValueError(f"{args.skills_dir}/skills.json lists no skills")
    base = args.base_model or manifest["base_model"]
    remote = {"trust_remote_code": args.trust_remote_code}
    tokenizer = AutoTokenizer.from_pretrained(base, **remote)
    max_len = args.max_model_len or AutoConfig.from_pretrained(base, **remote).max_position_embeddings

    def pick_router(base_model: torch.nn.Module | None) -> RouterLike:
        if router is not None:
            return router
        if args.router:
            return load_router(args.router, base_model=base_model, tokenizer=tokenizer)
        log.warning("no --router: the composed model answers with the skill of highest prior density")
        return PriorRouter(Path(args.skills_dir), manifest)

    if args.backend == "embedded":
        from .backends import EmbeddedBackend

        dtype = "auto" if args.dtype == "auto" else getattr(torch, args.dtype)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype, use_safetensors=True, **remote)
        model = model.to(args.device).eval()
        # the router shares the base model: loaded before the adapters go in, and later called with
        # them disabled (EmbeddedBackend.run_router)
        chosen = pick_router(model)
        backend: Any = EmbeddedBackend(
            load_skill_adapters(model, skills),
            tokenizer,
            max_len,
            max_batch_size=args.max_batch_size,
            batch_wait_ms=args.batch_wait_ms,
        )
    else:
        from .vllm_backend import VLLMBackend, free_port, vllm_command

        command = None
        if args.vllm_url is None:
            port = args.vllm_port or free_port()
            command = vllm_command(
                args.vllm_python,
                base,
                skills,
                port,
                max_model_len=max_len,
                dtype=args.dtype,
                trust_remote_code=args.trust_remote_code,
                extra_args=args.vllm_args,
            )
        backend = VLLMBackend(
            skills,
            max_len,
            url=args.vllm_url,
            command=command,
            startup_timeout=args.vllm_startup_timeout,
            request_timeout=args.request_timeout,
        )
        chosen = pick_router(None)  # the router loads the model it needs itself
    picker = SkillPicker(args.served_model_name, list(skills), chosen, backend)
    return create_app(
        backend, tokenizer, picker, default_max_tokens=args.default_max_tokens, default_top_p=args.default_top_p
    )


def serve(args: ServeArguments, app: FastAPI | None = None) -> None:
    """Run until SIGINT / SIGTERM (blocking)."""
    import uvicorn

    if not _is_loopback(args.host):
        log.warning(
            "listening on %s: the API has no authentication, anyone who can reach it can use it", args.host
        )
    app = app if app is not None else build_app(args)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        timeout_graceful_shutdown=args.graceful_shutdown_timeout,
    )
    uvicorn.Server(config).run()


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
