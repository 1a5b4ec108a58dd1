"""End-to-end evaluation with the packaged models on the real data (small --limit):
PubMedQA no-context / gold-context (with resume), MCQ, NLI, and over a real ingested store:
retrieval hit@k, PubMedQA RAG mode, and RAGAS with the local judge."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from medllm.cli.main import app


def _run(args: list[str]) -> dict[str, Any]:
    res = CliRunner().invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_pubmedqa_gold_context_report_and_resume(pubmedqa_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["eval", "pubmedqa", "--mode", "gold-context", "--source", str(pubmedqa_dir)]
    first = _run([*args, "--limit", "4", "--batch-size", "4", "--out", str(out)])
    assert first["n"] == 4 and 0 <= first["accuracy"] <= 1
    assert first["baselines"]["majority class (official)"] == 0.552
    assert first["predictions"].startswith("not written")  # 4 of the 500 test PMIDs
    for name in ("config.json", "metrics.json", "report.md", "confusion.png", "reliability.png"):
        assert (out / name).is_file(), name
    assert (out / "risk_coverage.png").stat().st_size > 1000
    cfg = json.loads((out / "config.json").read_text())
    assert len(cfg["identity"]["data_sha256"]) == 64 and len(cfg["identity"]["model_sha256"]) == 64
    assert cfg["seed"] == 0 and cfg["settings"]["models"]["llm"] == "smollm2-135m-instruct"
    lines = (out / "items.jsonl").read_text().splitlines()
    items = [json.loads(x) for x in lines]
    assert len(items) == 4
    test_pmids = list(json.loads((pubmedqa_dir / "test_ground_truth.json").read_text()))
    assert {it["id"] for it in items} == set(test_pmids[:4])
    for it in items:
        assert sum(it["probs"].values()) == pytest.approx(1, abs=1e-4)
        assert it["pred"] == max(it["probs"], key=it["probs"].get)
    # Interrupted after two items (and half a line): the re-run scores only the rest.
    (out / "items.jsonl").write_text("\n".join(lines[:2]) + '\n{"id": "1', encoding="utf-8")
    again = _run([*args, "--limit", "4", "--batch-size", "4", "--out", str(out)])
    assert again["timing"]["items_this_call"] == 2
    redo = {}
    for x in (out / "items.jsonl").read_text().splitlines()[2:]:
        if x.endswith("}"):  # the half line left by the "crash" is skipped on reading
            redo[json.loads(x)["id"]] = json.loads(x)
    assert len(redo) == 2
    for it in items[2:]:
        assert redo[it["id"]]["probs"] == pytest.approx(it["probs"], abs=1e-4)
    assert again["accuracy"] == first["accuracy"]
    # Another mode into the same directory is refused.
    res = CliRunner().invoke(
        app, [*args[:3], "no-context", *args[4:], "--limit", "2", "--out", str(out)]
    )
    assert res.exit_code == 1 and "belongs to another evaluation" in res.output
    nc = _run([*args[:3], "no-context", *args[4:], "--limit", "2"])
    assert nc["n"] == 2 and "no-context" in nc["run_dir"]


def test_mcq_and_nli_on_real_files(shared_dir: Path, tmp_path: Path) -> None:
    mcq = _run(
        [
            "eval",
            "mcq",
            "--data",
            str(shared_dir / "data/medmcqa/dev_single_answer.jsonl"),
            "--limit",
            "3",
            "--out",
            str(tmp_path / "mcq"),
        ]
    )
    assert mcq["n"] == 3 and mcq["labels"] == ["A", "B", "C", "D"]
    nli = _run(
        [
            "eval",
            "nli",
            "--data",
            str(shared_dir / "data/nli4ct/pairs_train_dev.jsonl"),
            "--split",
            "dev",
            "--limit",
            "2",
            "--out",
            str(tmp_path / "nli"),
        ]
    )
    assert nli["n"] == 2 and nli["labels"] == ["entailment", "contradiction"]


@pytest.fixture
def small_store(pubmedqa_dir: Path, tmp_path: Path) -> Path:
    """A real store of the first 30 PQA-L abstracts (and a PQA-L-shaped directory for them)."""
    from medllm.config import Settings
    from medllm.pipelines.ingest import ingest_pubmedqa

    src = tmp_path / "pqa"
    src.mkdir()
    data = json.loads((pubmedqa_dir / "ori_pqal.json").read_text())
    (src / "ori_pqal.json").write_text(json.dumps(dict(list(data.items())[:30])))
    (src / "test_ground_truth.json").write_text(
        (pubmedqa_dir / "test_ground_truth.json").read_text()
    )
    ingest_pubmedqa(Settings.load(), src / "ori_pqal.json", show_progress=False)
    return src


def test_retrieval_rag_and_ragas(
    small_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = ["--source", str(small_store), "--split", "all"]
    r = _run(["eval", "retrieval", *src, "--limit", "6", "--modes", "dense,bm25"])
    assert set(r["modes"]) == {"dense", "bm25"}
    # A question finds its own abstract among 30.
    assert r["modes"]["dense"]["hit_at"]["10"]["hit"] >= 0.8
    assert (Path(r["run_dir"]) / "hit_at_k.png").is_file()

    # rag and leave-gold-out ask the engine itself (gate, selective labels, citations).
    for mode, expect_answered in (("rag", True), ("leave-gold-out", False)):
        out = tmp_path / mode
        m = _run(
            [
                "eval",
                "pubmedqa",
                "--mode",
                mode,
                *src,
                "--limit",
                "2",
                "-k",
                "2",
                "--retrieval",
                "dense",
                "--no-generate",
                "--out",
                str(out),
            ]
        )
        items = [json.loads(x) for x in (out / "items.jsonl").read_text().splitlines()]
        assert len(items) == 2 and m["n"] == 2
        if expect_answered:
            assert m["coverage"] >= 0.5 and m["citation_recall"] == 1.0
        else:
            assert m["abstain_rate"] >= 0.5
            assert all(it["id"] not in it["cited"] for it in items)
        assert (out / "report.md").is_file()

    # RAGAS with the local judge on one question (short judge outputs keep this quick; most
    # will not parse, which must show up as counts, never as zeros).
    monkeypatch.setenv("MEDLLM_GENERATION__MAX_NEW_TOKENS", "48")
    g = _run(
        [
            "eval",
            "ragas",
            *src,
            "--limit",
            "1",
            "-k",
            "1",
            "--retrieval",
            "dense",
            "--metrics",
            "faithfulness,context_recall",
            "--out",
            str(tmp_path / "ragas"),
        ]
    )
    m = g["metrics"]
    assert set(m) == {
        "id_context_precision",
        "id_context_recall",
        "nonllm_context_recall",
        "faithfulness",
        "context_recall",
    }
    for name, v in m.items():
        assert (
            v["of"] == 1 and v["scored"] + v["parse_error"] + v["no_verdict"] + v["error"] == 1
        ), name
        assert (v["mean"] is None) == (v["scored"] == 0), name
    assert m["id_context_recall"]["mean"] == 1.0  # the engine cited the question's own abstract
    cfg = json.loads((tmp_path / "ragas" / "config.json").read_text())
    assert cfg["identity"]["judge"] == "smollm2-135m-instruct"
    assert "failed to parse" in (tmp_path / "ragas" / "report.md").read_text()

    # Judge-free metrics only: no judge is loaded, and none is named in the run or its report.
    free = _run(["eval", "ragas", *src, "--limit", "1", "-k", "1", "--metrics", ""])
    run_dir = Path(free["run_dir"])
    assert "no-judge" in run_dir.name and "judge-smollm" not in run_dir.name, run_dir.name
    assert json.loads((run_dir / "config.json").read_text())["identity"]["judge"] is None
    assert "no judge (judge-free metrics only)" in (run_dir / "report.md").read_text()
    assert set(free["metrics"]) == {
        "id_context_precision",
        "id_context_recall",
        "nonllm_context_recall",
    }
