"""The registry with the real packaged models, offline."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from medllm.config import Settings
from medllm.errors import ModelNotAvailableError
from medllm.models import KNOWN_MODELS, MANIFEST, load_embedding, load_llm, verify_converted


@pytest.fixture(scope="module")
def smollm():  # type: ignore[no-untyped-def]
    # Module scope: one load for the generation tests (MEDLLM_HOME differs per test, but the
    # converted-model cache is shared by the conftest fixture).
    return load_llm(
        "smollm2-135m-instruct", settings=Settings.load(config_file=False), backend="transformers"
    )


def test_offline_env() -> None:
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_smollm_loads_and_greedy_is_deterministic(smollm) -> None:  # type: ignore[no-untyped-def]
    prompt = "List two symptoms of iron-deficiency anemia."
    a = smollm.complete(prompt).text
    b = smollm.complete(prompt).text
    assert a.strip() and a == b
    assert smollm.metadata.model_name == "smollm2-135m-instruct"
    # The chat template is applied: the prompt the model sees is ChatML.
    assert "<|im_start|>assistant" in smollm.completion_to_prompt("hi")


def test_gguf_converted_once_then_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    s = Settings.load(config_file=False)
    target = s.paths.models_dir / "smollm2-135m-instruct"
    load_llm("smollm2-135m-instruct", settings=s, backend="transformers")  # converts if cold
    manifest = json.loads((target / MANIFEST).read_text())
    assert manifest["source"]["sha256"] and "model.safetensors" in manifest["files"]
    assert verify_converted(target) == []

    import transformers

    calls: list[object] = []
    real = transformers.AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(kwargs.get("gguf_file"))
        return real(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    load_llm("smollm2-135m-instruct", settings=s, backend="transformers")
    assert calls == [None], "second load must read the safetensors cache, not the GGUF"


def test_interrupted_conversion_leaves_no_complete_looking_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from medllm import models

    models_dir = tmp_path / "fresh-models"
    import transformers

    def boom(*a, **k):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", boom)
    with pytest.raises(KeyboardInterrupt):
        models.ensure_converted(KNOWN_MODELS["smollm2-135m-instruct"], models_dir)
    assert not (models_dir / "smollm2-135m-instruct").exists()
    assert [p for p in models_dir.iterdir()] == []


def test_embedding_loads_from_package() -> None:
    emb = load_embedding("all-minilm-l6-v2", settings=Settings.load(config_file=False))
    v = emb.get_text_embedding("myocardial infarction")
    assert len(v) == 384
    q = emb.get_query_embedding("heart attack")
    far = emb.get_text_embedding("tax law in medieval France")
    dot = lambda a, b: sum(x * y for x, y in zip(a, b, strict=True))  # noqa: E731
    assert dot(q, v) > dot(q, far)


@pytest.mark.parametrize("model_id", ["google/gemma-2b-it", "meta-llama/Llama-2-7b-chat-hf"])
def test_unreachable_hub_id_gives_one_clear_error(model_id: str) -> None:
    with pytest.raises(ModelNotAvailableError) as ei:
        load_llm(model_id, settings=Settings.load(config_file=False))
    msg = str(ei.value)
    assert model_id in msg and "offline" in msg and "Fix:" in msg
    assert "Traceback" not in msg


def test_unreachable_hub_embedding_gives_clear_error() -> None:
    with pytest.raises(ModelNotAvailableError, match="NeuML/pubmedbert-base-embeddings"):
        load_embedding(
            "NeuML/pubmedbert-base-embeddings", settings=Settings.load(config_file=False)
        )


def test_unknown_name_and_bad_adapter(tmp_path: Path) -> None:
    s = Settings.load(config_file=False)
    with pytest.raises(ModelNotAvailableError, match="unknown model"):
        load_llm("no-such-model", settings=s)
    not_adapter = tmp_path / "not-an-adapter"
    not_adapter.mkdir()
    with pytest.raises(ModelNotAvailableError, match="not a LoRA adapter"):
        load_llm("smollm2-135m-instruct", adapter=not_adapter, settings=s)
    with pytest.raises(ModelNotAvailableError, match="adapter directory not found"):
        load_llm("smollm2-135m-instruct", adapter=tmp_path / "typo", settings=s)


def test_nf4_quantized_load_on_cpu() -> None:
    llm = load_llm(
        "smollm2-135m-instruct", quantization="nf4", settings=Settings.load(config_file=False)
    )
    import bitsandbytes as bnb

    layer = llm._model.model.layers[0].self_attn.q_proj  # type: ignore[attr-defined]
    assert isinstance(layer, bnb.nn.Linear4bit)
    assert llm.complete("Name one symptom of anemia.").text.strip()


def test_device_auto_knows_cpu_without_importing_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    """No GPU device file (or CUDA_VISIBLE_DEVICES empty): 'auto' is the CPU, decided without
    importing torch (~1.5 s cold, on the query path)."""
    import sys

    from medllm.models import registry

    monkeypatch.setattr(registry, "_GPU_DEVICE_FILES", ("/nonexistent/nvidia",))
    if sys.platform.startswith("linux"):
        assert registry._gpu_possible() is False
        assert registry._device_map("auto") == "cpu"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert registry._gpu_possible() is False
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setattr(registry, "_GPU_DEVICE_FILES", ("/",))  # "a driver is there"
    if sys.platform.startswith("linux"):
        assert registry._gpu_possible() is True
    assert registry._device_map("cpu") == "cpu"


def test_auto_backend_is_chosen_without_importing_torch_where_no_gpu_can_be(
    tmp_path: Path,
) -> None:
    """`models.backend = auto` with the packaged GGUF on a machine without a GPU device: the
    llama.cpp backend is chosen without importing torch (~1.5 s of every cold `medllm ask`)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from medllm.config import Settings\n"
        "from medllm.models import registry\n"
        "from medllm.models.backend import resolve_backend\n"
        "registry._GPU_DEVICE_FILES = ('/nonexistent/nvidia',)\n"
        f"s = Settings.load(config_file=False, paths={{'home': {str(tmp_path)!r}}})\n"
        "print(resolve_backend(s), 'torch' in sys.modules)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.split() == ["llama-cpp", "False"], r.stdout + r.stderr
