"""An OpenAI-compatible HTTP API over an :class:`~medllm.assistant.Assistant`.

``GET /v1/models``, ``GET /v1/models/{id}`` and ``POST /v1/chat/completions`` (with and without
``stream``). The last user message is the question; earlier user/assistant turns are the
conversation history (the server keeps no state); system, developer and tool messages are
accepted and not used. Answers carry their citations twice: as a "Sources" list at the end of
the message content (for any chat UI) and as extra fields ``citations`` and ``medllm`` (the
whole answer object) on the response — the ``openai`` client exposes them as attributes.
Optional extra request fields: ``mode`` (auto|rag|direct) and ``strategy`` (router|agent)
override the server's; ``where`` (a filter string such as ``"year>=2010,pubtype=Review"``, or a
list of them, as ``medllm ask --where``) narrows this request's search, on top of the server's
own ``retrieval.where``; ``collection`` other than the served one gets 400 (a server searches one
collection). The answer object in ``medllm`` carries the trace (``steps``). Each
request is its own conversation (history from its messages, a trace of its own), so sessions
never mix.

``model`` must be an id ``GET /v1/models`` lists (or left out): another name gets 404
``model_not_found``. ``n`` other than 1 gets 400; sampling fields (``temperature``,
``top_p``, ``seed``, ``stop``, penalties), ``tools``/``tool_choice``, ``response_format`` and
``logprobs`` are accepted and ignored — generation follows the server's settings.
``finish_reason`` is ``"length"`` when the token limit (``max_tokens`` or
``generation.max_new_tokens``) cut the generated text, else ``"stop"``.

Errors have OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``: ``param`` names
the offending field (or is null), ``code`` is a string such as ``model_not_found`` or null. An
error after a stream started is an in-stream ``data: {"error": ...}`` event, as OpenAI sends.

Safety: bind to 127.0.0.1 by default; with an API key, requests without
``Authorization: Bearer KEY`` get 401; bodies over ``max_body_bytes`` get 413; malformed
bodies get 400 with a message naming the problem; unknown routes 404 and wrong methods 405.
Model calls are serialised by the engine's lock, so concurrent requests queue instead of
failing.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

# fastapi at module level: route signatures are resolved from these globals. This module is
# imported only by `medllm serve` and server users, never by `import medllm` or the CLI.
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from medllm.agents.answer import Answer, format_citation
from medllm.agents.engine import MODES, STRATEGIES, validate_question
from medllm.errors import DataError, MedllmError, StoreError
from medllm.models.base import finish_reasons
from medllm.storage import filters

if TYPE_CHECKING:
    from medllm.agents.engine import AnswerStream
    from medllm.assistant import Assistant

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 256 * 1024
ROLES = ("system", "developer", "user", "assistant", "tool", "function")  # as OpenAI accepts


class BadRequest(Exception):
    """A request the server refuses: ``param`` names the offending field (or None), ``code``
    is OpenAI's error code (a string, or None)."""

    def __init__(
        self,
        message: str,
        status: int = 400,
        *,
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status, self.param, self.code = status, param, code


def _error(
    status: int,
    message: str,
    kind: str | None = None,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """An OpenAI-shaped error: ``{"error": {"message", "type", "param", "code"}}``."""
    if kind is None:
        kind = (
            "authentication_error"
            if status == 401
            else "server_error"
            if status >= 500
            else "invalid_request_error"
        )
    body = {"message": message, "type": kind, "param": param, "code": code}
    return JSONResponse(status_code=status, content={"error": body}, headers=headers)


def content_with_sources(ans: Answer) -> str:
    if not ans.citations:
        return ans.answer
    return ans.answer + "\n\nSources:\n" + "\n".join(format_citation(c) for c in ans.citations)


def sources_suffix(ans: Answer) -> str:
    return content_with_sources(ans)[len(ans.answer) :]


@dataclass
class ChatRequest:
    """A validated chat-completions request."""

    question: str
    history: list[tuple[str, str]] = field(default_factory=list)
    stream: bool = False
    mode: str | None = None
    max_tokens: int | None = None  # caps the answer below ``generation.max_new_tokens``
    strategy: str | None = None
    model: str | None = None  # as given (None: left out)
    include_usage: bool = False  # stream_options.include_usage
    where: list[str] = field(default_factory=list)  # this request's filters (all must hold)
    collection: str | None = None  # as given; must be the served one


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def parse_request(raw: bytes) -> ChatRequest:
    """The validated fields of a chat-completions body, or :class:`BadRequest`."""
    try:
        body = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise BadRequest("the request body is not UTF-8") from None
    except json.JSONDecodeError as e:
        raise BadRequest(f"the request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise BadRequest("'model' must be a string", param="model", code="invalid_type")
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise BadRequest(
            "'messages' must be a non-empty list of {role, content} objects", param="messages"
        )
    turns: list[tuple[str, str, int]] = []  # (role, text, index in messages)
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise BadRequest(
                f"messages[{i}] must be an object with a 'role' string", param=f"messages[{i}]"
            )
        role = m["role"]
        if role not in ROLES:
            raise BadRequest(
                f"messages[{i}].role is {role!r}, not a role this API accepts; use one of "
                + ", ".join(repr(r) for r in ROLES),
                param=f"messages[{i}].role",
                code="invalid_value",
            )
        content = m.get("content")
        if isinstance(content, list):  # content parts: keep the text ones
            content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        if content is None and role in ("assistant", "tool", "function"):
            content = ""  # an assistant turn that only called tools
        if not isinstance(content, str):
            raise BadRequest(
                f"messages[{i}].content must be a string",
                param=f"messages[{i}].content",
                code="invalid_type",
            )
        if role in ("user", "assistant"):
            turns.append((role, content, i))
    if not turns or turns[-1][0] != "user":
        raise BadRequest(
            "the last user/assistant message must have role 'user' (the question)",
            param="messages",
        )
    history: list[tuple[str, str]] = []
    pending = None
    for role, text, _ in turns[:-1]:
        if role == "user":
            pending = text
        elif pending is not None:
            history.append((pending, text))
            pending = None
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise BadRequest("'stream' must be true or false", param="stream", code="invalid_type")
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    n = body.get("n")
    if n is not None and n != 1:
        raise BadRequest(
            f"'n' must be 1: this server returns one choice per request (got {n!r})",
            param="n",
            code="unsupported_value",
        )
    key = "max_tokens" if body.get("max_tokens") is not None else "max_completion_tokens"
    max_tokens = body.get(key)
    if max_tokens is not None and not _positive_int(max_tokens):
        raise BadRequest(f"'{key}' must be a positive integer", param=key, code="invalid_value")
    mode = body.get("mode")
    if mode is not None and mode not in MODES:
        raise BadRequest(f"'mode' must be one of {', '.join(MODES)}", param="mode")
    strategy = body.get("strategy")
    if strategy is not None and strategy not in STRATEGIES:
        raise BadRequest(f"'strategy' must be one of {', '.join(STRATEGIES)}", param="strategy")
    spec = body.get("where")
    wheres = [spec] if isinstance(spec, str) else spec if spec is not None else []
    if not isinstance(wheres, list) or not all(isinstance(x, str) for x in wheres):
        raise BadRequest(
            "'where' must be a filter string such as \"year>=2010,pubtype=Review\" or a list "
            "of them",
            param="where",
            code="invalid_type",
        )
    try:
        filters.parse(wheres)
    except DataError as e:
        raise BadRequest(f"'where': {e.reason}", param="where", code="invalid_value") from None
    collection = body.get("collection")
    if collection is not None and not isinstance(collection, str):
        raise BadRequest("'collection' must be a string", param="collection", code="invalid_type")
    content = f"messages[{turns[-1][2]}].content"
    try:
        question = validate_question(turns[-1][1])
    except DataError as e:  # named by the request's field, not the engine's 'question'
        raise BadRequest(f"{content}: {e.reason}", param=content) from None
    return ChatRequest(
        question=question,
        history=history,
        stream=stream,
        mode=mode,
        max_tokens=max_tokens,
        strategy=strategy,
        model=model,
        include_usage=include_usage,
        where=[w for w in wheres if w.strip()],
        collection=collection,
    )


def _with_finish_log(s: AnswerStream, log: list[str]) -> Iterator[str]:
    """``s``'s deltas, each produced with :data:`finish_reasons` set to ``log`` — in the
    context of whichever thread asks for it (a streaming response hops between threads)."""
    it = iter(s)
    while True:
        token = finish_reasons.set(log)
        try:
            delta = next(it)
        except StopIteration:
            return
        finally:
            finish_reasons.reset(token)
        yield delta


def finish_reason(ans: Answer, log: list[str]) -> str:
    """ "length" when the token limit cut the generation that wrote the text, else "stop"."""
    return "length" if log and log[-1] == "length" and not ans.quoted else "stop"


def create_app(
    assistant: Assistant,
    *,
    api_key: str | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> FastAPI:
    app = FastAPI(title="medllm", version="1", docs_url=None, redoc_url=None)
    model_id = assistant.engine.backend.model  # the served model (a server backend: its name)
    served = [model_id]  # what /v1/models lists; requests must name one of them

    def model_card(mid: str) -> dict[str, Any]:
        return {"id": mid, "object": "model", "created": 0, "owned_by": "medllm"}

    def not_found(mid: str) -> JSONResponse:
        return _error(
            404,
            f"The model {mid!r} does not exist on this server; it serves "
            + ", ".join(repr(m) for m in served)
            + " (GET /v1/models)",
            param="model",
            code="model_not_found",
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        where = f"{request.method} {request.url.path}"
        if exc.status_code == 404:
            message = (
                f"Invalid URL ({where}): this server serves GET /v1/models, "
                "GET /v1/models/{model} and POST /v1/chat/completions"
            )
        elif exc.status_code == 405:
            allow = (exc.headers or {}).get("Allow") or (exc.headers or {}).get("allow")
            message = f"Method not allowed ({where})" + (f"; use {allow}" if allow else "")
        else:
            message = str(exc.detail)
        return _error(exc.status_code, message, headers=exc.headers)

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Any:
        if api_key is not None:
            auth = request.headers.get("authorization", "")
            given = auth[7:] if auth.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(given.encode(), api_key.encode()):
                return _error(401, "missing or invalid API key", code="invalid_api_key")
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_body_bytes:
            return _error(413, f"request body over {max_body_bytes} bytes")
        return await call_next(request)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card(m) for m in served]}

    @app.get("/v1/models/{mid:path}")
    async def model(mid: str) -> Any:
        return model_card(mid) if mid in served else not_found(mid)

    @app.post("/v1/chat/completions")
    async def completions(request: Request) -> Any:
        raw = b""
        async for part in request.stream():
            raw += part
            if len(raw) > max_body_bytes:
                return _error(413, f"request body over {max_body_bytes} bytes")
        try:
            req = parse_request(raw)
        except BadRequest as e:
            return _error(e.status, str(e), param=e.param, code=e.code)
        if req.model is not None and req.model not in served:
            return not_found(req.model)
        collection = assistant.engine.settings.retrieval.collection
        if req.collection is not None and req.collection != collection:
            return _error(
                400,
                f"this server searches the collection {collection!r}, not "
                f"{req.collection!r}; start another `medllm serve --collection "
                f"{req.collection}` for it",
                param="collection",
                code="unsupported_value",
            )
        cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        kw: dict[str, Any] = {
            "mode": req.mode or assistant.mode,
            "k": assistant.k,
            "history": req.history,
            "max_tokens": req.max_tokens,
            "strategy": req.strategy or assistant.strategy,
        }
        if req.where:  # on top of the server's own filter: all must hold
            own = assistant.engine.settings.retrieval.where
            kw["where"] = [*([own] if own else []), *req.where]
        if not req.stream:

            def answer() -> tuple[Answer, str]:
                log: list[str] = []
                s = assistant.engine.stream(req.question, **kw)
                for _ in _with_finish_log(s, log):
                    pass
                assert s.answer is not None
                return s.answer, finish_reason(s.answer, log)

            try:
                ans, finish = await run_in_threadpool(answer)
            except StoreError as e:
                return _error(503, str(e))
            except MedllmError as e:
                return _error(400, str(e), param=getattr(e, "field", None))
            return {
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": model_id,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content_with_sources(ans)},
                        "finish_reason": finish,
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
                log: list[str] = []
                s = assistant.engine.stream(req.question, **kw)
                for delta in _with_finish_log(s, log):
                    yield chunk({"content": delta})
                ans = s.answer
                assert ans is not None
                yield chunk(
                    {"content": sources_suffix(ans)},
                    finish_reason(ans, log),
                    citations=[c.__dict__ for c in ans.citations],
                    medllm=ans.to_dict(),
                )
                if req.include_usage and ans.usage:  # OpenAI's stream_options.include_usage
                    obj = {
                        "id": cid,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": model_id,
                        "choices": [],
                        "usage": ans.usage,
                    }
                    yield f"data: {json.dumps(obj)}\n\n"
            except MedllmError as e:
                # OpenAI's in-stream error: an event with "error" and no choices (the openai
                # client raises it as an APIError); it used to come as answer text
                status = 503 if isinstance(e, StoreError) else 400
                body = {
                    "message": str(e),
                    "type": "server_error" if status >= 500 else "invalid_request_error",
                    "param": getattr(e, "field", None),
                    "code": None,
                }
                yield f"data: {json.dumps({'error': body}, ensure_ascii=False)}\n\n"
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
