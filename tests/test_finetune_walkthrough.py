"""`medllm finetune` as a new user meets it: the messages when PubMedQA is not on disk name
finetune's own options, bad step counts in a YAML config, --epochs against a preset's step
limit, NLI files in the premise/hypothesis/label schema that `medllm eval nli` reads (NLI4CT)
with --split, no stale work directory when the model cannot load, missing adapter
directories, and the last step's loss in a run shorter than logging_steps."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medllm.cli.main import app
from medllm.config import Settings
from medllm.errors import ConfigError, DataError, MedllmError
from medllm.finetune import tasks
from medllm.finetune.config import FinetuneConfig, load_config

FIX = Path(__file__).parent / "fixtures" / "finetune"


def _nli4ct_like(path: Path) -> Path:
    rows = [
        ("a", "train", "Entailment"),
        ("b", "train", "Contradiction"),
        ("c", "dev", "Entailment"),
        ("d", "train", "Entailment"),
        ("e", "dev", "Contradiction"),
        ("f", "train", "Contradiction"),
    ]
    path.write_text(
        "".join(
            json.dumps(
                {"id": i, "split": s, "premise": f"Trial {i}.", "hypothesis": "H.", "label": lab}
            )
            + "\n"
            for i, s, lab in rows
        )
    )
    return path


def test_missing_pubmedqa_names_finetunes_data_option(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDLLM_EVAL__PUBMEDQA_DIR", str(tmp_path / "nowhere"))
    r = CliRunner().invoke(app, ["finetune", "validate", "smollm2_135m_qlora_cpu"])
    assert r.exit_code == 1
    assert "--data PATH/ori_pqal.json" in r.output and "--source" not in r.output

    # A training file of one's own, without test_ground_truth.json beside it.
    own = tmp_path / "own" / "my_pqa.json"
    own.parent.mkdir()
    own.write_text("{}")
    r = CliRunner().invoke(app, ["finetune", "validate", "--task", "pubmedqa", "--data", str(own)])
    assert r.exit_code == 1
    assert "test_ground_truth.json beside my_pqa.json" in r.output and "task.test_pmids" in r.output


def test_yaml_max_steps_is_positive_or_minus_one(tmp_path: Path) -> None:
    for bad in (-5, 0):
        p = tmp_path / f"steps{bad}.yaml"
        p.write_text(f"train:\n  max_steps: {bad}\n")
        with pytest.raises(ConfigError, match=r"steps.*\.yaml.*train\.max_steps.*-1 to train"):
            load_config(p)
    for ok in (-1, 3):
        p = tmp_path / f"ok{ok}.yaml"
        p.write_text(f"train:\n  max_steps: {ok}\n")
        assert load_config(p).train.max_steps == ok


def test_epochs_flag_replaces_the_presets_step_limit() -> None:
    from medllm.cli.finetune_cmd import _config

    assert load_config("smollm2_135m_qlora_cpu").train.max_steps == 60
    cfg = _config("smollm2_135m_qlora_cpu", epochs=2.0)
    assert (cfg.train.epochs, cfg.train.max_steps) == (2.0, -1)
    cfg = _config("smollm2_135m_qlora_cpu", epochs=2.0, max_steps=5)
    assert cfg.train.max_steps == 5  # both given: the step limit still stops the run
    assert _config("smollm2_135m_qlora_cpu").train.max_steps == 60


def test_nli_premise_hypothesis_label_and_split(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _nli4ct_like(tmp_path / "pairs.jsonl")
    train = tasks.load_nli(path, split="train")
    assert [(e.id, e.label) for e in train] == [
        ("a", "entailment"),
        ("b", "contradiction"),
        ("d", "entailment"),
        ("f", "contradiction"),
    ]
    assert "Premise: Trial a." in train[0].messages[-1]["content"]
    with caplog.at_level(logging.WARNING, logger="medllm.finetune.tasks"):
        assert len(tasks.load_nli(path)) == 6
        assert not caplog.text  # reading, e.g. for evaluation: no training advice
        assert len(tasks.load_nli(path, training=True)) == 6
    assert "dev, train" in caplog.text and "--split" in caplog.text
    with pytest.raises(DataError, match=r"pairs\.jsonl: no records with field 'split' = 'test'"):
        tasks.load_nli(path, split="test")
    # A bad record names the schema's own field.
    path.write_text(path.read_text() + '{"id": "g", "premise": "p", "hypothesis": "h"}\n')
    with pytest.raises(DataError, match=r"record line 7, field 'label': missing"):
        tasks.load_nli(path)
    # MedNLI files are read as before.
    assert [e.label for e in tasks.load_nli(FIX / "mednli_small.jsonl")]
    path = _nli4ct_like(tmp_path / "pairs2.jsonl")
    assert tasks.read_nli(path, split="dev").records == [
        ("c", "Trial c.", "H.", "entailment"),
        ("e", "Trial e.", "H.", "contradiction"),
    ]


def test_split_option_on_run_and_validate(tmp_path: Path) -> None:
    path = _nli4ct_like(tmp_path / "pairs.jsonl")
    args = ["--task", "nli", "--data", str(path), "--split", "test"]
    for cmd in (["finetune", "validate", *args], ["finetune", *args, "--max-steps", "1"]):
        r = CliRunner().invoke(app, cmd)
        assert r.exit_code == 1, r.output
        assert "no records with field 'split' = 'test' (the file's splits are dev, train)" in (
            r.output
        )
    r = CliRunner().invoke(app, ["finetune", "validate", "--task", "pubmedqa", "--split", "x"])
    assert r.exit_code == 2 and "PubMedQA always trains on its official split" in r.output


def test_model_that_cannot_load_leaves_no_work_directory(tmp_path: Path) -> None:
    from medllm.finetune.train import partial_dir, run

    cfg = FinetuneConfig().with_overrides(
        backend={"backend": "peft"},
        model={"name": "no-such-model"},
        task={"name": "nli", "data": str(FIX / "mednli_small.jsonl")},
    )
    out = tmp_path / "adapter"
    with pytest.raises(MedllmError, match="unknown model 'no-such-model'"):
        run(cfg, Settings.load(config_file=False), out, progress=False)
    assert not partial_dir(out).exists() and not out.exists()


def test_missing_adapter_directory_is_named_as_missing(tmp_path: Path) -> None:
    gone = tmp_path / "no-adapter"
    for cmd in (
        ["finetune", "merge", str(gone), "--output", str(tmp_path / "m")],
        ["finetune", "export-gguf", str(gone), "--output", str(tmp_path / "a.gguf")],
        ["finetune", "export-gguf", str(gone), "--output", str(tmp_path / "a.gguf")]
        + ["--base-gguf", str(tmp_path / "base.gguf")],
    ):
        r = CliRunner().invoke(app, cmd)
        assert r.exit_code == 1, r.output
        assert f"adapter directory not found: {gone}" in r.output


@pytest.mark.slow
def test_run_shorter_than_logging_steps_records_its_loss(
    tmp_path: Path, pubmedqa_dir: Path
) -> None:
    from medllm.finetune.train import run

    lines = (FIX / "mednli_small.jsonl").read_text().splitlines()
    neutral = [x for x in lines if json.loads(x)["gold_label"] == "neutral"]
    data = tmp_path / "imbalanced.jsonl"  # 12 / 12 / 4: oversampling adds 8 neutral rows
    data.write_text("\n".join([x for x in lines if x not in neutral] + neutral[:4]) + "\n")
    cfg = FinetuneConfig().with_overrides(
        backend={"backend": "peft"},
        task={
            "name": "nli",
            "data": str(data),
            "eval_fraction": 0,
            "balance": "oversample",
        },
        lora={"r": 4, "alpha": 8, "layers": 1},
        train={"max_steps": 2, "batch_size": 1, "logging_steps": 5},
    )
    res = run(cfg, Settings.load(config_file=False), tmp_path / "a", progress=False)
    assert [p["step"] for p in res.metrics["train_loss"]] == [2]
    saved = json.loads((res.output / "metrics.json").read_text())
    assert saved["train_loss"] == res.metrics["train_loss"]
    # labels are counted as `finetune validate` counts them; oversampled rows apart
    m = res.metrics
    assert m["labels"] == {"entailment": 12, "contradiction": 12, "neutral": 4}
    assert m["labels_after_balance"] == {"entailment": 12, "contradiction": 12, "neutral": 12}
    assert m["train_examples"] == 28 and m["train_rows_after_balance"] == 36


def test_nli_label_set_comes_from_the_file(tmp_path: Path) -> None:
    """MedNLI has three labels; a premise/hypothesis/label file such as NLI4CT's pairs uses
    two, and neither `eval nli` nor the classification head counts a "neutral" it never has
    (the head used to train and score three classes, a macro-F1 over an empty one)."""
    from medllm.eval.nli import nli_task

    two = _nli4ct_like(tmp_path / "pairs.jsonl")
    assert tasks.read_nli(two).options == ("entailment", "contradiction")
    assert tasks.read_nli(FIX / "mednli_small.jsonl").options == tasks.NLI_OPTIONS
    assert nli_task(two, split="train").options == ("entailment", "contradiction")
    bad = tmp_path / "other.jsonl"
    bad.write_text(json.dumps({"id": "x", "text": "t", "answer": "yes"}) + "\n")
    with pytest.raises(DataError, match="not an NLI file"):
        tasks.read_nli(bad)

    rows = [(f"p{i}", "Entailment" if i % 2 else "Contradiction") for i in range(20)]
    data = tmp_path / "cls.jsonl"
    data.write_text(
        "".join(
            json.dumps({"id": i, "premise": f"Patient {i} had a rash.", "hypothesis": "A rash.",
                        "label": lab}) + "\n"
            for i, lab in rows
        )
    )  # fmt: skip
    out = tmp_path / "cls"
    args = ["finetune", "--task", "nli", "--head", "classification", "--data", str(data)]
    r = CliRunner().invoke(app, [*args, "--max-steps", "1", "--output", str(out), "--json"])
    assert r.exit_code == 0, r.output
    m = json.loads(r.stdout)
    assert set(m["classification_report"]["per_class"]) == {"entailment", "contradiction"}
    assert json.loads((out / "config.json").read_text())["id2label"] == {
        "0": "entailment",
        "1": "contradiction",
    }


def test_a_bad_option_value_is_named_by_its_option() -> None:
    r = CliRunner().invoke(app, ["finetune", "validate", "--task", "bogus"])
    assert r.exit_code == 2  # a usage error, as for any bad setting
    assert "--task (task.name): Input should be 'pubmedqa'" in r.output
    # a field no option sets is named by its key alone
    with pytest.raises(ConfigError, match=r"invalid fine-tuning config: train\.batch_size: "):
        load_config(None).with_overrides(train={"batch_size": "x"})


def test_a_directory_as_data_is_named_as_one(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="is a directory; name the data file in it"):
        tasks.read_rows(tmp_path)
    with pytest.raises(DataError, match="file not found"):
        tasks.read_rows(tmp_path / "missing.jsonl")


def test_the_held_out_evaluation_bar_is_announced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """transformers' evaluation bar after training has no label: a line says what it is."""
    from medllm.finetune.train import run

    cfg = FinetuneConfig().with_overrides(
        backend={"backend": "peft"},
        task={"name": "nli", "data": str(FIX / "mednli_small.jsonl"), "eval_fraction": 0.2},
        lora={"r": 4, "alpha": 8, "layers": 1},
        train={"max_steps": 1, "batch_size": 1},
    )
    res = run(cfg, Settings.load(config_file=False), tmp_path / "a", progress=True)
    assert res.metrics["final_eval_loss"] is not None
    assert f"held-out loss: {res.metrics['eval_examples']} examples" in capsys.readouterr().err
