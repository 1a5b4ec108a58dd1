"""The evaluation commands as a new user meets them (README "Evaluation: `medllm eval`"): bad
input named by file, record and field; no traceback; no empty run directory left behind by a
run that failed before its first item; a smaller --limit after a larger one; reports that say
why no label was given; `store drop` of a store that is not there."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from medllm.cli.main import app
from medllm.config import Settings
from medllm.errors import DataError
from medllm.eval.base import RunDir, run_items
from medllm.eval.yesno import load_yesno

N = 30


def _cli(args: list[str]) -> Any:
    return CliRunner().invoke(app, args)


@pytest.fixture(scope="module")
def store(
    tmp_path_factory: pytest.TempPathFactory, pubmedqa_dir: Path, models_cache: Path
) -> dict[str, Any]:
    """A home with a store of the first N PQA-L abstracts, shared by this module's tests."""
    from medllm.pipelines.ingest import ingest_pubmedqa

    home = tmp_path_factory.mktemp("walkthrough-home")
    (home / "models").symlink_to(models_cache, target_is_directory=True)
    s = Settings.load(config_file=False, paths={"home": home})
    ingest_pubmedqa(s, pubmedqa_dir / "ori_pqal.json", limit=N, show_progress=False)
    return {"home": home, "source": pubmedqa_dir}


@pytest.fixture
def in_store(store: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setenv("MEDLLM_HOME", str(store["home"]))
    return store


# ----------------------------------------------------------------------------- yes/no files


def test_yesno_file_errors_name_the_file_line_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "notobj.jsonl"
    bad.write_text('{"id": "q1", "question": "Q?", "answer": "yes"}\n[1, 2]\n')
    with pytest.raises(DataError, match=r"notobj\.jsonl, record line 2: expected a JSON object"):
        load_yesno(bad)
    dup = tmp_path / "dup.jsonl"
    dup.write_text(
        '{"id": "q1", "question": "One?", "answer": "yes"}\n'
        '{"id": "q1", "question": "Two?", "answer": "no"}\n'
    )
    with pytest.raises(DataError, match=r"record line 2, field 'id': id 'q1' is used twice"):
        load_yesno(dup)
    as_json = tmp_path / "questions.json"  # JSONL named .json reads as a MIRAGE file
    as_json.write_text('{"id": "q1", "question": "Q?", "answer": "yes"}\n')
    with pytest.raises(DataError, match=r"name it \.jsonl"):
        load_yesno(as_json)
    r = _cli(["eval", "yesno", "--data", str(bad)])
    assert r.exit_code == 1 and "line 2" in r.output and r.exception is not None
    assert isinstance(r.exception, SystemExit)  # not an AttributeError


def test_yesno_leave_gold_out_without_gold_ids_is_a_clear_error(tmp_path: Path) -> None:
    data = tmp_path / "q.jsonl"
    data.write_text('{"id": "q1", "question": "Does aspirin help?", "answer": "yes"}\n')
    r = _cli(["eval", "yesno", "--data", str(data), "--leave-gold-out"])
    assert r.exit_code == 1, r.output
    assert "record q1" in r.output and "field 'gold'" in r.output
    assert isinstance(r.exception, SystemExit)  # not a ValueError traceback


def test_an_engine_eval_without_a_store_leaves_no_run_directory(
    tmp_path: Path, medllm_home: Path
) -> None:
    data = tmp_path / "q.jsonl"
    data.write_text('{"id": "q1", "question": "Does aspirin help?", "answer": "yes"}\n')
    r = _cli(["eval", "yesno", "--data", str(data), "--collection", "nosuch"])
    assert r.exit_code == 1 and "nothing ingested" in r.output
    runs = medllm_home / "runs"
    assert not runs.exists() or list(runs.iterdir()) == []


# ----------------------------------------------------------------------------- pubmedqa, calibrate


def test_unknown_pubmedqa_mode_lists_every_mode(pubmedqa_dir: Path) -> None:
    r = _cli(["eval", "pubmedqa", "--mode", "bogus", "--source", str(pubmedqa_dir)])
    assert r.exit_code == 1
    for mode in ("no-context", "gold-context", "rag", "leave-gold-out"):
        assert mode in r.output


@pytest.mark.parametrize("limit", ["0", "-3", "5"])
def test_calibrate_limit_is_checked_before_anything_is_asked(
    pubmedqa_dir: Path, limit: str
) -> None:
    """--limit 0 used to calibrate on all 500 questions, a negative one on none (a ValueError
    traceback telling to ingest PubMedQA), and 5 asked five questions before the same."""
    r = _cli(["calibrate", "--source", str(pubmedqa_dir), "--limit", limit])
    assert r.exit_code == 1, r.output
    assert "--limit" in r.output and isinstance(r.exception, SystemExit)
    assert "calibrating labels" not in r.output


# ----------------------------------------------------------------------------- reports


def _engine_record(i: int, withheld: str | None, answered: bool = True) -> dict[str, Any]:
    return {
        "id": str(i),
        "gold": "yes",
        "gold_docs": [str(i)],
        "answered": answered,
        "label": None,
        "labelled": False,
        "correct": None,
        "confidence": None,
        "probs": {"yes": 0.6, "no": 0.3, "maybe": 0.1} if answered else None,
        "label_withheld": withheld,
        "cited": [str(i)] if answered else [],
        "gold_cited": answered,
        "max_4gram_repeats": 1,
        "latency_s": 1.0,
    }


def test_engine_report_says_why_no_label_was_given(tmp_path: Path) -> None:
    from medllm.eval.engine_eval import (
        engine_metrics,
        labelled_accuracy,
        withheld_summary,
        write_report,
    )

    recs = [_engine_record(1, "no-skill"), _engine_record(2, "no-skill")]
    recs.append(_engine_record(3, None, answered=False))
    m = engine_metrics(recs)
    assert m["labels_withheld"] == {"no-skill": 2}
    assert labelled_accuracy(m) == "n/a (no item labelled)"
    assert withheld_summary(m) == " (label withheld: no-skill 2)"
    run = RunDir.open(tmp_path / "run", {"task": "t"}, {})
    text = write_report(run, m, title="t").read_text()
    assert "label withheld: no-skill | 2 |" in text and "n/a n/a" not in text
    assert "abstaining is the right outcome" not in text
    # leave-gold-out: every answer is unsupported, and the report and summary say so
    m["identity"] = {"variant": "engine-leave-gold-out"}
    run = RunDir.open(tmp_path / "lgo", {"task": "t"}, {})
    assert "abstaining is the right outcome" in write_report(run, m, title="t").read_text()


def test_ragas_exact_match_counts_labels_not_parses() -> None:
    """The label is the engine's (None when it abstained or withheld it), not a parse of the
    answer's first word: the report says so."""
    from medllm.eval.ragas_eval import aggregate, exact_match_summary

    items: list[dict[str, Any]] = [
        {"scores": {}, "answer_label": "yes", "exact_match": True, "abstained": False},
        {"scores": {}, "answer_label": None, "exact_match": None, "abstained": False},
        {"scores": {}, "answer_label": None, "exact_match": None, "abstained": True},
    ]
    em = aggregate(items, [])["exact_match"]
    assert em["accuracy_over_labelled"] == 1.0 and em["labelled"] == 1
    assert em["unlabelled"] == 2 and em["abstained"] == 1
    text = exact_match_summary(em)
    assert "engine's label" in text and "did not start with" not in text


def test_compare_names_what_an_engine_run_is(tmp_path: Path) -> None:
    run = tmp_path / "rag"
    run.mkdir()
    ident = {"task": "pubmedqa-test", "variant": "engine-rag"}
    (run / "config.json").write_text(json.dumps({"identity": ident}))
    (run / "metrics.json").write_text(json.dumps({"n": 3, "coverage": 1.0}))
    r = _cli(["eval", "compare", str(run)])
    assert r.exit_code == 1 and "engine-rag" in r.output and "gold-context" in r.output


# ----------------------------------------------------------------------------- resume with --limit


def test_a_smaller_limit_after_a_larger_one_reuses_the_run(tmp_path: Path) -> None:
    run = RunDir.open(tmp_path / "run", {"task": "t"}, {})
    asked: list[str] = []

    def step(ids: list[str]) -> list[dict[str, Any]]:
        asked.extend(ids)
        return [{"id": i} for i in ids]

    every = ["a", "b", "c", "d"]
    run_items(run, every, step, batch_size=2, desc="t", show_progress=False, known=every)
    got = run_items(run, every[:2], step, batch_size=2, desc="t", show_progress=False, known=every)
    assert [r["id"] for r in got] == ["a", "b"] and asked == every  # nothing asked again
    with pytest.raises(DataError, match="not in this evaluation's data"):
        run_items(run, ["x"], step, batch_size=1, desc="t", show_progress=False, known=["x"])


def test_retrieval_eval_limit_where_and_leftovers(in_store: dict[str, Any], tmp_path: Path) -> None:
    src = ["--source", str(in_store["source"]), "--split", "all", "--modes", "bm25"]
    out = tmp_path / "r"
    r = _cli(["eval", "retrieval", *src, "--limit", "4", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    r = _cli(["eval", "retrieval", *src, "--limit", "2", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output  # was: "items.jsonl holds 2 items that are not in ..."
    assert json.loads(r.stdout)["n"] == 2
    runs = in_store["home"] / "runs"
    before = set(runs.iterdir()) if runs.exists() else set()
    r = _cli(["eval", "retrieval", *src, "--limit", "2", "--where", "yeer>=2005"])
    assert r.exit_code == 1 and "cannot read the filter clause" in r.output
    r = _cli(["eval", "retrieval", *src, "--limit", "2", "--where", "year>=2100"])
    assert r.exit_code == 1 and "no document" in r.output and "every hit@k would be 0" in r.output
    assert (set(runs.iterdir()) if runs.exists() else set()) == before  # no empty run dirs
    r = _cli(["eval", "retrieval", *src, "--limit", "2", "--where", "year>=1990"])
    assert r.exit_code == 0, r.output
    assert "filter year>=1990" in r.output
    report = Path(r.output.split("report: ")[-1].strip()).read_text()
    assert "Filter `year>=1990`" in report


def test_ragas_run_with_where_is_not_resumed_without_it(
    in_store: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "ragas"
    args = ["eval", "ragas", "--source", str(in_store["source"]), "--split", "all"]
    args += ["--limit", "1", "--metrics", "", "--out", str(out)]
    r = _cli([*args, "--where", "year>=1990"])
    assert r.exit_code == 0, r.output
    assert "engine's label" in r.output
    r = _cli(args)
    assert r.exit_code == 1 and "belongs to another evaluation" in r.output and "where" in r.output


def test_store_drop_of_a_missing_store_names_the_stores_there(in_store: dict[str, Any]) -> None:
    r = _cli(["store", "drop", "nosuch", "--yes"])
    assert r.exit_code == 1 and "stores there: pubmedqa (embedding all-minilm-l6-v2)" in r.output
    r = _cli(["store", "drop", "pubmedqa", "--embed-model", "bge-small-en-v1.5", "--yes"])
    assert r.exit_code == 1 and "--embed-model all-minilm-l6-v2" in r.output


def test_a_filtered_run_never_takes_the_unfiltered_runs_name(
    in_store: dict[str, Any], tmp_path: Path
) -> None:
    """The default run directory of a filtered run names its filter, so the plain name stays
    the unfiltered run's whichever ran first (it used to go to the first run, filtered or not)."""
    from medllm.eval.base import default_run_path

    s = Settings.load(config_file=False, paths={"home": tmp_path})
    plain = default_run_path(s, "retrieval", "pubmedqa", "all")
    ge = default_run_path(s, "retrieval", "pubmedqa", "all", where="year>=2005")
    le = default_run_path(s, "retrieval", "pubmedqa", "all", where="year<=2005")
    assert plain.name == "retrieval-pubmedqa-all"
    assert ge.name.startswith("retrieval-pubmedqa-all-where-year-2005-") and ge != le
    long = default_run_path(s, "x" * 200, where="year>=2005")
    assert len(long.name) <= 80 and "-where-year-2005-" in long.name

    src = ["--source", str(in_store["source"]), "--split", "all", "--modes", "bm25"]
    r = _cli(["eval", "retrieval", *src, "--limit", "2", "--where", "year>=1990"])
    assert r.exit_code == 0, r.output
    filtered = Path(r.output.split("report: ")[-1].strip()).parent
    assert "-where-year-1990-" in filtered.name
    r = _cli(["eval", "retrieval", *src, "--limit", "2"])
    assert r.exit_code == 0, r.output
    unfiltered = Path(r.output.split("report: ")[-1].strip()).parent
    assert unfiltered.name == filtered.name.split("-where-")[0]


def test_loading_the_model_is_not_the_first_items_latency(tmp_path: Path) -> None:
    """Engine evals loaded the model inside the first item: its latency (and the mean) carried
    the load, and the bar sat at 0 with no word of why."""
    import time

    run = RunDir.open(tmp_path / "run", {"task": "t"}, {})
    loaded: list[bool] = []

    def prepare() -> None:
        time.sleep(0.5)
        loaded.append(True)

    def step(ids: list[str]) -> list[dict[str, Any]]:
        assert loaded  # the model is there before the first item
        return [{"id": i} for i in ids]

    got = run_items(run, ["a", "b"], step, batch_size=1, desc="t", show_progress=True,
                    prepare=prepare)  # fmt: skip
    assert loaded == [True] and all(r["latency_s"] < 0.4 for r in got)
    # a run with nothing left to ask loads nothing
    run_items(run, ["a", "b"], step, batch_size=1, desc="t", show_progress=False, prepare=prepare)
    assert loaded == [True]


def test_mirage_pmid_of_the_wrong_type_is_named(tmp_path: Path) -> None:
    rec = {"question": "Does X help?", "options": {"A": "yes", "B": "no"}, "answer": "A"}
    good = tmp_path / "benchmark.json"
    good.write_text(json.dumps({"bioasq": {"1": {**rec, "PMID": [123, "456"]}}}))
    assert load_yesno(good)[0].gold_docs == ["123", "456"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"bioasq": {"1": rec, "2": {**rec, "PMID": {"id": 1}}}}))
    with pytest.raises(DataError, match=r"bad\.json, record bioasq/2, field 'PMID': must be an id"):
        load_yesno(bad)


def test_eval_yesno_takes_the_retrieval_mode_and_k(
    in_store: dict[str, Any], tmp_path: Path
) -> None:
    pqal = json.loads((in_store["source"] / "ori_pqal.json").read_text())
    pmid, rec = next(iter(pqal.items()))
    data = tmp_path / "q.jsonl"
    data.write_text(
        json.dumps({"id": "q1", "question": rec["QUESTION"], "answer": "yes", "gold": pmid}) + "\n"
    )
    out = tmp_path / "run"
    r = _cli(["eval", "yesno", "--data", str(data), "--retrieval", "bm25", "-k", "2",
              "--no-generate", "--out", str(out), "--json"])  # fmt: skip
    assert r.exit_code == 0, r.output
    ident = json.loads((out / "metrics.json").read_text())["identity"]
    assert (ident["retrieval"], ident["k"]) == ("bm25", 2)
    item = json.loads((out / "items.jsonl").read_text().splitlines()[0])
    assert pmid in item["cited"] and len(item["cited"]) <= 2


def test_engine_runs_of_one_model_on_two_backends_never_share_a_directory(
    in_store: dict[str, Any], tmp_path: Path
) -> None:
    """llama.cpp and transformers score the same model differently: a transformers run must not
    resume (and report) the llama.cpp run's answers."""
    pqal = json.loads((in_store["source"] / "ori_pqal.json").read_text())
    pmid, rec = next(iter(pqal.items()))
    data = tmp_path / "q.jsonl"
    data.write_text(json.dumps({"id": "q1", "question": rec["QUESTION"], "gold": pmid}) + "\n")
    dirs = {}
    for backend in ("llama-cpp", "transformers"):
        r = _cli(["eval", "yesno", "--data", str(data), "--backend", backend, "--no-generate",
                  "--json"])  # fmt: skip
        assert r.exit_code == 0, r.output
        dirs[backend] = Path(json.loads(r.stdout)["run_dir"])
        ident = json.loads((dirs[backend] / "metrics.json").read_text())["identity"]
        assert ident["backend"] == backend
    assert dirs["llama-cpp"] != dirs["transformers"]
    assert dirs["transformers"].name.endswith("-transformers")
    assert "transformers" not in dirs["llama-cpp"].name  # the default keeps its name


def test_eval_takes_several_where_flags_and_all_hold(
    in_store: dict[str, Any], tmp_path: Path
) -> None:
    src = ["--source", str(in_store["source"]), "--split", "all", "--modes", "bm25"]
    r = _cli(["eval", "retrieval", *src, "--limit", "2", "--where", "year>=1990",
              "--where", "year<=2100", "--out", str(tmp_path / "r")])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "filter year>=1990,year<=2100" in r.output  # was: only the last flag, 'year<=2100'
    r = _cli(["eval", "retrieval", *src, "--limit", "2", "--where", "year>=2005",
              "--where", "year<=2000"])  # fmt: skip
    assert r.exit_code == 1 and "year range 2005..2000 is empty" in r.output  # both hold
