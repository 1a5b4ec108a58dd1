"""Fine-tuning end to end on CPU with the real SmolLM2 and the real PubMedQA split: a few-step
QLoRA run, its output directory, the adapter loading through the registry and changing the
model's answers, merge, and the masking / overlap / bad-input checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from medllm.config import Settings
from medllm.errors import ConfigError, DataError, MedllmError
from medllm.finetune import data as fdata
from medllm.finetune import tasks
from medllm.finetune.config import CONFIGS_DIR, FinetuneConfig, load_config

FIX = Path(__file__).parent / "fixtures" / "finetune"


def tiny(**task: object) -> FinetuneConfig:
    """A config small enough for a few CPU steps in seconds."""
    return FinetuneConfig().with_overrides(
        backend={"backend": "peft"},
        task={
            "max_seq_length": 96,
            "max_context_words": 30,
            "train_on": "label",
            "eval_fraction": 0.02,
            **task,
        },
        lora={"r": 8, "alpha": 16, "layers": 4},
        train={"max_steps": 3, "batch_size": 2, "learning_rate": 2e-2, "logging_steps": 1},
    )


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, models_cache: Path) -> Path:
    h = tmp_path_factory.mktemp("ft-home")
    (h / "models").symlink_to(models_cache, target_is_directory=True)
    return h


@pytest.fixture(scope="module")
def settings(home: Path, pubmedqa_dir: Path) -> Settings:
    return Settings.load(
        config_file=False, paths={"home": str(home)}, eval={"pubmedqa_dir": str(pubmedqa_dir)}
    )


@pytest.fixture(scope="module")
def qlora_run(settings: Settings):  # type: ignore[no-untyped-def]
    from medllm.finetune.train import run

    return run(tiny(), settings, settings.paths.adapters_dir / "qlora", progress=False)


def test_qlora_output_directory(qlora_run, settings: Settings, pubmedqa_dir: Path) -> None:  # type: ignore[no-untyped-def]
    out = qlora_run.output
    for name in (
        "adapter_model.safetensors",
        "adapter_config.json",
        "tokenizer.json",
        "config.yaml",
        "metrics.json",
        "split.json",
    ):
        assert (out / name).is_file(), name
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert (
        "chat_template" in (out / "tokenizer_config.json").read_text()
        or (out / "chat_template.jinja").is_file()
    )
    assert not any(p.name.endswith(".partial") for p in out.parent.iterdir())
    m = json.loads((out / "metrics.json").read_text())
    assert m["global_step"] == 3 and m["backend"] == "peft"
    assert [p["step"] for p in m["train_loss"]] == [1, 2, 3]
    assert m["final_eval_loss"] is not None and m["tokens_per_s"] > 0 and m["peak_rss_mb"] > 0
    # The official split: the 500 test PMIDs are dropped, none is trained on.
    assert m["dropped_test_overlap"] == 500
    test = set(json.loads((pubmedqa_dir / "test_ground_truth.json").read_text()))
    split = json.loads((out / "split.json").read_text())
    assert len(split["train"]) + len(split["eval"]) == 500
    assert not test & (set(split["train"]) | set(split["eval"]))
    cfg = load_config(out / "config.yaml")
    assert cfg.model.quantization == "nf4" and cfg.lora.layers == 4
    # QLoRA: the base really was 4-bit.
    acfg = json.loads((out / "adapter_config.json").read_text())
    assert acfg["r"] == 8 and len(acfg["layers_to_transform"]) == 4
    # the base by its hub id, not a directory of this machine (vLLM / AutoPeftModel elsewhere)
    assert acfg["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_refuses_to_overwrite_an_adapter(qlora_run, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    from medllm.finetune.train import run

    before = (qlora_run.output / "adapter_model.safetensors").read_bytes()
    with pytest.raises(MedllmError, match="--overwrite"):
        run(tiny(), settings, qlora_run.output, progress=False)
    assert (qlora_run.output / "adapter_model.safetensors").read_bytes() == before


def test_lora_initialisation_is_seeded(settings: Settings) -> None:
    """The LoRA matrices are drawn from the config's seed, not from whatever state the global
    RNG was left in (it varied with PYTHONHASHSEED: the same run gave adapters that moved the
    answer by 0.017 or by 0.25)."""
    import torch

    from medllm.finetune.backends import hf

    def lora_a(noise: int) -> torch.Tensor:
        torch.rand(noise)  # leave the global RNG somewhere else
        model, _ = hf.load(tiny(), settings)
        return next(p for n, p in model.named_parameters() if "lora_A" in n).detach().clone()

    assert torch.equal(lora_a(1), lora_a(1000))


def test_adapter_loads_changes_answers_and_merges(qlora_run, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    from medllm.finetune.merge import merge
    from medllm.models import load_llm
    from medllm.scoring import chat_prompt, hf_parts, score_options

    msgs = tasks.pubmedqa_messages(
        "Does aspirin reduce the risk of colorectal adenoma?",
        "In a randomised trial, daily aspirin reduced adenoma recurrence.",
    )
    base = load_llm("smollm2-135m-instruct", settings=settings, backend="transformers")
    tuned = load_llm("smollm2-135m-instruct", adapter=qlora_run.output, settings=settings)

    def probs(llm):  # type: ignore[no-untyped-def]
        model, tok = hf_parts(llm)
        return score_options(model, tok, [chat_prompt(tok, msgs)], tasks.PUBMEDQA_OPTIONS)[0]

    p_base, p_tuned = probs(base), probs(tuned)
    assert max(abs(p_base[o] - p_tuned[o]) for o in p_base) > 0.02, (p_base, p_tuned)

    merged_dir = merge(qlora_run.output, settings.paths.home / "merged", settings=settings)
    assert (merged_dir / "model.safetensors").is_file()
    p_merged = probs(load_llm(str(merged_dir), settings=settings, backend="transformers"))
    assert all(abs(p_merged[o] - p_tuned[o]) < 2e-3 for o in p_base), (p_merged, p_tuned)
    with pytest.raises(MedllmError, match="--overwrite"):
        merge(qlora_run.output, merged_dir, settings=settings)


def test_generate_cli_with_adapter(qlora_run, settings: Settings, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    from medllm.cli.main import app

    monkeypatch.setenv("MEDLLM_HOME", str(settings.paths.home))
    prompt = tasks.pubmedqa_messages("Is smoking a risk factor for lung cancer?", "Yes, it is.")
    args = ["generate", prompt[0]["content"], "--max-new-tokens", "3"]
    base = CliRunner().invoke(app, args)
    tuned = CliRunner().invoke(app, [*args, "--adapter", str(qlora_run.output)])
    assert base.exit_code == 0 and tuned.exit_code == 0, (base.output, tuned.output)
    assert tuned.stdout.strip()
    bad = CliRunner().invoke(app, [*args, "--adapter", str(settings.paths.home)])
    assert bad.exit_code == 1 and "not a LoRA adapter" in bad.output


def test_ask_cli_with_adapter_changes_the_answer(  # type: ignore[no-untyped-def]
    qlora_run, settings: Settings, monkeypatch
) -> None:
    """The acceptance path: the adapter loads straight into `medllm ask --adapter`."""
    from typer.testing import CliRunner

    from medllm.cli.main import app

    monkeypatch.setenv("MEDLLM_HOME", str(settings.paths.home))
    monkeypatch.setenv("MEDLLM_GENERATION__MAX_NEW_TOKENS", "4")
    args = ["ask", "Is smoking a risk factor for lung cancer?", "--mode", "direct", "--json"]
    base = CliRunner().invoke(app, args)
    tuned = CliRunner().invoke(app, [*args, "--adapter", str(qlora_run.output)])
    assert base.exit_code == 0 and tuned.exit_code == 0, (base.output, tuned.output)
    p_base = json.loads(base.stdout)["label_probs"]
    p_tuned = json.loads(tuned.stdout)["label_probs"]
    assert set(p_base) == {"yes", "no", "maybe"}
    assert max(abs(p_base[o] - p_tuned[o]) for o in p_base) > 0.02, (p_base, p_tuned)


# --------------------------------------------------------------------------- no model needed


def _tokenizer(settings: Settings):  # type: ignore[no-untyped-def]
    from medllm.finetune.train import _tokenizer

    return _tokenizer(FinetuneConfig(), settings)


def test_loss_on_label_tokens_only_and_matches_scorer(settings: Settings) -> None:
    from medllm.scoring import chat_prompt

    tok = _tokenizer(settings)
    ex = tasks.Example(
        "1", tasks.pubmedqa_messages("Q?", "Some context."), "maybe\nBecause.", "maybe"
    )
    row = fdata.tokenize([ex], tok, max_seq_length=128, train_on="label").rows[0]
    kept = [t for t, lab in zip(row["input_ids"], row["labels"], strict=True) if lab != -100]
    assert tok.decode(kept) == "maybe"
    prompt_len = row["labels"].index(kept[0])
    assert tok.decode(row["input_ids"][:prompt_len]) == chat_prompt(tok, ex.messages)
    full = fdata.tokenize([ex], tok, max_seq_length=128, train_on="response").rows[0]
    kept = [t for t, lab in zip(full["input_ids"], full["labels"], strict=True) if lab != -100]
    assert tok.decode(kept) == "maybe\nBecause.<|im_end|>"


def test_class_weights_and_weighted_loss(settings: Settings) -> None:
    """balance='class_weight': sklearn-style weights, and the trainer's weighted loss equals
    the model's own loss with equal weights and each example's own loss with one weight."""
    import torch
    from transformers import AutoModelForCausalLM, Trainer
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from medllm.finetune.train import _WeightCollator, _weighted_trainer
    from medllm.models import resolve

    labels = ["yes"] * 6 + ["no"] * 2 + ["maybe"]
    exs = [tasks.Example(str(i), [], lab, lab) for i, lab in enumerate(labels)]
    w = fdata.class_weights(exs)
    assert w == pytest.approx({"yes": 9 / 18, "no": 9 / 6, "maybe": 9 / 3})
    assert fdata.class_weights(exs, 0.5)["maybe"] == pytest.approx(3**0.5)
    assert fdata.class_weights(exs, 0.0) == {"yes": 1.0, "no": 1.0, "maybe": 1.0}

    tok = _tokenizer(settings)
    path = resolve("smollm2-135m-instruct", settings.paths.models_dir).path
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    rows = fdata.tokenize(
        [
            tasks.Example("a", tasks.pubmedqa_messages("Q one?", "Context one."), "yes", "yes"),
            tasks.Example("b", tasks.pubmedqa_messages("Q two, longer?", "Ctx."), "no", "no"),
        ],
        tok,
        max_seq_length=128,
        train_on="label",
    ).rows
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    collate = _WeightCollator(DataCollatorForLanguageModeling(pad_token_id=pad))
    # compute_loss needs no Trainer state: an instance without __init__ is enough.
    trainer: Any = object.__new__(_weighted_trainer(Trainer))

    def loss(weights: list[float]) -> float:
        batch = collate(
            [
                {"input_ids": r["input_ids"], "labels": r["labels"], "weight": x}
                for r, x in zip(rows, weights, strict=True)
            ]
        )
        with torch.no_grad():
            return float(trainer.compute_loss(model, batch))

    def own(i: int) -> float:
        b = collate([{"input_ids": rows[i]["input_ids"], "labels": rows[i]["labels"]}])
        b.pop("weight")
        with torch.no_grad():
            return float(model(**b).loss)

    assert loss([1.0, 1.0]) == pytest.approx((own(0) + own(1)) / 2, rel=1e-4)
    assert loss([1.0, 0.0]) == pytest.approx(own(0), rel=1e-4)
    assert loss([0.0, 3.0]) == pytest.approx(own(1), rel=1e-4)


def test_all_masked_labels_fail_clearly(settings: Settings) -> None:
    with pytest.raises(DataError, match="every label masked"):
        fdata.check_labels([{"id": "x", "input_ids": [1, 2], "labels": [-100, -100]}])
    tok = _tokenizer(settings)
    long = tasks.Example("1", [{"role": "user", "content": "word " * 200}], "yes", "yes")
    with pytest.raises(DataError, match="no training examples left"):
        fdata.tokenize([long], tok, max_seq_length=64, on_too_long="skip")
    cut = fdata.tokenize([long], tok, max_seq_length=64, on_too_long="truncate")
    assert cut.truncated == ["1"] and len(cut.rows[0]["input_ids"]) <= 64


def test_the_long_examples_warning_names_its_set(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """Training and held-out sets are tokenised one after the other: each warning says which."""
    tok = _tokenizer(settings)
    long = tasks.Example("1", [{"role": "user", "content": "word " * 200}], "yes", "yes")
    with caplog.at_level("WARNING", logger="medllm.finetune.data"):
        fdata.tokenize([long], tok, max_seq_length=64, what="held-out examples")
    assert "1 held-out examples over max_seq_length=64: 1 truncated" in caplog.text


def test_pubmedqa_test_overlap_refused_or_dropped(tmp_path: Path, pubmedqa_dir: Path) -> None:
    from medllm.pubmedqa import load_test_pmids

    full = json.loads((pubmedqa_dir / "ori_pqal.json").read_text())
    test = load_test_pmids(pubmedqa_dir / "test_ground_truth.json")
    in_test = [k for k in full if k in test][:2]
    train_only = [k for k in full if k not in test][:3]
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({k: full[k] for k in in_test + train_only}))
    with pytest.raises(DataError, match="official PubMedQA test split") as e:
        tasks.load_pubmedqa(path, test)
    assert in_test[0] in str(e.value) and "mine.json" in str(e.value)
    exs, dropped = tasks.load_pubmedqa(path, test, on_overlap="drop")
    assert dropped == 2 and [x.id for x in exs] == train_only


def test_task_formats_from_fixtures() -> None:
    nli = tasks.load_nli(FIX / "mednli_small.jsonl")
    assert len(nli) == 36 and {e.label for e in nli} == set(tasks.NLI_OPTIONS)
    assert "Hypothesis:" in nli[0].messages[-1]["content"]
    mcq = tasks.load_mcq(FIX / "mcq_small.jsonl")
    assert [e.label for e in mcq] == ["C", "A", "A", "B", "D", "B"]
    assert mcq[0].response.startswith("C\nExplanation:")
    assert [e.label for e in tasks.load_mcq(FIX / "mcq_small.csv")] == ["C", "A", "D", "B"]
    ins = tasks.load_instructions(FIX / "instructions_small.jsonl")
    assert len(ins) == 4 and ins[2].messages == [
        {"role": "user", "content": "What does HbA1c measure?"}
    ]
    assert "apixaban" in ins[3].messages[0]["content"] and ins[3].response.startswith("Apixaban")


@pytest.mark.parametrize(
    ("loader", "name", "match"),
    [
        (tasks.load_nli, "mednli_bad_label.jsonl", "record line 2, field 'gold_label': unknown"),
        (tasks.load_nli, "mednli_bad_schema.jsonl", "record line 1, field 'sentence1'"),
        (tasks.load_nli, "empty.jsonl", "empty"),
        (tasks.load_mcq, "mednli_small.jsonl", "field 'question'"),
        (tasks.load_instructions, "missing.jsonl", "not found"),
    ],
)
def test_bad_input_names_file_record_field(loader, name: str, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(DataError, match=match) as e:
        loader(FIX / name)
    assert name in str(e.value)


def test_presets_parse_and_start_with_their_command() -> None:
    names = {p.stem for p in CONFIGS_DIR.glob("*.yaml")}
    assert {
        "smollm2_135m_qlora_cpu",
        "gemma3_270m_qlora_cpu",
        "gemma_7b_it_nli_qlora_gpu",
        "llama31_8b_pubmedqa_unsloth",
        "llama31_8b_mcq_unsloth",
    } <= names
    for n in names:
        assert (CONFIGS_DIR / f"{n}.yaml").read_text().startswith("# medllm finetune --config")
        load_config(n)
    gpu = load_config("gemma_7b_it_nli_qlora_gpu")
    assert (gpu.lora.r, gpu.lora.alpha, gpu.train.optim) == (64, 16, "paged_adamw_32bit")
    llama = load_config("llama31_8b_pubmedqa_unsloth")
    assert llama.backend == "unsloth" and llama.lora.use_rslora and llama.train.packing


def test_bad_config_names_file_and_key(tmp_path: Path) -> None:
    p = tmp_path / "x.yaml"
    p.write_text("lora:\n  rank: 8\n")
    with pytest.raises(ConfigError, match=r"x.yaml.*lora.rank"):
        load_config(p)
    with pytest.raises(ConfigError, match="not found"):
        load_config("no_such_preset")


def test_pubmedqa_context_sections(tmp_path: Path, pubmedqa_dir: Path) -> None:
    from medllm.pubmedqa import load_test_pmids, parse_record

    rec = parse_record(
        "1",
        {
            "QUESTION": "Does X help?",
            "CONTEXTS": ["Why we asked.", "What we did.", "X helped (p=0.01).", "Also Y."],
            "LABELS": ["BACKGROUND", "METHODS", "RESULTS", "MAIN RESULTS"],
            "final_decision": "yes",
        },
        tmp_path / "x.json",
    )
    assert rec.sections_text(["results"]) == "Results: X helped (p=0.01).\nMain results: Also Y."
    assert rec.sections_text(None) == rec.context_text
    assert rec.sections_text(["conclusions"]) == rec.context_text  # nothing to select: all
    test = load_test_pmids(pubmedqa_dir / "test_ground_truth.json")
    exs, _ = tasks.load_pubmedqa(pubmedqa_dir / "ori_pqal.json", test, context_sections=["results"])
    users = [e.messages[-1]["content"] for e in exs]
    assert len(exs) == 500 and sum("Results:" in u for u in users) > 450
    # Abstracts with a results section keep only it; the rest keep everything.
    assert not any("Results:" in u and "Methods:" in u for u in users)


def test_pubmedqa_extra_views_are_linear_head_only(pubmedqa_dir: Path, settings: Settings) -> None:
    from medllm.finetune.train import load_examples
    from medllm.pubmedqa import load_test_pmids

    test = load_test_pmids(pubmedqa_dir / "test_ground_truth.json")
    exs, _ = tasks.load_pubmedqa(
        pubmedqa_dir / "ori_pqal.json",
        test,
        context_sections=["results"],
        extra_views=["long_answer"],
    )
    e = exs[0]
    (view,) = e.views
    assert "Results:" in e.messages[-1]["content"]
    assert view[-1]["content"].startswith("Context: ") and "Results:" not in view[-1]["content"]
    assert view[-1]["content"].endswith(e.messages[-1]["content"].split("\n\n", 1)[1])
    cfg = FinetuneConfig().with_overrides(
        task={"name": "pubmedqa", "head_extra_views": ["long_answer"], "eval_fraction": 0.2}
    )
    ex = load_examples(
        cfg, settings
    )  # views go with their example: none of a held-out item is trained
    assert len(ex.train) == 400 and all(len(x.views) == 1 for x in ex.train + ex.held)
    cfg.check_head("linear")
    with pytest.raises(ConfigError, match="head_extra_views is for --head linear"):
        cfg.check_head("lm")
    with pytest.raises(ConfigError, match="empty list"):
        cfg.model_copy(update={"task": cfg.task.model_copy(update={"head_layer": []})}).check_head(
            "linear"
        )
