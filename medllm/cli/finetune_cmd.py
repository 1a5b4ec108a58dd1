"""``medllm finetune``: QLoRA/LoRA fine-tuning, ``validate``, ``merge`` and ``export-gguf``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from medllm.cli.common import err, handle_errors, out, print_json, settings_from

app = typer.Typer(
    help="Fine-tune a local LLM on a medical task (QLoRA: Unsloth on CUDA, PEFT+TRL elsewhere).",
    invoke_without_command=True,
    no_args_is_help=False,
)

TaskOpt = Annotated[
    str | None, typer.Option(help="pubmedqa | nli | mcq | instructions (overrides the config).")
]
SplitOpt = Annotated[
    str | None,
    typer.Option(
        help="nli | mcq | instructions: train only on the records whose 'split' field is this "
        "(e.g. train, for NLI4CT's pairs_train_dev.jsonl)."
    ),
]
ModelOpt = Annotated[str | None, typer.Option(help="Known name, hub id or directory.")]
ConfigOpt = Annotated[
    str | None,
    typer.Option(
        help="A YAML config or preset name from configs/finetune/ (e.g. smollm2_135m_qlora_cpu)."
    ),
]


def _config(
    config: str | None,
    task: str | None = None,
    model: str | None = None,
    data: Path | None = None,
    backend: str | None = None,
    max_steps: int | None = None,
    epochs: float | None = None,
    seed: int | None = None,
    split: str | None = None,
) -> Any:
    from medllm.finetune.config import load_config

    cfg = load_config(config)
    if epochs is not None and max_steps is None:
        max_steps = -1  # --epochs alone replaces the config's step limit (presets set one)
    return cfg.with_overrides(
        backend={"backend": backend},
        model={"name": model},
        task={"name": task, "data": str(data) if data else None, "split": split},
        train={"max_steps": max_steps, "epochs": epochs, "seed": seed},
    )


@app.callback()
def finetune(
    ctx: typer.Context,
    task: TaskOpt = None,
    model: ModelOpt = None,
    data: Annotated[
        Path | None,
        typer.Option(help="Training file (JSON/JSONL/CSV); pubmedqa: default ori_pqal.json."),
    ] = None,
    split: SplitOpt = None,
    config: ConfigOpt = None,
    output: Annotated[
        Path | None,
        typer.Option(
            help="Output directory for the adapter (default: MEDLLM_HOME/adapters/MODEL-TASK)."
        ),
    ] = None,
    backend: Annotated[
        str | None, typer.Option(help="auto | unsloth | peft (default: config, then auto).")
    ] = None,
    max_steps: Annotated[
        int | None, typer.Option(min=1, help="Stop after N steps (overrides epochs).")
    ] = None,
    epochs: Annotated[
        float | None,
        typer.Option(
            min=0.01, help="Train for N epochs (replaces the config's max_steps, if any)."
        ),
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output.")] = False,
    seed: Annotated[int | None, typer.Option(help="Training seed.")] = None,
    head: Annotated[
        str | None,
        typer.Option(
            help="'lm' (LoRA on the chat LLM), 'linear' (a label head on the frozen LLM's "
            "hidden states) or 'classification' (encoder, nli). Default: the config's head."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print metrics as JSON.")] = False,
) -> None:
    """Fine-tune MODEL on TASK and write an adapter directory."""
    if ctx.invoked_subcommand is not None:
        return
    s = settings_from(ctx)
    with handle_errors():
        # Settings (medllm.toml, MEDLLM_FINETUNE__*) below the flags, above the YAML config.
        if backend is None and s.finetune.backend != "auto":
            backend = s.finetune.backend
        seed = seed if seed is not None else s.finetune.seed
        cfg = _config(config, task, model, data, backend, max_steps, epochs, seed, split)
        if head is not None:
            cfg = cfg.model_copy(update={"head": head})
        head = cfg.head
        if head == "classification":
            from medllm.finetune.classify import train_classifier

            res = train_classifier(cfg, s, output, overwrite=overwrite)
        elif head == "linear":
            from medllm.finetune.head import train_linear_head

            res = train_linear_head(cfg, s, output, overwrite=overwrite)
        elif head == "lm":
            from medllm.finetune.train import run

            res = run(cfg, s, output, overwrite=overwrite, resume=resume)
        else:
            raise typer.BadParameter(
                "must be 'lm', 'linear' or 'classification'", param_hint="--head"
            )
    if as_json:
        print_json({"output": res.output, **res.metrics})
        return
    m = res.metrics
    keys = ("global_step", "final_train_loss", "final_eval_loss", "tokens_per_s", "accuracy")
    for key in (*keys, "layer", "C", "cv_accuracy", "eval_accuracy"):
        if m.get(key) is not None:
            err.print(f"{key}: {m[key]:.4g}" if isinstance(m[key], float) else f"{key}: {m[key]}")
    out.print(str(res.output))


@app.command("validate")
def validate_cmd(
    ctx: typer.Context,
    config: Annotated[
        str | None, typer.Argument(help="YAML config or preset name (default: the defaults).")
    ] = None,
    task: TaskOpt = None,
    model: ModelOpt = None,
    data: Annotated[Path | None, typer.Option(help="Training file (overrides the config).")] = None,
    split: SplitOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Check a config and its data without training (the same --task, --model, --data and
    --split as a run)."""
    s = settings_from(ctx)
    with handle_errors():
        from medllm.finetune.train import validate

        report = validate(_config(config, task, model, data, split=split), s)
    if as_json:
        print_json(report)
    else:
        for k, v in report.items():
            out.print(f"{k}: {v}")
        out.print("ok")


@app.command("merge")
def merge_cmd(
    ctx: typer.Context,
    adapter: Annotated[Path, typer.Argument(help="Adapter directory from `medllm finetune`.")],
    output: Annotated[Path, typer.Option(help="Directory for the merged model.")],
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output.")] = False,
) -> None:
    """Merge a LoRA adapter into its base model (full precision, safetensors)."""
    s = settings_from(ctx)
    with handle_errors():
        from medllm.finetune.merge import merge

        path = merge(adapter, output, settings=s, overwrite=overwrite)
    out.print(str(path))


@app.command("export-gguf")
def export_gguf_cmd(
    ctx: typer.Context,
    adapter: Annotated[Path, typer.Argument(help="Adapter directory from `medllm finetune`.")],
    output: Annotated[Path, typer.Option(help="The GGUF LoRA file to write (.gguf).")],
    base_gguf: Annotated[
        Path | None,
        typer.Option(
            help="The base model's GGUF that llama.cpp/Ollama will run (default: the packaged "
            "model the adapter was trained on)."
        ),
    ] = None,
    dtype: Annotated[str, typer.Option(help="f32 | f16")] = "f32",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Export a LoRA adapter as a GGUF LoRA for llama.cpp and Ollama
    (`medllm ask --backend llama-cpp --adapter FILE.gguf`)."""
    s = settings_from(ctx)
    with handle_errors():
        from medllm.finetune.gguf_lora import default_base_gguf, export_gguf_lora

        base = base_gguf if base_gguf is not None else default_base_gguf(adapter, s)
        summary = export_gguf_lora(
            adapter, output, base_gguf=base, dtype=dtype, overwrite=overwrite
        )
    if as_json:
        print_json(summary)
    else:
        out.print(
            f"{summary['output']}: {summary['tensors']} LoRA tensors, rank {summary['rank']}, "
            f"alpha {summary['alpha']:g}, for {summary['architecture']} ({summary['base_gguf']})"
        )
