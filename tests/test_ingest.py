"""Ingestion: readers, bad input, idempotence, changed documents, one writer, SIGKILL + re-run.

Real MiniLM, real Chroma (PersistentClient under the test's MEDLLM_HOME), real PubMedQA."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from medllm.config import Settings
from medllm.errors import DataError, StoreError


@pytest.fixture(scope="module")
def embed() -> Any:
    from medllm.models import load_embedding

    return load_embedding(settings=Settings.load(config_file=False))


def _settings(**retrieval: Any) -> Settings:
    return Settings.load(config_file=False, retrieval=retrieval or None)


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _chunks_by_doc(s: Settings, collection: str | None = None) -> dict[str, list[str]]:
    from medllm.storage.store import StoreRef, get_collection

    coll = get_collection(StoreRef.from_settings(s, collection), create=False)
    got = coll.get(include=["metadatas"])
    out: dict[str, list[str]] = {}
    for cid, meta in zip(got["ids"], got["metadatas"], strict=True):
        out.setdefault(meta["document_id"], []).append(cid)
    return out


ROWS: list[dict[str, Any]] = [
    {"id": "a", "text": "Aspirin reduces the risk of myocardial infarction.", "year": 2001},
    {"id": "b", "text": "Metformin is first-line therapy for type 2 diabetes.", "year": 2005},
    {"id": "c", "text": "Statins lower LDL cholesterol and cardiovascular events.", "year": 2010},
]


# ----------------------------------------------------------------------------- readers


def test_jsonl_and_csv_readers_with_configurable_fields(tmp_path: Path) -> None:
    from medllm.pipelines.readers import read_csv, read_jsonl

    p = _jsonl(
        tmp_path / "x.jsonl",
        [
            {"uid": 7, "body": "Text seven.", "journal": "BMJ", "tags": ["a", "b"]},
            {"uid": 8, "body": "", "journal": "NEJM"},
            {"body": "no id"},
        ],
    )
    res = read_jsonl(p, id_field="uid", text_field="body", metadata_fields=["journal", "tags"])
    assert [d.id_ for d in res.documents] == ["7"]
    d = res.documents[0]
    assert d.text == "Text seven." and d.metadata["journal"] == "BMJ"
    assert d.metadata["tags"] == "a; b"
    assert "journal" in d.excluded_embed_metadata_keys  # metadata is never embedded
    msgs = [str(e) for e in res.rejected]
    assert "line 2" in msgs[0] and "'body'" in msgs[0] and "empty text" in msgs[0]
    assert "line 3" in msgs[1] and "'uid'" in msgs[1] and "missing" in msgs[1]

    c = tmp_path / "x.csv"
    c.write_text('pmid,abstract,year\n1,"First, with comma.",2001\n2,,2002\n')
    res = read_csv(c, id_field="pmid", text_field="abstract")
    assert [(d.id_, d.text, d.metadata["year"]) for d in res.documents] == [
        ("1", "First, with comma.", "2001")
    ]
    assert "row 3" in str(res.rejected[0]) and "'abstract'" in str(res.rejected[0])
    with pytest.raises(DataError, match="no column 'nope'"):
        read_csv(c, id_field="nope")


def test_a_records_own_source_field_is_kept_and_a_repeat_in_another_file_is_no_conflict(
    tmp_path: Path,
) -> None:
    from medllm.pipelines.readers import dedupe, read_jsonl

    rec = {"id": "9", "text": "Same finding.", "source": "cochrane"}
    a = read_jsonl(_jsonl(tmp_path / "a.jsonl", [rec])).documents
    b = read_jsonl(_jsonl(tmp_path / "b.jsonl", [rec])).documents
    changed = read_jsonl(_jsonl(tmp_path / "c.jsonl", [{**rec, "source": "embase"}])).documents
    assert a[0].metadata["source"] == "cochrane"  # the record's field, not the file path
    assert a[0].metadata["source_file"] == str(tmp_path / "a.jsonl")
    res = dedupe([*a, *b])  # the same record read from two files: one document
    assert [d.id_ for d in res.documents] == ["9"] and not res.rejected
    res = dedupe([*a, *changed])  # a field that differs is a conflict, named by file
    assert len(res.rejected) == 1 and "c.jsonl" in str(res.rejected[0])
    assert "'source'" in str(res.rejected[0])  # names the field that differs


def test_dir_reader_txt_and_md(tmp_path: Path) -> None:
    from medllm.pipelines.readers import read_dir

    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("Sepsis is a life-threatening organ dysfunction.")
    (tmp_path / "sub" / "b.md").write_text("# Anemia\n\nLow haemoglobin concentration.")
    (tmp_path / "ignored.bin").write_bytes(b"\x00\x01")
    (tmp_path / "empty.txt").write_text("   ")
    res = read_dir(tmp_path)
    texts = " ".join(d.text for d in res.documents)
    assert "Sepsis" in texts and "haemoglobin" in texts
    assert all(d.metadata["file_name"] in ("a.txt", "b.md") for d in res.documents)
    assert len(res.rejected) == 1 and "empty.txt" in str(res.rejected[0])
    # ids are stable across reads
    assert [d.id_ for d in read_dir(tmp_path).documents] == [d.id_ for d in res.documents]


def _pqa(contexts: list[str], **kw: Any) -> dict[str, Any]:
    return {
        "QUESTION": "Q?",
        "CONTEXTS": contexts,
        "LABELS": ["BACKGROUND"] * len(contexts),
        "MESHES": ["Humans"],
        "YEAR": "2010",
        "final_decision": "yes",
        "LONG_ANSWER": "Because.",
        **kw,
    }


def test_bad_pubmedqa_input_is_reported_and_valid_records_kept(tmp_path: Path, embed: Any) -> None:
    from medllm.pipelines.ingest import ingest_files, ingest_pubmedqa
    from medllm.retrieval import Retriever

    s = _settings()
    # something stored earlier, which no later bad input may lose
    early = ingest_files(
        s,
        [_jsonl(tmp_path / "early.jsonl", ROWS)],
        embed_model=embed,
        collection="pubmedqa",
        show_progress=False,
    )
    assert early.new == 3

    good1 = json.dumps(_pqa(["Vitamin D supplementation and bone density in adults."]))
    good2 = json.dumps(_pqa(["Smoking cessation improves lung function."]))
    missing = json.dumps({k: v for k, v in _pqa(["x"]).items() if k != "CONTEXTS"})
    empty = json.dumps(_pqa(["", "  "]))
    huge = json.dumps(_pqa(["word " * 1_050_000]))  # ~5 MB
    dup = json.dumps(_pqa(["A different text for the same PMID."]))
    body = (
        "{"
        f'"1": {good1}, "2": {good2}, "3": {missing}, "4": {empty}, "5": {huge}, '
        f'"1": {dup}, '
        '"6": {"QUESTION": "Q?", "CONTEXTS": ["bad \xff\xfe bytes"], "YEAR": "2001"}'
        "}"
    )
    f = tmp_path / "bad.json"
    f.write_bytes(body.encode("utf-8").replace(b"\xc3\xbf\xc3\xbe", b"\xff\xfe"))
    assert f.stat().st_size > 5_000_000

    summ = ingest_pubmedqa(s, f, embed_model=embed, show_progress=False)
    assert (summ.new, summ.rejected) == (2, 5)
    errs = "\n".join(summ.errors)
    for rec, field, what in [
        ("3", "CONTEXTS", "missing required field"),
        ("4", "CONTEXTS", "empty text"),
        ("5", "CONTEXTS", "over the 1,000,000 limit"),
        ("6", "CONTEXTS", "not valid UTF-8"),
        ("1", "CONTEXTS", "same PMID appears twice"),
    ]:
        line = next((x for x in summ.errors if f"record {rec}," in x and what in x), None)
        assert line is not None, (rec, what, errs)
        assert str(f) in line and f"field '{field}'" in line
    assert summ.documents_total == 5  # 3 earlier + 2 valid
    r = Retriever.from_settings(s, embed_model=embed)
    assert r.get("a") is not None and r.get("5") is None and r.get("6") is None
    first = r.get("1")
    assert first is not None and "Vitamin D" in first.text  # the first occurrence was kept
    assert "QUESTION" not in json.dumps(first.metadata)


def test_malformed_json_refuses_the_file_and_loses_nothing(tmp_path: Path, embed: Any) -> None:
    from medllm.pipelines.ingest import ingest_files, ingest_pubmedqa

    s = _settings()
    ingest_files(
        s,
        [_jsonl(tmp_path / "e.jsonl", ROWS)],
        embed_model=embed,
        collection="pubmedqa",
        show_progress=False,
    )
    f = tmp_path / "broken.json"
    f.write_text('{"1": {"QUESTION": "Q", "CONTEXTS": ["x"]},\n "2": {oops}}')
    with pytest.raises(DataError, match=r"broken.json: malformed JSON at line 2"):
        ingest_pubmedqa(s, f, embed_model=embed, show_progress=False)
    assert set(_chunks_by_doc(s)) == {"a", "b", "c"}


def test_bad_jsonl_lines_are_skipped_and_invalid_utf8_named(tmp_path: Path) -> None:
    from medllm.pipelines.readers import read_jsonl

    p = tmp_path / "m.jsonl"
    p.write_bytes(
        b'{"id": "1", "text": "fine"}\n{not json}\n{"id": "3", "text": "bad \xff byte"}\n'
    )
    res = read_jsonl(p)
    assert [d.id_ for d in res.documents] == ["1"]
    assert "line 2" in str(res.rejected[0]) and "malformed JSON" in str(res.rejected[0])
    assert "line 3" in str(res.rejected[1]) and "field 'text'" in str(res.rejected[1])


# ----------------------------------------------------------------------------- idempotence


def test_second_run_changes_nothing_and_embeds_nothing(tmp_path: Path, embed: Any) -> None:
    from medllm.pipelines.ingest import ingest_files

    s = _settings(chunk_size=32, chunk_overlap=4)
    rows = [*ROWS, {"id": "long", "text": " ".join(["Hypertension increases stroke risk."] * 30)}]
    p = _jsonl(tmp_path / "r.jsonl", rows)
    first = ingest_files(s, [p], embed_model=embed, show_progress=False)
    before = _chunks_by_doc(s)
    assert first.new == 4 and len(before["long"]) > 1
    second = ingest_files(s, [p], embed_model=embed, show_progress=False)
    assert (second.new, second.updated, second.unchanged, second.chunks) == (0, 0, 4, 0)
    assert (second.documents_total, second.chunks_total) == (
        first.documents_total,
        first.chunks_total,
    )
    assert _chunks_by_doc(s) == before


def test_changed_document_replaces_its_chunks(tmp_path: Path, embed: Any) -> None:
    from medllm.pipelines.ingest import ingest_files
    from medllm.retrieval import Retriever

    s = _settings(chunk_size=32, chunk_overlap=4)
    old = {"id": "x", "text": " ".join(["Zebrafish regenerate cardiac tissue."] * 30)}
    ingest_files(
        s, [_jsonl(tmp_path / "v.jsonl", [*ROWS, old])], embed_model=embed, show_progress=False
    )
    n_old = len(_chunks_by_doc(s)["x"])
    new = {"id": "x", "text": "Axolotls regenerate whole limbs."}
    summ = ingest_files(
        s, [_jsonl(tmp_path / "v.jsonl", [*ROWS, new])], embed_model=embed, show_progress=False
    )
    assert (summ.new, summ.updated, summ.unchanged) == (0, 1, 3)
    chunks = _chunks_by_doc(s)
    assert n_old > 1 and chunks["x"] == ["x#0"]
    assert summ.chunks_total == 4
    r = Retriever.from_settings(s, embed_model=embed)
    got = r.get("x")
    assert got is not None and got.text == new["text"]
    assert all(d.doc_id != "x" for d in r.search("zebrafish cardiac", mode="bm25"))
    assert r.search("axolotl limbs", k=1, mode="bm25")[0].doc_id == "x"


def test_chunking_change_is_refused(tmp_path: Path, embed: Any) -> None:
    from medllm.pipelines.ingest import ingest_files

    p = _jsonl(tmp_path / "r.jsonl", ROWS)
    ingest_files(_settings(), [p], embed_model=embed, show_progress=False)
    with pytest.raises(StoreError, match="chunk_size"):
        ingest_files(_settings(chunk_size=64), [p], embed_model=embed, show_progress=False)


# ----------------------------------------------------------------------------- faults


def _saved(docstore: Path) -> int:
    """Documents the docstore file holds as committed (0 while it is not there yet)."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{docstore}?mode=ro", uri=True)) as c:
            q = "SELECT count(*) FROM kv WHERE collection = 'docstore/metadata'"
            return int(c.execute(q).fetchone()[0])
    except sqlite3.Error:
        return 0


# Batches of 4: the kill lands with some batches saved and one being written.
KILL_SCRIPT = """
import sys
from medllm.config import Settings
from medllm.pipelines.ingest import ingest_pubmedqa
ingest_pubmedqa(Settings.load(config_file=False), sys.argv[1], limit=int(sys.argv[2]),
                batch_size=4, show_progress=False)
"""


def test_sigkill_mid_ingestion_then_rerun_gives_complete_store(
    medllm_home: Path, pubmedqa_dir: Path, embed: Any
) -> None:
    """Also: while the killed process holds the store, a second writer gets a clear error."""
    from medllm.pipelines.ingest import ingest_files, ingest_pubmedqa
    from medllm.retrieval import Retriever

    n = 40
    src = pubmedqa_dir / "ori_pqal.json"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, str(src), str(n)],
        env={**os.environ, "MEDLLM_HOME": str(medllm_home)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    docstore = medllm_home / "stores" / "pubmedqa__all-minilm-l6-v2" / "docstore.sqlite3"
    deadline = time.monotonic() + 120
    while not _saved(docstore) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
    # a concurrent writer is refused, the store is not touched
    with pytest.raises(StoreError, match="another process is writing"):
        ingest_files(_settings(), [_jsonl(medllm_home / "x.jsonl", ROWS)], show_progress=False)
    time.sleep(0.3)  # into later batches: chunks in Chroma the docstore does not know yet
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    done_before = _saved(docstore)
    assert 0 < done_before < n

    summ = ingest_pubmedqa(_settings(), src, limit=n, embed_model=embed, show_progress=False)
    assert summ.unchanged == done_before and summ.new == n - done_before
    assert summ.documents_total == n
    chunks = _chunks_by_doc(_settings())
    assert len(chunks) == n
    for doc_id, ids in chunks.items():  # no duplicates: exactly <doc>#0..#k-1
        assert sorted(ids) == sorted(f"{doc_id}#{i}" for i in range(len(ids)))
    assert summ.chunks_total == sum(len(v) for v in chunks.values())
    r = Retriever.from_settings(_settings(), embed_model=embed)
    q = "Do mitochondria play a role in remodelling lace plant leaves during programmed cell death?"
    for mode in ("dense", "bm25", "hybrid"):
        assert r.search(q, k=1, mode=mode)[0].doc_id == "21645374"


def test_a_change_stopped_mid_write_then_given_up_leaves_no_chunks_of_it(
    tmp_path: Path, embed: Any
) -> None:
    """A run that changed documents and stopped after their Chroma write (or restamp) but
    before the docstore's save left the saved docstore describing the old version; a re-run
    with the old file then found them "unchanged" and kept the new version's chunks (text or
    metadata) for good, beside the old text in the docstore and BM25."""
    from medllm.pipelines.ingest import IngestSummary, StoreWriter, ingest_files
    from medllm.pipelines.readers import read_jsonl
    from medllm.storage.store import StoreRef, get_collection

    s = _settings()
    ref = StoreRef.from_settings(s)
    old = _jsonl(tmp_path / "old.jsonl", ROWS)
    ingest_files(s, [old], embed_model=embed, show_progress=False)

    def stopped_run(change: dict[str, Any]) -> None:
        rows = [dict(ROWS[0], **change), *ROWS[1:]]
        new = read_jsonl(_jsonl(old, rows)).documents
        _jsonl(old, ROWS)  # the change is given up
        with pytest.raises(KeyboardInterrupt), StoreWriter(s, ref, embed) as w:
            w.write(w.classify(new, IngestSummary(store=ref.name, embedding=ref.embedding)))
            w._wait()  # the chunks are in Chroma; the docstore is not saved again
            raise KeyboardInterrupt

    def rows_in_chroma() -> dict[str, tuple[str, int]]:
        got = get_collection(ref, create=False).get(include=["documents", "metadatas"])
        return {
            m["document_id"]: (t, m["year"])
            for t, m in zip(got["documents"], got["metadatas"], strict=True)
        }

    want = {r["id"]: (r["text"], r["year"]) for r in ROWS}
    for change in ({"text": "Aspirin was revised."}, {"year": 1999}):  # re-embedded; restamped
        stopped_run(change)
        assert rows_in_chroma() != want
        again = ingest_files(s, [old], embed_model=embed, show_progress=False)
        assert (again.new, again.unchanged, again.chunks_total) == (1, 2, 3)
        assert rows_in_chroma() == want


def test_chunks_and_deletions_of_a_stopped_run_are_undone_by_the_next_writer(
    tmp_path: Path, embed: Any
) -> None:
    """A run stopped after a Chroma write but before the docstore's save left chunks the
    docstore did not know: a next run with other input never removed them (dense search
    returned documents the store does not hold; chunks_total counted them). A deletion stopped
    the same way left documents in the docstore (and BM25) whose chunks were gone."""
    from medllm.pipelines.ingest import IngestSummary, StoreWriter, ingest_files
    from medllm.pipelines.readers import read_jsonl
    from medllm.retrieval import Retriever
    from medllm.storage.store import StoreRef, docstore_count, load_docstore

    s = _settings()
    ref = StoreRef.from_settings(s)
    a = _jsonl(tmp_path / "a.jsonl", ROWS[:2])
    ingest_files(s, [a], embed_model=embed, show_progress=False)
    other = read_jsonl(_jsonl(tmp_path / "c.jsonl", ROWS[2:])).documents
    with pytest.raises(KeyboardInterrupt), StoreWriter(s, ref, embed) as w:
        w.write(w.classify(other, IngestSummary(store=ref.name, embedding=ref.embedding)))
        w._wait()  # c's chunks are in Chroma
        raise KeyboardInterrupt
    summ = ingest_files(s, [a], embed_model=embed, show_progress=False)
    assert set(_chunks_by_doc(s)) == {"a", "b"} and summ.chunks_total == 2

    with pytest.raises(KeyboardInterrupt), StoreWriter(s, ref, embed) as w:
        assert w.delete(["b"]) == 1  # b's chunks are gone
        raise KeyboardInterrupt
    summ = ingest_files(s, [_jsonl(a, ROWS[:1])], embed_model=embed, show_progress=False)
    assert set(_chunks_by_doc(s)) == {"a"} and summ.chunks_total == 1
    ds = load_docstore(ref)
    assert docstore_count(ds) == summ.documents_total == 1 and ds.get_document("a")
    store_ids = {d.doc_id for d in Retriever.from_settings(s, embed_model=embed).search(
        "aspirin metformin statins", k=5, mode="bm25"
    )}  # fmt: skip
    assert store_ids == {"a"}


def test_a_stopped_first_run_keeps_its_chunking(tmp_path: Path, embed: Any) -> None:
    """A store whose first ingestion stopped has no manifest, and the chunking check read only
    the manifest: a re-run with another --chunk-size mixed two chunkings in one store."""
    from medllm.pipelines.ingest import IngestSummary, StoreWriter, ingest_files
    from medllm.pipelines.readers import read_jsonl
    from medllm.storage.store import StoreRef

    s = _settings(collection="stopped")
    ref = StoreRef.from_settings(s)
    docs = read_jsonl(_jsonl(tmp_path / "a.jsonl", ROWS)).documents
    with pytest.raises(KeyboardInterrupt), StoreWriter(s, ref, embed) as w:
        w.write(w.classify(docs[:1], IngestSummary(store=ref.name, embedding=ref.embedding)))
        w._wait()
        raise KeyboardInterrupt
    assert not ref.exists()  # no manifest: the first run did not finish
    other = _settings(collection="stopped", chunk_size=128)
    with pytest.raises(StoreError, match="chunk_size=512 chunk_overlap=64, not 128/64"):
        ingest_files(other, [tmp_path / "a.jsonl"], embed_model=embed, show_progress=False)
    done = ingest_files(s, [tmp_path / "a.jsonl"], embed_model=embed, show_progress=False)
    assert ref.exists() and done.documents_total == len(ROWS)


# ----------------------------------------------------------------------------- store format


def test_splitter_counts_tokens_as_the_embedding_tokenizer(embed: Any, pubmedqa_dir: Path) -> None:
    """The splitter's fast (Rust) counter gives transformers' ``encode`` ids, long texts
    included (no truncation at the model's 512/256 limit)."""
    from medllm.pipelines.ingest import _token_counter
    from medllm.pipelines.readers import read_pubmedqa

    count = _token_counter(embed)
    tok = embed.hf_tokenizer if hasattr(embed, "hf_tokenizer") else embed._model.tokenizer
    texts = [d.text for d in read_pubmedqa(pubmedqa_dir / "ori_pqal.json").documents[:40]]
    texts += [" ".join(texts[:6]), "Ünïcode — µg/kg; CD4+ T-cells (n=12)!", ""]
    assert max(len(count(t)) for t in texts) > 1000
    for t in texts:
        assert count(t) == list(tok.encode(t, add_special_tokens=False, verbose=False))


def test_chroma_rows_are_text_and_flat_metadata(tmp_path: Path, embed: Any) -> None:
    """Chunks go to Chroma as id, vector, text and the document's metadata + document_id (no
    LlamaIndex ``_node_content`` copy); LlamaIndex's ChromaVectorStore still reads them, and a
    list-valued metadata field is refused naming the document and field."""
    from llama_index.core.schema import TextNode
    from llama_index.core.vector_stores.types import VectorStoreQuery
    from llama_index.vector_stores.chroma import ChromaVectorStore

    from medllm.pipelines.ingest import chroma_rows, ingest_files
    from medllm.storage.store import StoreRef, get_collection

    s = _settings()
    ingest_files(s, [_jsonl(tmp_path / "r.jsonl", ROWS)], embed_model=embed, show_progress=False)
    coll = get_collection(StoreRef.from_settings(s), create=False)
    got = coll.get(ids=["b#0"], include=["documents", "metadatas"])
    assert got["documents"] == [ROWS[1]["text"]]
    src = str(tmp_path / "r.jsonl")
    assert got["metadatas"] == [{"document_id": "b", "year": 2005, "source_file": src}]
    q = embed.get_query_embedding("first-line therapy for type 2 diabetes")
    res = ChromaVectorStore(chroma_collection=coll).query(
        VectorStoreQuery(query_embedding=q, similarity_top_k=1)
    )
    assert res.nodes is not None
    assert res.nodes[0].get_content() == ROWS[1]["text"] and res.nodes[0].metadata["year"] == 2005
    bad = TextNode(id_="z#0", text="t", metadata={"meshes": ["A", "B"]}, embedding=[0.0] * 384)
    with pytest.raises(StoreError, match="meshes"):
        chroma_rows([bad])


def test_best_chunk_of_a_document_with_many_chunks(tmp_path: Path, embed: Any) -> None:
    """A document's best chunk is found among all its chunks: by id for the first ones, by
    metadata for a document with more chunks than the id probe tries (and for rows whose ids
    are not ``<doc>#<n>``)."""
    import numpy as np

    from medllm import retrieval
    from medllm.pipelines.ingest import ingest_files
    from medllm.retrieval import Retriever
    from medllm.storage.store import StoreRef, get_collection

    s = _settings(chunk_size=32, chunk_overlap=4)
    sentences = [f"Finding {i}: marker {i} predicts outcome in cohort {i}." for i in range(40)]
    sentences[-3] = "Zebrafish regenerate cardiac tissue after cryoinjury of the ventricle."
    rows = [*ROWS, {"id": "long", "text": " ".join(sentences)}]
    ingest_files(s, [_jsonl(tmp_path / "m.jsonl", rows)], embed_model=embed, show_progress=False)
    coll = get_collection(StoreRef.from_settings(s), create=False)
    coll.add(ids=["odd-id"], embeddings=[embed.get_text_embedding("Statins")], documents=["x"],
             metadatas=[{"document_id": "d"}])  # fmt: skip
    got = coll.get(where={"document_id": "long"}, include=["embeddings", "documents"])
    assert len(got["ids"]) > retrieval._ID_PROBE
    q = "Do zebrafish regenerate heart tissue after cryoinjury?"
    qv = np.asarray(embed.get_query_embedding(q))
    best = int(np.argmax(np.asarray(got["embeddings"]) @ qv))
    assert int(got["ids"][best].split("#")[1]) >= retrieval._ID_PROBE
    r = Retriever.from_settings(s, embed_model=embed)
    docs = {d.doc_id: d for d in r.rescore(q, ["long", "a", "d", "missing"])}
    assert set(docs) == {"long", "a", "d"}
    assert docs["long"].text == got["documents"][best]
    assert docs["long"].similarity == pytest.approx(
        float(np.max(np.asarray(got["embeddings"]) @ qv)), abs=1e-5
    )
    assert docs["d"].text == "x"


def test_chunks_reach_the_encoder_longest_first_and_keep_their_own_vectors(
    tmp_path: Path, embed: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The embedding step gets a batch's chunks longest first (each encoder batch padded
    little), and every chunk is stored with the vector of its own text, not a neighbour's."""
    import numpy as np

    from medllm.pipelines.ingest import ingest_files
    from medllm.storage.store import StoreRef, get_collection

    calls: list[list[str]] = []
    real = type(embed)._get_text_embeddings

    def record(self: Any, texts: list[str]) -> Any:
        calls.append(list(texts))
        return real(self, texts)

    monkeypatch.setattr(type(embed), "_get_text_embeddings", record)
    sentence = "insulin resistance predicts cardiovascular events in adults with obesity"
    words = sentence.split()
    rows = [{"id": f"d{i}", "text": " ".join(words[: 2 + i])} for i in range(len(words) - 2)]
    s = _settings()
    ingest_files(s, [_jsonl(tmp_path / "l.jsonl", rows)], embed_model=embed, show_progress=False)
    assert calls and sum(map(len, calls)) == len(rows)
    for texts in calls:
        assert [len(t) for t in texts] == sorted((len(t) for t in texts), reverse=True)
    assert calls[0][0] == rows[-1]["text"]  # given shortest first, embedded longest first
    coll = get_collection(StoreRef.from_settings(s), create=False)
    got = coll.get(include=["documents", "embeddings"])
    assert len(got["ids"]) == len(rows)
    for text, vec in zip(got["documents"], got["embeddings"], strict=True):
        own = np.asarray(embed.get_text_embedding(text))
        assert float(np.asarray(vec) @ own) > 0.9999, text


def test_metadata_only_change_is_restamped_not_re_embedded(tmp_path: Path, embed: Any) -> None:
    """A moved file (new ``source_file``) or a changed metadata field updates the chunks'
    metadata in place: nothing is embedded again, the vectors are kept, a field that is gone
    is removed; a changed text is still re-embedded."""
    from medllm.pipelines.ingest import ingest_files
    from medllm.storage.store import StoreRef, get_collection, load_docstore

    s = _settings()
    first = _jsonl(tmp_path / "a.jsonl", ROWS)
    ingest_files(s, [first], embed_model=embed, show_progress=False)
    coll = get_collection(StoreRef.from_settings(s), create=False)
    before = coll.get(include=["embeddings", "metadatas"])
    vecs = {i: list(v) for i, v in zip(before["ids"], before["embeddings"], strict=True)}

    (tmp_path / "moved").mkdir()
    rows = [dict(r) for r in ROWS]
    del rows[0]["year"]  # a field gone
    rows[1]["year"] = 2006  # a field changed
    rows[2]["text"] += " Adherence was high."  # the text changed
    moved = _jsonl(tmp_path / "moved" / "b.jsonl", rows)
    first.unlink()
    summ = ingest_files(s, [moved], embed_model=embed, show_progress=False)
    assert (summ.updated, summ.restamped, summ.new, summ.unchanged) == (3, 2, 0, 0)
    assert summ.chunks == 1 and summ.chunks_total == 3  # only "c" embedded again
    got = coll.get(include=["embeddings", "metadatas", "documents"])
    by_id = {i: (m, list(v), t) for i, m, v, t in zip(got["ids"], got["metadatas"],
             got["embeddings"], got["documents"], strict=True)}  # fmt: skip
    assert by_id["a#0"][0] == {"document_id": "a", "source_file": str(moved)}
    assert by_id["b#0"][0] == {"document_id": "b", "year": 2006, "source_file": str(moved)}
    assert by_id["a#0"][1] == vecs["a#0"] and by_id["b#0"][1] == vecs["b#0"]
    assert by_id["c#0"][1] != vecs["c#0"] and by_id["c#0"][2].endswith("Adherence was high.")
    ds = load_docstore(StoreRef.from_settings(s))
    assert ds.get_document("b").metadata["year"] == 2006
    again = ingest_files(s, [moved], embed_model=embed, show_progress=False)
    assert (again.unchanged, again.restamped, again.chunks) == (3, 0, 0)


def test_the_next_batch_is_split_on_a_thread_while_one_is_embedded(
    tmp_path: Path, embed: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches after the first are split on the splitter thread, ahead of their turn; the
    stored chunks and vectors are those of splitting each batch in turn. A batch whose split
    fails stops the run with that error, after the batches before it were stored."""
    import threading

    import numpy as np
    from llama_index.core import Document

    from medllm.pipelines import ingest as ing
    from medllm.storage.store import StoreRef, get_collection, load_docstore

    long = " ".join(f"Sentence {i} reports that aspirin lowered the risk." for i in range(60))
    rows = [
        {"id": f"d{i}", "text": f"Finding {i}: metformin lowered HbA1c by {i}%."} for i in range(7)
    ]
    rows[3]["text"] = long  # several chunks
    threads: list[str] = []
    real = ing._by_length

    def spy() -> Any:
        inner = real()
        outer_call = type(inner).__call__

        def call(self: Any, nodes: Any, **kw: Any) -> Any:
            threads.append(threading.current_thread().name)
            if any("BOOM" in n.get_content() for n in nodes):
                raise ValueError("a chunk could not be split")
            return outer_call(self, nodes, **kw)

        monkeypatch.setattr(type(inner), "__call__", call)
        return inner

    monkeypatch.setattr(ing, "_by_length", spy)
    docs = [Document(id_=r["id"], text=r["text"]) for r in rows]
    s = _settings()
    ing.ingest_documents(s, docs, embed_model=embed, batch_size=2, show_progress=False)
    assert len(threads) == 4 and threads[0] == threading.current_thread().name
    assert all(t.startswith("medllm-split") for t in threads[1:]), threads
    coll = get_collection(StoreRef.from_settings(s), create=False)
    got = coll.get(include=["documents", "embeddings", "metadatas"])
    by_doc: dict[str, int] = {}
    for text, vec, meta in zip(got["documents"], got["embeddings"], got["metadatas"], strict=True):
        by_doc[meta["document_id"]] = by_doc.get(meta["document_id"], 0) + 1
        assert float(np.asarray(vec) @ np.asarray(embed.get_text_embedding(text))) > 0.9999
    assert sorted(by_doc) == [r["id"] for r in rows] and by_doc["d3"] > 1
    # Split ahead and inline give the same chunks.
    s2 = s.with_overrides(paths={"home": str(tmp_path / "inline")})
    ing.ingest_documents(s2, docs, embed_model=embed, batch_size=100, show_progress=False)
    assert {d: sorted(c) for d, c in _chunks_by_doc(s2).items()} == {
        d: sorted(c) for d, c in _chunks_by_doc(s).items()
    }

    # The third batch fails to split: the first two are stored, nothing of the third.
    bad = [
        Document(id_=f"e{i}", text=f"Trial {i} of statins." + (" BOOM" if i == 4 else ""))
        for i in range(6)
    ]
    s3 = s.with_overrides(paths={"home": str(tmp_path / "bad")})
    with pytest.raises(ValueError, match="could not be split"):
        ing.ingest_documents(s3, bad, embed_model=embed, batch_size=2, show_progress=False)
    ref = StoreRef.from_settings(s3)
    kept = {m["document_id"] for m in get_collection(ref, create=False).get()["metadatas"]}
    assert kept == {"e0", "e1", "e2", "e3"}
    assert set(load_docstore(ref).docs) <= kept
