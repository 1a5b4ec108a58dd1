"""Shared fixtures. Real components where they fit: packaged models, real Chroma, real
PubMedQA from ../shared. Outbound network is blocked except loopback (pyproject addopts)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Offline before anything imports huggingface_hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["ANONYMIZED_TELEMETRY"] = "False"

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
PUBMEDQA_DIR = SHARED / "data" / "pubmedqa"

# Converted models are cached once per test session (converting the GGUF takes ~15 s),
# in a session-wide directory that each test's MEDLLM_HOME links to.


@pytest.fixture(scope="session")
def models_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models-cache")


@pytest.fixture(autouse=True)
def medllm_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, models_cache: Path) -> Path:
    """Every test gets its own MEDLLM_HOME; converted models are shared across tests."""
    home = tmp_path / "medllm-home"
    home.mkdir()
    (home / "models").symlink_to(models_cache, target_is_directory=True)
    monkeypatch.setenv("MEDLLM_HOME", str(home))
    for k in list(os.environ):
        if k.startswith("MEDLLM_") and k != "MEDLLM_HOME":
            monkeypatch.delenv(k)
    monkeypatch.chdir(tmp_path)  # no stray ./medllm.toml from the checkout
    return home


@pytest.fixture(scope="session")
def pubmedqa_dir() -> Path:
    if not (PUBMEDQA_DIR / "ori_pqal.json").is_file():
        pytest.fail(
            f"PubMedQA data missing at {PUBMEDQA_DIR}: tests need ../shared beside the repo"
        )
    return PUBMEDQA_DIR


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return SHARED


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import importlib.util

    has_cuda = False
    if importlib.util.find_spec("torch") is not None:
        import torch

        has_cuda = torch.cuda.is_available()
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))
        if "network" in item.keywords:
            item.add_marker(pytest.mark.skip(reason="network tests are skipped offline"))
