"""BM25 in segments: the scores of one index over the same documents (bit for bit, against
bm25s itself), updates that index only what changed, merges, a killed update, and indexes of
before still read and then replaced.

Real PQA-L abstracts and questions; the docstore is medllm's SQLite one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from medllm.config import Settings

N_DOCS = 240


@pytest.fixture(scope="module")
def pqal(shared_dir: Path) -> list[Any]:
    from medllm import pubmedqa

    return pubmedqa.load(shared_dir / "data/pubmedqa/ori_pqal.json", strict=True).records


def _doc(rec: Any, suffix: str = "") -> Any:
    from medllm.pipelines.readers import make_document

    meta = {"year": int(rec.year) if rec.year else 2000, "meshes": "; ".join(rec.meshes)}
    return make_document(rec.pmid, rec.context_text + suffix, meta)


def _ref(tmp_path: Path) -> Any:
    from medllm.storage import store

    return store.StoreRef.from_settings(
        Settings.load(config_file=False, paths={"home": str(tmp_path)}), "seg"
    )


def _put(docstore: Any, docs: list[Any]) -> None:
    docstore.set_document_hashes({d.id_: d.hash for d in docs})
    docstore.add_documents(docs, allow_update=True)


def _reference(texts: list[str], tokens: list[str]) -> np.ndarray:
    """bm25s' own scores (one index, its defaults): what medllm built before the segments."""
    import bm25s
    import Stemmer

    from medllm.storage.bm25 import TOKEN_PATTERN

    tok = bm25s.tokenize(texts, stopwords="en", stemmer=Stemmer.Stemmer("english"),
                         token_pattern=TOKEN_PATTERN, show_progress=False)  # fmt: skip
    idx = bm25s.BM25()
    idx.index(tok, show_progress=False)
    ids = idx.get_tokens_ids(tokens)
    n = len(texts)
    return np.asarray(idx.get_scores_from_ids(ids), np.float32) if ids else np.zeros(n, np.float32)


def _check_equal_to_one_index(ref: Any, docstore: Any, questions: list[str]) -> None:
    """Every live document's score equals bm25s' over the docstore's documents, bit for bit;
    dead positions score 0; each live id appears once."""
    from medllm.storage import bm25, store

    idx = store.load_bm25(ref)
    fields = idx and json.loads((ref.dir / "bm25" / "medllm.json").read_text())["metadata_fields"]
    docs = list(store.iter_documents(docstore))
    pos = idx.positions()
    assert sorted(pos) == sorted(d.id_ for d in docs)  # every document once, nothing else
    assert idx.num_docs == len(docs)
    at = np.asarray([pos[d.id_] for d in docs])
    texts = [bm25.text(d, fields) for d in docs]
    for q in questions:
        toks = bm25.query_tokens(q)
        got = idx.scores(toks)
        assert np.array_equal(got[at], _reference(texts, toks)), q
        assert not got[idx.dead_positions].any()
    w = idx.stemmer.stemWord("patients")
    assert idx.df(w) == sum(w in set(bm25.query_tokens(t)) for t in texts)


def test_segments_score_as_one_index_and_update_only_what_changed(
    tmp_path: Path, pqal: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from medllm.storage import bm25, store

    monkeypatch.setattr(bm25, "SEGMENT_DOCS", 100)  # several segments from a few documents
    monkeypatch.setattr(bm25, "MAX_SMALL", 2)
    ref = _ref(tmp_path)
    ds = store.load_docstore(ref, write=True)
    recs = pqal[:N_DOCS]
    qs = [r.question for r in pqal[:40]] + ["", "the of and", "Alismataceae lace plant"]
    _put(ds, [_doc(r) for r in recs[:200]])
    store.build_bm25(ref, ds, ["meshes"])
    meta = json.loads((ref.dir / "bm25" / "medllm.json").read_text())
    assert [s["docs"] for s in meta["segments"]] == [100, 100]  # built a segment at a time
    assert meta["fingerprint"] == store.bm25_wanted_fingerprint(ds, ["meshes"])
    _check_equal_to_one_index(ref, ds, qs)

    # 30 new, 5 changed, 10 removed: only the 35 new and changed are indexed, into one segment
    _put(ds, [_doc(r) for r in recs[200:230]] + [_doc(r, " Revised.") for r in recs[:5]])
    for r in recs[50:60]:
        ds.delete_document(r.pmid)
    seen: list[int] = []
    real = bm25.write_segment

    def counted(path: Path, docs: Any, **kw: Any) -> None:
        seen.append(len(docs))
        real(path, docs, **kw)

    monkeypatch.setattr(bm25, "write_segment", counted)
    store.build_bm25(ref, ds, ["meshes"])
    assert seen == [35]
    meta = json.loads((ref.dir / "bm25" / "medllm.json").read_text())
    segs = meta["segments"]
    assert [x["docs"] for x in segs] == [100, 100, 35] and segs[2]["dead"] is None
    dead = [np.load(ref.dir / "bm25" / x["name"] / x["dead"]) for x in segs[:2] if x["dead"]]
    assert sum(map(len, dead)) == 15  # the 10 removed and the 5 replaced, marked in place
    assert meta["docs"] == 220
    _check_equal_to_one_index(ref, ds, qs)

    # Nothing changed: nothing written.
    seen.clear()
    store.build_bm25(ref, ds, ["meshes"])
    assert seen == []

    # 40 of the first segment's documents removed make it small (> 30 % dead); with the 35
    # segment and the new documents that is 3 small ones > MAX_SMALL 2: their live documents
    # and the new ones are written together into new segments; the second segment stays.
    first, second = segs[0]["name"], segs[1]["name"]
    for i in json.loads((ref.dir / "bm25" / first / "medllm_ids.json").read_text())[:40]:
        ds.delete_document(i, raise_error=False)
    _put(ds, [_doc(r) for r in recs[230:N_DOCS]])
    seen.clear()
    store.build_bm25(ref, ds, ["meshes"])
    meta = json.loads((ref.dir / "bm25" / "medllm.json").read_text())
    segs = meta["segments"]
    live = store.docstore_count(ds)
    assert [x["name"] for x in segs][0] == second and first not in [x["name"] for x in segs]
    assert meta["docs"] == live and all(x["dead"] is None for x in segs[1:])
    dead_second = (
        len(np.load(ref.dir / "bm25" / second / segs[0]["dead"])) if segs[0]["dead"] else 0
    )
    merged = live - (100 - dead_second)
    assert sum(seen) == sum(x["docs"] for x in segs[1:]) == merged
    on_disk = {p.name for p in (ref.dir / "bm25").iterdir() if p.is_dir()}
    assert on_disk == {s["name"] for s in meta["segments"]}  # merged ones removed
    _check_equal_to_one_index(ref, ds, qs)
    store.close_docstore(ds)


def test_a_killed_update_leaves_the_index_readable_and_is_cleaned_up(
    tmp_path: Path, pqal: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from medllm.storage import bm25, store

    ref = _ref(tmp_path)
    ds = store.load_docstore(ref, write=True)
    _put(ds, [_doc(r) for r in pqal[:60]])
    store.build_bm25(ref, ds, [])
    before = store.load_bm25(ref)  # a query process open during the update
    q = bm25.query_tokens(pqal[0].question)
    s_before = before.scores(q).copy()
    _put(ds, [_doc(r) for r in pqal[60:80]])

    def killed(path: Path, docs: Any, **_: Any) -> None:
        path.mkdir(parents=True)
        (path / "docs.npy").write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(bm25, "write_segment", killed)
    with pytest.raises(KeyboardInterrupt):
        store.build_bm25(ref, ds, [])
    monkeypatch.undo()
    assert store.load_bm25(ref).num_docs == 60  # the manifest still names the old segments
    (ref.dir / "bm25" / "s000009-0").mkdir()  # a leftover of a kill (not removed on failure)
    store.build_bm25(ref, ds, [])
    after = store.load_bm25(ref)
    assert after.num_docs == 80 and not (ref.dir / "bm25" / "s000009-0").exists()
    assert np.array_equal(before.scores(q), s_before)  # the old reader is unaffected
    _check_equal_to_one_index(ref, ds, [pqal[0].question])

    # A damaged index (a file lost): readers are told what to do; the next ingestion's check
    # sees it and builds it again.
    from medllm.errors import StoreError

    seg = next(p for p in (ref.dir / "bm25").iterdir() if p.is_dir())
    (seg / "tf.npy").unlink()
    with pytest.raises(StoreError, match="damaged.*run the ingestion again"):
        store.load_bm25(ref)
    assert store.bm25_fingerprint(ref) is None  # so build_bm25 (from finish()) rebuilds it
    store.build_bm25(ref, ds, [])
    _check_equal_to_one_index(ref, ds, [pqal[0].question])
    store.close_docstore(ds)


def test_an_index_of_before_is_read_then_replaced_at_the_next_ingestion(
    tmp_path: Path, pqal: list[Any]
) -> None:
    """A store's bm25s index of before the segments (with its side files) answers queries as
    before; the next ingestion replaces it by segments with the same scores."""
    import bm25s
    import Stemmer
    from llama_index.retrievers.bm25 import BM25Retriever

    from medllm.storage import bm25, store

    ref = _ref(tmp_path)
    ds = store.load_docstore(ref, write=True)
    _put(ds, [_doc(r) for r in pqal[:50]])
    docs = list(store.iter_documents(ds))
    # the index as medllm wrote it before (build_bm25 of commit b18293c)
    path = ref.dir / "bm25"
    path.mkdir(parents=True)
    stemmer = Stemmer.Stemmer("english")
    tok = bm25s.tokenize([d.text for d in docs], stopwords="en", stemmer=stemmer,
                         token_pattern=bm25.TOKEN_PATTERN, show_progress=False)  # fmt: skip
    idx = bm25s.BM25()
    idx.index(tok, show_progress=False)
    r = BM25Retriever(existing_bm25=idx, stemmer=stemmer, token_pattern=bm25.TOKEN_PATTERN)
    r.corpus = None
    r.persist(str(path), show_progress=False)
    bm25.write_columns(path, [(d.id_, d.metadata) for d in docs])
    fp = store.docstore_fingerprint(ds, extra="bm25-cols1-fields:")
    (path / "medllm.json").write_text(json.dumps({"fingerprint": fp, "docs": 50,
                                                  "metadata_fields": []}))  # fmt: skip
    old = store.load_bm25(ref)
    assert isinstance(old, store.LegacyBm25)
    q = bm25.query_tokens(pqal[3].question)
    pos = old.positions()
    want = old.scores(q)[[pos[d.id_] for d in docs]]
    assert (
        docs[int(want.argmax())].id_ == pqal[3].pmid and old.mask(_where("year>=1900")).sum() == 50
    )
    store.save_docstore(ref, ds)
    store.close_docstore(ds)
    ds = store.load_docstore(ref, write=True)
    assert store.bm25_fingerprint(ref) != store.bm25_wanted_fingerprint(ds, [])
    store.build_bm25(ref, ds, [])  # what the next ingestion's finish does
    new = store.load_bm25(ref)
    assert isinstance(new, bm25.SegmentedIndex)
    pos = new.positions()
    assert np.array_equal(new.scores(q)[[pos[d.id_] for d in docs]], want)
    assert not (ref.dir / "bm25" / "retriever.json").exists()
    store.close_docstore(ds)


def _where(text: str) -> Any:
    from medllm.storage import filters

    return filters.parse(text)


def test_store_sizes_count_segment_files(tmp_path: Path, pqal: list[Any]) -> None:
    from medllm.storage import store

    ref = _ref(tmp_path)
    ds = store.load_docstore(ref, write=True)
    _put(ds, [_doc(r) for r in pqal[:30]])
    store.build_bm25(ref, ds, [])
    store.close_docstore(ds)
    sizes = store.store_sizes({"path": str(ref.dir), "chunks": 30})
    seg = next(p for p in (ref.dir / "bm25").iterdir() if p.is_dir())
    postings = sum((seg / f).stat().st_size for f in ("docs.npy", "tf.npy", "indptr.npy"))
    assert sizes["memory_bytes_estimate"]["bm25_read_per_query"] >= postings
    assert (
        sizes["memory_bytes_estimate"]["bm25_resident"] >= (seg / "medllm_ids.json").stat().st_size
    )
    assert sizes["bm25_index"] == {
        "format": "seg1", "segments": 1, "documents": 30, "dead_documents": 0
    }  # fmt: skip
    assert sizes["disk_bytes"]["bm25"] == sum(
        f.stat().st_size for f in (ref.dir / "bm25").rglob("*") if f.is_file()
    )
    shutil.rmtree(ref.dir)
