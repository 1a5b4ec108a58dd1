"""One typed settings object for all of medllm.

Sources, lowest priority first (CONVENTIONS.md practice 1):

    defaults < preset file < medllm.toml < MEDLLM_* environment < explicit arguments (CLI flags)

* A *preset* is a TOML file: a name (``fast``, ``accurate``...) looked up in
  ``medllm/presets/`` or a path to any TOML file.
* ``medllm.toml`` is read from ``$MEDLLM_CONFIG`` if set, else from the current directory, else
  from ``$MEDLLM_HOME/medllm.toml``.  Only the first one found is used.
* Environment variables use the ``MEDLLM_`` prefix and ``__`` between nesting levels, e.g.
  ``MEDLLM_MODELS__LLM=gemma3-270m``.  ``MEDLLM_HOME`` is the short form of
  ``MEDLLM_PATHS__HOME``.

Unknown keys are errors at every level.  Settings are passed explicitly into functions: there
is no module-level global.
"""

from __future__ import annotations

import os
import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from platformdirs import user_data_dir
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

PRESETS_DIR = Path(__file__).parent / "presets"


def default_home() -> Path:
    """``$MEDLLM_HOME`` if set, else the per-user data directory."""
    env = os.environ.get("MEDLLM_HOME")
    return Path(env).expanduser() if env else Path(user_data_dir("medllm", appauthor=False))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PathsSettings(_Section):
    home: Path = Field(
        default_factory=default_home,
        description="Root of everything medllm persists (Chroma, docstore, BM25, converted "
        "models, adapters, eval runs). Env: MEDLLM_HOME.",
    )

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def chroma_dir(self) -> Path:
        return self.home / "chroma"

    @property
    def stores_dir(self) -> Path:
        return self.home / "stores"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def adapters_dir(self) -> Path:
        return self.home / "adapters"

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"


class ModelsSettings(_Section):
    llm: str = Field(
        "smollm2-135m-instruct",
        description="Answering LLM: a known name (see `medllm models`), a Hugging Face hub id, "
        "or a local directory.",
    )
    embedding: str = Field(
        "all-minilm-l6-v2",
        description="Embedding model: a known name, a sentence-transformers hub id, or a "
        "local directory.",
    )
    adapter: Path | None = Field(
        None, description="Optional LoRA adapter directory applied on top of the LLM."
    )
    quantization: Literal["nf4"] | None = Field(
        None, description="Load the LLM in 4-bit NF4 through bitsandbytes (CPU and CUDA)."
    )
    device: str = Field(
        "auto", description="'auto' (CUDA when available, else CPU), 'cpu', 'cuda', 'cuda:1'..."
    )
    backend: Literal["auto", "transformers", "llama-cpp", "openai-compatible"] = Field(
        "auto",
        description="Where the LLM runs — generation and label scoring alike "
        "(medllm.models.backend.resolve_backend). 'transformers': in-process (CPU/CUDA, nf4, "
        "LoRA adapters, linear heads); 'llama-cpp': in-process GGUF through llama-cpp-python "
        "(faster on CPU, one copy of the model, GGUF LoRA only); 'openai-compatible': a model "
        "server at api.base (vLLM, Ollama, llama.cpp server, TGI). 'auto': openai-compatible "
        "when api.base is set, else llama-cpp for GGUF models on CPU without adapter or "
        "quantization, else transformers.",
    )
    gguf_weights: Literal["auto", "as-is", "bf16", "f16", "f32"] = Field(
        "auto",
        description="Weights llama.cpp runs a GGUF with (medllm.models.gguf_float). 'auto': a "
        "quantised file whose float copy takes at most 2 GiB (models up to ~1B parameters, "
        "the packaged ones) runs from a BF16 copy (F16 on CPUs without AVX-512 BF16), made "
        "once under models_dir — ~2x faster prompts on CPU and closer to the unquantised "
        "model; bigger files run as they are. 'as-is': always the file itself; 'bf16', "
        "'f16', 'f32': a copy of that type, whatever the size.",
    )
    embed_backend: Literal["auto", "torch", "onnx"] = Field(
        "auto",
        description="Embedding backend. 'onnx' runs a local sentence-transformers model "
        "(mean or CLS pooling) through ONNX Runtime after a one-time export (~3x faster "
        "single-query embedding on CPU, same vectors); 'torch' uses sentence-transformers. "
        "'auto': onnx on CPU for queries and ingestion batches alike (the fused export embeds "
        "batches ~1.7x faster than sentence-transformers); torch on a GPU, for a hub id, "
        "when onnx/onnxscript/onnxruntime are missing or when the export fails.",
    )
    embed_quantize: Literal["none", "int8"] = Field(
        "none",
        description="'int8': run the embedding model as an int8 dynamically quantised ONNX "
        "export (per-channel weights) for queries and ingestion alike — faster on CPU, "
        "vectors within cosine ~0.995 of fp32 (bench/RESULTS.md); needs embed_backend auto "
        "or onnx and a local model folder.",
    )
    trust_remote_code: bool = Field(
        False, description="Allow hub models that ship their own Python code."
    )


class RetrievalSettings(_Section):
    collection: str = Field("pubmedqa", description="Corpus (collection) name to search.")
    mode: Literal["dense", "bm25", "hybrid"] = Field(
        "hybrid", description="Retrieval mode used by `retrieve` and the agents."
    )
    top_k: int = Field(5, ge=1, le=1000, description="Documents returned per query.")
    chunk_size: int = Field(512, ge=32, description="Sentence-splitter chunk size in tokens.")
    chunk_overlap: int = Field(64, ge=0, description="Overlap between chunks in tokens.")
    fusion: Literal["convex", "rrf"] = Field(
        "convex",
        description="Hybrid fusion: 'convex' = hybrid_alpha × min-max-normalised dense cosine + "
        "(1 − hybrid_alpha) × min-max-normalised BM25 over the candidates; 'rrf' = "
        "reciprocal-rank fusion (see bench/RESULTS.md for the comparison on PQA-L).",
    )
    hybrid_alpha: float = Field(
        0.5, ge=0.0, le=1.0, description="Weight of the dense score in convex fusion."
    )
    rrf_k: int = Field(
        10,
        ge=1,
        description="Reciprocal-rank-fusion constant for hybrid mode with fusion='rrf' (10: "
        "best MRR@10 in bench/retrieval.py on PQA-L).",
    )
    bm25_metadata_fields: list[str] = Field(
        ["meshes"],
        description="Metadata fields whose values are appended to a document's BM25 text at "
        "ingestion (PubMedQA: the MeSH index terms); searched by BM25 only, never embedded. "
        "Changing it rebuilds the BM25 index on the next ingestion.",
    )
    candidate_k: int = Field(
        50, ge=1, description="Chunks fetched per retriever before merging into documents."
    )
    chroma_host: str | None = Field(
        None, description="Chroma server host; None uses the embedded store under MEDLLM_HOME."
    )
    chroma_port: int = Field(8000, description="Chroma server port.")
    embed_batch_size: int = Field(64, ge=1, description="Texts per embedding batch.")
    ef_search: int = Field(
        400,
        ge=1,
        description="Breadth of the dense (HNSW) search: the candidates Chroma examines per "
        "query (its collection setting `ef_search`; at least candidate_k is used). Higher is "
        "closer to exact nearest neighbours and slower. Chroma's own default, 100, missed the "
        "exact nearest chunk of 5-6 of 1,000 PQA-L questions in a 4,895-chunk store "
        "(bench/RESULTS.md, issue 13). Set on the stores medllm creates, and on an existing "
        "store whenever a process opens it with a different value.",
    )
    reranker: str | None = Field(
        None,
        description="A cross-encoder that re-orders the first rerank_top results of every "
        "search (a sentence-transformers CrossEncoder: a local directory, or a hub id such as "
        "cross-encoder/ms-marco-MiniLM-L-6-v2, downloaded only because it is named here). "
        "None: off, the retrieval order is the mode's. No reranker is packaged and none was "
        "measured on this project's data: bench/reranker.py measures one on yours.",
    )
    rerank_top: int = Field(
        20, ge=1, le=1000, description="Results the reranker re-orders (at least top_k)."
    )
    where: str | None = Field(
        None,
        description="Metadata pre-filter applied to every search, e.g. "
        "'year>=2010,pubtype=Review,mesh=Diabetes Mellitus' (README: filters); None = all.",
    )


class ApiSettings(_Section):
    base: str | None = Field(
        None,
        description="Base URL of an OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1 "
        "(vLLM), http://localhost:11434/v1 (Ollama). Setting it selects the openai-compatible "
        "backend when models.backend is 'auto'. Nothing is sent anywhere unless it is set.",
    )
    model: str | None = Field(
        None,
        description="Model name on the server; None uses the one model the server lists at "
        "/v1/models (an error if it lists several).",
    )
    key_env: str = Field(
        "MEDLLM_API_KEY",
        description="Name of the environment variable holding the server's API key (the key "
        "itself is never stored in settings, run configs, logs or errors).",
    )
    timeout: float = Field(120.0, gt=0, description="Seconds to wait for one server response.")
    retries: int = Field(2, ge=0, le=10, description="Retries of a failed server request.")
    top_logprobs: int = Field(
        20,
        ge=1,
        le=20,
        description="Top first-token log-probabilities asked for when scoring labels; an option "
        "outside them gets the lowest returned one (a stated floor).",
    )
    tool_calling: bool = Field(
        False,
        description="The server supports OpenAI tool calls for this model (e.g. vLLM with "
        "--enable-auto-tool-choice); declares the backend's tool_calling capability.",
    )


class GenerationSettings(_Section):
    max_new_tokens: int = Field(256, ge=1, le=8192, description="Tokens generated per answer.")
    temperature: float = Field(0.0, ge=0.0, description="0 = greedy (deterministic).")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    context_window: int = Field(
        2048, ge=128, description="Prompt + answer token budget for the LLM."
    )
    seed: int = Field(0, description="Random seed for sampled generation.")


class AgentsSettings(_Section):
    gate_threshold: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Answerability gate: minimum probability that a retrieved abstract "
        "addresses the question for it to be shown to the model and cited. None uses the "
        "threshold learnt with the gate (medllm/agents/gate.json, chosen by cross-validation "
        "on PQA-L training questions). Higher abstains more often.",
    )
    gate_lm: bool = Field(
        True,
        description="Answerability gate, stage 2: re-score the (question, abstract) pairs the "
        "term features leave in doubt by how much the abstract raises the question's "
        "likelihood under the packaged SmolLM2 (llama.cpp, in-process, ~100 MB; ~1.3 s per "
        "doubtful pair on 2 cores), whatever model answers. Off: term features only, with "
        "their own learnt threshold (faster, answers less often when the evidence is there).",
    )
    answer_text: Literal["auto", "generate", "extract"] = Field(
        "auto",
        description="How the text of an answer from abstracts is made. 'generate': the model "
        "writes it; 'extract': a sentence of each cited abstract that reports a finding "
        "(its results/conclusions), quoted (no generation); 'auto': extract, for any question, "
        "when the model's calibration showed no skill on yes/no questions (it cannot tell what "
        "an abstract concludes, so its paraphrase is not evidence), generate otherwise.",
    )
    direct_fallback: bool = Field(
        False,
        description="After abstaining in mode 'auto', also give the local model's own answer, "
        "uncited and marked unverified (off by default: a small model's unsupported answer is "
        "often invented). `--mode direct` always answers from the model alone.",
    )
    strategy: Literal["router", "agent"] = Field(
        "router",
        description="How evidence is gathered. 'router': retrieve once, gate, answer (any "
        "model; the default). 'agent': a LlamaIndex AgentWorkflow lets the model call the "
        "search tools (dense, BM25, hybrid, year range, fetch by PMID) and issue follow-up "
        "queries; a FunctionAgent when the backend declares tool calling, else a ReActAgent. "
        "The answer is then built and checked by the router's code (gate, citations, labels). "
        "Use 'agent' with a capable (7B+) model; small models fall back to the router.",
    )
    max_rounds: int = Field(
        6, ge=1, le=50, description="Agent: model calls (rounds) per question before it stops."
    )
    max_tool_calls: int = Field(
        8, ge=1, le=100, description="Agent: tool calls per question before it stops."
    )
    max_seconds: float = Field(
        120.0,
        gt=0,
        description="Agent: wall time per question (checked between steps) before it stops.",
    )
    max_invalid: int = Field(
        2,
        ge=1,
        le=20,
        description="Agent: unparseable or invalid actions (bad tool name or arguments) "
        "tolerated; one more and the turn falls back to the router.",
    )
    tool_doc_chars: int = Field(
        700,
        ge=100,
        le=20000,
        description="Agent: characters of each abstract a search tool returns to the model.",
    )
    labels: Literal["calibrated", "never", "uncalibrated"] = Field(
        "calibrated",
        description="Yes/no/maybe labels. 'calibrated': only when the model has a label "
        "calibration (`medllm calibrate`) that shows skill, and only when the calibrated "
        "probability clears its threshold; 'never'; 'uncalibrated': the raw scorer's argmax "
        "always (for research; not calibrated, may carry no signal).",
    )


class FinetuneSettings(_Section):
    backend: Literal["auto", "unsloth", "peft"] = Field(
        "auto",
        description="Training backend for `medllm finetune` when --backend is not given: "
        "'unsloth' or 'peft' replace the fine-tuning config's backend; 'auto' keeps the "
        "config's (whose own 'auto' is Unsloth on CUDA when installed, else PEFT+TRL).",
    )
    seed: int | None = Field(
        None,
        description="Training seed for `medllm finetune` when --seed is not given; None keeps "
        "the fine-tuning config's train.seed.",
    )


class EvalSettings(_Section):
    pubmedqa_dir: Path | None = Field(
        None,
        description="Directory holding ori_pqal.json and test_ground_truth.json; None "
        "downloads them into MEDLLM_HOME/data/pubmedqa on first use.",
    )
    judge_llm: str | None = Field(None, description="Judge model for RAGAS; None uses models.llm.")
    batch_size: int = Field(8, ge=1, description="Items scored per forward pass.")


def _config_file() -> Path | None:
    explicit = os.environ.get("MEDLLM_CONFIG")
    if explicit:
        p = Path(explicit).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"MEDLLM_CONFIG points at {p}, which is not a file")
        return p
    for p in (Path.cwd() / "medllm.toml", default_home() / "medllm.toml"):
        if p.is_file():
            return p
    return None


def resolve_preset(preset: str | Path) -> Path:
    """A preset name from ``medllm/presets`` or a path to a TOML file."""
    p = Path(preset).expanduser()
    if p.suffix == ".toml" or p.exists():
        if not p.is_file():
            raise FileNotFoundError(f"preset file {p} does not exist")
        return p
    candidate = PRESETS_DIR / f"{preset}.toml"
    if not candidate.is_file():
        names = ", ".join(sorted(x.stem for x in PRESETS_DIR.glob("*.toml")))
        raise ValueError(f"unknown preset {preset!r}; known presets: {names}")
    return candidate


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: invalid TOML: {e}") from e


class _DictSource(PydanticBaseSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]):
        super().__init__(settings_cls)
        self._data = data

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


class _HomeEnvSource(_DictSource):
    """``MEDLLM_HOME`` as the short form of ``MEDLLM_PATHS__HOME``."""

    def __init__(self, settings_cls: type[BaseSettings]):
        home = os.environ.get("MEDLLM_HOME")
        super().__init__(settings_cls, {"paths": {"home": home}} if home else {})


class Settings(BaseSettings):
    """Resolved medllm settings. Build with :meth:`Settings.load`."""

    model_config = SettingsConfigDict(
        env_prefix="MEDLLM_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_assignment=True,
    )

    paths: PathsSettings = Field(default_factory=PathsSettings, description="Where data lives.")
    models: ModelsSettings = Field(default_factory=ModelsSettings, description="Which models.")
    retrieval: RetrievalSettings = Field(
        default_factory=RetrievalSettings, description="Ingestion and retrieval."
    )
    api: ApiSettings = Field(
        default_factory=ApiSettings, description="An OpenAI-compatible model server."
    )
    generation: GenerationSettings = Field(
        default_factory=GenerationSettings, description="Text generation."
    )
    agents: AgentsSettings = Field(
        default_factory=AgentsSettings, description="Answering: gate, labels, fallbacks."
    )
    finetune: FinetuneSettings = Field(
        default_factory=FinetuneSettings, description="Fine-tuning defaults."
    )
    eval: EvalSettings = Field(default_factory=EvalSettings, description="Evaluation.")

    # Filled in by Settings.load for `config show`; not settings themselves.
    _sources: list[str] = PrivateAttr(default_factory=list)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        file_sources = [_DictSource(settings_cls, data) for data in reversed(_FILES.get())]
        # Highest priority first.
        return (init_settings, env_settings, _HomeEnvSource(settings_cls), *file_sources)

    @classmethod
    def load(
        cls,
        preset: str | Path | None = None,
        config_file: Path | None | Literal[False] = None,
        **overrides: Any,
    ) -> Settings:
        """Resolve settings from every source.

        ``preset``: a preset name or TOML path. ``config_file``: an explicit ``medllm.toml``
        (``False`` skips config-file discovery). ``overrides``: nested dicts of explicit values
        (what CLI flags set), e.g. ``models={"llm": "gemma3-270m"}``.
        """
        files: list[dict[str, Any]] = []
        sources = ["defaults"]
        if preset is not None:
            p = resolve_preset(preset)
            files.append(_read_toml(p))
            sources.append(f"preset {p}")
        cfg = _config_file() if config_file is None else (config_file or None)
        if cfg is not None:
            files.append(_read_toml(Path(cfg)))
            sources.append(f"config {cfg}")
        token = _FILES.set(tuple(files))
        try:
            s = cls(**{k: v for k, v in overrides.items() if v is not None})
        finally:
            _FILES.reset(token)
        env = sorted(k for k in os.environ if k.startswith("MEDLLM_"))
        if env:
            sources.append("env " + ", ".join(env))
        if overrides:
            sources.append("arguments")
        s._sources = sources
        return s

    def with_overrides(self, **sections: dict[str, Any] | None) -> Settings:
        """A copy with some section fields replaced (None values ignored), validated."""
        data = self.model_dump()
        for section, values in sections.items():
            if not values:
                continue
            if section not in data:
                raise ValueError(f"unknown settings section {section!r}")
            data[section].update({k: v for k, v in values.items() if v is not None})
        new = type(self).model_validate(data)
        new._sources = [*self._sources, "arguments"]
        return new


# The files read by Settings.load for the source hook above (a context variable, so
# concurrent loads in threads or tasks do not see each other's files).
_FILES: ContextVar[tuple[dict[str, Any], ...]] = ContextVar("medllm_settings_files", default=())
