"""Fine-tuning runs: data -> backend -> TRL ``SFTTrainer`` -> a complete output directory.

The run works in ``<output>.partial/`` (checkpoints every ``train.save_steps`` live there, for
``--resume``) and only renames the finished adapter into ``<output>`` at the very end, so a
failed or killed run never leaves an adapter directory that looks complete.

Output: ``adapter_model.safetensors`` + ``adapter_config.json`` (PEFT), the tokenizer and its
chat template, ``config.yaml`` (the resolved config), ``metrics.json`` (loss per logging step,
eval loss, tokens/s, peak memory, wall time, data counts), ``loss.png`` and ``split.json``
(which training items were held out for eval/calibration).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medllm.errors import ConfigError, DataError, MedllmError
from medllm.finetune import data as fdata
from medllm.finetune import tasks
from medllm.finetune.config import FinetuneConfig, dump_config
from medllm.fsutil import refuse_overwrite

if TYPE_CHECKING:
    from medllm.config import Settings

logger = logging.getLogger(__name__)

MIN_FREE_BYTES = 200 * 1024 * 1024


@dataclass
class Examples:
    train: list[tasks.Example]
    held: list[tasks.Example]
    dropped_test: int = 0


def data_path(cfg: FinetuneConfig, settings: Settings) -> Path:
    if cfg.task.data:
        return Path(cfg.task.data).expanduser()
    if cfg.task.name != "pubmedqa":
        raise ConfigError(f"task {cfg.task.name!r} needs training data: pass --data PATH")
    from medllm.pubmedqa import resolve_source

    # finetune has no --source (ingest's and eval's option): its hint names --data
    return resolve_source(
        settings.eval.pubmedqa_dir,
        settings.paths.data_dir,
        hint="Pass a local copy of PubMedQA with --data PATH/ori_pqal.json "
        "(test_ground_truth.json beside it), or set eval.pubmedqa_dir.",
    )


def _test_pmids(cfg: FinetuneConfig, settings: Settings, path: Path) -> dict[str, str]:
    from medllm.pubmedqa import load_test_pmids, resolve_source

    if cfg.task.test_pmids:
        return load_test_pmids(Path(cfg.task.test_pmids).expanduser())
    for cand in (path.parent / "test_ground_truth.json",):
        if cand.is_file():
            return load_test_pmids(cand)
    src = settings.eval.pubmedqa_dir
    gt = resolve_source(
        src,
        settings.paths.data_dir,
        "test_ground_truth.json",
        hint="The official test PMIDs are needed to keep them out of training: put "
        f"test_ground_truth.json beside {path.name}, or name it in task.test_pmids "
        "(or set eval.pubmedqa_dir).",
    )
    return load_test_pmids(gt)


def load_examples(cfg: FinetuneConfig, settings: Settings) -> Examples:
    """Read, check and split the training data (no model needed)."""
    t = cfg.task
    if t.split is not None and t.name == "pubmedqa":
        raise ConfigError(
            "task.split (--split) is for nli, mcq and instructions files: PubMedQA always "
            "trains on its official split"
        )
    path = data_path(cfg, settings)
    dropped = 0
    if t.name == "pubmedqa":
        exs, dropped = tasks.load_pubmedqa(
            path,
            _test_pmids(cfg, settings, path),
            on_overlap=t.on_test_overlap,
            long_answer=t.long_answer,
            max_context_words=t.max_context_words,
            context_sections=t.context_sections,
            system=t.system_prompt,
            extra_views=t.head_extra_views,
        )
    elif t.name == "nli":
        exs = tasks.load_nli(path, system=t.system_prompt, split=t.split, training=True)
    elif t.name == "mcq":
        exs = tasks.load_mcq(path, system=t.system_prompt, split=t.split, training=True)
    else:
        exs = tasks.load_instructions(path, system=t.system_prompt, split=t.split, training=True)
    train, held = fdata.split(exs, t.eval_fraction, cfg.train.seed)
    if not train:
        raise DataError("no training examples left after the eval split", path=path)
    return Examples(train, held, dropped)


def validate(cfg: FinetuneConfig, settings: Settings) -> dict[str, Any]:
    """Check a config and its data without training (loads only the tokenizer)."""
    from medllm.finetune.backends import choose

    ex = load_examples(cfg, settings)
    tok = _tokenizer(cfg, settings)
    toks = fdata.tokenize(
        ex.train + ex.held,
        tok,
        max_seq_length=cfg.task.max_seq_length,
        train_on=cfg.task.train_on,
        on_too_long=cfg.task.on_too_long,
    )
    lens = sorted(toks.lengths)
    return {
        "task": cfg.task.name,
        "model": cfg.model.name,
        "backend": choose(cfg.backend) if cfg.backend != "unsloth" else "unsloth",
        "train_examples": len(ex.train),
        "eval_examples": len(ex.held),
        "dropped_test_overlap": ex.dropped_test,
        "labels": dict(Counter(e.label for e in ex.train if e.label)),
        "truncated": len(toks.truncated),
        "skipped_too_long": len(toks.skipped),
        "tokens_median": lens[len(lens) // 2],
        "tokens_max": lens[-1],
    }


def _tokenizer(cfg: FinetuneConfig, settings: Settings) -> Any:
    from transformers import AutoTokenizer

    from medllm.errors import ModelNotAvailableError
    from medllm.models.registry import chat_template, resolve

    r = resolve(cfg.model.name, settings.paths.models_dir)
    try:
        tok = AutoTokenizer.from_pretrained(r.path)
    except (OSError, ValueError) as e:
        raise ModelNotAvailableError(
            f"cannot load the tokenizer of {cfg.model.name}: {e}"
        ) from None
    own = getattr(tok, "chat_template", None)
    tok.chat_template = chat_template(r.known, own, cfg.model.chat_template)
    return tok


def default_output(cfg: FinetuneConfig, settings: Settings) -> Path:
    name = Path(cfg.model.name).name.replace("/", "-")
    return settings.paths.adapters_dir / f"{name}-{cfg.task.name}"


def partial_dir(output: Path) -> Path:
    return output.parent / f".{output.name}.partial"


def _last_checkpoint(work: Path) -> Path | None:
    done = [p for p in work.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    return max(done, key=lambda p: int(p.name.split("-")[1]), default=None)


def _check_dirs(cfg: FinetuneConfig, output: Path, overwrite: bool, resume: bool) -> None:
    """The output and --resume checks, before anything is loaded or written."""
    refuse_overwrite(output, overwrite)
    work = partial_dir(output)
    if resume:
        if _last_checkpoint(work) is None:
            raise MedllmError(f"nothing to resume: no checkpoint under {work}")
        saved = (work / "config.yaml").read_text() if (work / "config.yaml").is_file() else ""
        if saved and saved != dump_config(cfg):
            raise ConfigError(
                f"--resume with a different config than the interrupted run ({work}/config.yaml)"
            )


def _prepare_dirs(cfg: FinetuneConfig, output: Path, overwrite: bool, resume: bool) -> Path:
    _check_dirs(cfg, output, overwrite, resume)
    work = partial_dir(output)
    text = dump_config(cfg)
    if not resume and work.exists():
        logger.warning("removing the unfinished run in %s (use --resume to continue it)", work)
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    if shutil.disk_usage(work).free < MIN_FREE_BYTES:
        raise MedllmError(f"not enough free disk space under {work.parent} (need 200 MB)")
    (work / "config.yaml").write_text(text)
    return work


@dataclass
class FinetuneResult:
    output: Path
    metrics: dict[str, Any]


def run(
    cfg: FinetuneConfig,
    settings: Settings,
    output: Path | None = None,
    *,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
) -> FinetuneResult:
    """Fine-tune ``cfg.model`` on ``cfg.task``; return the output directory and metrics."""
    from medllm.finetune.backends import choose

    backend = choose(cfg.backend)
    if backend == "unsloth":  # before transformers/peft/trl are imported
        from medllm.finetune.backends import unsloth as be

        be.early_import()
    else:
        from medllm.finetune.backends import hf as be  # type: ignore[no-redef]
    output = (output or default_output(cfg, settings)).expanduser().resolve()
    cfg.check_head("lm")
    _check_dirs(cfg, output, overwrite, resume)
    ex = load_examples(cfg, settings)  # data errors before any model is loaded
    t0 = time.perf_counter()
    model, tok = be.load(cfg, settings)  # before the work dir: a model error leaves none
    work = _prepare_dirs(cfg, output, overwrite, resume)
    t = cfg.task
    train_ex = fdata.oversample(ex.train, cfg.train.seed) if t.balance == "oversample" else ex.train
    kw: dict[str, Any] = {
        "max_seq_length": t.max_seq_length,
        "train_on": t.train_on,
        "on_too_long": t.on_too_long,
    }
    train_tok = fdata.tokenize(train_ex, tok, **kw, what="training examples")
    held_tok = fdata.tokenize(ex.held, tok, **kw, what="held-out examples") if ex.held else None
    weights: dict[str, float] = {}
    if t.balance == "class_weight":
        weights = fdata.class_weights(ex.train, t.class_weight_power)
        label_of = {e.id: e.label for e in ex.train + ex.held}
        for tk in (train_tok, held_tok):
            for row in tk.rows if tk else []:
                row["weight"] = weights.get(str(label_of.get(row["id"])), 1.0)
        logger.info("class weights: %s", {k: round(v, 3) for k, v in weights.items()})
    (work / "split.json").write_text(
        json.dumps({"train": [e.id for e in ex.train], "eval": [e.id for e in ex.held]})
    )
    trainer = _trainer(cfg, model, tok, train_tok, held_tok, work, progress)
    ckpt = _last_checkpoint(work) if resume else None
    if ckpt:
        logger.info("resuming from %s", ckpt)
    before = _tokens_at(ckpt) if ckpt else None  # read now: checkpoints rotate while training
    try:
        # Trainer prints its log dicts with print(): keep stdout for answers (CLI --json).
        with contextlib.redirect_stdout(sys.stderr):
            res = trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
            final_eval = _final_eval(trainer, progress) if held_tok else {}
        metrics = _metrics(trainer, res, final_eval, time.perf_counter() - t0, before)
        metrics.update(
            backend=backend,
            train_examples=len(ex.train),
            train_rows_after_balance=len(train_tok.rows),
            eval_examples=len(ex.held),
            dropped_test_overlap=ex.dropped_test,
            truncated=len(train_tok.truncated),
            skipped_too_long=len(train_tok.skipped),
            # the training examples' labels, as `finetune validate` counts them; after
            # oversampling (task.balance) the rows trained on as well
            labels=dict(Counter(e.label for e in ex.train if e.label)),
            **(
                {"labels_after_balance": dict(Counter(e.label for e in train_ex if e.label))}
                if train_ex is not ex.train
                else {}
            ),
            class_weights=weights or None,
            resumed_from=ckpt.name if ckpt else None,
        )
        final = work / "final"
        if final.exists():
            shutil.rmtree(final)
        trainer.model.save_pretrained(final, safe_serialization=True)
        _portable_base(final / "adapter_config.json", cfg.model.name)
        tok.save_pretrained(final)
        for name in ("config.yaml", "split.json"):
            shutil.copy2(work / name, final / name)
        (final / "metrics.json").write_text(json.dumps(metrics, indent=2))
        plot_loss(metrics, final / "loss.png")
    except OSError as e:
        raise MedllmError(f"could not write the run under {work}: {e}") from None
    if output.exists():
        shutil.rmtree(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    os.replace(final, output)
    shutil.rmtree(work, ignore_errors=True)
    logger.info("adapter written to %s", output)
    return FinetuneResult(output, metrics)


def _portable_base(adapter_config: Path, model: str) -> None:
    """PEFT records the directory the base was loaded from (under ``MEDLLM_HOME/models`` for a
    packaged model): a path of this machine, which a vLLM server or ``AutoPeftModel`` elsewhere
    cannot use. A known model is recorded by its hub id, any other by the name it was given."""
    from medllm.models import KNOWN_MODELS

    spec = KNOWN_MODELS.get(model)
    acfg = json.loads(adapter_config.read_text())
    acfg["base_model_name_or_path"] = spec.hub_id if spec is not None else model
    adapter_config.write_text(json.dumps(acfg, indent=2, sort_keys=True) + "\n")


def _trainer(
    cfg: FinetuneConfig,
    model: Any,
    tok: Any,
    train_tok: fdata.Tokenized,
    held_tok: fdata.Tokenized | None,
    work: Path,
    progress: bool,
) -> Any:
    from datasets import Dataset
    from trl import SFTConfig
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    tr = cfg.train

    weighted = bool(train_tok.rows) and "weight" in train_tok.rows[0]
    keys = ("input_ids", "labels", "weight") if weighted else ("input_ids", "labels")

    def ds(t: fdata.Tokenized) -> Any:
        return Dataset.from_list([{k: r[k] for k in keys} for r in t.rows])

    args = SFTConfig(
        output_dir=str(work),
        num_train_epochs=tr.epochs,
        max_steps=tr.max_steps,
        learning_rate=tr.learning_rate,
        lr_scheduler_type=tr.lr_scheduler,
        # transformers 5: a float in [0, 1) is a ratio of the total steps.
        warmup_steps=tr.warmup_steps or tr.warmup_ratio,
        weight_decay=tr.weight_decay,
        per_device_train_batch_size=tr.batch_size,
        per_device_eval_batch_size=tr.batch_size,
        gradient_accumulation_steps=tr.grad_accum,
        max_grad_norm=tr.max_grad_norm,
        optim=tr.optim,
        fp16=tr.fp16,
        bf16=tr.bf16,
        packing=tr.packing,
        max_length=cfg.task.max_seq_length,
        logging_steps=tr.logging_steps,
        # Without eval_steps: one evaluation at the end of the run (below), not per epoch.
        eval_strategy="steps" if tr.eval_steps and held_tok else "no",
        eval_steps=tr.eval_steps,
        save_strategy="steps",
        save_steps=tr.save_steps,
        save_total_limit=tr.save_total_limit,
        seed=tr.seed,
        data_seed=tr.seed,
        report_to=[],
        disable_tqdm=not progress,
        include_num_input_tokens_seen="non_padding",
        dataloader_num_workers=0,
        use_cpu=not _on_cuda(model),
        gradient_checkpointing=False,  # set up by the backend
        remove_unused_columns=not weighted,  # keep the per-example loss weights
    )
    kwargs: dict[str, Any] = {
        "model": model,
        "args": args,
        "train_dataset": ds(train_tok),
        "eval_dataset": ds(held_tok) if held_tok else None,
        "processing_class": tok,
    }
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    if sft_kernels_available(model):
        from trl import SFTTrainer

        if not weighted:
            return SFTTrainer(**kwargs, callbacks=[_log_last_step()])
        base: type = SFTTrainer
    else:
        # TRL >= 1.x SFTTrainer always computes the loss through its Triton LM-head kernel,
        # which a CPU-only torch lacks. The examples are already SFT-formatted (template,
        # response-only labels, truncation), so the plain Trainer with TRL's collator trains
        # the same loss.
        from transformers import Trainer

        base = Trainer
    collator = DataCollatorForLanguageModeling(pad_token_id=pad)
    if weighted:
        return _weighted_trainer(base)(
            **kwargs, data_collator=_WeightCollator(collator), callbacks=[_log_last_step()]
        )
    return base(**kwargs, data_collator=collator, callbacks=[_log_last_step()])


def _log_last_step() -> Any:
    """A callback that also logs the training loss at the last step, so a run shorter than
    ``train.logging_steps`` (or not ending on a multiple of it) still has its loss in
    ``metrics.json`` and ``loss.png``."""
    from transformers import TrainerCallback

    class LogLastStep(TrainerCallback):  # type: ignore[misc]
        def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            if state.max_steps and state.global_step >= state.max_steps:
                control.should_log = True
            return control

    return LogLastStep()


class _WeightCollator:
    """TRL's collator for ids/labels, plus the per-example ``weight`` as a tensor."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        w = [float(e.get("weight", 1.0)) for e in examples]
        batch = self.inner([{k: v for k, v in e.items() if k != "weight"} for e in examples])
        batch["weight"] = torch.tensor(w, dtype=torch.float32)
        return dict(batch)


def _weighted_trainer(base: type) -> type:
    """``base`` (Trainer or SFTTrainer) with a per-example weighted causal-LM loss: each
    example's mean token loss over its unmasked labels, times its weight, averaged with the
    weights as denominator."""

    class WeightedTrainer(base):  # type: ignore[misc,valid-type]
        def compute_loss(  # type: ignore[no-untyped-def]
            self, model, inputs, return_outputs=False, num_items_in_batch=None
        ):
            import torch.nn.functional as F

            w = inputs.pop("weight").to(model.device)
            labels = inputs.pop("labels")
            out = model(**inputs)
            logits = out.logits[:, :-1, :].float()
            tgt = labels[:, 1:].to(logits.device)
            ce = F.cross_entropy(
                logits.transpose(1, 2), tgt, ignore_index=fdata.IGNORE, reduction="none"
            )
            mask = (tgt != fdata.IGNORE).float()
            per_example = (ce * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            loss = (per_example * w).sum() / w.sum().clamp(min=1e-8)
            return (loss, out) if return_outputs else loss

    return WeightedTrainer


def sft_kernels_available(model: Any) -> bool:
    """TRL's SFTTrainer needs Triton (and so a GPU) for its fused LM-head loss."""
    import importlib.util

    return _on_cuda(model) and importlib.util.find_spec("triton") is not None


def _final_eval(trainer: Any, progress: bool = False) -> dict[str, Any]:
    """The eval loss at the last step (reused when the schedule just computed it)."""
    last = trainer.state.log_history[-2:] if trainer.state.log_history else []
    for h in last:
        if "eval_loss" in h and h.get("step") == trainer.state.global_step:
            return {"eval_loss": h["eval_loss"]}
    if progress:  # transformers' evaluation bar has no label of its own
        n = len(trainer.eval_dataset) if trainer.eval_dataset is not None else 0
        print(f"held-out loss: {n} examples", file=sys.stderr, flush=True)
    return dict(trainer.evaluate())


def _on_cuda(model: Any) -> bool:
    return str(getattr(model, "device", "cpu")).startswith("cuda")


def _peak_memory_mb(model: Any) -> dict[str, float]:
    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if _on_cuda(model):
        import torch

        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _tokens_at(ckpt: Path) -> int:
    """Input tokens the run had seen when ``ckpt`` was written (0 if not recorded)."""
    try:
        state = json.loads((ckpt / "trainer_state.json").read_text())
        return int(state.get("num_input_tokens_seen") or 0)
    except (OSError, ValueError):
        return 0


def _mean_loss(train_loss: list[dict[str, Any]], global_step: int) -> float | None:
    """The mean training loss per step over the whole run, from the logged losses (each the
    mean over the steps since the previous log); None unless the log reaches the last step."""
    prev, total = 0, 0.0
    for p in train_loss:
        total += p["loss"] * (p["step"] - prev)
        prev = p["step"]
    return total / prev if prev and prev == global_step else None


def _metrics(
    trainer: Any,
    res: Any,
    final_eval: dict[str, Any],
    wall: float,
    resumed_tokens: int | None = None,
) -> dict[str, Any]:
    """``resumed_tokens``: the tokens seen before the checkpoint this process resumed from
    (None: not resumed). After ``--resume``, transformers' ``training_loss`` divides this
    process's loss by all the steps (a resumed 24-step run whose logged losses were 1.26-3.94
    reported 0.23) and its token count includes the steps before: then the loss is averaged
    from the logged per-step losses and tokens/s counts this process's tokens."""
    hist = trainer.state.log_history
    train_loss = [{"step": h["step"], "loss": h["loss"]} for h in hist if "loss" in h]
    eval_loss = [{"step": h["step"], "loss": h["eval_loss"]} for h in hist if "eval_loss" in h]
    runtime = float(res.metrics.get("train_runtime") or 0.0)
    tokens = int(trainer.state.num_input_tokens_seen or 0)
    resumed = resumed_tokens is not None
    mean = _mean_loss(train_loss, trainer.state.global_step) if resumed else None
    return {
        "global_step": trainer.state.global_step,
        "train_loss": train_loss,
        "eval_loss": eval_loss,
        "final_train_loss": mean if mean is not None else res.training_loss,
        "final_eval_loss": final_eval.get("eval_loss"),
        "tokens_seen": tokens,
        "train_runtime_s": runtime,
        "tokens_per_s": (tokens - (resumed_tokens or 0)) / runtime if runtime else None,
        "wall_s": wall,
        **_peak_memory_mb(trainer.model),
    }


def plot_loss(metrics: dict[str, Any], path: Path) -> None:
    try:
        from matplotlib.figure import Figure  # no pyplot: leaves the caller's backend alone
    except ImportError:
        logger.warning("matplotlib is not installed: no loss plot (pip install 'medllm[eval]')")
        return
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    for key, label in (("train_loss", "train"), ("eval_loss", "eval")):
        pts = metrics.get(key) or []
        if pts:
            ax.plot([p["step"] for p in pts], [p["loss"] for p in pts], marker=".", label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
