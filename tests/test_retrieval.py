"""Retrieval over a real store: 60 real PubMedQA abstracts, real MiniLM, real Chroma + bm25s."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from medllm.config import Settings
from medllm.errors import StoreError

N = 60
LACE = "Do mitochondria play a role in remodelling lace plant leaves during programmed cell death?"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, pubmedqa_dir: Path) -> dict[str, Any]:
    """A store with the first N PQA-L abstracts (shared by this module's tests)."""
    from medllm.pipelines.ingest import ingest_pubmedqa

    home = tmp_path_factory.mktemp("retrieval-home")
    s = Settings.load(config_file=False, paths={"home": home})
    summary = ingest_pubmedqa(s, pubmedqa_dir / "ori_pqal.json", limit=N, show_progress=False)
    data = json.loads((pubmedqa_dir / "ori_pqal.json").read_text())
    records = dict(list(data.items())[:N])
    return {
        "settings": s,
        "summary": summary,
        "records": records,
        "source": pubmedqa_dir / "ori_pqal.json",
    }


@pytest.fixture(scope="module")
def retriever(store: dict[str, Any]) -> Any:
    from medllm.retrieval import Retriever

    return Retriever.from_settings(store["settings"])


def test_evals_read_the_pubmedqa_copy_that_was_ingested(
    store: dict[str, Any], pubmedqa_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After `medllm ingest pubmedqa --source DIR/ori_pqal.json`, the README's `medllm eval
    pubmedqa …` (no --source) reads DIR's files; it used to try to download them."""
    import urllib.request

    from medllm.eval.pubmedqa import data_files

    def offline(*a: Any, **k: Any) -> Any:
        raise AssertionError("tried to download")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    pqal, gt = data_files(store["settings"])
    assert pqal == (pubmedqa_dir / "ori_pqal.json").resolve()
    assert gt == (pubmedqa_dir / "test_ground_truth.json").resolve()


def test_ingest_summary_counts(store: dict[str, Any]) -> None:
    s = store["summary"]
    assert (s.new, s.updated, s.unchanged, s.rejected) == (N, 0, 0, 0)
    assert s.documents_total == N
    assert s.chunks_total >= N and s.chunks == s.chunks_total


@pytest.mark.parametrize("mode", ["dense", "bm25", "hybrid"])
def test_lace_plant_question_finds_its_abstract_first(retriever: Any, mode: str) -> None:
    docs = retriever.search(LACE, k=5, mode=mode)
    assert docs[0].doc_id == "21645374"
    assert [d.rank for d in docs] == list(range(1, len(docs) + 1))
    assert len({d.doc_id for d in docs}) == len(docs), "a document appears once"
    assert all(docs[i].score >= docs[i + 1].score for i in range(len(docs) - 1))
    top = docs[0]
    assert top.metadata["pmid"] == "21645374" and top.metadata["year"] == 2011
    assert "Mitochondria" in top.metadata["meshes"]
    assert "lace plant" in top.text.lower()
    # similarity is the dense cosine, the same number whatever the mode
    assert 0.5 < top.similarity <= 1.0
    assert all(d.similarity < top.similarity for d in docs[1:])


def test_similarity_is_mode_independent(retriever: Any) -> None:
    q = "Is laparoscopic surgery safe for elderly patients?"
    sims = {
        m: {d.doc_id: d.similarity for d in retriever.search(q, k=10, mode=m)}
        for m in ("dense", "bm25", "hybrid")
    }
    for m in ("bm25", "hybrid"):
        for doc_id, sim in sims[m].items():
            if doc_id in sims["dense"]:
                assert sim == pytest.approx(sims["dense"][doc_id], abs=1e-4)


def test_each_question_retrieves_its_own_abstract(store: dict[str, Any], retriever: Any) -> None:
    questions = {pmid: r["QUESTION"] for pmid, r in store["records"].items()}
    hits = sum(retriever.search(q, k=1, mode="hybrid")[0].doc_id == p for p, q in questions.items())
    assert hits >= 0.95 * N


def test_question_and_answer_are_never_stored(store: dict[str, Any], retriever: Any) -> None:
    pmid, rec = next(iter(store["records"].items()))
    doc = retriever.get(pmid)
    assert doc is not None and doc.score == 1.0
    assert rec["QUESTION"] not in doc.text
    assert rec["LONG_ANSWER"] not in doc.text
    assert "final_decision" not in doc.metadata and "QUESTION" not in doc.metadata
    # whole document: every context is in it
    assert all(c in doc.text for c in rec["CONTEXTS"])
    # and nothing on disk carries them either
    home = store["settings"].paths.home
    blob = b"".join(p.read_bytes() for p in home.rglob("*") if p.is_file())
    assert rec["LONG_ANSWER"].encode() not in blob
    assert rec["QUESTION"].encode() not in blob


def test_get_unknown_is_none(retriever: Any) -> None:
    assert retriever.get("nope") is None


def test_an_empty_filter_says_which_part_no_document_passes(retriever: Any) -> None:
    """`--where pubtype=Review` on PubMedQA (which carries no publication types) used to print
    only "no documents found"; the CLI now adds this reason."""
    n = N
    assert f"'pubtype=review': none of its {n} documents has a pubtype (its 'pubtypes' " in str(
        retriever.empty_filter("pubtype=Review")
    )
    assert f"'year>=2100': none of its {n} documents matches" in str(
        retriever.empty_filter("year>=2100")
    )
    assert retriever.empty_filter("year>=1900") is None  # some pass: nothing to explain
    assert retriever.empty_filter(None) is None
    # 2011 and "Middle Aged" each match some of the first 60 abstracts, never the same one
    assert "passes all of" in str(retriever.empty_filter("year=2011,mesh=Middle Aged"))


def test_a_lone_filtered_hit_is_not_scored_zero(retriever: Any) -> None:
    """Min-max over a single candidate gave it a fused score of 0 (`score=0.0000` shown for
    the only, best, hit); equal values now count as the best there is."""
    docs = retriever.search(LACE, k=5, mode="hybrid", where="year=2011,mesh=Plant Leaves")
    assert [d.doc_id for d in docs] == ["21645374"]
    assert docs[0].score == pytest.approx(1.0)


def test_year_range_filters_every_mode(retriever: Any) -> None:
    for mode in ("dense", "bm25", "hybrid"):
        docs = retriever.search(
            "patients treatment outcome", k=10, mode=mode, year_range=(2010, 2011)
        )
        assert docs, mode
        assert all(2010 <= d.metadata["year"] <= 2011 for d in docs), mode
    assert retriever.search(LACE, k=3, mode="bm25", year_range=(1900, 1901)) == []
    from medllm.errors import DataError

    with pytest.raises(DataError, match="empty year range 2012..2005"):  # was a StoreError
        retriever.search(LACE, year_range=(2012, 2005))


def test_unknown_mode_is_an_error(retriever: Any) -> None:
    from medllm.errors import DataError

    with pytest.raises(DataError, match="field 'mode': unknown retrieval mode 'sparse'"):
        retriever.search("x", mode="sparse")


def test_a_bad_where_setting_fails_when_the_retriever_is_made(store: dict[str, Any]) -> None:
    """Not at the first search: a server started with it blamed every request's 'where'."""
    from medllm.errors import DataError
    from medllm.retrieval import Retriever

    bad = store["settings"].with_overrides(retrieval={"where": "yeer>=2010"})
    with pytest.raises(DataError, match="cannot read the filter clause 'yeer>=2010'"):
        Retriever.from_settings(bad)


def test_nothing_ingested_is_a_store_error() -> None:
    from medllm.retrieval import Retriever

    with pytest.raises(StoreError, match="medllm ingest"):
        Retriever.from_settings(Settings.load(), collection="empty")


def test_bm25_searches_mesh_terms_which_are_never_embedded(
    store: dict[str, Any], retriever: Any
) -> None:
    # "Alismataceae" (the lace plant's family) is a MeSH term of 21645374 only, and is in none
    # of the N abstracts' text: BM25 finds it through the metadata appended to its BM25 text.
    assert all(
        "alismataceae" not in " ".join(r["CONTEXTS"]).lower() for r in store["records"].values()
    )
    assert [d.doc_id for d in retriever.search("Alismataceae", k=1, mode="bm25")] == ["21645374"]
    doc = retriever.get("21645374")
    assert "Alismataceae" not in doc.text and "Alismataceae" in doc.metadata["meshes"]
    top = retriever.search("Alismataceae", k=1, mode="dense")[0]  # the chunk text as embedded
    assert "Alismataceae" not in top.text


def test_bm25_fields_change_rebuilds_the_index(store: dict[str, Any]) -> None:
    from medllm.pipelines.ingest import ingest_pubmedqa
    from medllm.retrieval import Retriever
    from medllm.storage.store import StoreRef

    s0 = store["settings"]
    meta = StoreRef.from_settings(s0).dir / "bm25" / "medllm.json"
    assert json.loads(meta.read_text())["metadata_fields"] == ["meshes"]
    plain = s0.with_overrides(retrieval={"bm25_metadata_fields": []})
    try:
        summ = ingest_pubmedqa(plain, store["source"], limit=N, show_progress=False)
        assert summ.chunks == 0 and summ.unchanged == N  # nothing re-embedded
        assert json.loads(meta.read_text())["metadata_fields"] == []
        r = Retriever.from_settings(plain)
        assert r.search("Alismataceae", k=1, mode="bm25") == []
    finally:
        ingest_pubmedqa(s0, store["source"], limit=N, show_progress=False)
    assert json.loads(meta.read_text())["metadata_fields"] == ["meshes"]


@pytest.mark.parametrize("fusion", ["convex", "rrf"])
def test_hybrid_fusions_find_the_lace_plant_abstract(retriever: Any, fusion: str) -> None:
    base = retriever.settings
    retriever.settings = base.with_overrides(retrieval={"fusion": fusion})
    try:
        docs = retriever.search(LACE, k=5, mode="hybrid")
    finally:
        retriever.settings = base
    assert docs[0].doc_id == "21645374"
    if fusion == "convex":  # min-max normalised: the best candidate on both scores gets 1
        assert docs[0].score == pytest.approx(1.0)
        assert all(0.0 <= d.score <= 1.0 for d in docs)


@pytest.mark.parametrize(("alpha", "mode"), [(1.0, "dense"), (0.0, "bm25")])
def test_convex_fusion_at_the_extremes_is_the_single_mode(
    retriever: Any, alpha: float, mode: str
) -> None:
    q = "Is laparoscopic surgery safe for elderly patients?"
    base = retriever.settings
    retriever.settings = base.with_overrides(retrieval={"fusion": "convex", "hybrid_alpha": alpha})
    try:
        hybrid = [d.doc_id for d in retriever.search(q, k=5, mode="hybrid")]
    finally:
        retriever.settings = base
    assert hybrid == [d.doc_id for d in retriever.search(q, k=5, mode=mode)]


def test_light_query_path_gives_the_same_results(store: dict[str, Any], retriever: Any) -> None:
    """The default query embedder (ONNX export + tokenizers) and the LlamaIndex OnnxEmbedding
    rank the same documents with the same scores and similarities, in every mode."""
    from medllm.models import load_embedding
    from medllm.models.onnx_encoder import OnnxEncoder
    from medllm.retrieval import Retriever

    s = store["settings"]
    full = Retriever.from_settings(s, embed_model=load_embedding(settings=s))
    assert type(full.query_embedder).__name__ == "OnnxEmbedding"
    assert isinstance(retriever.query_embedder, OnnxEncoder)
    queries = [LACE, "Is laparoscopic surgery safe for elderly patients?"]
    queries += [r["QUESTION"] for r in list(store["records"].values())[:8]]
    for q in queries:
        for mode in ("dense", "bm25", "hybrid"):
            got = [(d.doc_id, d.score, d.similarity) for d in retriever.search(q, k=10, mode=mode)]
            want = [(d.doc_id, d.score, d.similarity) for d in full.search(q, k=10, mode=mode)]
            assert got == want, (q, mode)


HEAVY = ("torch", "transformers", "llama_index", "sklearn", "sentence_transformers", "pandas")


def test_a_cold_search_imports_no_heavy_library(store: dict[str, Any]) -> None:
    """`medllm retrieve` in a fresh process: no torch, transformers, LlamaIndex or sklearn
    (seconds of imports for milliseconds of search; bench/cold_retrieve.py times it)."""
    import os
    import subprocess
    import sys

    root = str(Path(__file__).resolve().parents[1])  # this checkout, not an installed medllm
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    home = store["settings"].paths.home
    code = (
        "import sys\n"
        "from medllm.config import Settings\n"
        "from medllm.retrieval import Retriever\n"
        f"s = Settings.load(config_file=False, paths={{'home': {str(home)!r}}})\n"
        "r = Retriever.from_settings(s)\n"
        "for mode in ('dense', 'bm25', 'hybrid'):\n"
        f"    assert r.search({LACE!r}, k=3, mode=mode)[0].doc_id == '21645374'\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]", res.stdout


def test_bm25_token_pattern_is_llamaindex_default() -> None:
    """Indexes are built and queried with BM25Retriever's default token pattern (the query
    path no longer imports LlamaIndex to read it)."""
    import inspect

    from llama_index.retrievers.bm25 import BM25Retriever

    from medllm.storage.bm25 import TOKEN_PATTERN as BM25_TOKEN_PATTERN

    default = inspect.signature(BM25Retriever.__init__).parameters["token_pattern"].default
    assert default == BM25_TOKEN_PATTERN


def test_post_filtered_dense_search_equals_chromas_prefilter(
    store: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A filtered search post-filters a larger unfiltered candidate set when the filter's
    share promises enough (bench/RESULTS.md: Chroma's pre-filter costs seconds at 1 M chunks),
    and gives exactly what Chroma's pre-filter gives; it hands over when it cannot be sure."""
    from medllm import retrieval

    s = store["settings"].with_overrides(retrieval={"candidate_k": 5})
    r = retrieval.Retriever.from_settings(s)
    paths: list[str] = []
    real = retrieval.Retriever._dense_post_filtered

    def spy(self: Any, *a: Any, **k: Any) -> Any:
        got = real(self, *a, **k)
        paths.append("post" if got is not None else "chroma")
        return got

    monkeypatch.setattr(retrieval.Retriever, "_dense_post_filtered", spy)
    cases = [
        (q, where, mode)
        for q in (LACE, "patients treatment outcome", "surgery complications in children")
        for where in ("year>=2012", "mesh=Humans", "mesh=Humans,year<=2010", "mesh=Alismataceae")
        for mode in ("dense", "hybrid")
    ]
    # a rare filter would need more unfiltered candidates than allowed: Chroma filters
    monkeypatch.setattr(retrieval, "_POST_FILTER_MAX", 100)
    post = [r.search(q, k=5, mode=mode, where=where) for q, where, mode in cases]
    assert "post" in paths and "chroma" in paths  # both ways happen on these cases
    monkeypatch.setattr(retrieval, "_POST_FILTER_MAX", 0)  # Chroma's pre-filter every time
    paths.clear()
    pre = [r.search(q, k=5, mode=mode, where=where) for q, where, mode in cases]
    assert set(paths) == {"chroma"}
    for case, a, b in zip(cases, post, pre, strict=True):
        assert [d.doc_id for d in a] == [d.doc_id for d in b], case
        assert [d.text for d in a] == [d.text for d in b], case
        assert [d.similarity for d in a] == pytest.approx([d.similarity for d in b], abs=1e-5)
    # a document hidden from the search stays hidden on the post-filter path
    top = post[0][0].doc_id
    again = r.search(LACE, k=5, mode="dense", where="year>=2012", exclude={top})
    assert top not in {d.doc_id for d in again} and again


def _recall_at_50(coll: Any, x: Any, queries: Any) -> float:
    import numpy as np

    ids = [f"d{i}#0" for i in range(len(x))]
    got = coll.query(query_embeddings=queries.tolist(), n_results=50, include=["distances"])
    exact = np.argsort(-(queries @ x.T), axis=1)[:, :50]
    pairs = zip(got["ids"], exact, strict=True)
    return float(np.mean([len(set(g) & {ids[i] for i in e}) / 50 for g, e in pairs]))


def _as_new_process(home: Path, to: Path) -> Path:
    """A copy of the store home: Chroma caches a loaded index (with the search breadth it was
    loaded with) per directory for the life of the process, so a copy is what a new process
    (the next `medllm retrieve`) would open."""
    import shutil

    shutil.copytree(home, to)
    return to


def test_dense_search_breadth_reaches_new_and_old_stores(tmp_path: Path) -> None:
    """Chroma's default HNSW search breadth (ef_search 100) misses true nearest chunks; medllm
    creates stores with ``retrieval.ef_search`` and raises an older store's when it opens it.
    5,000 random unit vectors (the hard case for HNSW), 20 random queries, recall of the exact
    top 50: measured ~0.67 at Chroma's default and ~0.97 at 400."""
    import numpy as np

    from medllm.storage import store

    rng = np.random.default_rng(0)
    x = rng.standard_normal((5000, 384)).astype("float32")
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    qs = rng.standard_normal((20, 384)).astype("float32")
    qs /= np.linalg.norm(qs, axis=1, keepdims=True)
    ef = Settings.load(config_file=False).retrieval.ef_search
    assert ef >= 300
    ids = [f"d{i}#0" for i in range(len(x))]

    # A store created before medllm set it: Chroma's default.
    old = store.StoreRef(collection="old", embedding="x", home=tmp_path / "a")
    coll = store.chroma_client(old).create_collection(old.name, metadata={"hnsw:space": "cosine"})
    coll.add(ids=ids, embeddings=x)
    assert store.ef_search_of(coll) == 100
    before = _recall_at_50(coll, x, qs)

    old = dataclasses.replace(old, home=_as_new_process(old.home, tmp_path / "b"))
    coll = store.get_collection(old, create=False, ef_search=ef)
    assert store.ef_search_of(coll) == ef
    after = _recall_at_50(coll, x, qs)
    assert before < 0.85 and after >= 0.93, (before, after)
    old = dataclasses.replace(old, home=_as_new_process(old.home, tmp_path / "c"))
    assert store.ef_search_of(store.get_collection(old, create=False)) == ef, "kept on disk"

    new = store.StoreRef(collection="new", embedding="x", home=tmp_path / "d")
    coll = store.get_collection(new, create=True, ef_search=ef)
    assert store.ef_search_of(coll) == ef and coll.metadata["hnsw:space"] == "cosine"
    coll.add(ids=ids, embeddings=x)
    assert _recall_at_50(coll, x, qs) >= 0.93


def test_retriever_opens_its_store_with_the_configured_search_breadth(
    store: dict[str, Any], tmp_path: Path
) -> None:
    from medllm.retrieval import Retriever
    from medllm.storage.store import ef_search_of

    s = store["settings"]
    assert ef_search_of(Retriever.from_settings(s)._collection) == s.retrieval.ef_search
    home = _as_new_process(s.paths.home, tmp_path / "a")
    r = Retriever.from_settings(
        Settings.load(config_file=False, paths={"home": home}, retrieval={"ef_search": 150})
    )
    assert ef_search_of(r._collection) == 150
    assert r.search(LACE, k=1)[0].doc_id == "21645374"
    home = _as_new_process(home, tmp_path / "b")
    r = Retriever.from_settings(Settings.load(config_file=False, paths={"home": home}))
    assert ef_search_of(r._collection) == s.retrieval.ef_search


def test_a_cross_encoder_reranks_the_first_results(
    store: dict[str, Any], tmp_path: Path, retriever: Any
) -> None:
    """`retrieval.reranker` re-orders the first `rerank_top` results by a cross-encoder's
    score. No reranking-trained cross-encoder is reachable here (a hub download), so this one
    is the packaged MiniLM with a fresh one-logit head: real model, real plumbing, scores
    without meaning — the test checks the order follows them, not that they are good."""
    import torch
    from sentence_transformers import CrossEncoder

    from medllm.errors import ModelNotAvailableError
    from medllm.models.registry import KNOWN_MODELS
    from medllm.retrieval import Retriever

    torch.manual_seed(0)
    s = store["settings"]
    path = KNOWN_MODELS["all-minilm-l6-v2"].locate(s.paths.models_dir)
    ce = CrossEncoder(str(path), num_labels=1, device="cpu")
    ce.save(str(tmp_path / "ce"))
    query = "Do mitochondria play a role in remodelling lace plant leaves?"
    plain = retriever.search(query, k=10)
    assert all(d.rerank_score is None for d in plain)
    on = s.with_overrides(retrieval={"reranker": str(tmp_path / "ce"), "rerank_top": 10})
    got = Retriever.from_settings(on).search(query, k=3)
    expect = ce.predict([(query, d.text) for d in plain])
    best = sorted(zip(expect, [d.doc_id for d in plain], strict=True), key=lambda x: -x[0])[:3]
    assert [d.doc_id for d in got] == [doc for _, doc in best]
    assert [d.rank for d in got] == [1, 2, 3]
    assert [d.rerank_score for d in got] == pytest.approx([float(x) for x, _ in best], abs=1e-5)
    # what is not a cross-encoder is a clear error naming the setting's value
    (tmp_path / "empty").mkdir()
    bad = s.with_overrides(retrieval={"reranker": str(tmp_path / "empty")})
    with pytest.raises(ModelNotAvailableError, match="could not be loaded as a cross-encoder"):
        Retriever.from_settings(bad).search(query)
