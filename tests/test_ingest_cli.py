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
