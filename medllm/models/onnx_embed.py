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


def quantize_int8(onnx_path: Path) -> Path:
    """``model.int8.onnx`` beside ``onnx_path``: the weights of the linear layers (MatMul/Gemm,
    and the fused query/key/value projection of ``Attention``) quantised to int8 once, per
    output channel (``onnxruntime.quantization.quantize_dynamic``; activations are quantised
    on the fly at run time). Per-channel scales keep the vectors close to fp32 (cosine ~0.995
    for MiniLM; per-tensor scales gave ~0.94); faster on CPUs with int8 dot products
    (VNNI; hardly on AVX2 alone). Figures in bench/RESULTS.md."""
    out = onnx_path.with_name("model.int8.onnx")
    if out.is_file():
        return out
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logger.info("quantising %s to int8 (once)", onnx_path)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    # onnxruntime advises "pre-processing before quantization" (shape inference and graph
    # optimisation: the fused export has had both) on the root logger, which a user saw as a
    # WARNING before their first int8 search; dropped here, nothing else is.
    root = logging.getLogger()
    root.addFilter(_drop_preprocess_advice)
    try:
        quantize_dynamic(
            str(onnx_path),
            str(tmp),
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=["MatMul", "Gemm", "Attention"],
        )
    finally:
        root.removeFilter(_drop_preprocess_advice)
    os.replace(tmp, out)
    return out


def _drop_preprocess_advice(record: logging.LogRecord) -> bool:
    return "pre-processing before quantization" not in record.getMessage()


def fuse_for_ort(plain: Path, out: Path, st_dir: Path) -> bool:
    """Write ``plain``'s graph with ONNX Runtime's fused transformer operators to ``out``:
    each layer's attention as one ``Attention`` (query/key/value projections, softmax and
    the padding mask inside), ``SkipLayerNormalization`` and ``BiasGelu``
    (``onnxscript.rewriter.ort_fusions``). The same vectors (checked here on a padded batch:
    a graph whose fused output differs is not used) in ~0.8x the time, and int8 can then
    quantise the attention projections too (bench/RESULTS.md, issue 15). False, and nothing
    written, when the fusions do not apply or do not check out; the plain graph is used then.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    try:
        import onnx_ir as ir
        from onnxscript.rewriter.ort_fusions import optimize_for_ort

        m_ir = ir.load(str(plain))
        m_ir, counts = optimize_for_ort(m_ir)
        m = ir.to_proto(m_ir)
    except Exception as exc:  # an onnxscript without these fusions, an unknown pattern
        logger.info("ONNX Runtime fusions not applied to %s: %s", plain, exc)
        return False
    if not counts.get("attention"):
        return False
    inits = {i.name: i for i in m.graph.initializer}
    nodes = []
    for n in m.graph.node:  # Concat of constants (the q/k/v weights) -> one initializer
        if n.op_type == "Concat" and n.input and all(i in inits for i in n.input):
            axis = next(a.i for a in n.attribute if a.name == "axis")
            arr = np.concatenate([numpy_helper.to_array(inits[i]) for i in n.input], axis=axis)
            m.graph.initializer.append(numpy_helper.from_array(arr, n.output[0]))
            continue
        nodes.append(n)
    graph_inputs = {i.name for i in m.graph.input}
    if "attention_mask" in graph_inputs:
        # the padding mask as Attention's raw 0/1 mask_index instead of the additive bias the
        # fusion builds from it: the form QAttention (int8) accepts
        nodes.insert(
            0,
            helper.make_node("Cast", ["attention_mask"], ["medllm_mask_i32"], to=TensorProto.INT32),
        )
        for n in nodes:
            if n.op_type != "Attention":
                continue
            ins = list(n.input) + [""] * (6 - len(n.input))
            if ins[3] == "" and ins[4] == "":
                ins[3], ins[5] = "medllm_mask_i32", ""
                while ins and ins[-1] == "":
                    ins.pop()
                del n.input[:]
                n.input.extend(ins)
            attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
            sizes = attrs.get("qkv_hidden_sizes")
            if sizes and len(set(sizes)) == 1:  # equal sizes: the default (QAttention needs it)
                keep = [a for a in n.attribute if a.name != "qkv_hidden_sizes"]
                del n.attribute[:]
                n.attribute.extend(keep)
    needed = {o.name for o in m.graph.output}
    alive = []
    for n in reversed(nodes):  # drop what no output needs any more
        if any(o in needed for o in n.output):
            alive.append(n)
            needed.update(n.input)
    alive.reverse()
    del m.graph.node[:]
    m.graph.node.extend(alive)
    used = {i for n in alive for i in n.input}
    live_inits = [i for i in m.graph.initializer if i.name in used]
    del m.graph.initializer[:]
    m.graph.initializer.extend(live_inits)
    try:  # ``out`` is inside export's staging directory: nothing is published on failure
        onnx.checker.check_model(m)
        onnx.save(m, str(out))
        if not _same_vectors(plain, out, st_dir):
            logger.warning("fused ONNX graph of %s differs from the plain one; not used", plain)
            out.unlink()
            return False
    except Exception as exc:
        logger.info("fused ONNX graph of %s not used: %s", plain, exc)
        out.unlink(missing_ok=True)
        return False
    return True


def _same_vectors(a: Path, b: Path, st_dir: Path, tol: float = 1e-4) -> bool:
    """Whether graphs ``a`` and ``b`` give the same sentence vectors on a padded batch."""
    import numpy as np

    texts = [
        "Do mitochondria play a role in remodelling lace plant leaves during programmed cell "
        "death? " * 3,
        "a short one",
        "Statins and the risk of atrial fibrillation after cardiac surgery.",
    ]
    va, vb = (np.asarray(OnnxEncoder(st_dir, g, threads=1).embed(texts)) for g in (a, b))
    return bool(np.abs(va - vb).max() <= tol)


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
                str(tmp / "plain.onnx"),
                input_names=["input_ids", "attention_mask"],
                output_names=["last_hidden_state"],
                dynamo=True,
                dynamic_shapes=({0: batch, 1: seq}, {0: batch, 1: seq}),
                external_data=False,
                verbose=False,
                report=False,
            )
        onnx_log.setLevel(level)
        fused = fuse_for_ort(tmp / "plain.onnx", tmp / "model.onnx", st_dir)
        if fused:
            (tmp / "plain.onnx").unlink()
        else:
            (tmp / "plain.onnx").rename(tmp / "model.onnx")
        (tmp / MANIFEST).write_text(
            json.dumps(
                {
                    "source": str(st_dir),
                    "name": name,
                    "export_version": EXPORT_VERSION,
                    "ort_fused": fused,
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
    _known_ids: Any = PrivateAttr(default=None)

    def __init__(
        self,
        st_dir: str | Path,
        *,
        models_dir: str | Path,
        name: str | None = None,
        embed_batch_size: int = 32,
        threads: int | None = None,
        quantize: str | None = None,
    ) -> None:
        """``quantize="int8"``: run the int8 dynamically quantised export."""
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

    @property
    def hf_tokenizer(self) -> Any:
        """The model's tokenizer (the ingestion splitter counts chunk tokens with it)."""
        return self._tokenizer

    def reuse_token_ids(self, known_ids: Callable[[str], list[int] | None] | None) -> None:
        """Texts whose ids ``known_ids`` returns (the ingestion splitter's counts, from this
        model's tokenizer without special tokens) are not tokenised again when embedded."""
        self._known_ids = known_ids

    @classmethod
    def class_name(cls) -> str:
        return "OnnxEmbedding"

    def _embed(self, texts: list[str]) -> list[list[float]]:
        # the same tokenizer.json as transformers' fast tokenizer (tests: identical ids)
        return self._encoder.embed(
            texts, batch_size=self.embed_batch_size, known_ids=self._known_ids
        )

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._embed([query])[0]

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_query_embedding(query)

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._embed([text])[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._embed(texts)
