"""medllm: local, private, offline-capable medical question answering with open LLMs.

Importing ``medllm`` is cheap: heavy libraries load only when a function needs them.
"""

from __future__ import annotations

import os

__version__ = "0.1.0"

# Private and offline by default: no telemetry from any library we use. The one place that sets
# these (every medllm module imports this package first); telemetry is forced off, not defaulted.
TELEMETRY_OFF = {
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "ANONYMIZED_TELEMETRY": "False",  # chromadb
    "RAGAS_DO_NOT_TRACK": "true",
    "DO_NOT_TRACK": "1",
}
os.environ.update(TELEMETRY_OFF)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# OpenMP threads (llama.cpp's ggml and torch share libgomp) sleep when they wait at a barrier
# instead of spinning ~3 ms first. ggml ends every graph node in a barrier (~1,000 per forward
# pass): on a CPU that other processes share, a spinning thread holds the core its partner needs
# and llama.cpp ran 3-6x slower (bench/llamacpp_threads.py, bench/RESULTS.md issue 12). libgomp
# reads this once, when it loads, so it is set here, before torch or llama_cpp can be imported.
# A user's own OMP_WAIT_POLICY or GOMP_SPINCOUNT wins (OMP_WAIT_POLICY=ACTIVE to spin).
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

__all__ = ["Assistant", "__version__"]


def __getattr__(name: str):  # type: ignore[no-untyped-def]
    """``from medllm import Assistant`` without importing the engine at ``import medllm``."""
    if name == "Assistant":
        from medllm.assistant import Assistant

        return Assistant
    raise AttributeError(f"module 'medllm' has no attribute {name!r}")
