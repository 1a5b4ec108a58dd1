"""Float copies of small quantised GGUF files, for llama.cpp on CPU.

llama.cpp evaluates a prompt through the quantised type's own kernels: for Q4_1 (the packaged
SmolLM2), Q5_1 and the k-quants as medllm loads them (without weight repacking, which
segfaults in llama-cpp-python on AMX VMs), each weight row is a dot product with activations
rounded to 8 bits, token by token. A float copy of the *same* weights runs llama.cpp's float
matrix kernels instead. Measured on the 2-core AVX-512 CPU of bench/RESULTS.md (issue 12):
SmolLM2-135M evaluates a gold-context prompt at ~320-380 tok/s from its Q4_1 file, ~700 from
an F16 copy, ~900 from a BF16 copy — and the label probabilities move *towards* the
transformers reference, which runs the same weights dequantised to fp32 (max |Δp| 0.061 from
the Q4_1 kernels, 0.011 from BF16, 0.0035 from F16), since the quantised kernels also round the
activations.

``models.gguf_weights``:

* ``"auto"`` (default): a quantised GGUF whose float copy would take at most
  :data:`AUTO_MAX_BYTES` (models up to ~1B parameters) runs from a copy — BF16 on a CPU with
  AVX-512 BF16 instructions, F16 elsewhere; bigger files (an 8B Q4_K_M) run as they are, since
  their float copy would not fit the memory a quantised file is chosen to save;
* ``"as-is"``: always the file itself;
* ``"bf16"``, ``"f16"``, ``"f32"``: a copy of that type, whatever the size.

The copy is made once with llama.cpp's own converter (``llama_model_quantize``, ~1 s for 135M
parameters) into ``MEDLLM_HOME/models/gguf-float/<file stem>.<type>/`` with a manifest
(the source's size, mtime and SHA-256, as the safetensors conversions), written to a staging
directory first so an interrupted copy is never used.
"""

from __future__ import annotations

import ctypes
import json
import logging
from pathlib import Path

from medllm.errors import ModelNotAvailableError

logger = logging.getLogger(__name__)

MODES = ("auto", "as-is", "bf16", "f16", "f32")
AUTO_MAX_BYTES = 2 << 30  # the float copy's size up to which "auto" makes one
FLOAT_BITS = 15.5  # bits per weight above which a file already holds float weights
CONVERTER = 1  # recorded in the manifest (the safetensors conversions' format)


def cpu_has_bf16() -> bool:
    """Whether this x86 CPU advertises AVX-512 BF16 (Linux ``/proc/cpuinfo``)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(
        line.startswith("flags") and ("avx512_bf16" in line.split() or "amx_bf16" in line.split())
        for line in text.splitlines()
    )


def inspect(path: Path) -> tuple[int, int]:
    """(parameters, bytes of weights) of a GGUF file, from its header (vocabulary-only load,
    ~0.1 s; no weights read)."""
    import llama_cpp
    from llama_cpp._utils import suppress_stdout_stderr

    with suppress_stdout_stderr(disable=False):
        llama_cpp.llama_backend_init()
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        model = llama_cpp.llama_model_load_from_file(str(path).encode("utf-8"), params)
    if not model:
        raise ModelNotAvailableError(f"llama.cpp cannot read the GGUF header of {path}")
    try:
        return int(llama_cpp.llama_model_n_params(model)), int(llama_cpp.llama_model_size(model))
    finally:
        llama_cpp.llama_model_free(model)


def wanted_type(path: Path, mode: str) -> str | None:
    """The float type ``path`` should run as under ``mode`` ("bf16" | "f16" | "f32"), or None
    for the file itself."""
    if mode not in MODES:
        raise ValueError(f"models.gguf_weights must be one of {', '.join(MODES)}, not {mode!r}")
    if mode == "as-is":
        return None
    if mode != "auto":
        return mode
    n_params, size = inspect(path)
    if n_params <= 0 or size * 8 / n_params >= FLOAT_BITS:
        return None  # already float weights
    if 2 * n_params > AUTO_MAX_BYTES:
        return None
    return "bf16" if cpu_has_bf16() else "f16"


def float_copy(source: Path, ftype: str, models_dir: Path) -> Path:
    """The ``ftype`` copy of ``source`` under ``models_dir`` (made on first use)."""
    import llama_cpp
    from llama_cpp._utils import suppress_stdout_stderr

    from medllm.fsutil import sha256_file, staged_dir
    from medllm.models.base import usable_cpus
    from medllm.models.registry import MANIFEST, cache_valid

    codes = {
        "bf16": llama_cpp.LLAMA_FTYPE_MOSTLY_BF16,
        "f16": llama_cpp.LLAMA_FTYPE_MOSTLY_F16,
        "f32": llama_cpp.LLAMA_FTYPE_ALL_F32,
    }
    target = Path(models_dir) / "gguf-float" / f"{source.stem}.{ftype}"
    if cache_valid(target, source, CONVERTER):
        return target / "model.gguf"
    logger.info("making a %s copy of %s for llama.cpp under %s", ftype.upper(), source, target)
    with staged_dir(target) as tmp:
        out = tmp / "model.gguf"
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = codes[ftype]
        params.allow_requantize = True
        params.nthread = usable_cpus()
        with suppress_stdout_stderr(disable=False):
            rc = llama_cpp.llama_model_quantize(
                str(source).encode("utf-8"), str(out).encode("utf-8"), ctypes.byref(params)
            )
        if rc != 0 or not out.is_file():
            raise ModelNotAvailableError(
                f"llama.cpp could not make a {ftype.upper()} copy of {source} (code {rc}); "
                "set models.gguf_weights = 'as-is' to run the file itself"
            )
        st = source.stat()
        manifest = {
            "converter": CONVERTER,
            "type": ftype,
            "source": {
                "path": str(source),
                "size": st.st_size,
                "mtime_ns": st.st_mtime_ns,
                "sha256": sha256_file(source),
            },
            "files": {"model.gguf": {"size": out.stat().st_size}},
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return target / "model.gguf"


def runtime_path(source: Path, mode: str, models_dir: Path) -> tuple[Path, str | None]:
    """(the file llama.cpp should load, the float type of the copy or None) for ``source``."""
    ftype = wanted_type(source, mode)
    if ftype is None:
        return source, None
    try:
        return float_copy(source, ftype, models_dir), ftype
    except OSError as e:  # e.g. a read-only or full models_dir: run the file itself
        if mode != "auto":
            raise ModelNotAvailableError(
                f"cannot write the {ftype.upper()} copy of {source} under {models_dir}: {e}"
            ) from None
        logger.warning(
            "running %s as it is: cannot write its %s copy under %s (%s)",
            source.name,
            ftype.upper(),
            models_dir,
            e,
        )
        return source, None
