"""CLI: `medllm ingest files`, `medllm retrieve`, `medllm store stats` end to end."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from medllm.cli.main import app


def test_ingest_retrieve_and_stats_cli(tmp_path: Path) -> None:
    runner = CliRunner()
    p = tmp_path / "notes.jsonl"
    p.write_text(
        '{"id": "n1", "text": "Sepsis needs early antibiotics.", "year": 2019}\n'
        '{"id": "n2", "text": "Asthma is treated with inhaled corticosteroids.", "year": 2015}\n'
        '{"id": "n3", "text": ""}\n'
    )
    res = runner.invoke(app, ["ingest", "files", str(p), "--collection", "notes", "--json"])
    assert res.exit_code == 0, res.output
    summ = json.loads(res.stdout)
    assert (summ["new"], summ["rejected"], summ["documents_total"]) == (2, 1, 2)
    assert "line 3" in summ["errors"][0]

    res = runner.invoke(
        app, ["retrieve", "antibiotics for sepsis", "--collection", "notes", "-k", "1", "--json"]
    )
    assert res.exit_code == 0, res.output
    docs = json.loads(res.stdout)
    assert [d["doc_id"] for d in docs] == ["n1"]
    assert docs[0]["metadata"]["year"] == 2019 and docs[0]["similarity"] > 0.3

    res = runner.invoke(app, ["retrieve", "asthma", "--collection", "notes", "--mode", "bm25"])
    assert res.exit_code == 0 and res.stdout.startswith("1. n2 (2015)")

    res = runner.invoke(app, ["store", "stats", "--json"])
    stores = json.loads(res.stdout)["stores"]
    assert [(s["collection"], s["documents"], s["chunks"]) for s in stores] == [("notes", 2, 2)]

    res = runner.invoke(app, ["retrieve", "x", "--collection", "missing"])
    assert res.exit_code == 1
    assert "run `medllm ingest" in res.stderr and "Traceback" not in res.output


def test_store_whose_first_ingestion_stopped_is_listed_and_can_be_dropped(tmp_path: Path) -> None:
    """A first ingestion killed after a docstore save leaves documents and chunks but no
    manifest: `store stats` did not list it, `store drop` answered "no store" (so it could not
    be removed) and `retrieve` said "no store at <its directory>". A drop while a writer holds
    the store's lock ended in filelock's traceback."""
    from medllm.config import Settings
    from medllm.storage import store

    runner = CliRunner()
    p = tmp_path / "n.jsonl"
    p.write_text('{"id": "n1", "text": "Sepsis needs early antibiotics."}\n')
    res = runner.invoke(app, ["ingest", "files", str(p), "--collection", "half", "--json"])
    assert res.exit_code == 0, res.output
    ref = store.StoreRef.from_settings(Settings.load(), "half")
    (ref.dir / store.MANIFEST).unlink()  # what a kill before the first run's end leaves

    res = runner.invoke(app, ["store", "stats", "--json"])
    got = json.loads(res.stdout)
    assert got["stores"] == [] and [u["store"] for u in got["unfinished"]] == [ref.name]
    res = runner.invoke(app, ["store", "stats"])
    assert f"{ref.name}  not complete" in res.stdout
    res = runner.invoke(app, ["retrieve", "sepsis", "--collection", "half"])
    assert res.exit_code == 1 and "is not complete" in res.stderr

    with ref.lock():  # another process writing
        res = runner.invoke(app, ["store", "drop", "half", "--yes"])
    assert res.exit_code == 1 and "another process is writing" in res.stderr
    assert "Traceback" not in res.output and ref.dir.is_dir()

    res = runner.invoke(app, ["store", "drop", "half", "--yes"])
    assert res.exit_code == 0, res.output
    assert not ref.dir.exists()
    assert ref.name not in [c.name for c in store.chroma_client(ref).list_collections()]
    res = runner.invoke(app, ["store", "stats", "--json"])
    assert json.loads(res.stdout) == {"home": str(ref.home), "stores": [], "unfinished": []}

    # a store whose manifest cannot be read was left out of `store stats` without a word
    res = runner.invoke(app, ["ingest", "files", str(p), "--collection", "half", "--json"])
    assert res.exit_code == 0, res.output
    (ref.dir / store.MANIFEST).write_text("{broken")
    res = runner.invoke(app, ["store", "stats"])
    assert f"{ref.name}  unreadable manifest: " in res.stdout and "store drop" in res.stdout
    got = json.loads(runner.invoke(app, ["store", "stats", "--json"]).stdout)
    assert got["unfinished"][0]["problem"].startswith("unreadable manifest")
