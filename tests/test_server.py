"""The OpenAI-compatible server, exercised with the real `openai` client over loopback."""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from agents_support import LACE, LACE_PMID, MARS, agent_env

KEY = "test-key"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: Any, models_cache: Path, pubmedqa_dir: Path) -> Any:
    import uvicorn

    from medllm.server import create_app

    env = agent_env(tmp_path_factory, models_cache, pubmedqa_dir)
    app = create_app(env["assistant"], api_key=KEY, max_body_bytes=64 * 1024)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    deadline = time.time() + 30
    while not server.started:
        assert time.time() < deadline, "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/v1"
    server.should_exit = True
    t.join(timeout=10)


@pytest.fixture
def client(base_url: str) -> Any:
    from openai import OpenAI

    return OpenAI(base_url=base_url, api_key=KEY, max_retries=0, timeout=300)


def test_models_and_completion_with_citations(client: Any) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids == ["smollm2-135m-instruct"]
    r = client.chat.completions.create(model=ids[0], messages=[{"role": "user", "content": LACE}])
    content = r.choices[0].message.content
    assert f"PMID {LACE_PMID}" in content and "Sources:" in content
    assert LACE_PMID in [c["pmid"] for c in r.citations]  # extra field
    assert r.medllm["route"] == "rag" and r.medllm["label_probs"]
    u = r.usage
    assert u.prompt_tokens > 50 and u.completion_tokens > 0
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens


def test_streaming_completion(client: Any) -> None:
    stream = client.chat.completions.create(
        model="smollm2-135m-instruct",
        messages=[{"role": "user", "content": LACE}],
        stream=True,
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert len(chunks) >= 3 and f"PMID {LACE_PMID}" in text  # role, sentences, sources
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert LACE_PMID in [c["pmid"] for c in chunks[-1].citations]


def test_history_in_messages_is_used(client: Any) -> None:
    r = client.chat.completions.create(
        model="smollm2-135m-instruct",
        messages=[
            {"role": "user", "content": LACE},
            {"role": "assistant", "content": "Yes."},
            {"role": "user", "content": "Which organelle dynamics were observed in it?"},
        ],
    )
    assert "lace plant" in r.medllm["retrieval_query"]


def test_abstains_and_mode_field(client: Any) -> None:
    r = client.chat.completions.create(
        model="smollm2-135m-instruct",
        messages=[{"role": "user", "content": MARS}],
        extra_body={"mode": "rag"},
    )
    assert r.medllm["abstained"] and r.citations == []
    assert r.choices[0].message.content.startswith("There is insufficient evidence")


def test_api_key_required(base_url: str) -> None:
    from openai import AuthenticationError, OpenAI

    bad = OpenAI(base_url=base_url, api_key="wrong", max_retries=0)
    with pytest.raises(AuthenticationError):
        bad.models.list()
    assert httpx.get(f"{base_url}/models").status_code == 401


def test_body_too_large_and_malformed(base_url: str) -> None:
    h = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    url = f"{base_url}/chat/completions"
    big = '{"messages": [{"role": "user", "content": "' + "a" * 70_000 + '"}]}'
    assert httpx.post(url, content=big, headers=h).status_code == 413
    cases = {
        b"{not json": "not valid JSON",
        b"[1, 2]": "JSON object",
        b'{"messages": []}': "messages",
        b'{"messages": [{"role": "user", "content": 5}]}': "content",
        b'{"messages": [{"role": "user", "content": ""}]}': "empty",
        b'{"messages": [{"role": "assistant", "content": "hi"}]}': "role 'user'",
        b'{"messages": [{"role": "user", "content": "Is it?"}], "mode": "x"}': "mode",
        b'{"messages": [{"role": "user", "content": "Is it?"}], "max_tokens": -5}': "max_tokens",
        b'{"messages": [{"role": "user", "content": "Is it?"}], "max_tokens": "9"}': "max_tokens",
        b"\xff\xfe": "UTF-8",
    }
    for body, message in cases.items():
        r = httpx.post(url, content=body, headers=h)
        assert r.status_code == 400, body
        assert message in r.json()["error"]["message"], (body, r.text)


def test_concurrent_requests(client: Any) -> None:
    def one(q: str) -> Any:
        return client.chat.completions.create(
            model="smollm2-135m-instruct",
            messages=[{"role": "user", "content": q}],
            extra_body={"mode": "rag"},
        )

    with ThreadPoolExecutor(4) as ex:
        results = list(ex.map(one, [LACE, MARS, LACE, MARS]))
    assert [r.medllm["abstained"] for r in results] == [False, True, False, True]
    assert all(r.choices[0].finish_reason == "stop" for r in results)
