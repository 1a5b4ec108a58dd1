"""Export a LoRA adapter (a ``medllm finetune`` output, PEFT format) as a GGUF LoRA adapter for
llama.cpp — in-process (``--backend llama-cpp --adapter FILE.gguf``), ``llama-server --lora``,
or Ollama (``ADAPTER`` in a Modelfile).

The base model's GGUF is the reference: the adapter's matrices are mapped to its tensor names
(``model.layers.N.self_attn.q_proj`` → ``blk.N.attn_q.weight``), checked against its shapes,
and the query/key rows are permuted as llama.cpp's converter permuted the base weights for the
``llama`` architecture (rotary embedding layout), so the low-rank update lands on the same rows.
The scale is kept exactly: llama.cpp multiplies ``lora_b @ lora_a`` by ``alpha / rank``, PEFT by
``lora_alpha / r`` (``lora_alpha / sqrt(r)`` with rsLoRA, written as ``alpha = lora_alpha *
sqrt(r)``).

Only what llama.cpp can apply is exported: plain LoRA on the attention and MLP projections.
DoRA, per-module alphas, trained embeddings or heads (``modules_to_save``) and linear label
heads are refused with the reason.
"""

from __future__ import annotations

import json
import logging
import math
import re
import struct
from pathlib import Path
from typing import Any

from medllm.errors import MedllmError, ModelNotAvailableError

logger = logging.getLogger(__name__)

# Hugging Face module path inside a decoder layer → llama.cpp tensor name in block N.
HF_TO_GGUF = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
# Architectures whose Q/K rows llama.cpp's converter permutes (convert_hf_to_gguf LlamaModel).
PERMUTED_ARCHS = {"llama"}
_KEY = re.compile(
    r"^(?:base_model\.model\.)?(?:model\.)?(?:language_model\.)?layers\.(\d+)\.(.+)\."
    r"lora_([AB])(?:\.[^.]+)?\.weight$"
)


class GgufExportError(MedllmError):
    """The adapter cannot be expressed as a llama.cpp LoRA for this base model."""


def _permute(w: Any, n_head: int) -> Any:
    """llama.cpp's converter's row permutation of a Q or K projection (rows = output dim)."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def _base_info(base_gguf: Path) -> dict[str, Any]:
    from medllm.models.gguf_tokenizer import read_gguf_tensor_shapes

    try:
        meta, shapes = read_gguf_tensor_shapes(base_gguf)
    except (OSError, ValueError, KeyError, struct.error) as e:
        raise ModelNotAvailableError(f"cannot read the base GGUF {base_gguf}: {e}") from None
    arch = meta.get("general.architecture")
    if not arch:
        raise GgufExportError(f"{base_gguf} has no general.architecture: not a model GGUF")
    if meta.get("general.type") == "adapter":
        raise GgufExportError(f"{base_gguf} is itself an adapter, not a base model")
    n_head = meta.get(f"{arch}.attention.head_count")
    n_head_kv = meta.get(f"{arch}.attention.head_count_kv") or n_head
    return {"arch": arch, "n_head": n_head, "n_head_kv": n_head_kv, "shapes": shapes}


def default_base_gguf(adapter: Path, settings: Any) -> Path:
    """The GGUF of the adapter's base model when that is a packaged model (or a .gguf path)."""
    from medllm.finetune.merge import base_model_of
    from medllm.models.llamacpp import gguf_path

    base = base_model_of(adapter)
    try:
        return gguf_path(base, settings)
    except ModelNotAvailableError:
        raise GgufExportError(
            f"the adapter's base model is {base!r}, which has no GGUF here: pass the GGUF "
            "that llama.cpp/Ollama will run with --base-gguf FILE (the same weights the "
            "adapter was trained on, any quantisation)"
        ) from None


def export_gguf_lora(
    adapter: Path,
    output: Path,
    *,
    base_gguf: Path,
    dtype: str = "f32",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write ``output`` (a GGUF LoRA adapter) from the PEFT adapter directory ``adapter``.

    Returns a summary (tensors, rank, alpha, architecture, permuted). Nothing is left at
    ``output`` when it fails."""
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    from medllm.scoring.heads import is_head_dir

    adapter = adapter.expanduser().resolve()
    output = output.expanduser().resolve()
    if not adapter.exists():
        raise ModelNotAvailableError(f"adapter directory not found: {adapter}")
    if is_head_dir(adapter):
        raise GgufExportError(
            f"{adapter} is a linear label head, which llama.cpp cannot apply (it needs hidden "
            "states); use it with --backend transformers"
        )
    acfg_path = adapter / "adapter_config.json"
    weights = adapter / "adapter_model.safetensors"
    if not acfg_path.is_file() or not weights.is_file():
        raise ModelNotAvailableError(
            f"{adapter} is not a LoRA adapter directory (needs adapter_config.json and "
            "adapter_model.safetensors)"
        )
    if output.suffix != ".gguf":
        raise GgufExportError(f"the output must be a .gguf file: {output}")
    if output.exists() and not overwrite:
        raise MedllmError(f"{output} exists; pass --overwrite to replace it")
    acfg = json.loads(acfg_path.read_text())
    if str(acfg.get("peft_type", "LORA")).upper() != "LORA":
        raise GgufExportError(f"{acfg_path}: peft_type {acfg.get('peft_type')!r} is not LoRA")
    if acfg.get("use_dora"):
        raise GgufExportError(f"{acfg_path}: DoRA adapters have no llama.cpp form")
    if acfg.get("alpha_pattern"):
        raise GgufExportError(
            f"{acfg_path}: per-module alphas (alpha_pattern) cannot be expressed; llama.cpp "
            "takes one alpha per adapter"
        )
    if acfg.get("modules_to_save"):
        raise GgufExportError(
            f"{acfg_path}: the adapter also trains {acfg['modules_to_save']} in full "
            "(modules_to_save), which a llama.cpp LoRA cannot carry; merge it instead "
            "(medllm finetune merge) and convert the merged model with llama.cpp's "
            "convert_hf_to_gguf.py"
        )
    r = int(acfg["r"])
    alpha = float(acfg["lora_alpha"])
    gguf_alpha = alpha * math.sqrt(r) if acfg.get("use_rslora") else alpha
    info = _base_info(base_gguf)
    arch, shapes = info["arch"], info["shapes"]
    permute = arch in PERMUTED_ARCHS

    tensors = load_file(str(weights))
    pairs: dict[str, dict[str, Any]] = {}
    for key, value in tensors.items():
        m = _KEY.match(key)
        if not m:
            raise GgufExportError(
                f"{weights}: tensor {key!r} is not a LoRA matrix of a decoder layer; only the "
                f"projections {', '.join(HF_TO_GGUF)} can be exported"
            )
        block, module, ab = int(m.group(1)), m.group(2), m.group(3)
        if module not in HF_TO_GGUF:
            raise GgufExportError(
                f"{weights}: LoRA on {module!r} has no llama.cpp tensor (supported: "
                f"{', '.join(HF_TO_GGUF)})"
            )
        name = f"blk.{block}.{HF_TO_GGUF[module]}.weight"
        pairs.setdefault(name, {})[ab] = np.asarray(value, dtype=np.float32)

    out_type = {"f32": np.float32, "f16": np.float16}.get(dtype)
    if out_type is None:
        raise GgufExportError(f"dtype must be f32 or f16, not {dtype!r}")
    writer_items: list[tuple[str, Any]] = []
    for name in sorted(pairs, key=lambda n: (int(n.split(".")[1]), n)):
        pair = pairs[name]
        if set(pair) != {"A", "B"}:
            raise GgufExportError(f"{weights}: {name} has lora_{next(iter(pair))} only")
        a, b = pair["A"], pair["B"]
        if name not in shapes:
            raise GgufExportError(
                f"the base GGUF {base_gguf} has no tensor {name}: the adapter was trained on "
                "a different model"
            )
        out_dim, in_dim = shapes[name]
        if a.shape[1] != in_dim or b.shape[0] != out_dim or a.shape[0] != b.shape[1]:
            raise GgufExportError(
                f"{name}: lora_A {a.shape} / lora_B {b.shape} do not fit the base tensor "
                f"({out_dim}, {in_dim}) of {base_gguf}: the adapter was trained on a different "
                "model"
            )
        if permute and name.endswith((".attn_q.weight", ".attn_k.weight")):
            heads = info["n_head"] if ".attn_q." in name else info["n_head_kv"]
            b = _permute(b, int(heads))
        writer_items.append((name + ".lora_a", a.astype(out_type)))
        writer_items.append((name + ".lora_b", b.astype(out_type)))
    if not writer_items:
        raise GgufExportError(f"{weights} holds no LoRA matrices")

    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    try:
        w = gguf.GGUFWriter(str(tmp), arch)
        w.add_type(gguf.GGUFType.ADAPTER)
        w.add_string(gguf.Keys.Adapter.TYPE, "lora")
        w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, gguf_alpha)
        w.add_string("general.name", f"medllm LoRA {adapter.name}")
        for name, arr in writer_items:
            w.add_tensor(name, arr)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        tmp.replace(output)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise MedllmError(f"could not write {output}: {e}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    summary = {
        "output": str(output),
        "base_gguf": str(base_gguf),
        "architecture": arch,
        "tensors": len(writer_items) // 2,
        "rank": r,
        "alpha": gguf_alpha,
        "rslora": bool(acfg.get("use_rslora")),
        "qk_permuted": permute,
        "dtype": dtype,
    }
    logger.info("exported %s -> %s (%d tensors)", adapter, output, summary["tensors"])
    return summary
