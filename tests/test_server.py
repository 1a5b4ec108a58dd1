"""The OpenAI-compatible server, exercised with the real `openai` client over loopback."""

from __future__ import annotations

import json
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
    r = httpx.get(f"{base_url}/models")
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


def _openai_error(r: httpx.Response, status: int) -> dict[str, Any]:
    """The error object of an OpenAI-shaped error response: message, type, param, code (a
    string or null — never the HTTP status)."""
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}, r.text
    assert isinstance(err["message"], str) and isinstance(err["type"], str)
    assert err["code"] is None or isinstance(err["code"], str), r.text
    assert err["param"] is None or isinstance(err["param"], str), r.text
    return err  # type: ignore[no-any-return]


def test_body_too_large_and_malformed(base_url: str) -> None:
    h = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    url = f"{base_url}/chat/completions"
    big = '{"messages": [{"role": "user", "content": "' + "a" * 70_000 + '"}]}'
    _openai_error(httpx.post(url, content=big, headers=h), 413)
    q = b'{"messages": [{"role": "user", "content": "Is it?"}]'
    cases = {  # body: (a part of the message, param)
        b"{not json": ("not valid JSON", None),
        b"[1, 2]": ("JSON object", None),
        b'{"messages": []}': ("messages", "messages"),
        b'{"messages": [{"role": "user", "content": 5}]}': ("content", "messages[0].content"),
        b'{"messages": [{"role": "user", "content": ""}]}': ("empty", "messages[0].content"),
        b'{"messages": [{"role": "assistant", "content": "hi"}]}': ("role 'user'", "messages"),
        q + b', "mode": "x"}': ("mode", "mode"),
        q + b', "max_tokens": -5}': ("max_tokens", "max_tokens"),
        q + b', "max_tokens": "9"}': ("max_tokens", "max_tokens"),
        q + b', "max_completion_tokens": 0}': ("max_completion_tokens", "max_completion_tokens"),
        q + b', "model": 5}': ("model", "model"),
        b"\xff\xfe": ("UTF-8", None),
    }
    for body, (message, param) in cases.items():
        err = _openai_error(httpx.post(url, content=body, headers=h), 400)
        assert message in err["message"] and err["param"] == param, (body, err)
        assert err["type"] == "invalid_request_error", (body, err)


def test_a_bad_question_is_named_by_its_message() -> None:
    """The message names the request's field, as ``param`` does (it read "field 'question':
    the question is empty", a field no request has)."""
    from medllm.server import BadRequest, parse_request

    sys_msg = {"role": "system", "content": "Be brief."}
    for content, reason in (("  ", "the question is empty"), ("x" * 5000, "characters long")):
        body = {"messages": [sys_msg, {"role": "user", "content": content}]}
        with pytest.raises(BadRequest) as e:
            parse_request(json.dumps(body).encode())
        assert str(e.value).startswith("messages[1].content: ") and reason in str(e.value)
        assert "field 'question'" not in str(e.value) and e.value.param == "messages[1].content"


def test_unknown_model_is_404_and_models_retrieve(client: Any) -> None:
    from openai import NotFoundError

    msgs = [{"role": "user", "content": LACE}]
    for stream in (False, True):
        with pytest.raises(NotFoundError) as e:
            client.chat.completions.create(model="gpt-4o", messages=msgs, stream=stream)
        assert e.value.code == "model_not_found" and e.value.param == "model"
        assert "gpt-4o" in e.value.message and "smollm2-135m-instruct" in e.value.message
    m = client.models.retrieve("smollm2-135m-instruct")
    assert m.id == "smollm2-135m-instruct" and m.object == "model"
    with pytest.raises(NotFoundError) as e:
        client.models.retrieve("gpt-4o")
    assert e.value.code == "model_not_found"


def test_finish_reason_length_when_max_tokens_cuts_the_answer(client: Any) -> None:
    def ask(question: str, **kw: Any) -> Any:
        return client.chat.completions.create(
            model="smollm2-135m-instruct",
            messages=[{"role": "user", "content": question}],
            extra_body={"mode": "direct"},
            **kw,
        )

    cut = {"max_tokens": 5}
    usage = {"stream": True, "stream_options": {"include_usage": True}}
    with ThreadPoolExecutor(3) as ex:  # at once: each request gets its own finish_reason
        short = ex.submit(ask, "What is anemia?", **cut)
        streamed = ex.submit(lambda: list(ask("What is anemia?", **cut, **usage)))
        # a generation the model ends itself, within the limit (16 tokens here): "stop"
        ended = ex.submit(ask, "Reply with one word: is water wet?")
        r, chunks, done = short.result(), streamed.result(), ended.result()
    assert r.choices[0].finish_reason == "length", r.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length" and set(finishes[:-1]) == {None}
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert done.choices[0].finish_reason == "stop", done.choices[0].message.content


def test_n_rejected_other_common_fields_accepted(client: Any) -> None:
    from openai import BadRequestError

    msgs: list[Any] = [{"role": "user", "content": MARS}]
    with pytest.raises(BadRequestError) as e:
        client.chat.completions.create(model="smollm2-135m-instruct", messages=msgs, n=2)
    assert e.value.param == "n" and "'n' must be 1" in e.value.message
    r = client.chat.completions.create(  # what chat UIs send: accepted, and ignored
        model="smollm2-135m-instruct",
        messages=[
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "developer", "content": "Be brief."},
            *msgs,
        ],
        n=1,
        temperature=0.7,
        top_p=0.9,
        seed=1,
        stop=["\n\n"],
        presence_penalty=0,
        frequency_penalty=0,
        user="someone",
        logprobs=False,
        response_format={"type": "text"},
        tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
        tool_choice="auto",
        extra_body={"mode": "rag"},
    )
    assert r.medllm["abstained"] and r.choices[0].finish_reason == "stop"


def test_where_narrows_the_search_and_another_collection_is_refused(client: Any) -> None:
    """`where` and `collection` in a request used to be ignored: the answer came from the
    whole served corpus whatever the client asked for."""
    from openai import BadRequestError

    msgs: list[Any] = [{"role": "user", "content": LACE}]
    r = client.chat.completions.create(model="smollm2-135m-instruct", messages=msgs)
    assert LACE_PMID in [c["pmid"] for c in r.citations]  # the lace-plant abstract is from 2011
    for where in ("year>=2012", ["year>=2000", "year<2011"]):
        r = client.chat.completions.create(
            model="smollm2-135m-instruct", messages=msgs, extra_body={"where": where}
        )
        assert LACE_PMID not in [c["pmid"] for c in r.citations], where
    r = client.chat.completions.create(
        model="smollm2-135m-instruct", messages=msgs, extra_body={"where": "year=2011"}
    )
    assert LACE_PMID in [c["pmid"] for c in r.citations]
    for body, param, says in (
        ({"where": "yeer>=2010"}, "where", "cannot read the filter clause 'yeer>=2010'"),
        ({"where": 2010}, "where", "'where' must be a filter string"),
        ({"collection": "nope"}, "collection", "searches the collection 'pubmedqa', not 'nope'"),
    ):
        with pytest.raises(BadRequestError) as e:
            client.chat.completions.create(
                model="smollm2-135m-instruct", messages=msgs, extra_body=body
            )
        message = e.value.body["message"]  # type: ignore[index]
        assert e.value.param == param and says in message, message
    r = client.chat.completions.create(  # naming the served collection is fine
        model="smollm2-135m-instruct", messages=msgs, extra_body={"collection": "pubmedqa"}
    )
    assert LACE_PMID in [c["pmid"] for c in r.citations]


def test_unknown_role_named_with_its_index(client: Any) -> None:
    from openai import BadRequestError

    with pytest.raises(BadRequestError) as e:
        client.chat.completions.create(
            model="smollm2-135m-instruct",
            messages=[{"role": "user", "content": "Hi"}, {"role": "wizard", "content": LACE}],
        )
    assert "'wizard'" in e.value.message and "messages[1]" in e.value.message
    assert e.value.param == "messages[1].role" and e.value.code == "invalid_value"


def test_unknown_routes_and_methods_are_openai_errors(base_url: str, client: Any) -> None:
    from openai import NotFoundError

    h = {"Authorization": f"Bearer {KEY}"}
    err = _openai_error(httpx.post(f"{base_url}/completions", json={}, headers=h), 404)
    assert "/v1/completions" in err["message"]
    _openai_error(httpx.get(f"{base_url}/nothing/here", headers=h), 404)
    err = _openai_error(httpx.get(f"{base_url}/models/gpt-4o", headers=h), 404)
    assert err["code"] == "model_not_found"
    r = httpx.get(f"{base_url}/chat/completions", headers=h)
    assert "POST" in _openai_error(r, 405)["message"] and r.headers["allow"] == "POST"
    _openai_error(httpx.delete(f"{base_url}/models", headers=h), 405)
    with pytest.raises(NotFoundError):  # the legacy completions API is not served
        client.completions.create(model="smollm2-135m-instruct", prompt="Hi")


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


def test_an_error_while_streaming_is_an_openai_error_event(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error after the stream started reaches the client as OpenAI's in-stream error
    (the openai client raises it), not as answer text."""
    import openai
    from agents_support import _CACHE

    from medllm.errors import StoreError

    engine = _CACHE["env"]["assistant"].engine

    def broken(*a: Any, **kw: Any) -> Any:
        raise StoreError("the store pubmedqa is being rebuilt")

    monkeypatch.setattr(engine, "stream", broken)
    stream = client.chat.completions.create(
        model="smollm2-135m-instruct", messages=[{"role": "user", "content": LACE}], stream=True
    )
    seen: list[str] = []
    with pytest.raises(openai.APIError, match="being rebuilt"):
        for part in stream:
            seen += [c.delta.content or "" for c in part.choices]
    assert not any("error" in x for x in seen)
