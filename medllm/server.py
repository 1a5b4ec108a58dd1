"""An OpenAI-compatible HTTP API over an :class:`~medllm.assistant.Assistant`.

``GET /v1/models`` and ``POST /v1/chat/completions`` (with and without ``stream``). The last
user message is the question; earlier user/assistant turns are the conversation history (the
server keeps no state). Answers carry their citations twice: as a "Sources" list at the end of
the message content (for any chat UI) and as extra fields ``citations`` and ``medllm`` (the
whole answer object) on the response — the ``openai`` client exposes them as attributes.
Optional extra request fields: ``mode`` (auto|rag|direct) and ``strategy`` (router|agent)
override the server's; the answer object in ``medllm`` carries the trace (``steps``). Each
request is its own conversation (history from its messages, a trace of its own), so sessions
never mix.

Safety: bind to 127.0.0.1 by default; with an API key, requests without
``Authorization: Bearer KEY`` get 401; bodies over ``max_body_bytes`` get 413; malformed
bodies get 400 with a message naming the problem. Model calls are serialised by the engine's
lock, so concurrent requests queue instead of failing.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

# fastapi at module level: route signatures are resolved from these globals. This module is
# imported only by `medllm serve` and server users, never by `import medllm` or the CLI.
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse

from medllm.agents.answer import Answer, format_citation
from medllm.agents.engine import MODES, STRATEGIES, validate_question
from medllm.errors import DataError, MedllmError, StoreError

if TYPE_CHECKING:
    from medllm.assistant import Assistant

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 256 * 1024


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def _error(status: int, message: str, kind: str = "invalid_request_error") -> Any:
    return JSONResponse(
        status_code=status, content={"error": {"message": message, "type": kind, "code": status}}
    )


def content_with_sources(ans: Answer) -> str:
    if not ans.citations:
        return ans.answer
    return ans.answer + "\n\nSources:\n" + "\n".join(format_citation(c) for c in ans.citations)


def sources_suffix(ans: Answer) -> str:
    return content_with_sources(ans)[len(ans.answer) :]


def parse_request(
    raw: bytes,
) -> tuple[str, list[tuple[str, str]], bool, str | None, int | None, str | None]:
    """(question, history, stream, mode, max_tokens, strategy) from a chat-completions body,
    or BadRequest. ``max_tokens`` caps the answer below ``generation.max_new_tokens``."""
    try:
        body = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise BadRequest("the request body is not UTF-8") from None
    except json.JSONDecodeError as e:
        raise BadRequest(f"the request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise BadRequest("'messages' must be a non-empty list of {role, content} objects")
    turns: list[tuple[str, str]] = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise BadRequest(f"messages[{i}] must be an object with a 'role' string")
        content = m.get("content")
        if isinstance(content, list):  # content parts: keep the text ones
            content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        if not isinstance(content, str):
            raise BadRequest(f"messages[{i}].content must be a string")
        if m["role"] in ("user", "assistant"):
            turns.append((m["role"], content))
    if not turns or turns[-1][0] != "user":
        raise BadRequest("the last message must have role 'user' (the question)")
    history, pending = [], None
    for role, text in turns[:-1]:
        if role == "user":
            pending = text
        elif pending is not None:
            history.append((pending, text))
            pending = None
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("'stream' must be true or false")
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
    if max_tokens is not None and (
        not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or not max_tokens >= 1
    ):
        raise BadRequest("'max_tokens' must be a positive integer")
    mode = body.get("mode")
    if mode is not None and mode not in MODES:
        raise BadRequest(f"'mode' must be one of {', '.join(MODES)}")
    strategy = body.get("strategy")
    if strategy is not None and strategy not in STRATEGIES:
        raise BadRequest(f"'strategy' must be one of {', '.join(STRATEGIES)}")
    try:
        question = validate_question(turns[-1][1])
    except DataError as e:
        raise BadRequest(str(e)) from None
    return question, history, stream, mode, max_tokens, strategy


def create_app(
    assistant: Assistant,
    *,
    api_key: str | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> FastAPI:
    app = FastAPI(title="medllm", version="1", docs_url=None, redoc_url=None)
    model_id = assistant.engine.backend.model  # the served model (a server backend: its name)

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Any:
        if api_key is not None:
            auth = request.headers.get("authorization", "")
            given = auth[7:] if auth.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(given.encode(), api_key.encode()):
                return _error(401, "missing or invalid API key", "authentication_error")
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_body_bytes:
            return _error(413, f"request body over {max_body_bytes} bytes")
        return await call_next(request)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": model_id, "object": "model", "created": 0, "owned_by": "medllm"}],
        }

    @app.post("/v1/chat/completions")
    async def completions(request: Request) -> Any:
        raw = b""
        async for part in request.stream():
            raw += part
            if len(raw) > max_body_bytes:
                return _error(413, f"request body over {max_body_bytes} bytes")
        try:
            question, history, stream, mode, max_tokens, strategy = parse_request(raw)
        except BadRequest as e:
            return _error(e.status, str(e))
        cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        kw: dict[str, Any] = {
            "mode": mode or assistant.mode,
            "k": assistant.k,
            "history": history,
            "max_tokens": max_tokens,
            "strategy": strategy or assistant.strategy,
        }
        if not stream:
            try:
                ans = await run_in_threadpool(assistant.engine.ask, question, **kw)
            except StoreError as e:
                return _error(503, str(e), "server_error")
            except MedllmError as e:
                return _error(400, str(e))
            return {
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": model_id,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content_with_sources(ans)},
                        "finish_reason": "stop",
                    }
                ],
                **({"usage": ans.usage} if ans.usage else {}),
                "citations": [c.__dict__ for c in ans.citations],
                "medllm": ans.to_dict(),
            }

        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
            obj = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model_id,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                **extra,
            }
            return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

        def events() -> Iterator[str]:
            yield chunk({"role": "assistant", "content": ""})
            try:
                s = assistant.engine.stream(question, **kw)
                for delta in s:
                    yield chunk({"content": delta})
                ans = s.answer
                assert ans is not None
                yield chunk(
                    {"content": sources_suffix(ans)},
                    "stop",
                    citations=[c.__dict__ for c in ans.citations],
                    medllm=ans.to_dict(),
                )
            except MedllmError as e:
                yield chunk({"content": f"error: {e}"}, "stop")
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


def serve(
    assistant: Assistant,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
) -> None:
    """Run the server (blocking) with uvicorn."""
    import uvicorn

    if host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        logger.warning("serving on %s without an API key: anyone who can reach it may query", host)
    uvicorn.run(create_app(assistant, api_key=api_key), host=host, port=port, log_level="warning")
