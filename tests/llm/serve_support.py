"""Shared by the server tests: a tiny base with three random LoRA skills, a stand-in router, an
embedded server on a free loopback port, and greedy reference texts straight from the PEFT model."""

from __future__ import annotations

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

from safecrowd_llm.serve import ServeArguments, build_app  # noqa: E402
from safecrowd_llm.serve.app import SKILL_HEADER  # noqa: E402

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


def _error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err
