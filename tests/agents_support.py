"""Shared, expensive set-up for the agent/CLI/server tests: one small PubMedQA store and one
loaded Assistant per test session (built on first use, cached in this module)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

N_DOCS = 40  # first PQA-L records; 21645374 (the lace-plant question) is the first
MAX_NEW_TOKENS = 16  # keep generation short: these tests check behaviour, not prose

_CACHE: dict[str, Any] = {}

LACE = "Do mitochondria play a role in remodelling lace plant leaves during programmed cell death?"
LACE_PMID = "21645374"
MARS = "What is the boiling point of liquid nitrogen on Mars?"


def agent_env(tmp_path_factory: Any, models_cache: Path, pubmedqa_dir: Path) -> dict[str, Any]:
    """{"home": Path, "settings": Settings, "assistant": Assistant}, built once per session."""
    if "env" in _CACHE:
        return _CACHE["env"]  # type: ignore[no-any-return]
    from medllm.assistant import Assistant
    from medllm.config import Settings
    from medllm.pipelines.ingest import ingest_pubmedqa

    home = tmp_path_factory.mktemp("agents-home")
    (home / "models").symlink_to(models_cache, target_is_directory=True)
    s = Settings.load(
        config_file=False,
        paths={"home": home},
        generation={"max_new_tokens": MAX_NEW_TOKENS},
        retrieval={"top_k": 2},  # two abstracts in the prompt: shorter prompts, faster tests
    )
    ingest_pubmedqa(s, pubmedqa_dir / "ori_pqal.json", limit=N_DOCS, show_progress=False)
    _CACHE["env"] = {"home": home, "settings": s, "assistant": Assistant.from_settings(s)}
    return _CACHE["env"]  # type: ignore[no-any-return]
