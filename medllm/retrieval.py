"""Document retrieval over an ingested store: dense (Chroma), BM25 (segments) and hybrid.

Results are documents, not loose chunks: the chunks of one document are merged and the
document appears once, with its best-matching chunk as ``text``. Every result carries
``similarity``, the dense cosine similarity of the query to the document's best chunk, in every
mode — the calibrated relevance signal used for abstention.

    from medllm.retrieval import Retriever
    r = Retriever.from_settings(settings)
    for d in r.search("Do mitochondria play a role in ...", k=5, mode="hybrid"):
        print(d.rank, d.doc_id, round(d.score, 3), d.similarity)

Hybrid fuses the dense and BM25 document rankings (deterministic; no LLM-generated extra
queries), ties broken by doc id. ``fusion="convex"`` (default): over the candidates of both
retrievers, each document's dense cosine and BM25 score are min-max normalised and combined as
``hybrid_alpha · dense + (1 − hybrid_alpha) · bm25``. ``fusion="rrf"``: reciprocal-rank fusion,
``score = Σ 1 / (rrf_k + rank)``. bench/retrieval.py compares them on PQA-L.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from medllm.errors import DataError, ModelNotAvailableError, StoreError
from medllm.storage import filters, store

if TYPE_CHECKING:
    import numpy as np
    from llama_index.core.base.embeddings.base import BaseEmbedding

    from medllm.config import Settings
    from medllm.models.onnx_encoder import QueryEmbedder

logger = logging.getLogger(__name__)

Mode = Literal["dense", "bm25", "hybrid"]
MODES: tuple[str, ...] = ("dense", "bm25", "hybrid")
_POST_FILTER_MAX = 10_000  # most unfiltered candidates filtered here before Chroma's pre-filter
_ID_PROBE = 8  # chunk ids per document tried by id before a metadata query (_best_chunks)
_INTERNAL_KEYS = {"_node_content", "_node_type", "document_id", "doc_id", "ref_doc_id"}


@dataclass
class RetrievedDoc:
    doc_id: str  # PMID for PubMedQA
    score: float  # the mode's own score, higher is better
    text: str  # best-matching chunk
    metadata: dict[str, Any] = field(default_factory=dict)
    similarity: float = 0.0  # dense cosine similarity of the query to the best chunk
    rank: int = 0  # 1-based
    rerank_score: float | None = None  # the cross-encoder's (retrieval.reranker), if one is set

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _public_metadata(meta: dict[str, Any] | None) -> dict[str, Any]:
    out = {
        k: v
        for k, v in sorted((meta or {}).items())
        if k not in _INTERNAL_KEYS and not filters.is_flag(k)
    }
    if out.get("source") in ("pubmedqa", "pubmed"):
        for key, sep in (("meshes", "; "), ("labels", ", "), ("pubtypes", "; ")):
            if isinstance(out.get(key), str):
                out[key] = [x for x in out[key].split(sep) if x]
    return out


@dataclass
class _Chunk:
    doc_id: str
    text: str | None  # None: not fetched yet (search fetches the returned ones only)
    metadata: dict[str, Any] | None
    similarity: float
    chunk_id: str = ""


class Retriever:
    """Search one store (a corpus × embedding model). Build with :meth:`from_settings`."""

    def __init__(
        self, settings: Settings, ref: store.StoreRef, embed_model: BaseEmbedding | None = None
    ):
        # a bad ``retrieval.where`` (a setting, e.g. MEDLLM_RETRIEVAL__WHERE) fails here, not at
        # every search: `medllm serve` used to start and answer each request 400 "where"
        filters.parse(settings.retrieval.where)
        self.settings = settings
        self.ref = ref
        self._reranker: Any = None
        self.manifest = store.read_manifest(ref)
        self._collection = store.get_collection(
            ref, create=False, ef_search=settings.retrieval.ef_search
        )
        self._embed = embed_model
        self._query_embed: QueryEmbedder | None = embed_model
        self._bm25: Any = None  # store.load_bm25: bm25.SegmentedIndex or store.LegacyBm25
        self._bm25_loaded = False
        self._bm25_masks: dict[str, np.ndarray] = {}
        self._bm25_pos: dict[str, int] | None = None
        self._docstore: Any = None

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        collection: str | None = None,
        *,
        embed_model: BaseEmbedding | None = None,
    ) -> Retriever:
        """The retriever for ``collection`` (default ``settings.retrieval.collection``).

        Raises :class:`StoreError` when nothing was ingested there.
        """
        return cls(settings, store.StoreRef.from_settings(settings, collection), embed_model)

    # ------------------------------------------------------------------ lazy parts

    @property
    def query_embedder(self) -> QueryEmbedder:
        """What embeds the queries: the ``embed_model`` given, else the store's model loaded
        light when it can be (:func:`medllm.models.registry.load_query_embedding`: the ONNX
        export run with ``tokenizers``, the same vectors), so that a cold process searches
        without importing transformers, torch or LlamaIndex."""
        if self._query_embed is None:
            from medllm.models.registry import load_query_embedding

            self._query_embed = load_query_embedding(self.ref.embedding, settings=self.settings)
        return self._query_embed

    @property
    def embed_model(self) -> BaseEmbedding:
        """The store's embedding model as a LlamaIndex embedding (RAGAS embeds with it)."""
        if self._embed is None:
            from medllm.models import load_embedding

            self._embed = load_embedding(self.ref.embedding, settings=self.settings)
        return self._embed

    def _bm25_index(self) -> Any:
        """The store's BM25 index (opened on first use), or None when it has none."""
        if not self._bm25_loaded:
            self._bm25 = store.load_bm25(self.ref)
            self._bm25_loaded = True
        return self._bm25

    def _bm25_ids(self) -> list[str]:
        """Document ids by BM25 position (positions of removed documents included)."""
        bm = self._bm25_index()
        return bm.ids if bm is not None else []

    def _embed_query(self, query: str) -> np.ndarray:
        import numpy as np

        q = np.asarray(self.query_embedder.get_query_embedding(query), dtype=np.float32)
        return q / (np.linalg.norm(q) or 1.0)

    # ------------------------------------------------------------------ search

    def search(
        self,
        query: str,
        k: int | None = None,
        mode: Mode | str | None = None,
        year_range: tuple[int, int] | None = None,
        where: str | Sequence[str] | filters.Where | None = None,
        exclude: Collection[str] = (),
    ) -> list[RetrievedDoc]:
        """The top ``k`` documents for ``query`` (``mode``: dense | bm25 | hybrid).

        ``where`` (default ``retrieval.where``): a metadata pre-filter such as
        ``"year>=2010,pubtype=Review,mesh=Diabetes Mellitus"`` (:mod:`medllm.storage.filters`),
        applied in every mode before ranking; ``year_range`` narrows it further.
        ``exclude``: document ids never returned, in every mode (the leave-gold-out evaluation
        asks each question with its own abstract hidden this way)."""
        r = self.settings.retrieval
        k = validate_k(k) or r.top_k
        mode = mode or r.mode
        if mode not in MODES:
            raise DataError(
                f"unknown retrieval mode {mode!r}; use one of {', '.join(MODES)}", field="mode"
            )
        if not query.strip():
            return []
        w = filters.parse(where if where is not None else r.where)
        if year_range is not None:
            if year_range[0] > year_range[1]:
                raise DataError(  # bad input, not a store problem (a server's 503)
                    f"empty year range {year_range[0]}..{year_range[1]}", field="year_range"
                )
            w = (w or filters.Where()).with_years(year_range)
        if w and w.year_min is not None and w.year_max is not None and w.year_min > w.year_max:
            return []
        q = self._embed_query(query)
        dense: dict[str, _Chunk] = {}
        if mode in ("dense", "hybrid"):
            dense = self._dense(q, r.candidate_k, w, exclude)
        bm25: dict[str, float] = {}
        bm25_all = None
        if mode in ("bm25", "hybrid"):
            bm25_all = self._bm25_scores(query, w, exclude)
            bm25 = self._bm25_top(bm25_all, r.candidate_k)

        if mode == "dense":
            scored = [(d, c.similarity) for d, c in dense.items()]
        elif mode == "bm25":
            scored = list(bm25.items())
        elif r.fusion == "rrf":
            fused: dict[str, float] = {}
            for ranking in (list(dense), list(bm25)):
                for i, doc_id in enumerate(ranking, 1):
                    fused[doc_id] = fused.get(doc_id, 0.0) + 1.0 / (r.rrf_k + i)
            scored = list(fused.items())
        else:
            scored = self._convex(dense, bm25, bm25_all, r.hybrid_alpha)
        scored.sort(key=lambda x: (-x[1], x[0]))
        top = scored[: max(k, r.rerank_top) if r.reranker else k]
        missing = [d for d, _ in top if d not in dense]
        if missing:
            dense.update(self._best_chunks(q, missing))
        self._fetch([dense[d] for d, _ in top if d in dense])
        out = []
        for doc_id, score in top:
            c = dense.get(doc_id)
            if c is None:  # in BM25 but not in Chroma: the store is out of step
                logger.warning("document %s is in the BM25 index but not in Chroma", doc_id)
                continue
            out.append(
                RetrievedDoc(
                    doc_id=doc_id,
                    score=float(score),
                    text=c.text or "",
                    metadata=_public_metadata(c.metadata),
                    similarity=round(float(c.similarity), 6),
                )
            )
        if r.reranker and out:
            out = self._rerank(query, out)
        for rank, d in enumerate(out[:k], 1):
            d.rank = rank
        return out[:k]

    def _rerank(self, query: str, docs: list[RetrievedDoc]) -> list[RetrievedDoc]:
        """``docs`` in the order of ``retrieval.reranker``'s score of (query, best chunk);
        ties keep the mode's order."""
        scores = self.reranker.predict([(query, d.text) for d in docs], show_progress_bar=False)
        for d, s in zip(docs, scores, strict=True):
            d.rerank_score = round(float(s), 6)
        return sorted(docs, key=lambda d: -(d.rerank_score or 0.0))

    @property
    def reranker(self) -> Any:
        """The cross-encoder of ``retrieval.reranker``, loaded on first use."""
        if self._reranker is None:
            self._reranker = load_reranker(self.settings)
        return self._reranker

    def _dense(
        self, q: np.ndarray, n: int, w: filters.Where | None, exclude: Collection[str] = ()
    ) -> dict[str, _Chunk]:
        """Best chunk per document among the ``n`` nearest chunks, in rank order."""
        if (
            w is not None
            and w.needs_flags
            and self.manifest.get("filters") != filters.FLAGS_VERSION
        ):
            raise StoreError(
                f"the store {self.ref.name} was built before MeSH / publication-type filtering "
                "(its chunks carry no filter flags); `medllm store drop` it and ingest again, "
                "or filter by year only"
            )
        if w is not None and filters.chroma_where(w) is not None:
            got = self._dense_post_filtered(q, n, w, exclude)
            if got is not None:
                return got
        # No count() first (~5 ms at 100k chunks): Chroma returns fewer than n when the
        # collection (or the filter) has fewer, and nothing when it is empty.
        # With the chunks' text: leaving it out and fetching the returned ones afterwards
        # (as the post-filter path does) measured slower at 1 M chunks (bench/RESULTS.md).
        res = self._collection.query(
            query_embeddings=[q.tolist()],
            n_results=n,
            where=_exclude_where(filters.chroma_where(w), exclude),
            include=["documents", "metadatas", "distances"],
        )
        out: dict[str, _Chunk] = {}
        for cid, text, meta, dist in zip(
            res["ids"][0], res["documents"][0], res["metadatas"][0], res["distances"][0],
            strict=True,
        ):  # fmt: skip
            doc_id = str(meta.get("document_id"))
            if doc_id not in out:
                out[doc_id] = _Chunk(doc_id, text or "", dict(meta), 1.0 - float(dist), cid)
        return out

    def _fetch(self, chunks: list[_Chunk]) -> None:
        """Fill in the text and metadata of ``chunks`` not fetched yet (one ``get`` by id)."""
        todo = [c for c in chunks if c.text is None or c.metadata is None]
        if not todo:
            return
        res = self._collection.get(
            ids=[c.chunk_id for c in todo], include=["documents", "metadatas"]
        )
        got = {
            cid: (text, meta)
            for cid, text, meta in zip(res["ids"], res["documents"], res["metadatas"], strict=True)
        }
        for c in todo:
            text, meta = got.get(c.chunk_id, ("", {}))
            c.text = text or ""
            c.metadata = dict(meta or {})

    def _dense_post_filtered(
        self, q: np.ndarray, n: int, w: filters.Where, exclude: Collection[str]
    ) -> dict[str, _Chunk] | None:
        """The ``n`` nearest chunks passing ``w`` found by filtering a larger unfiltered
        candidate set, or None when that cannot be sure to hold them (the caller then lets
        Chroma pre-filter).

        Chroma's ``where`` pre-filter resolves the filter in SQLite before the vector search:
        ~1.3-2.5 s a query at 1 M chunks for ``year>=2010,pubtype=Review`` (bench/RESULTS.md).
        The filter's 0/1 mask over the documents is known from the BM25 side columns (built
        from the same metadata as the chunks' filter flags, cached per filter), and so is the
        share of documents passing. So the nearest ``m ≈ 2n / share`` chunks are fetched
        without a filter, ids and distances only (~35 ms for 2,000 at 1 M chunks; with their
        metadata ten times that), and filtered here through the mask by the document id in
        each chunk id (``<doc id>#<n>``). The result is the pre-filter's (up to the
        approximation of the nearest-neighbour index) whenever at least ``n`` of them pass —
        every passing chunk outside the ``m`` nearest is farther than all of them — or when the
        store holds no more than ``m`` chunks; otherwise None, as for a store whose chunk ids
        are not ``<doc id>#<n>`` (written before medllm named them)."""
        bm = self._bm25_index()
        if bm is None or getattr(bm, "corpus", None) is not None:
            return None  # no filter columns to mask with: let Chroma filter
        keep_doc = self._bm25_mask(w)
        share = float(keep_doc.mean()) if len(keep_doc) else 0.0
        if share <= 0.0:
            return None
        m = max(4 * n, math.ceil(2 * n / share))
        if m > _POST_FILTER_MAX:
            return None
        res = self._collection.query(
            query_embeddings=[q.tolist()], n_results=m, include=["distances"]
        )
        ids, dists = res["ids"][0], res["distances"][0]
        pos = self._bm25_positions()
        hidden = {str(d) for d in exclude}
        out: dict[str, _Chunk] = {}
        passed = 0
        for cid, dist in zip(ids, dists, strict=True):
            doc_id, sep, _ = cid.rpartition("#")
            i = pos.get(doc_id) if sep else None
            if i is None:
                return None  # not a '<doc id>#<n>' chunk id, or not in BM25: out of step
            if not keep_doc[i] or doc_id in hidden:
                continue
            passed += 1
            if doc_id not in out:
                out[doc_id] = _Chunk(doc_id, None, None, 1.0 - float(dist), cid)
            if passed == n:
                return out
        return out if len(ids) < m else None

    def _best_chunks(self, q: np.ndarray, doc_ids: list[str]) -> dict[str, _Chunk]:
        """Each document's chunk most similar to the query (exact cosine over its chunks).

        Chunks are fetched by id first: ingestion names them ``<doc id>#0``, ``#1``, … so the
        first ``_ID_PROBE`` ids of each document are a primary-key lookup. Only a document
        with no chunk under those ids, or with all of them (it may have more), is fetched by
        its ``document_id`` metadata — a metadata query that costs ~0.2 s at 1 M chunks
        (bench/RESULTS.md)."""
        import numpy as np

        inc = ["embeddings", "documents", "metadatas"]
        probe = [store.chunk_id(d, i) for d in doc_ids for i in range(_ID_PROBE)]
        res = self._collection.get(ids=probe, include=inc)
        rows = list(_rows(res))
        got = set(res["ids"])
        seen = {str(m.get("document_id")) for m in res["metadatas"]}
        rest = [d for d in doc_ids if d not in seen or store.chunk_id(d, _ID_PROBE - 1) in got]
        if rest:
            res = self._collection.get(where={"document_id": {"$in": rest}}, include=inc)
            rows += [r for r in _rows(res) if r[0] not in got]
        out: dict[str, _Chunk] = {}
        if not rows:
            return out
        emb = np.asarray([r[1] for r in rows], dtype=np.float32)
        sims = emb @ q / np.maximum(np.linalg.norm(emb, axis=1), 1e-12)
        for (_, _, text, meta), sim in zip(rows, sims, strict=True):
            doc_id = str(meta.get("document_id"))
            if doc_id not in out or sim > out[doc_id].similarity:
                out[doc_id] = _Chunk(doc_id, text or "", dict(meta), float(sim))
        return out

    def _convex(
        self,
        dense: dict[str, _Chunk],
        bm25: dict[str, float],
        bm25_all: np.ndarray | None,
        alpha: float,
    ) -> list[tuple[str, float]]:
        """Convex combination of min-max-normalised dense and BM25 scores over the candidates.

        Candidates are the union of both retrievers' documents. Each gets its exact BM25 score
        (0 if none). A document found by BM25 only gets the lowest dense score among the dense
        candidates: an upper bound of its cosine (none of its chunks was among the nearest),
        which spares a second vector-store round trip at no cost in hit@1 (bench/RESULTS.md).
        """
        cands = list(dict.fromkeys([*dense, *bm25]))
        if not cands:
            return []
        floor = min((c.similarity for c in dense.values()), default=0.0)
        pos = self._bm25_positions() if bm25_all is not None else {}

        def bm25_of(doc_id: str) -> float:
            i = pos.get(doc_id)
            return float(bm25_all[i]) if bm25_all is not None and i is not None else 0.0

        d_norm = _minmax([dense[d].similarity if d in dense else floor for d in cands])
        b_norm = _minmax([bm25_of(d) for d in cands])
        return [
            (d, alpha * dn + (1.0 - alpha) * bn)
            for d, dn, bn in zip(cands, d_norm, b_norm, strict=True)
        ]

    def _bm25_positions(self) -> dict[str, int]:
        if self._bm25_pos is None:
            bm = self._bm25_index()
            self._bm25_pos = bm.positions() if bm is not None else {}
        return self._bm25_pos

    def _bm25_scores(
        self, query: str, w: filters.Where | None, exclude: Collection[str] = ()
    ) -> np.ndarray | None:
        """BM25 score of every indexed document (0 where ``w`` fails); None if no index."""
        from medllm.storage import bm25 as bm25_mod

        bm = self._bm25_index()
        if bm is None:
            return None
        scores = bm.scores(bm25_mod.query_tokens(query, bm.stemmer))
        if w is not None:
            scores = scores * self._bm25_mask(w)
        if exclude:
            pos = self._bm25_positions()
            hidden = [pos[d] for d in exclude if d in pos]
            if hidden:
                scores = scores.copy()
                scores[hidden] = 0.0
        return scores

    def idf(self, term: str) -> float:
        """BM25 inverse document frequency of ``term`` in this store (stemmed as the index
        stems); 1.0 for every term when the store has no BM25 index."""
        bm = self._bm25_index()
        if bm is None:
            return 1.0
        n = float(bm.num_docs)
        df = float(bm.df(bm.stemmer.stemWord(term)))
        return math.log(1.0 + (n - df + 0.5) / (df + 0.5))

    def _bm25_mask(self, w: filters.Where) -> np.ndarray:
        """0/1 weights of the BM25 documents passing ``w`` (cached per filter)."""
        key = str(w)
        m = self._bm25_masks.get(key)
        if m is None:
            m = self._bm25_index().mask(w)
            if len(self._bm25_masks) >= 32:
                self._bm25_masks.pop(next(iter(self._bm25_masks)))
            self._bm25_masks[key] = m
        return m

    def empty_filter(
        self,
        where: str | Sequence[str] | filters.Where | None,
        year_range: tuple[int, int] | None = None,
    ) -> str | None:
        """Why no document can pass ``where`` (and ``year_range``), or None when some do (or
        the store cannot tell: no filter columns). Each part of the filter is checked alone,
        so the message names the one that no document of the collection passes — usually
        metadata the collection does not carry (NCBI-disease abstracts have no years,
        PubMedQA's no publication types)."""
        w = filters.parse(where) if where is not None else None
        if year_range is not None:
            w = (w or filters.Where()).with_years(year_range)
        if not w:
            return None
        bm = self._bm25_index()
        if bm is None or getattr(bm, "corpus", None) is not None:
            return None  # no filter columns to read (an index of before the segments)
        try:
            if float(self._bm25_mask(w).sum()) > 0:
                return None
            parts: list[tuple[str, filters.Where]] = []  # (metadata key, that part alone)
            if w.year_min is not None or w.year_max is not None:
                parts.append(("year", filters.Where(w.year_min, w.year_max)))
            parts += [(k, filters.Where(terms=((k, a),))) for k, a in w.terms]
            n = int(getattr(bm, "num_docs", 0))
            dead = [(k, part) for k, part in parts if float(self._bm25_mask(part).sum()) == 0]
            any_year = float(self._bm25_mask(filters.Where(0, 99999)).sum()) > 0
        except (StoreError, AttributeError):
            return None
        name = self.ref.name
        if not dead:
            return f"no document of {name} passes all of '{w}' at once (each part alone does)"
        cols = getattr(bm, "_cols", None) or []

        def carried(key: str) -> bool:  # does any document have a value for this key?
            if key == "year":
                return any_year
            return any(len(c.get(f"{key}_terms", ())) > 0 for c in cols) if cols else True

        hint = [
            f"'{part}': none of its {n} documents "
            + (
                "matches"
                if carried(key)
                else f"has a {key}"
                if key == "year"
                else f"has a {key} (its '{filters.LIST_FIELDS[key]}' metadata field)"
            )
            for key, part in dead
        ]
        return f"no document of {name} passes the filter — " + "; ".join(hint)

    def _bm25_top(self, scores: np.ndarray | None, n: int) -> dict[str, float]:
        """The top ``n`` documents by BM25 ``scores`` (score > 0), in rank order."""
        import numpy as np

        if scores is None or len(scores) == 0:
            return {}
        all_ids = self._bm25_ids()
        n = min(n, len(scores))
        top = np.argpartition(-scores, n - 1)[:n] if n < len(scores) else np.arange(len(scores))
        ids = [all_ids[int(i)] for i in top]
        order = sorted(range(len(top)), key=lambda j: (-float(scores[top[j]]), ids[j]))
        return {ids[j]: float(scores[top[j]]) for j in order if scores[top[j]] > 0}

    def rescore(self, query: str, doc_ids: Sequence[str]) -> list[RetrievedDoc]:
        """``doc_ids`` (in that order) as if retrieved for ``query``: each document's chunk most
        similar to ``query`` and that cosine as ``similarity`` and ``score``. The agent's
        evidence, found with its own queries, is judged against the user's question this way.
        Ids the store does not hold are left out."""
        if not doc_ids:
            return []
        best = self._best_chunks(self._embed_query(query), [str(d) for d in doc_ids])
        out: list[RetrievedDoc] = []
        for doc_id in dict.fromkeys(str(d) for d in doc_ids):
            c = best.get(doc_id)
            if c is None:
                continue
            out.append(
                RetrievedDoc(
                    doc_id=doc_id,
                    score=round(float(c.similarity), 6),
                    text=c.text or "",
                    metadata=_public_metadata(c.metadata),
                    similarity=round(float(c.similarity), 6),
                    rank=len(out) + 1,
                )
            )
        return out

    # ------------------------------------------------------------------ whole documents

    def get(self, doc_id: str) -> RetrievedDoc | None:
        """The whole document (as ingested), or None when the store does not hold it.

        A lookup by key in the store's SQLite docstore, which shows what the last ingestion
        committed (also one running now)."""
        docstore = self._docstore or store.load_docstore(self.ref)
        if any((self.ref.dir / f).is_file() for f in (store.DOCSTORE, store.LEGACY_DOCSTORE)):
            self._docstore = docstore  # not the empty stand-in for a docstore not written yet
        doc = docstore.get_document(str(doc_id), raise_error=False)
        if doc is None:
            return None
        return RetrievedDoc(
            doc_id=str(doc_id),
            score=1.0,
            text=doc.get_content(),
            metadata=_public_metadata(doc.metadata),
            similarity=1.0,
            rank=1,
        )

    def count(self) -> dict[str, int]:
        return {
            "documents": int(self.manifest.get("documents", 0)),
            "chunks": int(self._collection.count()),
        }


def load_reranker(settings: Settings) -> Any:
    """A sentence-transformers ``CrossEncoder`` for ``retrieval.reranker`` (a known name, a
    local directory or a hub id — the hub is asked only because the setting names it)."""
    from medllm.models.registry import _device_map, _hub_error, resolve

    spec = settings.retrieval.reranker
    assert spec
    from sentence_transformers import CrossEncoder

    m = resolve(spec, settings.paths.models_dir, convert=False)
    try:
        return CrossEncoder(m.path, device=_device_map(settings.models.device))
    except Exception as e:  # noqa: BLE001 - hub and loading errors become one clear message
        if m.source == "hub":
            raise _hub_error(spec, e) from None
        raise ModelNotAvailableError(
            f"retrieval.reranker {spec!r} could not be loaded as a cross-encoder: "
            f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
        ) from None


def validate_k(k: object) -> int | None:
    """``k`` (documents to retrieve) when it is None or a whole number >= 1, else a
    :class:`DataError` — a negative ``k`` used to reach the store as a slice bound."""
    if k is None:
        return None
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise DataError(f"k must be a whole number >= 1, not {k!r}", field="k")
    return k


def _rows(res: Any) -> Any:
    """(id, embedding, text, metadata) of a Chroma ``get`` result."""
    return zip(res["ids"], res["embeddings"], res["documents"], res["metadatas"], strict=True)


def _minmax(xs: list[float]) -> list[float]:
    """Scale to [0, 1]. Values all equal (one candidate, say) are all the best there is: 1 —
    or 0 when they are all 0 (no BM25 term matched) — so a lone filtered hit does not show a
    fused score of 0. The order is the same either way (a constant)."""
    lo, hi = min(xs), max(xs)
    span = hi - lo
    same = 1.0 if hi > 0 else 0.0
    return [(x - lo) / span if span > 0 else same for x in xs]


def _exclude_where(where: dict[str, Any] | None, exclude: Collection[str]) -> dict[str, Any] | None:
    """``where`` plus "document_id not in ``exclude``" (Chroma syntax)."""
    if not exclude:
        return where
    clause = {"document_id": {"$nin": [str(d) for d in exclude]}}
    return clause if where is None else {"$and": [where, clause]}
