"""A SCRIPTED OpenAI-compatible server on 127.0.0.1 — a stand-in, said plainly, for a capable
tool-calling model (a served 8B model), which cannot run on this machine.

It speaks the real protocol over real HTTP (``GET /v1/models``, ``POST /v1/chat/completions``
with and without ``stream``, ``tools`` / ``tool_calls``, ``logprobs``), and replays fixed
replies chosen from the request itself, so concurrent conversations get their own script:

* a request carrying ``tools`` (a FunctionAgent step) or the ReAct header (a ReActAgent step):
  the script whose key occurs in the conversation's user messages; the step index is the number
  of assistant messages after the question. Past the end, the last step repeats (an endless
  loop). Steps: ``{"tool": name, "args": {...}}``, ``{"malformed": "..."}`` (a tool call whose
  arguments are not JSON, or unparseable ReAct text), ``{"answer": "..."}``.
* ``logprobs: true`` (label scoring): fixed top log-probabilities.
* anything else (the engine writing the final answer): the script's ``final`` text.

Every request body is kept in ``requests`` for assertions.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODEL = "scripted-8b"
TOP_LOGPROBS = [("yes", -0.3), ("no", -1.6), ("maybe", -2.9), ("The", -4.0)]


@dataclass
class Script:
    steps: list[dict[str, Any]]
    final: str = "The abstracts address this [1]."


@dataclass
class ScriptedServer:
    scripts: dict[str, Script] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> ScriptedServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:  # quiet
                pass

            def _send(self, code: int, obj: Any) -> None:
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802
                if self.path.rstrip("/").endswith("/models"):
                    self._send(200, {"object": "list", "data": [{"id": MODEL, "object": "model"}]})
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:  # noqa: N802
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n) or b"{}")
                with server._lock:
                    server.requests.append(body)
                message = server.reply(body)
                if body.get("stream"):
                    self._stream(message)
                else:
                    self._send(200, _completion(message, body))

            def _stream(self, message: dict[str, Any]) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                text = message.get("content") or ""
                words = [w + " " for w in text.split(" ")] if text else []
                if words:
                    words[-1] = words[-1][:-1]
                chunks = [{"role": "assistant", "content": ""}] + [{"content": w} for w in words]
                for i, delta in enumerate(chunks):
                    last = i == len(chunks) - 1
                    obj = {
                        "id": "chatcmpl-scripted",
                        "object": "chat.completion.chunk",
                        "created": int(time.time()),
                        "model": MODEL,
                        "choices": [
                            {"index": 0, "delta": delta, "finish_reason": "stop" if last else None}
                        ],
                    }
                    self.wfile.write(f"data: {json.dumps(obj)}\n\n".encode())
                self.wfile.write(b"data: [DONE]\n\n")

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._http.server_address[1]}/v1"
        threading.Thread(target=self._http.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()

    # ------------------------------------------------------------------ replies

    def _script(self, messages: list[dict[str, Any]]) -> tuple[Script | None, int]:
        for i, m in enumerate(messages):
            if m.get("role") != "user":
                continue
            text = _text(m)
            for key, script in self.scripts.items():
                if key in text:
                    after = sum(1 for x in messages[i + 1 :] if x.get("role") == "assistant")
                    return script, after
        return None, 0

    def reply(self, body: dict[str, Any]) -> dict[str, Any]:
        messages = body.get("messages") or []
        if body.get("logprobs"):
            return {"role": "assistant", "content": "yes", "_logprobs": True}
        react = any("Action Input" in _text(m) for m in messages if m.get("role") == "system")
        script, n = self._script(messages)
        if script is None:
            return {"role": "assistant", "content": "I have no script for this question."}
        if not (body.get("tools") or react):
            return {"role": "assistant", "content": script.final}
        step = script.steps[min(n, len(script.steps) - 1)]
        call_id = f"call_{len(self.requests)}"
        if "tool" in step:
            if react:
                return {
                    "role": "assistant",
                    "content": f"Thought: {step.get('thought', 'I need to search.')}\n"
                    f"Action: {step['tool']}\nAction Input: {json.dumps(step['args'])}",
                }
            return {
                "role": "assistant",
                "content": step.get("thought"),
                "tool_calls": [
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {"name": step["tool"], "arguments": json.dumps(step["args"])},
                    }
                ],
            }
        if "malformed" in step:
            if react:
                return {"role": "assistant", "content": step["malformed"]}
            return {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {"name": "hybrid_search", "arguments": step["malformed"]},
                    }
                ],
            }
        answer = step["answer"]
        if react:
            return {"role": "assistant", "content": f"Thought: I can answer.\nAnswer: {answer}"}
        return {"role": "assistant", "content": answer}


def _text(m: dict[str, Any]) -> str:
    c = m.get("content")
    if isinstance(c, list):
        return " ".join(p.get("text", "") for p in c if isinstance(p, dict))
    return c or ""


def _completion(message: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    logprobs = None
    if message.pop("_logprobs", False):
        n = int(body.get("top_logprobs") or 4)
        top = [{"token": t, "logprob": lp, "bytes": None} for t, lp in TOP_LOGPROBS[:n]]
        logprobs = {
            "content": [{"token": "yes", "logprob": -0.3, "bytes": None, "top_logprobs": top}]
        }
    finish = "tool_calls" if message.get("tool_calls") else "stop"
    return {
        "id": "chatcmpl-scripted",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": MODEL,
        "choices": [
            {"index": 0, "message": message, "finish_reason": finish, "logprobs": logprobs}
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }
