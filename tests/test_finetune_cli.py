"""`medllm finetune` from the command line: kill-and-resume, validate, backend refusal,
overlap refusal, and the encoder classification head on MedNLI-format fixtures."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medllm.cli.main import app

FIX = Path(__file__).parent / "fixtures" / "finetune"
REPO = Path(__file__).resolve().parents[1]


def test_kill_after_checkpoint_then_resume(tmp_path: Path, pubmedqa_dir: Path) -> None:
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(
        "backend: peft\n"
        "model: {quantization: null}\n"
        "task: {max_seq_length: 64, max_context_words: 16, train_on: label, eval_fraction: 0}\n"
        "lora: {r: 4, alpha: 8, layers: 1}\n"
        "train: {batch_size: 1, logging_steps: 1, save_steps: 2, save_total_limit: 3}\n"
    )
    out = tmp_path / "adapter"
    cmd = [sys.executable, "-m", "medllm.cli.main", "finetune", "--task", "pubmedqa"]
    cmd += ["--config", str(cfg), "--output", str(out), "--max-steps", "12"]
    env = {**os.environ, "MEDLLM_EVAL__PUBMEDQA_DIR": str(pubmedqa_dir)}
    partial = tmp_path / ".adapter.partial"
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not (partial / "checkpoint-2" / "trainer_state.json").is_file():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert not out.exists(), "a killed run must not leave a complete-looking adapter"
    # Without --resume a new run would start over; with it, it continues from the checkpoint.
    res = subprocess.run(
        [*cmd, "--resume", "--json"], env=env, cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr[-2000:]
    m = json.loads(res.stdout)
    assert m["global_step"] == 12
    assert m["resumed_from"].startswith("checkpoint-")
    assert int(m["resumed_from"].split("-")[1]) >= 2
    assert [p["step"] for p in m["train_loss"]] == list(range(1, 13))
    # The mean loss and tokens/s of the whole run, not transformers' figures for a resumed
    # process (its loss over all 12 steps, tokens/s with the tokens before the checkpoint).
    losses = [p["loss"] for p in m["train_loss"]]
    assert m["final_train_loss"] == pytest.approx(sum(losses) / 12)
    assert 0 < m["tokens_per_s"] * m["train_runtime_s"] < m["tokens_seen"]
    assert (out / "adapter_model.safetensors").is_file() and not partial.exists()


def test_validate_preset_and_overlap_refusal(
    tmp_path: Path, pubmedqa_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDLLM_EVAL__PUBMEDQA_DIR", str(pubmedqa_dir))
    r = CliRunner().invoke(app, ["finetune", "validate", "smollm2_135m_qlora_cpu", "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["train_examples"] + rep["eval_examples"] == 500
    assert rep["dropped_test_overlap"] == 500 and rep["tokens_max"] <= 160

    full = json.loads((pubmedqa_dir / "ori_pqal.json").read_text())
    test = json.loads((pubmedqa_dir / "test_ground_truth.json").read_text())
    leak = {k: full[k] for k in list(test)[:1] + [k for k in full if k not in test][:4]}
    data = tmp_path / "leaky.json"
    data.write_text(json.dumps(leak))
    r = CliRunner().invoke(
        app, ["finetune", "--task", "pubmedqa", "--data", str(data), "--max-steps", "1"]
    )
    assert r.exit_code == 1 and "official PubMedQA test split" in r.output
    assert "Traceback" not in r.output
    assert not (Path(os.environ["MEDLLM_HOME"]) / "adapters").exists()


def test_bad_inputs_exit_cleanly(tmp_path: Path) -> None:
    runner = CliRunner()
    r = runner.invoke(
        app, ["finetune", "--task", "nli", "--data", str(FIX / "mednli_bad_label.jsonl")]
    )
    assert r.exit_code == 1 and "gold_label" in r.output and "line 2" in r.output
    r = runner.invoke(app, ["finetune", "--task", "nli"])
    assert r.exit_code == 2 and "--data" in r.output
    r = runner.invoke(
        app,
        [
            "finetune",
            "--task",
            "nli",
            "--data",
            str(FIX / "mednli_small.jsonl"),
            "--model",
            str(tmp_path / "nope"),
        ],
    )
    assert r.exit_code == 1 and "unknown model" in r.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {learning_rate: -1}\n")
    r = runner.invoke(app, ["finetune", "validate", str(bad)])
    assert r.exit_code == 2 and "train.learning_rate" in r.output
    assert "Traceback" not in r.output


def test_unsloth_backend_refuses_clearly_without_cuda_or_unsloth() -> None:
    import torch

    from medllm.finetune.backends import choose

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert choose("auto") == "peft"
    r = CliRunner().invoke(
        app,
        [
            "finetune",
            "--task",
            "nli",
            "--data",
            str(FIX / "mednli_small.jsonl"),
            "--backend",
            "unsloth",
        ],
    )
    assert r.exit_code == 1 and "CUDA" in r.output and "--backend peft" in r.output
    assert "Traceback" not in r.output
    # Settings.finetune is read: MEDLLM_FINETUNE__BACKEND chooses the backend as --backend does.
    r = CliRunner().invoke(
        app,
        ["finetune", "--task", "nli", "--data", str(FIX / "mednli_small.jsonl")],
        env={"MEDLLM_FINETUNE__BACKEND": "unsloth"},
    )
    assert r.exit_code == 1 and "CUDA" in r.output and "Traceback" not in r.output
    # The module imports without unsloth or a GPU (unsloth is imported only inside load()).
    import medllm.finetune.backends.unsloth as be

    assert "unsloth" not in sys.modules
    with pytest.raises(Exception, match="CUDA"):
        be.load(None, None)  # type: ignore[arg-type]


def test_nli_classification_head_on_minilm(tmp_path: Path) -> None:
    out = tmp_path / "cls"
    r = CliRunner().invoke(
        app,
        [
            "finetune",
            "--task",
            "nli",
            "--head",
            "classification",
            "--data",
            str(FIX / "mednli_small.jsonl"),
            "--epochs",
            "1",
            "--output",
            str(out),
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    m = json.loads(r.stdout)
    assert m["model"] == "all-minilm-l6-v2" and m["eval_examples"] == 6
    assert 0.0 <= m["accuracy"] <= 1.0
    rep = m["classification_report"]
    assert set(rep) >= {"per_class", "confusion", "macro_f1", "accuracy", "accuracy_ci95"}
    per_class = rep["per_class"]  # medllm.metrics.classification_report, as eval reports it
    assert sum(per_class[x]["support"] for x in ("entailment", "neutral", "contradiction")) == 6
    assert (out / "model.safetensors").is_file() and (out / "metrics.json").is_file()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["id2label"] == {"0": "entailment", "1": "neutral", "2": "contradiction"}
