"""The ONNX Runtime embedding backend: same vectors as sentence-transformers, exported once."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from medllm.config import Settings
from medllm.errors import ModelNotAvailableError
from medllm.models import KNOWN_MODELS, load_embedding, onnx_embed

TEXTS = [
    "heart attack",
    "Do mitochondria play a role in remodelling lace plant leaves during programmed cell death?",
    "Laparoscopic cholecystectomy in elderly patients: outcomes and complications. " * 40,
]


def _settings(backend: str) -> Settings:
    return Settings.load(config_file=False, models={"embed_backend": backend})


def test_onnx_vectors_equal_torch_vectors() -> None:
    torch_emb = load_embedding("all-minilm-l6-v2", settings=_settings("torch"))
    onnx_emb = load_embedding("all-minilm-l6-v2", settings=_settings("onnx"))
    assert type(onnx_emb).__name__ == "OnnxEmbedding"
    assert type(torch_emb).__name__ == "HuggingFaceEmbedding"
    assert onnx_emb.model_name == torch_emb.model_name == "all-minilm-l6-v2"
    # A padded batch (short + long, the long one truncated at max_seq_length) and queries.
    a = np.asarray(torch_emb.get_text_embedding_batch(TEXTS))
    b = np.asarray(onnx_emb.get_text_embedding_batch(TEXTS))
    assert a.shape == b.shape == (3, 384)
    assert np.abs(a - b).max() < 1e-4
    for q in TEXTS[:2]:
        qa = np.asarray(torch_emb.get_query_embedding(q))
        qb = np.asarray(onnx_emb.get_query_embedding(q))
        assert float(qa @ qb) > 0.9999
    assert np.allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    # Ingestion chunks identically whichever backend embeds (tokens counted by the model's
    # own tokenizer in both cases).
    from medllm.pipelines.ingest import _splitter

    text = " ".join(TEXTS) * 3
    a_chunks = _splitter(torch_emb, 64, 8).split_text(text)
    b_chunks = _splitter(onnx_emb, 64, 8).split_text(text)
    assert len(a_chunks) > 3 and a_chunks == b_chunks


def test_export_is_cached_and_auto_picks_onnx_on_cpu(medllm_home: Path) -> None:
    s = _settings("auto")
    emb = load_embedding("all-minilm-l6-v2", settings=s)
    assert type(emb).__name__ == "OnnxEmbedding"
    exported = list((s.paths.models_dir / "onnx").glob("all-minilm-l6-v2-*/model.onnx"))
    assert len(exported) == 1
    mtime = exported[0].stat().st_mtime
    load_embedding("all-minilm-l6-v2", settings=s)  # second load: no new export
    assert exported[0].stat().st_mtime == mtime
    assert len(list((s.paths.models_dir / "onnx").iterdir())) == 1
    # 'auto': ingestion batches through ONNX too (the fused export is faster than
    # sentence-transformers there, bench/RESULTS.md); a text's vector does not depend on the
    # batch it is padded in.
    few = np.asarray(emb.get_text_embedding_batch(TEXTS))
    many = np.asarray(emb.get_text_embedding_batch(TEXTS * 4))
    assert np.abs(many[:3] - few).max() < 1e-5 and np.abs(many[3:6] - few).max() < 1e-5


def _unsupported_copy(tmp_path: Path) -> Path:
    """The packaged MiniLM with a pooling mode the ONNX backend does not implement."""
    src = KNOWN_MODELS["all-minilm-l6-v2"].locate(Path("unused"))
    dst = tmp_path / "minilm-maxpool"
    shutil.copytree(src, dst)
    cfg = dst / "1_Pooling" / "config.json"
    c = json.loads(cfg.read_text())
    c.update(pooling_mode_mean_tokens=False, pooling_mode_max_tokens=True)
    cfg.write_text(json.dumps(c))
    return dst


def test_unsupported_pooling_auto_falls_back_and_onnx_fails_clearly(tmp_path: Path) -> None:
    d = _unsupported_copy(tmp_path)
    emb = load_embedding(str(d), settings=_settings("auto"))
    assert type(emb).__name__ == "HuggingFaceEmbedding"
    with pytest.raises(ModelNotAvailableError, match="minilm-maxpool.*ONNX.*pooling"):
        load_embedding(str(d), settings=_settings("onnx"))


def test_hub_id_with_onnx_backend_is_a_clear_error() -> None:
    with pytest.raises(ModelNotAvailableError, match="local sentence-transformers folder"):
        load_embedding("NeuML/pubmedbert-base-embeddings", settings=_settings("onnx"))


def test_pooling_of_packaged_minilm() -> None:
    src = KNOWN_MODELS["all-minilm-l6-v2"].locate(Path("unused"))
    assert onnx_embed.pooling_of(src) == ("mean", True, 256)


def test_export_fuses_attention_and_int8_quantises_it(medllm_home: Path) -> None:
    """The export runs ONNX Runtime's fused transformer operators (checked against the plain
    graph while exporting; the vectors against PyTorch in the test above), and int8 then
    quantises the attention projections too (QAttention)."""
    import onnx

    s = Settings.load(config_file=False, models={"embed_quantize": "int8"})
    load_embedding("all-minilm-l6-v2", settings=s)
    (d,) = (s.paths.models_dir / "onnx").glob("all-minilm-l6-v2-*")
    assert json.loads((d / "medllm-onnx.json").read_text())["ort_fused"] is True
    ops = {n.op_type for n in onnx.load(str(d / "model.onnx")).graph.node}
    assert {"Attention", "SkipLayerNormalization", "BiasGelu"} <= ops and "Softmax" not in ops
    ops8 = [n.op_type for n in onnx.load(str(d / "model.int8.onnx")).graph.node]
    assert ops8.count("QAttention") == 6 and "Attention" not in ops8
    assert not list(d.glob("plain.onnx")) and not list(d.glob(".*tmp"))


def test_a_fused_graph_that_differs_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the fused graph's vectors do not match the plain graph's, the plain one ships."""
    import onnx

    monkeypatch.setattr(onnx_embed, "_same_vectors", lambda *a, **k: False)
    # a home of its own: this export must not land in the models cache other tests share
    s = Settings.load(
        config_file=False, models={"embed_backend": "onnx"}, paths={"home": str(tmp_path)}
    )
    emb = load_embedding("all-minilm-l6-v2", settings=s)
    (d,) = (s.paths.models_dir / "onnx").glob("all-minilm-l6-v2-*")
    assert json.loads((d / "medllm-onnx.json").read_text())["ort_fused"] is False
    ops = {n.op_type for n in onnx.load(str(d / "model.onnx")).graph.node}
    assert "Attention" not in ops and "Softmax" in ops
    assert sorted(p.name for p in d.iterdir()) == ["medllm-onnx.json", "model.onnx"]
    v = np.asarray(emb.get_query_embedding(TEXTS[1]))
    assert abs(float(np.linalg.norm(v)) - 1.0) < 1e-5


def test_int8_quantising_shows_no_onnxruntime_advice(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The first int8 search used to print onnxruntime's 'Please consider to run
    pre-processing before quantization' as a WARNING (on the root logger)."""
    s = _settings("onnx")
    load_embedding("all-minilm-l6-v2", settings=s)  # the fp32 export
    fp = next((s.paths.models_dir / "onnx").glob("all-minilm-l6-v2-*/model.onnx"))
    shutil.copy2(fp, tmp_path / "model.onnx")
    with caplog.at_level(logging.INFO):
        q8 = onnx_embed.quantize_int8(tmp_path / "model.onnx")
    assert q8.is_file() and "to int8 (once)" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


def test_int8_setting_quantises_once_and_stays_close_to_fp32(medllm_home: Path) -> None:
    s = Settings.load(config_file=False, models={"embed_quantize": "int8"})
    emb = load_embedding("all-minilm-l6-v2", settings=s)
    assert type(emb).__name__ == "OnnxEmbedding"
    q8 = list((s.paths.models_dir / "onnx").glob("all-minilm-l6-v2-*/model.int8.onnx"))
    fp = q8[0].with_name("model.onnx")
    assert len(q8) == 1 and q8[0].stat().st_size < 0.7 * fp.stat().st_size
    ref = np.asarray(load_embedding("all-minilm-l6-v2", settings=_settings("onnx"))._embed(TEXTS))  # type: ignore[attr-defined]
    got = np.asarray(emb.get_text_embedding_batch(TEXTS))
    cos = (ref * got).sum(1)
    assert cos.min() > 0.98 and not np.allclose(ref, got, atol=1e-4)  # close, not identical
    with pytest.raises(ModelNotAvailableError, match="embed_backend"):
        load_embedding(
            "all-minilm-l6-v2",
            settings=Settings.load(
                config_file=False, models={"embed_quantize": "int8", "embed_backend": "torch"}
            ),
        )


# Texts whose tokenisation could differ between transformers and the raw tokenizer.json:
# accents, CJK, full-width forms, zero-width and control characters, an empty text, and one
# past max_seq_length (truncated).
TRICKY = [
    "",
    "Café naïve résumé, Ünïcödé façade",
    "中文 医学 问题: 糖尿病?",
    "ＦＵＬＬＷＩＤＴＨ letters",
    "tab\tnew\nline\u200b zero-width \u00ad soft-hyphen",
    "α-synuclein and β-amyloid in Parkinson's disease (p<0.05)?",
    "lorem " * 400,
]


def test_light_encoder_equals_onnx_embedding(monkeypatch: pytest.MonkeyPatch) -> None:
    """The query path's OnnxEncoder (tokenizers + onnxruntime) gives the token ids and the
    vectors of OnnxEmbedding (transformers' tokenizer), bit for bit."""
    from medllm.models import onnx_encoder
    from medllm.models.registry import load_query_embedding

    s = _settings("auto")
    full = load_embedding("all-minilm-l6-v2", settings=s)  # exports once if needed
    light = load_query_embedding("all-minilm-l6-v2", settings=s)
    assert type(full).__name__ == "OnnxEmbedding"
    assert isinstance(light, onnx_encoder.OnnxEncoder)
    assert light.model_name == full.model_name == "all-minilm-l6-v2"
    texts = TEXTS + TRICKY
    tok = full.hf_tokenizer  # type: ignore[attr-defined]
    for t in texts:
        want = tok([t], padding=True, truncation=True, max_length=256)["input_ids"][0]
        assert light.tokenizer.encode_batch([t])[0].ids == want, t
    for t in texts:
        assert np.array_equal(light.get_query_embedding(t), full.get_query_embedding(t)), t
    # Batches too (padded, longest first, back in input order).
    assert np.array_equal(light.embed(texts), full._embed(texts))  # type: ignore[attr-defined]
    # No export yet (or a torch backend): the full embedding, which makes the export.
    monkeypatch.setattr(onnx_encoder, "cached_export", lambda *a, **k: None)
    assert type(load_query_embedding("all-minilm-l6-v2", settings=s)).__name__ == "OnnxEmbedding"
    torch_q = load_query_embedding("all-minilm-l6-v2", settings=_settings("torch"))
    assert type(torch_q).__name__ == "HuggingFaceEmbedding"


def test_light_encoder_runs_the_int8_export_when_asked() -> None:
    from medllm.models import onnx_encoder
    from medllm.models.registry import load_query_embedding

    s = Settings.load(config_file=False, models={"embed_quantize": "int8"})
    full = load_embedding("all-minilm-l6-v2", settings=s)  # quantises once if needed
    light = load_query_embedding("all-minilm-l6-v2", settings=s)
    assert isinstance(light, onnx_encoder.OnnxEncoder)
    for t in TEXTS[:2]:
        assert np.array_equal(light.get_query_embedding(t), full.get_query_embedding(t))


def test_light_encoder_falls_back_for_what_onnx_cannot_run(tmp_path: Path) -> None:
    from medllm.models.registry import load_query_embedding

    d = _unsupported_copy(tmp_path)
    emb = load_query_embedding(str(d), settings=_settings("auto"))
    assert type(emb).__name__ == "HuggingFaceEmbedding"
    with pytest.raises(ModelNotAvailableError, match="local sentence-transformers folder"):
        load_query_embedding("NeuML/pubmedbert-base-embeddings", settings=_settings("onnx"))


def test_ingestion_reuses_the_splitters_token_ids(pubmedqa_dir: Path) -> None:
    """Ingestion's splitter counts every chunk with the embedding model's tokenizer; the ONNX
    encoder frames those ids (special tokens, truncation at 256, padding) instead of tokenising
    the chunk again — the same ids and the same vectors as tokenising afresh."""
    from llama_index.core import Document

    from medllm.pipelines.ingest import _splitter

    emb = load_embedding("all-minilm-l6-v2", settings=_settings("onnx"))
    assert isinstance(emb, onnx_embed.OnnxEmbedding)
    assert emb._encoder._wrap == ([101], [102], 0)  # MiniLM's [CLS] … [SEP], [PAD] = 0
    data = json.loads((pubmedqa_dir / "ori_pqal.json").read_text())
    texts = [" ".join(v["CONTEXTS"]) for v in list(data.values())[:40]] + TEXTS
    splitter = _splitter(emb, 512, 64)
    lookup = emb._known_ids
    assert lookup is not None, "the splitter hands its counts to the encoder"
    chunks = [n.get_content() for n in splitter.get_nodes_from_documents(
        [Document(text=t) for t in texts]
    )]  # fmt: skip
    assert len(chunks) >= len(texts)
    hits = sum(lookup(c) is not None for c in chunks)
    assert hits >= len(texts) - 3, (hits, len(chunks))  # abstracts counted whole
    assert any(len(lookup(c) or ()) > 254 for c in chunks), "a chunk the encoder truncates"
    enc = emb._encoder
    for i in range(0, len(chunks), 16):
        ids, mask = enc._tokenize(chunks[i : i + 16], lookup)
        ids0, mask0 = enc._tokenize(chunks[i : i + 16], None)
        assert ids.tolist() == ids0.tolist() and mask.tolist() == mask0.tolist()
    reused = np.asarray(emb.get_text_embedding_batch(chunks))
    emb.reuse_token_ids(None)
    assert np.array_equal(reused, np.asarray(emb.get_text_embedding_batch(chunks)))
