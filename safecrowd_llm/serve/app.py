"""The OpenAI-compatible HTTP API (FastAPI): ``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``.

Per request: validate -> render (chat template for chat) -> pick the skill (pinned by ``model`` or
routed) -> tokenize and check the context length -> stream ``Chunk``s from the backend -> OpenAI's
JSON or server-sent events. The answering skill is in the ``X-Safecrowd-Skill`` header and the
``skill`` field of every response object. Every error is OpenAI's
``{"error": {"message", "type", "param", "code"}}`` with a 4xx status when the client caused it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from .backends import Backend, Chunk, GenerationParams
from .routing import SkillPicker
from .schemas import (
    ApiError,
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    DeltaMessage,
    ModelCard,
    ModelList,
    TextChoice,
    Usage,
    error_body,
    new_id,
)

__all__ = ["SKILL_HEADER", "create_app"]

SKILL_HEADER = "X-Safecrowd-Skill"
log = logging.getLogger(__name__)


def create_app(
    backend: Backend, tokenizer: Any, picker: SkillPicker, *, default_max_tokens: int = 256, default_top_p: float = 1.0
) -> FastAPI:
    """The app; its lifespan starts the backend and closes it on shutdown (after in-flight requests).
    ``default_top_p`` is the nucleus of requests that set no ``top_p``."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await backend.start()
        try:
            yield
        finally:
            await backend.close()

    app = FastAPI(title="safecrowd composed model", lifespan=lifespan)
    app.state.backend, app.state.picker = backend, picker
    _add_error_handlers(app)
    base_name = getattr(tokenizer, "name_or_path", None)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> ModelList:
        cards = [ModelCard(id=picker.served_model_name, root=base_name)]
        cards += [
            ModelCard(id=s, root=base_name, parent=picker.served_model_name) for s in picker.skill_names
        ]
        return ModelList(data=cards)

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatCompletionRequest):
        _check_common(req)
        if req.logprobs or req.top_logprobs:
            raise ApiError("logprobs are not supported", param="logprobs")
        users = [m for m in req.messages if m.role == "user"]
        if not users:
            raise ApiError("messages must contain at least one user message", param="messages")
        prompt = _render_chat(tokenizer, req)
        max_tokens = req.max_completion_tokens or req.max_tokens
        return await _respond(req, prompt, users[-1].text, max_tokens, "messages", chat=True)

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest):
        _check_common(req)
        for name, bad in (
            ("echo", req.echo),
            ("logprobs", req.logprobs is not None),
            ("suffix", req.suffix),
            ("best_of", (req.best_of or 1) > 1),
        ):
            if bad:
                raise ApiError(f"{name} is not supported", param=name)
        return await _respond(req, req.prompt_text, req.prompt_text, req.max_tokens, "prompt", chat=False)

    async def _respond(
        req: Any, prompt: str, route_text: str, max_tokens: int | None, prompt_param: str, *, chat: bool
    ):
        picker.check(req.model)
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        limit = backend.max_model_len
        if max_tokens is None:
            max_tokens = min(default_max_tokens, limit - len(ids))
        if len(ids) + max(max_tokens, 1) > limit:
            raise ApiError(
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{len(ids) + max_tokens} tokens ({len(ids)} in the {prompt_param}, {max_tokens} in the completion). "
                f"Please reduce the length of the {prompt_param} or completion.",
                param=prompt_param if len(ids) >= limit else "max_tokens",
                code="context_length_exceeded",
            )
        skill = await picker.pick(req.model, route_text)  # after validation: the router is not free
        top_p = default_top_p if req.top_p is None else req.top_p
        params = GenerationParams(max_tokens, req.temperature, top_p, tuple(req.stop_list), req.seed)
        chunks = backend.stream(ids, skill, params)
        meta = {"id": new_id("chatcmpl" if chat else "cmpl"), "model": req.model, "skill": skill}
        headers = {SKILL_HEADER: skill}
        if req.stream:
            usage = bool(req.stream_options and req.stream_options.include_usage)
            events = _sse(chunks, meta, len(ids), chat=chat, include_usage=usage)
            return StreamingResponse(events, media_type="text/event-stream", headers=headers)
        text, last = "", Chunk()
        async for last in chunks:
            if last.error:
                raise ApiError(last.error, 500)
            text += last.text
        usage = Usage(
            prompt_tokens=len(ids),
            completion_tokens=last.completion_tokens,
            total_tokens=len(ids) + last.completion_tokens,
        )
        if chat:
            choice = ChatChoice(message=AssistantMessage(content=text), finish_reason=last.finish_reason)
            body: Any = ChatCompletionResponse(**meta, choices=[choice], usage=usage)
        else:
            body = CompletionResponse(
                **meta, choices=[TextChoice(text=text, finish_reason=last.finish_reason)], usage=usage
            )
        return JSONResponse(body.model_dump(), headers=headers)

    return app


def _check_common(req: Any) -> None:
    """Parameters we accept only at their neutral value."""
    if req.n != 1:
        raise ApiError(f"n={req.n} is not supported: one choice per request (send n requests)", param="n")
    for name in ("frequency_penalty", "presence_penalty"):
        if getattr(req, name):
            raise ApiError(f"{name} is not supported (only 0)", param=name)
    if req.logit_bias:
        raise ApiError("logit_bias is not supported", param="logit_bias")


def _render_chat(tokenizer: Any, req: ChatCompletionRequest) -> str:
    """The chat template's text for ``req.messages``, ending where the assistant's answer starts."""
    if not getattr(tokenizer, "chat_template", None):
        raise ApiError("this model's tokenizer has no chat template: use /v1/completions", param="messages")
    messages = [
        {"role": "system" if m.role == "developer" else m.role, "content": m.text} for m in req.messages
    ]
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as e:  # jinja2's TemplateError: the template refused these messages
        raise ApiError(f"the chat template rejected the messages: {e}", param="messages") from e


async def _sse(
    chunks: AsyncIterator[Chunk], meta: dict[str, str], prompt_tokens: int, *, chat: bool, include_usage: bool
) -> AsyncIterator[str]:
    """Server-sent events: one object per chunk, the finish reason, optional usage, then ``[DONE]``."""

    def event(choices: list, usage: Usage | None = None) -> str:
        cls = ChatCompletionChunk if chat else CompletionResponse
        return f"data: {cls(**meta, choices=choices, usage=usage).model_dump_json()}\n\n"

    def choice(text: str, finish: str | None, first: bool = False) -> Any:
        if chat:
            delta = (
                DeltaMessage(role="assistant", content="") if first else DeltaMessage(content=text or None)
            )
            return ChatChunkChoice(delta=delta, finish_reason=finish)
        return TextChoice(text=text, finish_reason=finish)

    try:
        if chat:
            yield event([choice("", None, first=True)])
        async for c in chunks:
            if c.error:
                yield f"data: {json.dumps(error_body(c.error, 'server_error', code=500))}\n\n"
                break
            if c.text or c.finish_reason:
                yield event([choice(c.text, c.finish_reason)])
            if c.finish_reason and include_usage:
                total = prompt_tokens + c.completion_tokens
                yield event(
                    [],
                    Usage(
                        prompt_tokens=prompt_tokens, completion_tokens=c.completion_tokens, total_tokens=total
                    ),
                )
    except ApiError as e:
        yield f"data: {json.dumps(error_body(e.message, e.type, e.param, e.code))}\n\n"
    yield "data: [DONE]\n\n"


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> JSONResponse:
        return JSONResponse(error_body(e.message, e.type, e.param, e.code), status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        errors = e.errors()
        if any(err.get("type") == "json_invalid" for err in errors):
            detail = errors[0].get("ctx", {}).get("error", errors[0].get("msg"))
            return JSONResponse(error_body(f"Malformed JSON body: {detail}", "invalid_request_error"), 400)
        parts, param = [], None
        for err in errors:
            loc = [str(x) for x in err.get("loc", ()) if x != "body"]
            param = param or (".".join(loc) or None)
            parts.append(f"{'.'.join(loc) or 'body'}: {err.get('msg')}")
        return JSONResponse(error_body("; ".join(parts), "invalid_request_error", param), 400)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        kind = "invalid_request_error" if e.status_code < 500 else "server_error"
        return JSONResponse(
            error_body(str(e.detail), kind, code=e.status_code), e.status_code, headers=e.headers
        )

    @app.exception_handler(Exception)
    async def crashed(request: Request, e: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return JSONResponse(error_body(f"internal error: {type(e).__name__}", "server_error", code=500), 500)
