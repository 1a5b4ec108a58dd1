from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from medllm.config import Settings


def test_defaults_and_home(medllm_home: Path) -> None:
    s = Settings.load()
    assert s.paths.home == medllm_home
    assert s.paths.chroma_dir == medllm_home / "chroma"
    assert s.models.llm == "smollm2-135m-instruct"
    assert s.models.embedding == "all-minilm-l6-v2"


def test_precedence_defaults_preset_file_env_args(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    preset = tmp_path / "p.toml"
    preset.write_text(
        '[retrieval]\ntop_k = 7\nmode = "bm25"\nchunk_size = 300\n'
        "[generation]\nmax_new_tokens = 11\n"
    )
    (tmp_path / "medllm.toml").write_text('[retrieval]\ntop_k = 8\nmode = "dense"\n')
    # preset only
    s = Settings.load(preset=preset, config_file=False)
    assert (s.retrieval.top_k, s.retrieval.mode, s.retrieval.chunk_size) == (7, "bm25", 300)
    # config file beats preset, preset still fills the rest
    s = Settings.load(preset=preset)
    assert (s.retrieval.top_k, s.retrieval.mode, s.retrieval.chunk_size) == (8, "dense", 300)
    assert s.generation.max_new_tokens == 11
    # env beats file
    monkeypatch.setenv("MEDLLM_RETRIEVAL__TOP_K", "9")
    s = Settings.load(preset=preset)
    assert s.retrieval.top_k == 9 and s.retrieval.mode == "dense"
    # explicit arguments (CLI flags) beat env
    s = Settings.load(preset=preset, retrieval={"top_k": 10})
    assert s.retrieval.top_k == 10 and s.retrieval.chunk_size == 300
    s2 = s.with_overrides(retrieval={"top_k": 3, "mode": None})
    assert s2.retrieval.top_k == 3 and s2.retrieval.mode == "dense"


def test_named_preset() -> None:
    s = Settings.load(preset="fast")
    assert s.models.backend == "llama-cpp"
    with pytest.raises(ValueError, match="unknown preset"):
        Settings.load(preset="nope")


def test_unknown_keys_are_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[retrieval]\ntopk = 3\n")
    with pytest.raises(ValidationError, match="topk"):
        Settings.load(preset=bad)
    bad.write_text("[retreival]\ntop_k = 3\n")
    with pytest.raises(ValidationError, match="retreival"):
        Settings.load(preset=bad)
    with pytest.raises(ValidationError):
        Settings.load(models={"llmm": "x"})
    monkeypatch.setenv("MEDLLM_MODELS__NOPE", "x")
    with pytest.raises(ValidationError, match="nope"):
        Settings.load()


def test_invalid_values_rejected() -> None:
    with pytest.raises(ValidationError):
        Settings.load(retrieval={"mode": "magic"})
    with pytest.raises(ValidationError):
        Settings.load(retrieval={"top_k": 0})


def test_every_field_has_a_description() -> None:
    def walk(model: type) -> list[str]:
        missing = []
        for name, f in model.model_fields.items():  # type: ignore[attr-defined]
            if not f.description:
                missing.append(f"{model.__name__}.{name}")
            ann = f.annotation
            if isinstance(ann, type) and hasattr(ann, "model_fields"):
                missing += walk(ann)
        return missing

    assert walk(Settings) == []
