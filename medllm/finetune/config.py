"""The fine-tuning config: one YAML file (``configs/finetune/*.yaml``) drives both backends.

Sections: ``model`` (what to load), ``task`` (which format, which data, how prompts are cut),
``lora`` (adapter shape), ``train`` (optimiser and schedule). Unknown keys are errors that name
the file and the key. CLI flags override single fields (:func:`with_overrides`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from medllm.errors import ConfigError

TASKS = ("pubmedqa", "nli", "mcq", "instructions")
Task = Literal["pubmedqa", "nli", "mcq", "instructions"]
CONFIGS_DIR = Path(__file__).resolve().parents[2] / "configs" / "finetune"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSection(_Section):
    name: str = Field("smollm2-135m-instruct", description="Known name, hub id or directory.")
    quantization: Literal["nf4"] | None = Field(
        "nf4", description="'nf4' = QLoRA (bitsandbytes 4-bit base); null = plain LoRA."
    )
    chat_template: str | None = Field(
        None, description="Jinja chat template for base models that ship none (else ChatML)."
    )


class TaskSection(_Section):
    name: Task = Field("pubmedqa", description="pubmedqa | nli | mcq | instructions.")
    data: str | None = Field(
        None, description="Training file. pubmedqa: None = the official ori_pqal.json."
    )
    split: str | None = Field(
        None,
        description="nli, mcq, instructions: train only on the records whose 'split' field is "
        "this (e.g. 'train' of NLI4CT's pairs_train_dev.jsonl); None: every record.",
    )
    test_pmids: str | None = Field(
        None, description="pubmedqa: test_ground_truth.json to exclude (None: beside data)."
    )
    on_test_overlap: Literal["refuse", "drop"] = Field(
        "refuse",
        description="Training PMIDs in the official test split: refuse, or drop loudly. The "
        "official ori_pqal.json itself is always split: its 500 test PMIDs are dropped.",
    )
    max_seq_length: int = Field(512, ge=16, description="Prompt + response token budget.")
    max_context_words: int | None = Field(
        None, ge=8, description="Cut the abstract/note to this many words (shorter prompts)."
    )
    on_too_long: Literal["truncate", "skip"] = Field(
        "truncate", description="Records over max_seq_length: cut the prompt, or skip them."
    )
    context_sections: list[str] | None = Field(
        None,
        description="pubmedqa: keep only the abstract sections whose label contains one of "
        "these (e.g. [results]); None: the whole abstract. Abstracts without any keep it all.",
    )
    head_layer: int | list[int] | None = Field(
        None,
        description="--head linear: the hidden layer read, or a list of candidate layers of "
        "which cross-validation on the training items picks one (None: 3/5 of the model's "
        "depth, 18 of SmolLM2's 30).",
    )
    head_extra_views: list[Literal["long_answer"]] = Field(
        default_factory=list,
        description="pubmedqa, --head linear: also fit the head on each training question "
        "paired with these texts in place of its context (long_answer: the abstract's "
        "conclusion, which the gold context leaves out). Training folds only: held-out items "
        "and cross-validation scores use the normal prompt.",
    )
    head_pooling: Literal["mean", "last"] = Field(
        "mean", description="--head linear: mean over the prompt, or the last token."
    )
    long_answer: bool = Field(False, description="pubmedqa: follow the label by the long answer.")
    train_on: Literal["response", "label"] = Field(
        "response",
        description="Loss on the whole response (+ end of turn), or on the label tokens only.",
    )
    balance: Literal["none", "oversample", "class_weight"] = Field(
        "none",
        description="'oversample': repeat minority labels up to the majority count; "
        "'class_weight': weight each example's loss by n / (labels x count of its label) "
        "(sklearn's 'balanced'), raised to class_weight_power.",
    )
    class_weight_power: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="balance='class_weight': 1 = fully balanced, 0.5 = square root (milder), "
        "0 = unweighted.",
    )
    eval_fraction: float = Field(
        0.1, ge=0.0, lt=0.9, description="Held-out fraction of training items for eval loss."
    )
    system_prompt: str | None = Field(None, description="Optional system turn.")


class LoraSection(_Section):
    r: int = Field(16, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | str = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        description="Module names, or 'all-linear'.",
    )
    use_rslora: bool = False
    layers: int | None = Field(
        None,
        ge=1,
        description="Adapt only the top N transformer layers (None: all). The frozen lower "
        "layers then need no backward pass: much faster on CPU.",
    )


class TrainSection(_Section):
    epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(-1, description="> 0 overrides epochs; -1: train for epochs.")
    learning_rate: float = Field(2e-4, gt=0)
    lr_scheduler: str = "linear"
    warmup_ratio: float = Field(0.0, ge=0.0, lt=1.0)
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.0, ge=0.0)
    batch_size: int = Field(4, ge=1)
    grad_accum: int = Field(1, ge=1)
    max_grad_norm: float = Field(1.0, gt=0)
    optim: str = "adamw_torch"
    fp16: bool = False
    bf16: bool = False
    packing: bool = False
    gradient_checkpointing: bool = False
    logging_steps: int = Field(5, ge=1)
    eval_steps: int | None = Field(None, ge=1, description="None: evaluate once per epoch.")
    save_steps: int = Field(50, ge=1, description="Checkpoint every N steps (for --resume).")
    save_total_limit: int = Field(2, ge=1)
    seed: int = 0

    @field_validator("max_steps")
    @classmethod
    def _steps(cls, v: int) -> int:
        if v == 0 or v < -1:
            raise ValueError("must be a positive number of steps, or -1 to train for epochs")
        return v


class FinetuneConfig(_Section):
    backend: Literal["auto", "unsloth", "peft"] = "auto"
    head: Literal["lm", "linear", "classification"] = Field(
        "lm",
        description="lm: LoRA on the chat LLM; linear: a label head on its frozen hidden "
        "states (medllm.scoring.heads); classification: an encoder classifier (nli).",
    )
    model: ModelSection = Field(default_factory=ModelSection)
    task: TaskSection = Field(default_factory=TaskSection)
    lora: LoraSection = Field(default_factory=LoraSection)
    train: TrainSection = Field(default_factory=TrainSection)

    def check_head(self, head: str) -> None:
        """Settings that only ``head`` can use are errors for the other heads."""
        if self.task.head_extra_views and (head != "linear" or self.task.name != "pubmedqa"):
            raise ConfigError("task.head_extra_views is for --head linear on --task pubmedqa")
        layers = self.task.head_layer
        if isinstance(layers, list) and not layers:
            raise ConfigError("task.head_layer: an empty list of layers")
        if any(n < 0 for n in (layers if isinstance(layers, list) else [layers or 0])):
            raise ConfigError(f"task.head_layer {layers}: layers are numbered from 0")

    def with_overrides(self, **sections: dict[str, Any]) -> FinetuneConfig:
        data = self.model_dump()
        for name, values in sections.items():
            vals = {k: v for k, v in values.items() if v is not None}
            if name == "backend":
                data["backend"] = values.get("backend") or data["backend"]
            elif vals:
                data[name].update(vals)
        return _validate(data, "command-line options", _OPTIONS)


# The command-line option that sets each overridable field, named in its errors.
_OPTIONS = {
    "backend": "--backend",
    "model.name": "--model",
    "task.name": "--task",
    "task.data": "--data",
    "task.split": "--split",
    "train.max_steps": "--max-steps",
    "train.epochs": "--epochs",
    "train.seed": "--seed",
}


def _validate(data: Any, where: str, options: dict[str, str] | None = None) -> FinetuneConfig:
    try:
        return FinetuneConfig.model_validate(data)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"])
            opt = (options or {}).get(loc)
            problems.append(f"{opt} ({loc}): {err['msg']}" if opt else f"{loc}: {err['msg']}")
        raise ConfigError(f"{where}: invalid fine-tuning config: {'; '.join(problems)}") from None


def resolve_config_path(path: str | Path) -> Path:
    """A YAML path, or a preset name from ``configs/finetune/``."""
    p = Path(path).expanduser()
    if p.is_file():
        return p
    cand = CONFIGS_DIR / f"{path}.yaml"
    if cand.is_file():
        return cand
    names = ", ".join(sorted(x.stem for x in CONFIGS_DIR.glob("*.yaml")))
    raise ConfigError(f"config {path} not found (not a file, not a preset: {names})")


def load_config(path: str | Path | None) -> FinetuneConfig:
    """Read and validate a YAML config (None: the defaults)."""
    if path is None:
        return FinetuneConfig()
    p = resolve_config_path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: invalid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of sections (model, task, lora, train)")
    return _validate(data, str(p))


def dump_config(cfg: FinetuneConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
