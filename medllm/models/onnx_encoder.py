"""A light ONNX Runtime sentence encoder: ``tokenizers`` + ``onnxruntime`` + numpy only.

The query path (``medllm retrieve``, the engine's retrieval) embeds one short text per
question. Doing that through :class:`medllm.models.onnx_embed.OnnxEmbedding` costs a cold
process seconds of imports — LlamaIndex's ``BaseEmbedding`` (pandas, SQLAlchemy, ...) and
transformers' ``AutoTokenizer`` (torch, sklearn) — for milliseconds of work. :class:`OnnxEncoder`
runs the same exported graph with the model folder's own ``tokenizer.json`` read by the
``tokenizers`` library (what transformers' fast tokenizer wraps), truncated and padded as
``OnnxEmbedding`` asks transformers to, and pooled by the same :func:`pool`: the same token ids
and the same vectors (tests/test_onnx_embed.py). It needs the export to exist already
(:func:`cached_export`); the first run of a model goes through ``OnnxEmbedding``, which
exports it.

This module imports nothing heavy at import time; keep it that way (tests/test_imports.py
checks the cold query path).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

EXPORT_VERSION = 2  # bump when the exported graph (or its int8 quantisation) changes
MANIFEST = "medllm-onnx.json"


class QueryEmbedder(Protocol):
    """What the retriever needs of an embedding model: one query in, one vector out
    (LlamaIndex's ``BaseEmbedding`` and :class:`OnnxEncoder` both fit)."""

    model_name: str

    def get_query_embedding(self, query: str) -> list[float]: ...


def available() -> bool:
    """Whether ONNX export and inference can run here (packages installed)."""
    return all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript", "onnxruntime"))


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def pooling_of(st_dir: Path) -> tuple[str, bool, int]:
    """(pooling mode 'mean'|'cls', normalize?, max_seq_length) from a sentence-transformers
    folder; raises ValueError for what this module does not support."""
    modules = json.loads((st_dir / "modules.json").read_text())
    types = [m.get("type", "") for m in modules]
    at_root = bool(modules) and modules[0].get("path", "") in ("", ".")
    if not (types and types[0].endswith("Transformer") and at_root):
        raise ValueError(f"{st_dir}: first module is not a Transformer at the folder root")
    pool_mods = [m for m in modules if m.get("type", "").endswith("Pooling")]
    if not pool_mods:
        raise ValueError(f"{st_dir}: no Pooling module")
    pc = _read_json(st_dir / pool_mods[0]["path"] / "config.json")
    if pc.get("pooling_mode_mean_tokens"):
        mode = "mean"
    elif pc.get("pooling_mode_cls_token"):
        mode = "cls"
    else:
        raise ValueError(f"{st_dir}: pooling {pc} not supported (mean or CLS only)")
    others = [t for t in types[1:] if not t.endswith("Pooling") and not t.endswith("Normalize")]
    if others:
        raise ValueError(f"{st_dir}: modules {others} not supported by the ONNX backend")
    normalize = any(t.endswith("Normalize") for t in types)
    max_len = int(_read_json(st_dir / "sentence_bert_config.json").get("max_seq_length") or 512)
    return mode, normalize, max_len


def fingerprint(st_dir: Path) -> str:
    h = hashlib.sha256(f"v{EXPORT_VERSION}".encode())
    for f in sorted(st_dir.glob("*.json")) + sorted(st_dir.glob("*.safetensors")):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:12]


def export_dir(st_dir: Path, models_dir: Path, name: str) -> Path:
    """Where the ONNX export of ``st_dir`` lives (whether or not it exists yet)."""
    return Path(models_dir) / "onnx" / f"{name.replace('/', '--')}-{fingerprint(Path(st_dir))}"


def cached_export(
    st_dir: Path, models_dir: Path, name: str, *, quantize: str | None = None
) -> Path | None:
    """The exported model file (``model.onnx``, or ``model.int8.onnx`` with
    ``quantize="int8"``) when it is already there; None when it still has to be made."""
    target = export_dir(st_dir, models_dir, name)
    onnx_path = target / "model.onnx"
    if not ((target / MANIFEST).is_file() and onnx_path.is_file()):
        return None
    if quantize == "int8":
        q = onnx_path.with_name("model.int8.onnx")
        return q if q.is_file() else None
    return onnx_path


def session(model_path: Path, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session for ``model_path``."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or min(os.cpu_count() or 1, 4)
    opts.log_severity_level = 3
    return ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])


def pool(h: Any, mask: Any, pooling: str, normalize: bool) -> Any:
    """Sentence vectors (float32) from the last hidden state ``h`` (batch × seq × dim) and
    the attention ``mask`` (batch × seq), as sentence-transformers pools."""
    import numpy as np

    if pooling == "cls":
        v = h[:, 0, :]
    else:
        m = mask[:, :, None].astype(h.dtype)
        v = (h * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    if normalize:
        v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    return v.astype(np.float32)


def load_tokenizer(st_dir: Path, max_length: int) -> Any:
    """The folder's ``tokenizer.json`` as a ``tokenizers.Tokenizer``, truncating at
    ``max_length`` and padding to the longest text of a batch (the settings saved in the file,
    such as MiniLM's fixed 128-token padding, are replaced: transformers does the same when
    called with ``padding=True, truncation=True, max_length=...``)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(st_dir) / "tokenizer.json"))
    saved = json.loads((Path(st_dir) / "tokenizer.json").read_text()).get("padding") or {}
    tok.no_truncation()
    tok.no_padding()
    tok.enable_truncation(max_length=max_length)
    tok.enable_padding(
        pad_id=int(saved.get("pad_id", 0)),
        pad_type_id=int(saved.get("pad_type_id", 0)),
        pad_token=str(saved.get("pad_token", "[PAD]")),
        direction=str(saved.get("direction", "Right")).lower(),
    )
    return tok


def _single_text_wrap(tok: Any) -> tuple[list[int], list[int], int] | None:
    """How ``tok`` frames one text: the special-token ids before and after its own ids, and
    the padding id — or None unless that is all it does (padding on the right, truncation
    from the right), checked on a sample text. Then ids counted without special tokens can be
    framed here instead of tokenising the text again."""
    padding = tok.padding or {}
    trunc = tok.truncation or {}
    if padding.get("direction", "right") != "right" or trunc.get("direction", "right") != "right":
        return None
    sample = "Probe text: 12 words, MeSH-like terms (e.g. IL-6) and an ümlaut."
    framed = tok.encode(sample).ids
    plain = tok.encode(sample, add_special_tokens=False).ids
    empty = tok.encode("").ids
    for cut in range(len(empty) + 1):
        first, last = empty[:cut], empty[cut:]
        if framed == [*first, *plain, *last]:
            return list(first), list(last), int(padding.get("pad_id", 0))
    return None


class OnnxEncoder:
    """A sentence-transformers model's ONNX export run with ``tokenizers`` (no transformers,
    torch or LlamaIndex). Build it with :func:`medllm.models.registry.load_query_embedding`."""

    def __init__(
        self,
        st_dir: str | Path,
        model_path: str | Path,
        *,
        name: str | None = None,
        batch_size: int = 32,
        threads: int | None = None,
    ) -> None:
        st_dir = Path(st_dir)
        self.model_name = name or st_dir.name
        self.batch_size = batch_size
        self.pooling, self.normalize, self.max_length = pooling_of(st_dir)
        self.tokenizer = load_tokenizer(st_dir, self.max_length)
        self._session = session(Path(model_path), threads)
        self._wrap = _single_text_wrap(self.tokenizer)

    def embed(
        self,
        texts: list[str],
        batch_size: int | None = None,
        known_ids: Callable[[str], list[int] | None] | None = None,
    ) -> list[list[float]]:
        """Vectors of ``texts``, in input order. Longest first, in batches of similar length:
        far less padding than input order (sentence-transformers' encode does the same).

        ``known_ids``: the token ids (no special tokens, no truncation) of texts tokenised
        already — ingestion's splitter counts every chunk with this tokenizer — or None; those
        texts are not tokenised again (same ids: the special tokens and truncation are added
        here as the tokenizer adds them, checked when the encoder is built)."""
        n = batch_size or self.batch_size
        order = sorted(range(len(texts)), key=lambda j: -len(texts[j]))
        vecs: list[Any] = [None] * len(texts)
        for i in range(0, len(texts), n):
            idx = order[i : i + n]
            ids, mask = self._tokenize([texts[j] for j in idx], known_ids)
            (h,) = self._session.run(None, {"input_ids": ids, "attention_mask": mask})
            v = pool(h, mask, self.pooling, self.normalize)
            for j, row in zip(idx, v.tolist(), strict=True):
                vecs[j] = row
        return vecs

    def _tokenize(
        self, texts: list[str], known_ids: Callable[[str], list[int] | None] | None
    ) -> tuple[Any, Any]:
        """``input_ids`` and ``attention_mask`` of one batch, padded to its longest text."""
        import numpy as np

        got = [known_ids(t) for t in texts] if known_ids and self._wrap else []
        if not any(g is not None for g in got):
            enc = self.tokenizer.encode_batch(texts)
            return (
                np.asarray([e.ids for e in enc], dtype=np.int64),
                np.asarray([e.attention_mask for e in enc], dtype=np.int64),
            )
        assert self._wrap is not None
        first, last, pad = self._wrap
        keep = self.max_length - len(first) - len(last)
        rows = [[*first, *g[:keep], *last] if g is not None else [] for g in got]
        todo = [j for j, g in enumerate(got) if g is None]
        for j, e in zip(todo, self.tokenizer.encode_batch([texts[j] for j in todo]), strict=True):
            rows[j] = e.ids[: sum(e.attention_mask)]  # without the tokenizer's padding
        ids = np.full((len(rows), max(map(len, rows))), pad, dtype=np.int64)
        mask = np.zeros_like(ids)
        for j, r in enumerate(rows):
            ids[j, : len(r)] = r
            mask[j, : len(r)] = 1
        return ids, mask

    def get_query_embedding(self, query: str) -> list[float]:
        return self.embed([query])[0]

    def get_text_embedding(self, text: str) -> list[float]:
        return self.embed([text])[0]
