"""A real llama.cpp OpenAI-compatible server (``python -m llama_cpp.server``) on loopback, for
the tests that talk to a served model: started, waited for, and stopped in one place."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def packaged_gguf() -> Path:
    """The packaged SmolLM2-135M-Instruct GGUF."""
    from medllm.models import KNOWN_MODELS

    return KNOWN_MODELS["smollm2-135m-instruct"].locate(Path("/nonexistent"))


@contextlib.contextmanager
def running(args: list[str], port: int, log: Path, key: str | None = None) -> Iterator[str]:
    """``python -m llama_cpp.server ARGS`` (its log in ``log``), waited for until ``/models``
    answers (90 s at most); its /v1 URL. ``key``: the API key it requires."""
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", *args],
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/v1"
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"llama_cpp.server exited ({proc.returncode}): {log.read_text()[-2000:]}"
                )
            try:
                req = urllib.request.Request(f"{url}/models", headers=headers)
                with urllib.request.urlopen(req, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama_cpp.server not ready after 90 s: {log.read_text()[-2000:]}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
