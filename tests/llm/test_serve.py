"""The OpenAI-compatible server: routing, pinning, mixed-adapter batches, streaming, errors, shutdown.

A tiny random Qwen2 base and three random LoRA skills are built in a temporary directory; the
embedded server runs in a thread on a free loopback port and is driven with the ``openai`` client
and plain HTTP (httpx). Generations are greedy unless a test says otherwise, and every expected text
is computed from the PEFT model directly, so the tests check *which adapter answered*, not just that
something did. The vLLM test is ``slow`` and needs an interpreter with vLLM (VLLM_PYTHON, or
``.venv-vllm`` from scripts/setup_vllm_cpu.sh, or this one).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("fastapi", reason="needs the serve extra: pip install -e '.[serve]'")
pytest.importorskip("peft", reason="needs the llm extra: pip install -e '.[llm]'")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")

import torch  # noqa: E402
from fastapi import FastAPI, Request  # noqa: E402
from fastapi.responses import JSONResponse, StreamingResponse  # noqa: E402

from safecrowd_llm.serve import ServeArguments, build_app  # noqa: E402
from safecrowd_llm.serve.app import SKILL_HEADER  # noqa: E402
from safecrowd_llm.serve.backends import EmbeddedBackend, GenerationParams, stop_text  # noqa: E402
from safecrowd_llm.serve.routing import PriorRouter, SkillPicker, check_router  # noqa: E402
from safecrowd_llm.serve.vllm_backend import VLLMBackend, vllm_command  # noqa: E402

torch.set_num_threads(1)
SKILLS = ["skill_0", "skill_1", "skill_2"]
POEM, VIRUS, STORY = "write a poem about the sea", "how do I write a virus", "tell me a story"


def user(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


def post(srv: SimpleNamespace, path: str, body: dict, timeout: float = 60) -> httpx.Response:
    return httpx.post(f"{srv.url}{path}", json=body, timeout=timeout)


def streamed_text(client, model: str, prompt: str, **kw) -> str:
    stream = client.chat.completions.create(model=model, messages=user(prompt), stream=True, **kw)
    return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


def chat_ids(tok, prompt: str) -> list[int]:
    return tok.apply_chat_template(user(prompt), add_generation_prompt=True, tokenize=True, return_dict=True)[
        "input_ids"
    ]


class KeywordRouter:
    """Stand-in for safecrowd_llm.router.Router: 'poem' -> skill_2, 'virus' -> skill_1, else skill_0."""

    def __init__(self, skills_dir: Path) -> None:
        self.skills_dir, self.skill_names, self.seen = skills_dir, list(SKILLS), []

    def route(self, prompts: Sequence[str]) -> list[int]:
        self.seen.extend(prompts)
        return [2 if "poem" in p else 1 if "virus" in p else 0 for p in prompts]

    def probs(self, prompts: Sequence[str]) -> torch.Tensor:
        return torch.nn.functional.one_hot(torch.tensor(self.route(prompts)), len(SKILLS)).float()


@pytest.fixture(scope="module")
def skills_dir(tmp_path_factory) -> Path:
    """base/ (tiny Qwen2 + ChatML tokenizer) and skills/ (3 random LoRA adapters + skills.json)."""
    from peft import LoraConfig, get_peft_model

    from safecrowd_llm.core.atomic import write_json
    from safecrowd_llm.tiny_base import build_tiny_model, train_tokenizer

    root = tmp_path_factory.mktemp("serve")
    tok = train_tokenizer(
        [POEM, VIRUS, STORY, "the sea is blue and the sky", "system\n", "user\n", "assistant\n"]
    )
    # head_dim 32: vLLM's CPU attention does not take smaller heads
    build_tiny_model(tok, hidden_size=64, num_layers=1, num_heads=2, seed=0).save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    skills = []
    for k, name in enumerate(SKILLS):
        base = build_tiny_model(tok, hidden_size=64, num_layers=1, num_heads=2, seed=0)
        torch.manual_seed(100 + k)
        config = LoraConfig(
            r=8, lora_alpha=32, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False
        )
        get_peft_model(base, config).save_pretrained(root / "skills" / name)
        skills.append(
            {"name": name, "path": name, "latent": [k, 0.0], "log_prior": -1.0 - k, "annotators": []}
        )
    # the fields export_skills writes (safecrowd_llm/skills_export.py)
    manifest = {
        "format": "safecrowd-skills/1",
        "method": "safe-cpl",
        "base_model": str(root / "base"),
        "latent_dim": 2,
        "prior": "gaussian",
        "config_hash": None,
        "silhouette": {},
        "skills": skills,
    }
    write_json(manifest, root / "skills" / "skills.json")
    return root / "skills"


def _start(app, timeout: float = 60) -> SimpleNamespace:
    """Run ``app`` with uvicorn in a thread on a free 127.0.0.1 port; return url, server, thread."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    return SimpleNamespace(url=f"http://127.0.0.1:{port}", server=server, thread=thread, app=app)


def _stop(srv: SimpleNamespace) -> None:
    srv.server.should_exit = True
    srv.thread.join(timeout=60)
    assert not srv.thread.is_alive()


@pytest.fixture(scope="module")
def server(skills_dir):
    args = ServeArguments(
        skills_dir=str(skills_dir), default_max_tokens=8, batch_wait_ms=20, max_batch_size=4
    )
    srv = _start(build_app(args, router=KeywordRouter(skills_dir)))
    yield srv
    _stop(srv)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)


@torch.inference_mode()
def reference(server, skill: str, prompt: str, max_tokens: int = 8, chat: bool = True) -> str:
    """Greedy text of ``skill`` on ``prompt`` straight from the PEFT model (one row, no server)."""
    backend = server.app.state.backend
    model, tok = backend.model, backend.tokenizer
    text = tok.apply_chat_template(user(prompt), tokenize=False, add_generation_prompt=True)
    ids = tok(text if chat else prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    model.set_adapter(skill)
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        max_new_tokens=max_tokens,
        pad_token_id=tok.pad_token_id,
    )[0, ids.shape[1] :].tolist()
    if tok.eos_token_id in out:
        out = out[: out.index(tok.eos_token_id)]
    return tok.decode(out, skip_special_tokens=True)


def chat(client, model: str, prompt: str, max_tokens: int = 8, **kw):
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=user(prompt), temperature=0, max_tokens=max_tokens, **kw
    )
    return raw.headers[SKILL_HEADER], raw.parse()


# --- routing and pinning ---------------------------------------------------------------------------


def test_models_lists_composed_model_and_skills(client):
    assert [m.id for m in client.models.list().data] == ["safecrowd", *SKILLS]


def test_composed_model_routes_on_last_user_message(server, client):
    router = server.app.state.picker.router
    for prompt, skill in ((POEM, "skill_2"), (VIRUS, "skill_1"), (STORY, "skill_0")):
        header, completion = chat(client, "safecrowd", prompt)
        assert header == skill == completion.skill
        assert completion.model == "safecrowd"
        assert completion.choices[0].message.content == reference(server, skill, prompt)
        assert router.seen[-1] == prompt
    messages = [*user(POEM), {"role": "assistant", "content": "ok"}, *user(VIRUS)]
    completion = client.chat.completions.create(model="safecrowd", messages=messages, max_tokens=2)
    assert completion.skill == "skill_1" and router.seen[-1] == VIRUS


def test_pinned_skill_answers_with_its_own_adapter(server, client):
    texts = {}
    for skill in SKILLS:
        header, completion = chat(client, skill, POEM)  # POEM would route to skill_2: pinning wins
        assert header == skill == completion.skill
        texts[skill] = completion.choices[0].message.content
        assert texts[skill] == reference(server, skill, POEM)
        assert completion.choices[0].finish_reason in ("stop", "length")
        assert completion.usage.completion_tokens <= 8
    assert len(set(texts.values())) == 3, "the three adapters should answer differently"


def test_one_batch_holds_rows_with_different_adapters(server):
    """Three requests queued together run as one generate() call with adapter_names per row."""
    served = server.app.state.backend  # idle meanwhile: borrow its model for a second backend
    backend = EmbeddedBackend(served.model, served.tokenizer, 256, max_batch_size=4, batch_wait_ms=1)
    tok = backend.tokenizer
    batches, generate = [], backend._generate
    backend._generate = lambda rows: (batches.append([r.skill for r in rows]), generate(rows))

    async def collect(skill: str, prompt: str) -> str:
        chunks = backend.stream(chat_ids(tok, prompt), skill, GenerationParams(max_tokens=8, temperature=0))
        return "".join([c.text async for c in chunks])

    async def main() -> list[str]:
        await backend.start()
        try:
            return await asyncio.gather(*(collect(s, p) for s, p in zip(SKILLS, (STORY, VIRUS, POEM))))
        finally:
            await backend.close()

    texts = asyncio.run(main())
    assert batches == [SKILLS]
    assert texts == [reference(server, s, p) for s, p in zip(SKILLS, (STORY, VIRUS, POEM))]


def test_client_that_goes_away_stops_its_row(server, monkeypatch):
    """Closing a stream (what a client disconnect does) cancels its row: generation stops early."""
    from safecrowd_llm.serve import backends

    served = server.app.state.backend
    backend = EmbeddedBackend(served.model, served.tokenizer, 256, batch_wait_ms=1)
    put = backends._RowStreamer.put
    monkeypatch.setattr(backends._RowStreamer, "put", lambda self, v: (time.sleep(0.005), put(self, v)))
    rows = []
    generate = backend._generate
    backend._generate = lambda batch: (rows.extend(batch), generate(batch))
    ids = served.tokenizer(STORY, add_special_tokens=False)["input_ids"]

    async def main() -> None:
        await backend.start()
        stream = backend.stream(ids, "skill_0", GenerationParams(max_tokens=200, temperature=0))
        await anext(stream)
        await stream.aclose()
        await asyncio.get_running_loop().run_in_executor(backend._executor, lambda: None)  # batch over
        await backend.close()

    asyncio.run(main())
    assert rows[0].cancelled and len(rows[0].ids) < 100


def test_router_sees_the_base_model_without_adapters(server, skills_dir):
    from transformers import AutoModelForCausalLM

    backend = server.app.state.backend
    ids = torch.tensor([[5, 6, 7, 8]])
    expected = AutoModelForCausalLM.from_pretrained(skills_dir.parent / "base")(ids).logits
    shared_base = backend.model.get_base_model()  # what load_router(base_model=...) is given
    got = asyncio.run(backend.run_router(lambda: shared_base(ids).logits))
    assert torch.allclose(got, expected, atol=1e-6)
    with torch.inference_mode():
        assert not torch.allclose(shared_base(ids).logits, expected, atol=1e-3)  # an adapter is active here


def test_prior_router_and_router_checks(skills_dir):
    from safecrowd_llm.skills_export import load_manifest

    prior = PriorRouter(skills_dir, load_manifest(skills_dir))
    assert prior.route(["a", "b"]) == [0, 0]  # skill_0 has the highest log_prior (-1)
    assert torch.allclose(prior.probs(["a"]).sum(1), torch.ones(1))
    check_router(prior, SKILLS)
    with pytest.raises(ValueError, match="routes over"):
        check_router(prior, ["skill_0", "skill_1"])
    with pytest.raises(ValueError, match="also a skill name"):
        SkillPicker("skill_1", SKILLS, prior, backend=None)


# --- generation parameters, streaming, completions -----------------------------------------------


def test_chat_streaming_matches_non_streaming(server, client):
    full = reference(server, "skill_2", POEM, max_tokens=12)
    raw = client.chat.completions.with_raw_response.create(
        model="safecrowd",
        messages=user(POEM),
        temperature=0,
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    )
    assert raw.headers[SKILL_HEADER] == "skill_2"
    chunks = list(raw.parse())
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == full
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens <= 12
    assert {c.skill for c in chunks} == {"skill_2"}


def test_completions_endpoint_plain_and_streamed(server):
    body = {"model": "safecrowd", "prompt": "tell me a story", "temperature": 0, "max_tokens": 6}
    r = post(server, "/v1/completions", body)
    assert r.status_code == 200 and r.headers[SKILL_HEADER] == "skill_0"
    out = r.json()
    assert out["object"] == "text_completion" and out["skill"] == "skill_0"
    assert out["choices"][0]["text"] == reference(server, "skill_0", STORY, 6, chat=False)
    n_prompt = len(server.app.state.backend.tokenizer(STORY, add_special_tokens=False)["input_ids"])
    assert out["usage"]["prompt_tokens"] == n_prompt
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body | {"stream": True}, timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line[len("data: ") :]) for line in lines[:-1]]
    assert "".join(e["choices"][0]["text"] for e in events) == out["choices"][0]["text"]
    assert events[-1]["choices"][0]["finish_reason"] == out["choices"][0]["finish_reason"]


def test_stop_sequences_cut_the_text(server, client):
    full = reference(server, "skill_1", VIRUS, max_tokens=12)
    stop = full[3:5]
    _, completion = chat(client, "skill_1", VIRUS, 12, stop=[stop, "never-appears"])
    assert completion.choices[0].message.content == full[: full.find(stop)]
    assert completion.choices[0].finish_reason == "stop"
    assert (
        streamed_text(client, "skill_1", VIRUS, temperature=0, max_tokens=12, stop=stop)
        == full[: full.find(stop)]
    )


def test_stop_text_holds_back_possible_stop_prefix():
    assert stop_text("hello wor", ["world"]) == ("hello wor", False, len("hello "))
    assert stop_text("hello world!", ["world", "lo"]) == ("hel", True, 3)
    assert stop_text("abc", []) == ("abc", False, 3)


def test_seed_makes_sampling_reproducible(client):
    def sample(seed: int) -> str:
        c = client.chat.completions.create(
            model="skill_0", messages=user(STORY), top_p=0.9, max_tokens=10, seed=seed
        )
        return c.choices[0].message.content

    assert sample(7) == sample(7)
    assert sample(7) != sample(8)


# --- errors ----------------------------------------------------------------------------------------


def _error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        ({"temperature": 5}, "temperature", "less than or equal to 2"),
        ({"top_p": 0}, "top_p", "greater than 0"),
        ({"max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
        ({"n": 2}, "n", "not supported"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4"),
        ({"presence_penalty": 1.0}, "presence_penalty", "not supported"),
        ({"temprature": 0.5}, "temprature", "Extra inputs"),
        ({"messages": []}, "messages", "at least 1"),
        ({"messages": [{"role": "system", "content": "hi"}]}, "messages", "user message"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role", "Input should be"),
    ],
)
def test_bad_parameters_are_400(server, body, param, fragment):
    request = {"model": "safecrowd", "messages": user(STORY)} | body
    err = _error(post(server, "/v1/chat/completions", request), 400)
    assert err["type"] == "invalid_request_error" and err["param"] == param and fragment in err["message"]


def test_unknown_model_is_404(server, client):
    err = _error(post(server, "/v1/chat/completions", {"model": "skill_9", "messages": user("x")}), 404)
    assert err["code"] == "model_not_found" and err["param"] == "model" and "skill_0" in err["message"]
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4", prompt="x")


def test_malformed_json_and_unknown_route(server):
    r = httpx.post(
        f"{server.url}/v1/chat/completions",
        content=b'{"model": "safecrowd", "messages": [',
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert _error(r, 400)["message"].startswith("Malformed JSON body")
    assert _error(httpx.get(f"{server.url}/v1/nothing", timeout=30), 404)["type"] == "invalid_request_error"


def test_too_long_is_400(server):
    long_prompt = " ".join(["the sea is blue"] * 200)  # far past the 256-token context
    err = _error(post(server, "/v1/completions", {"model": "skill_0", "prompt": long_prompt}), 400)
    assert err["code"] == "context_length_exceeded" and err["param"] == "prompt" and "256" in err["message"]
    err = _error(
        post(server, "/v1/completions", {"model": "skill_0", "prompt": "hi", "max_tokens": 1000}), 400
    )
    assert err["code"] == "context_length_exceeded" and err["param"] == "max_tokens"


# --- server lifecycle and entry points -------------------------------------------------------------


def test_graceful_shutdown_finishes_in_flight_stream(skills_dir):
    args = ServeArguments(skills_dir=str(skills_dir), served_model_name="composed")
    app = build_app(args)  # no router: the prior's favourite skill (skill_0) answers
    backend = app.state.backend
    generate = backend._generate
    backend._generate = lambda rows: (time.sleep(2.0), generate(rows))  # still generating at shutdown
    srv = _start(app)
    body = {"model": "composed", "messages": user(STORY), "max_tokens": 20, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{srv.url}/v1/chat/completions", json=body, timeout=60) as r:
        assert r.headers[SKILL_HEADER] == "skill_0"
        lines = r.iter_lines()
        first = json.loads(
            next(line for line in lines if line)[len("data: ") :]
        )  # the role chunk, sent at once
        srv.server.should_exit = True  # what SIGINT / SIGTERM do
        assert _refuses_connections(srv.url, within=1.5)  # uvicorn stops listening at once...
        rest = [line for line in lines if line]
    # ... but the stream in flight still runs to its end
    assert first["choices"][0]["delta"]["role"] == "assistant" and rest[-1] == "data: [DONE]"
    events = [json.loads(line[len("data: ") :]) for line in rest[:-1]]
    text = "".join(e["choices"][0]["delta"]["content"] or "" for e in events)
    assert text == reference(srv, "skill_0", STORY, 20)
    assert events[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    srv.thread.join(timeout=60)
    assert not srv.thread.is_alive() and backend._executor._shutdown  # the lifespan closed the backend


def _refuses_connections(url: str, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{url}/health", timeout=1)
        except httpx.ConnectError:
            return True
        time.sleep(0.05)
    return False


def test_cli_help_and_defaults(capsys, skills_dir):
    from safecrowd_llm.serve.__main__ import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--skills_dir" in out and "--backend" in out and "--vllm_python" in out
    assert ServeArguments(skills_dir="x").host == "127.0.0.1"
    with pytest.raises(ValueError, match="backend"):
        ServeArguments(skills_dir="x", backend="tgi")


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
    args = ServeArguments(skills_dir=str(skills_dir), backend="vllm", vllm_url=upstream.url)
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
