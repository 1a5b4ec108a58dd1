"""Sentence-transformers embeddings through ONNX Runtime (CPU).

A local sentence-transformers folder (the packaged all-MiniLM-L6-v2, or any BERT-like
model directory with mean or CLS pooling) is exported once with ``torch.onnx`` (the
``torch.export`` based exporter; needs the ``onnx`` and ``onnxscript`` packages) into
``MEDLLM_HOME/models/onnx/<name>-<hash>/model.onnx`` and then run with ``onnxruntime``.
The vectors equal the PyTorch ones to ~1e-6 (tests/test_onnx_embed.py), so a store built
with one backend is searched with the other unchanged; a single short query embeds ~3×
faster than through PyTorch on a 2-core CPU (bench/RESULTS.md).

sentence-transformers' own ``backend="onnx"`` needs ``optimum-onnx``, whose releases pin
``transformers<4.58`` — it cannot be installed beside medllm's transformers 5 — hence this
small module instead.

The query path does not need this class: :class:`medllm.models.onnx_encoder.OnnxEncoder` runs
the same export without transformers, torch or LlamaIndex (a cold ``medllm retrieve`` in ~1 s
instead of ~9 s); this one exports, and serves ingestion (LlamaIndex embedding, token counting
with the transformers tokenizer, batch fallback).
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding
from pydantic import PrivateAttr

from medllm.errors import ModelNotAvailableError
from medllm.fsutil import staged_dir
from medllm.models.onnx_encoder import (
    EXPORT_VERSION,
    MANIFEST,
    OnnxEncoder,
    available,
    export_dir,
    pooling_of,  # noqa: F401  (re-exported: onnx_embed.pooling_of)
)

logger = logging.getLogger(__name__)

# Larger batches go to the batch fallback when there is one: on a 2-core CPU, ONNX Runtime is
# ~3x faster than PyTorch for one short query but ~1.5x slower for 64 padded 256-token
# chunks (bench/RESULTS.md).
BATCH_FALLBACK_MIN = 8


def quantize_int8(onnx_path: Path) -> Path:
    """``model.int8.onnx`` beside ``onnx_path``: the weights of the linear (MatMul/Gemm) layers
    quantised to int8 once, per output channel (``onnxruntime.quantization.quantize_dynamic``;
    activations are quantised on the fly at run time). Per-channel scales keep the vectors
    close to fp32 (cosine ~0.995 for MiniLM; per-tensor scales gave ~0.94); faster on CPUs with
    int8 dot products (AVX2/VNNI). Figures in bench/RESULTS.md."""
    out = onnx_path.with_name("model.int8.onnx")
    if out.is_file():
        return out
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logger.info("quantising %s to int8 (once)", onnx_path)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    quantize_dynamic(
        str(onnx_path),
        str(tmp),
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=["MatMul", "Gemm"],
    )
    os.replace(tmp, out)
    return out


def export(st_dir: Path, models_dir: Path, name: str, *, quantize: str | None = None) -> Path:
    """Export ``st_dir``'s transformer to ONNX once; returns the cached ``model.onnx`` (or,
    with ``quantize="int8"``, its int8 version ``model.int8.onnx``)."""
    st_dir = Path(st_dir)
    target = export_dir(st_dir, Path(models_dir), name)
    onnx_path = target / "model.onnx"
    if (target / MANIFEST).is_file() and onnx_path.is_file():
        return quantize_int8(onnx_path) if quantize == "int8" else onnx_path
    import torch
    from transformers import AutoModel, AutoTokenizer

    logger.info("exporting %s to ONNX (once) under %s", name, target)
    tok = AutoTokenizer.from_pretrained(st_dir)
    model = AutoModel.from_pretrained(st_dir).eval()
    uses_tt = "token_type_ids" in tok("x")

    class _Wrap(torch.nn.Module):
        def __init__(self, m: Any) -> None:
            super().__init__()
            self.m = m

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            kw: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
            if uses_tt:
                kw["token_type_ids"] = torch.zeros_like(input_ids)
            return self.m(**kw).last_hidden_state

    enc = tok(
        ["an example sentence", "a second, longer example sentence here"],
        padding=True,
        return_tensors="pt",
    )
    batch = torch.export.Dim("batch", max=4096)
    seq = torch.export.Dim("seq", max=int(getattr(model.config, "max_position_embeddings", 512)))
    with staged_dir(target, replace=False) as tmp:  # a concurrent exporter may win
        onnx_log = logging.getLogger("torch.onnx")
        level = onnx_log.level
        onnx_log.setLevel(logging.ERROR)  # "torchvision is not installed" notices
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _Wrap(model),
                (enc["input_ids"], enc["attention_mask"]),
                str(tmp / "model.onnx"),
                input_names=["input_ids", "attention_mask"],
                output_names=["last_hidden_state"],
                dynamo=True,
                dynamic_shapes=({0: batch, 1: seq}, {0: batch, 1: seq}),
                external_data=False,
                verbose=False,
                report=False,
            )
        onnx_log.setLevel(level)
        (tmp / MANIFEST).write_text(
            json.dumps(
                {
                    "source": str(st_dir),
                    "name": name,
                    "export_version": EXPORT_VERSION,
                    "torch": torch.__version__,
                },
                indent=2,
            )
        )
    return quantize_int8(onnx_path) if quantize == "int8" else onnx_path


class OnnxEmbedding(BaseEmbedding):
    """A LlamaIndex embedding running a sentence-transformers model through ONNX Runtime."""

    _encoder: OnnxEncoder = PrivateAttr()  # runs the export (tokenizers + onnxruntime)
    _tokenizer: Any = PrivateAttr()
    _batch_fallback: Callable[[], BaseEmbedding] | None = PrivateAttr(default=None)
    _batch_model: BaseEmbedding | None = PrivateAttr(default=None)

    def __init__(
        self,
        st_dir: str | Path,
        *,
        models_dir: str | Path,
        name: str | None = None,
        embed_batch_size: int = 32,
        threads: int | None = None,
        batch_fallback: Callable[[], BaseEmbedding] | None = None,
        quantize: str | None = None,
    ) -> None:
        """``batch_fallback``: builds the embedding used for batches of more than
        ``BATCH_FALLBACK_MIN`` texts (ingestion); None = ONNX for everything.
        ``quantize="int8"``: run the int8 dynamically quantised export."""
        st_dir = Path(st_dir)
        super().__init__(model_name=name or st_dir.name, embed_batch_size=embed_batch_size)
        if not available():
            raise ModelNotAvailableError(
                "the ONNX embedding backend needs the 'onnx', 'onnxscript' and 'onnxruntime' "
                "packages; install them or set models.embed_backend = 'torch'"
            )
        from transformers import AutoTokenizer

        path = export(st_dir, Path(models_dir), self.model_name, quantize=quantize)
        self._encoder = OnnxEncoder(st_dir, path, name=self.model_name, threads=threads)
        self._tokenizer = AutoTokenizer.from_pretrained(st_dir)
        self._batch_fallback = batch_fallback

    @property
    def hf_tokenizer(self) -> Any:
        """The model's tokenizer (the ingestion splitter counts chunk tokens with it)."""
        return self._tokenizer

    @classmethod
    def class_name(cls) -> str:
        return "OnnxEmbedding"

    def _embed(self, texts: list[str]) -> list[list[float]]:
        # the same tokenizer.json as transformers' fast tokenizer (tests: identical ids)
        return self._encoder.embed(texts, batch_size=self.embed_batch_size)

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._embed([query])[0]

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_query_embedding(query)

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._embed([text])[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        if self._batch_fallback is not None and len(texts) > BATCH_FALLBACK_MIN:
            if self._batch_model is None:
                self._batch_model = self._batch_fallback()
            return self._batch_model._get_text_embeddings(texts)
        return self._embed(texts)
