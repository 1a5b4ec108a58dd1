"""Ingestion and retrieval through a real Chroma server (HttpClient) started on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from medllm.config import Settings
from medllm.errors import StoreError

CHROMA = Path(sys.executable).parent / "chroma"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture()
def chroma_server(tmp_path: Path) -> Iterator[int]:
    port = _free_port()
    proc = subprocess.Popen(
        [
            str(CHROMA),
            "run",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--path",
            str(tmp_path / "srv"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, "chroma server exited"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.2)
        else:
            pytest.fail("chroma server did not start in 60 s")
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_ingest_and_retrieve_through_a_chroma_server(tmp_path: Path, chroma_server: int) -> None:
    import chromadb

    from medllm.pipelines.ingest import ingest_files
    from medllm.retrieval import Retriever
    from medllm.storage.store import ef_search_of

    s = Settings.load(
        config_file=False, retrieval={"chroma_host": "127.0.0.1", "chroma_port": chroma_server}
    )
    rows = [
        {"id": "a", "text": "Aspirin reduces the risk of myocardial infarction."},
        {"id": "b", "text": "Metformin is first-line therapy for type 2 diabetes."},
        {"id": "c", "text": "Statins lower LDL cholesterol and cardiovascular events."},
    ]
    p = tmp_path / "r.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summ = ingest_files(s, [p], collection="srv", show_progress=False)
    assert (summ.new, summ.documents_total, summ.chunks_total) == (3, 3, 3)
    again = ingest_files(s, [p], collection="srv", show_progress=False)
    assert (again.unchanged, again.chunks, again.chunks_total) == (3, 0, 3)

    # the chunks live on the server, not in the embedded store
    client = chromadb.HttpClient(host="127.0.0.1", port=chroma_server)
    coll = client.get_collection("srv__all-minilm-l6-v2")
    assert coll.count() == 3 and coll.metadata["hnsw:space"] == "cosine"
    assert ef_search_of(coll) == s.retrieval.ef_search
    assert not (s.paths.chroma_dir / "chroma.sqlite3").exists()

    r = Retriever.from_settings(s, "srv")
    for mode in ("dense", "bm25", "hybrid"):
        top = r.search("diabetes drug metformin", k=2, mode=mode)
        assert top[0].doc_id == "b" and top[0].similarity > 0.3

    # the file moved: its records' metadata is updated on the server, nothing re-embedded
    moved = tmp_path / "moved.jsonl"
    p.rename(moved)
    third = ingest_files(s, [moved], collection="srv", show_progress=False)
    assert (third.restamped, third.chunks, third.chunks_total) == (3, 0, 3)
    metas = coll.get(include=["metadatas"])["metadatas"] or []
    assert {m["source_file"] for m in metas} == {str(moved)} and len(metas) == 3


def test_unreachable_server_is_a_clear_error(tmp_path: Path) -> None:
    from medllm.pipelines.ingest import ingest_files

    s = Settings.load(
        config_file=False, retrieval={"chroma_host": "127.0.0.1", "chroma_port": _free_port()}
    )
    p = tmp_path / "r.jsonl"
    p.write_text('{"id": "a", "text": "x y z"}\n')
    with pytest.raises(StoreError, match="cannot reach the Chroma server"):
        ingest_files(s, [p], show_progress=False)
