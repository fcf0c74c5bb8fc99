"""Where tokens come from: the backend interface and the embedded (transformers + PEFT) backend.

A backend turns ``(prompt token ids, skill name, sampling parameters)`` into a stream of text
``Chunk``s; the app above it does routing, validation and the OpenAI wire format, so both backends
answer identically. ``EmbeddedBackend`` keeps every skill adapter on one ``PeftModel`` and generates
queued requests together, each row with its own adapter (PEFT's mixed-batch inference,
``generate(..., adapter_names=[...])``). The vLLM backend is in ``vllm_backend.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

__all__ = ["Backend", "Chunk", "EmbeddedBackend", "GenerationParams"]

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class GenerationParams:
    """Sampling parameters of one request (already validated by the app)."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def batch_key(self) -> tuple[Any, ...]:
        """Requests with equal keys can share one ``generate`` call (stop and length are per row)."""
        return (self.temperature, self.top_p, self.seed)


@dataclass
class Chunk:
    """A piece of one completion: new text, and on the last piece why it ended and its length."""

    text: str = ""
    finish_reason: str | None = None  # "stop" | "length" on the last chunk
    completion_tokens: int = 0
    error: str | None = None


class Backend(Protocol):
    """What the app needs from a backend."""

    max_model_len: int

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def stream(self, prompt_ids: list[int], skill: str, params: GenerationParams) -> AsyncIterator[Chunk]: ...

    async def run_router(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` (a router call) where it may use the base model safely."""
        ...


def stop_text(text: str, stops: Sequence[str]) -> tuple[str, bool, int]:
    """``(text cut at the first stop string, whether one was found, length safe to emit now)``.

    The safe length holds back a tail that could still grow into a stop string, so a streamed
    completion never shows the start of a stop sequence it later removes.
    """
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    if hits:
        cut = text[: min(hits)]
        return cut, True, len(cut)
    held = max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
    return text, False, len(text) - held


@dataclass(eq=False)
class _Row:
    """One request's state while it waits for and takes part in a batch (mutated on the model thread)."""

    prompt_ids: list[int]
    skill: str
    params: GenerationParams
    emit: Callable[[Chunk], None]
    ids: list[int] = field(default_factory=list)
    sent: int = 0  # characters already emitted
    finished: bool = False
    cancelled: bool = False

    def push(self, token: int, tokenizer: Any, eos_ids: set[int]) -> None:
        """Take one generated token; emit the text that became final; finish on eos, stop or length."""
        if self.finished or self.cancelled:
            return
        if token in eos_ids:
            return self.finish("stop")
        self.ids.append(token)
        text = tokenizer.decode(self.ids, skip_special_tokens=True)
        text, stopped, safe = stop_text(text, self.params.stop)
        if stopped:
            return self.finish("stop", text)
        if len(self.ids) >= self.params.max_tokens:
            return self.finish("length", text)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 character: wait for its other bytes
            return
        if safe > self.sent:
            self.emit(Chunk(text[self.sent : safe]))
            self.sent = safe

    def finish(self, reason: str, text: str | None = None) -> None:
        if self.finished:
            return
        self.finished = True
        rest = (text or "")[self.sent :]
        if not self.cancelled:
            self.emit(Chunk(rest, reason, completion_tokens=len(self.ids)))


class _RowStreamer(BaseStreamer):
    """Hands every step's new tokens (B,) to the rows; the first ``put`` is the prompt and is skipped."""

    def __init__(self, rows: list[_Row], tokenizer: Any, eos_ids: set[int]) -> None:
        self.rows, self.tokenizer, self.eos_ids, self.prompt_seen = rows, tokenizer, eos_ids, False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        for row, token in zip(self.rows, value.view(len(self.rows), -1)[:, -1].tolist()):
            row.push(token, self.tokenizer, self.eos_ids)

    def end(self) -> None:
        for row in self.rows:
            row.finish("length")


class _RowsDone(StoppingCriteria):
    """Per-row stop: rows that hit eos, a stop string, their own max_tokens, or lost their client."""

    def __init__(self, rows: list[_Row]) -> None:
        self.rows = rows

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        return torch.tensor([r.finished or r.cancelled for r in self.rows], device=input_ids.device)


class EmbeddedBackend:
    """All skills as adapters of one ``PeftModel`` in this process; queued requests share batches.

    Model work (generation and router calls) runs on one worker thread, so the event loop stays free
    and PEFT's per-batch adapter hooks never see two batches at once. A batch holds requests with the
    same temperature / top_p (and a seeded request runs alone, so its seed alone decides its output);
    each row stops on its own eos, stop strings or max_tokens.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        max_model_len: int,
        *,
        max_batch_size: int = 8,
        batch_wait_ms: float = 5.0,
    ) -> None:
        self.model, self.tokenizer, self.max_model_len = model.eval(), tokenizer, max_model_len
        self.max_batch_size, self.batch_wait = max_batch_size, batch_wait_ms / 1000
        self.skills = set(model.peft_config)
        eos = model.generation_config.eos_token_id if model.generation_config.eos_token_id is not None else []
        self.eos_ids = {*(eos if isinstance(eos, list) else [eos]), tokenizer.eos_token_id} - {None}
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.eos_ids)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="safecrowd-model")
        self._pending: list[_Row] = []
        self._wakeup: asyncio.Event | None = None
        self._loop_task: asyncio.Task | None = None

    async def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._loop_task = asyncio.create_task(self._batch_loop(), name="safecrowd-batcher")

    async def close(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        for row in self._pending:  # normally none: the server lets in-flight requests finish first
            row.finished = True
            row.emit(Chunk(error="the server is shutting down"))
        self._pending.clear()
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def run_router(self, fn: Callable[[], T]) -> T:
        """On the model thread, with every adapter disabled: the router sees the frozen base model."""

        def call() -> T:
            with self.model.disable_adapter(), torch.inference_mode():
                return fn()

        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def stream(
        self, prompt_ids: list[int], skill: str, params: GenerationParams
    ) -> AsyncIterator[Chunk]:
        if skill not in self.skills:
            raise KeyError(f"no adapter named {skill!r}")
        if self._wakeup is None:
            raise RuntimeError("EmbeddedBackend.start() was not awaited (run the app with its lifespan)")
        loop, queue = asyncio.get_running_loop(), asyncio.Queue()
        row = _Row(list(prompt_ids), skill, params, lambda c: loop.call_soon_threadsafe(queue.put_nowait, c))
        self._pending.append(row)
        self._wakeup.set()
        try:
            while True:
                chunk = await queue.get()
                yield chunk
                if chunk.finish_reason is not None or chunk.error is not None:
                    return
        finally:
            row.cancelled = not row.finished  # the client went away: stop generating for it

    async def _batch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            if len(self._pending) < self.max_batch_size:
                await asyncio.sleep(self.batch_wait)  # let concurrent requests join
            batch = self._take_batch()
            if not batch:
                self._wakeup.clear()
                continue
            try:
                await loop.run_in_executor(self._executor, self._generate, batch)
            except Exception as e:  # report to every waiting client, keep serving
                log.exception("generation failed")
                for row in batch:
                    if not row.finished:
                        row.finished = True
                        row.emit(Chunk(error=f"generation failed: {type(e).__name__}: {e}"))

    def _take_batch(self) -> list[_Row]:
        self._pending = [r for r in self._pending if not r.cancelled]
        if not self._pending:
            return []
        first = self._pending[0]
        limit = 1 if first.params.seed is not None else self.max_batch_size
        batch, width, new = [], 0, 0
        for row in self._pending:
            w, n = max(width, len(row.prompt_ids)), max(new, row.params.max_tokens)
            # every row runs for the longest max_tokens: keep all positions inside the context
            if (
                len(batch) < limit
                and row.params.batch_key() == first.params.batch_key()
                and (not batch or w + n <= self.max_model_len)
            ):
                batch.append(row)
                width, new = w, n
        self._pending = [r for r in self._pending if all(r is not b for b in batch)]
        return batch

    @torch.inference_mode()
    def _generate(self, rows: list[_Row]) -> None:
        width = max(len(r.prompt_ids) for r in rows)
        ids = torch.tensor(
            [[self.pad_id] * (width - len(r.prompt_ids)) + r.prompt_ids for r in rows]
        )  # (B, T)
        mask = torch.tensor([[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in rows])
        p = rows[0].params
        sampling = (
            {"do_sample": False}
            if p.temperature == 0
            else {
                "do_sample": True,
                "temperature": p.temperature,
                "top_p": p.top_p,
                "top_k": 0,
            }
        )
        seeded = torch.random.fork_rng(devices=[]) if p.seed is not None else contextlib.nullcontext()
        with seeded:
            if p.seed is not None:
                torch.manual_seed(p.seed)
            self.model.generate(
                input_ids=ids.to(self.model.device),
                attention_mask=mask.to(self.model.device),
                adapter_names=[r.skill for r in rows],
                max_new_tokens=max(r.params.max_tokens for r in rows),
                pad_token_id=self.pad_id,
                eos_token_id=sorted(self.eos_ids),
                streamer=_RowStreamer(rows, self.tokenizer, self.eos_ids),
                stopping_criteria=StoppingCriteriaList([_RowsDone(rows)]),
                **sampling,
            )
