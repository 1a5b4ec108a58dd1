"""Hybrid hit@1 on a store under retrieval levers the engine does not have, via a replica.

    MEDLLM_HOME=/tmp/mh python bench/fusion_replica.py --collection mixed [--split train]

A replica of `Retriever.search(mode="hybrid")` in numpy: exact dense search over every stored
chunk vector (the 50 nearest chunks → best chunk per document) and BM25 recomputed from each
document's stored text and MeSH terms (tokenised as the index is), fused by the engine's own
code (`Retriever._bm25_top`, `Retriever._convex`: min-max, α 0.5, the dense floor for
BM25-only candidates). It first checks that it gives the
engine's own top document for every question (it prints the agreement), then scores levers the
engine does not have (seventeenth session, issue 13's distractor target):

* ``mesh``: a weight on the MeSH field in BM25 (BM25F-style: tf and length count MeSH terms w
  times; w = 1 is the shipped index), with α 0.4 / 0.5 / 0.6;
* ``rm3``: pseudo-relevance feedback for BM25 (RM3-style: the top m fused documents' term
  distribution × IDF, e terms added to the query with weight λ), then fused again;
* ``rocchio``: pseudo-relevance feedback for the dense query (q + β · mean of the top m
  documents' best-chunk vectors), then fused again;
* ``sentence`` (eighteenth session): a sentence-level dense channel — every stored document
  split into sentences (4 words or more), each embedded by the packaged MiniLM (sentence-
  transformers, ~6 min for the 34,556 sentences of ``mixed`` on 2 cores) — whose best cosine
  per document is mixed into each dense candidate's score: (1 − λ) · chunk + λ · sentence.

Questions: the PQA-L questions of ``--split`` (train: the 500 outside the official test split;
choose on these) and the hand-written NCBI-disease questions of bench/questions/ncbi_yesno.jsonl
(data the levers were not tuned on). Store ``mixed``: bench/mixed_store.py.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Question:
    text: str
    gold: list[str]
    split: str
    vec: np.ndarray = field(repr=False)
    tokens: list[str]
    shipped: str | None  # the engine's top document
    sentences: np.ndarray | None = field(default=None, repr=False)  # ``sentence`` lever's cache


class Replica:
    def __init__(self, collection: str) -> None:
        import scipy.sparse as sp

        from medllm.config import Settings
        from medllm.retrieval import Retriever
        from medllm.storage import bm25 as bm25_mod

        self.retriever = r = Retriever.from_settings(Settings.load(), collection)
        self.ids: list[str] = list(r._bm25_ids())
        self.stemmer = r._bm25_index().stemmer
        self.pos = {d: i for i, d in enumerate(self.ids)}
        fields: dict[str, list[Counter[str]]] = {"text": [], "mesh": []}
        for d in self.ids:
            doc = r.get(d)
            assert doc is not None, d
            mesh = doc.metadata.get("meshes") or []
            if isinstance(mesh, str):
                mesh = [x for x in mesh.split("; ") if x]
            fields["text"].append(Counter(bm25_mod.query_tokens(doc.text, self.stemmer)))
            fields["mesh"].append(
                Counter(bm25_mod.query_tokens("; ".join(mesh), self.stemmer)) if mesh else Counter()
            )
        self.fields = fields
        self.vocab: dict[str, int] = {}
        for c in [*fields["text"], *fields["mesh"]]:
            for t in c:
                self.vocab.setdefault(t, len(self.vocab))
        n, v = len(self.ids), len(self.vocab)

        def matrix(counts: list[Counter[str]]) -> Any:
            rows = [i for i, c in enumerate(counts) for _ in c]
            cols = [self.vocab[t] for c in counts for t in c]
            vals = [x for c in counts for x in c.values()]
            return sp.csr_matrix((vals, (rows, cols)), shape=(n, v), dtype=np.float64)

        self.T, self.M = matrix(fields["text"]), matrix(fields["mesh"])
        self.len_t = np.asarray(self.T.sum(1)).ravel()
        self.len_m = np.asarray(self.M.sum(1)).ravel()
        df = np.asarray(((self.T + self.M) > 0).sum(0)).ravel()
        # as the index: idf rounded to float32, the rest in float64
        self.idf = np.log(1 + (n - df + 0.5) / (df + 0.5)).astype(np.float32).astype(np.float64)
        got = r._collection.get(include=["embeddings", "metadatas"])
        self.emb = np.asarray(got["embeddings"], dtype=np.float32)
        self.chunk_pos = np.array([self.pos[str(m["document_id"])] for m in got["metadatas"]])
        self.set_bm25(1.0)
        self._sentences: tuple[np.ndarray, np.ndarray] | None = None

    def sentence_scores(self, q: np.ndarray) -> np.ndarray:
        """Best cosine of ``q`` to any sentence of each document (by the index's positions)."""
        if self._sentences is None:
            import re

            from sentence_transformers import SentenceTransformer

            from medllm.models.registry import KNOWN_MODELS

            split = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(])")
            texts: list[str] = []
            owner: list[int] = []
            for i, d in enumerate(self.ids):
                doc = self.retriever.get(d)
                assert doc is not None, d
                for sent in split.split(doc.text.replace("\n", " ")):
                    if len(sent.split()) >= 4:
                        texts.append(sent)
                        owner.append(i)
            path = KNOWN_MODELS["all-minilm-l6-v2"].locate(self.retriever.settings.paths.models_dir)
            model = SentenceTransformer(str(path), device="cpu")
            order = np.argsort([-len(t) for t in texts])
            vecs = model.encode(
                [texts[i] for i in order], batch_size=128, normalize_embeddings=True
            )
            emb = np.empty_like(vecs)
            emb[order] = vecs
            self._sentences = (np.asarray(emb, dtype=np.float32), np.asarray(owner))
            print(f"{len(texts)} sentences embedded", flush=True)
        vectors, owners = self._sentences
        best = np.full(len(self.ids), -1.0)
        np.maximum.at(best, owners, vectors @ q)
        return best

    def set_bm25(self, mesh_weight: float, k1: float = 1.5, b: float = 0.75) -> None:
        self.tf = (self.T + mesh_weight * self.M).tocsc()
        length = self.len_t + mesh_weight * self.len_m
        self.norm = k1 * ((1 - b) + b * length / length.mean())

    def bm25(self, weights: dict[str, float]) -> np.ndarray:
        out = np.zeros(len(self.ids))
        for t, w in weights.items():
            j = self.vocab.get(t)
            if j is None:
                continue
            lo, hi = self.tf.indptr[j], self.tf.indptr[j + 1]
            rows, tf = self.tf.indices[lo:hi], self.tf.data[lo:hi]
            out[rows] += w * self.idf[j] * tf / (self.norm[rows] + tf)
        return out

    def dense(self, q: np.ndarray, n: int = 50) -> dict[str, float]:
        sims = self.emb @ q
        top = np.argpartition(-sims, n)[:n]
        out: dict[str, float] = {}
        for c in top[np.argsort(-sims[top])]:
            out.setdefault(self.ids[self.chunk_pos[c]], float(sims[c]))
        return out

    def fuse(self, dense: dict[str, float], bsc: np.ndarray, alpha: float) -> list[str]:
        """The engine's own fusion (``Retriever._bm25_top`` and ``_convex``, its order) over
        these dense similarities and BM25 scores (by the index's positions)."""
        from medllm.retrieval import _Chunk

        r = self.retriever
        chunks = {d: _Chunk(d, None, None, sim) for d, sim in dense.items()}
        fused = r._convex(chunks, r._bm25_top(bsc, 50), bsc, alpha)
        fused.sort(key=lambda x: (-x[1], x[0]))
        return [d for d, _ in fused]

    def best_vec(self, q: np.ndarray, doc: str) -> np.ndarray:
        cs = np.flatnonzero(self.chunk_pos == self.pos[doc])
        return self.emb[cs[int(np.argmax(self.emb[cs] @ q))]]

    def top(
        self,
        q: Question,
        alpha: float = 0.5,
        rm3: tuple[int, int, float] | None = None,
        rocchio: tuple[int, float] | None = None,
        sentence: float | None = None,
    ) -> str:
        weights = {t: float(n) for t, n in Counter(q.tokens).items()}
        dense, bsc = self.dense(q.vec), self.bm25(weights)
        if sentence is not None:
            if q.sentences is None:
                q.sentences = self.sentence_scores(q.vec)
            lam, best = sentence, q.sentences
            dense = {d: (1 - lam) * v + lam * float(best[self.pos[d]]) for d, v in dense.items()}
        ranked = self.fuse(dense, bsc, alpha)
        if rm3:
            m, e, lam = rm3
            acc: Counter[str] = Counter()
            for d in ranked[:m]:
                i = self.pos[d]
                c = self.fields["text"][i] + self.fields["mesh"][i]
                total = sum(c.values())
                for t, x in c.items():
                    acc[t] += x / total / m * self.idf[self.vocab[t]]
            added = dict(acc.most_common(e))
            qsum, asum = sum(weights.values()), sum(added.values()) or 1.0
            new = {t: (1 - lam) * w for t, w in weights.items()}
            for t, w in added.items():
                new[t] = new.get(t, 0.0) + lam * w / asum * qsum
            bsc = self.bm25(new)
            ranked = self.fuse(dense, bsc, alpha)
        if rocchio:
            m, beta = rocchio
            v = q.vec + beta * np.mean([self.best_vec(q.vec, d) for d in ranked[:m]], axis=0)
            ranked = self.fuse(self.dense(v / np.linalg.norm(v)), bsc, alpha)
        return ranked[0]


def questions(rep: Replica, split: str, pubmedqa_dir: Path) -> list[Question]:
    from medllm import pubmedqa
    from medllm.storage import bm25 as bm25_mod

    test = set(pubmedqa.load_test_pmids(pubmedqa_dir / "test_ground_truth.json"))
    raw = [
        (x.question, [x.pmid], "pubmedqa")
        for x in pubmedqa.load(pubmedqa_dir / "ori_pqal.json", strict=True).records
        if split == "all" or (x.pmid in test) == (split == "test")
    ]
    for line in (ROOT / "bench/questions/ncbi_yesno.jsonl").read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            raw.append((rec["question"], [str(g) for g in rec["gold"]], "ncbi"))
    out = []
    for text, gold, kind in raw:
        res = rep.retriever.search(text, k=1, mode="hybrid")
        out.append(
            Question(
                text,
                gold,
                kind,
                rep.retriever._embed_query(text),
                bm25_mod.query_tokens(text, rep.stemmer),
                res[0].doc_id if res else None,
            )
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--collection", default="mixed")
    ap.add_argument("--pubmedqa", default=str(ROOT.parent / "shared/data/pubmedqa"))
    ap.add_argument("--split", choices=("train", "test", "all"), default="train")
    ap.add_argument("--levers", default="mesh,rm3,rocchio", help="any of mesh,rm3,rocchio,sentence")
    args = ap.parse_args()

    rep = Replica(args.collection)
    qs = questions(rep, args.split, Path(args.pubmedqa))
    pq = [q for q in qs if q.split == "pubmedqa"]
    ncbi = [q for q in qs if q.split == "ncbi"]
    same = sum(rep.top(q) == q.shipped for q in qs)
    print(f"replica agrees with the engine's top document on {same} / {len(qs)} questions")
    if same != len(qs):
        sys.exit("the replica does not reproduce the engine: its figures would mean nothing")

    def row(name: str, value: Any, **kw: Any) -> None:
        hits = {
            f"pubmedqa {args.split} ({len(pq)})": sum(rep.top(q, **kw) in q.gold for q in pq),
            f"ncbi ({len(ncbi)})": sum(rep.top(q, **kw) in q.gold for q in ncbi),
        }
        print(json.dumps({name: value, **hits}), flush=True)

    levers = args.levers.split(",")
    if "mesh" in levers:
        for w, alpha in itertools.product((0.0, 0.5, 1.0, 1.5, 2.0, 3.0), (0.4, 0.5, 0.6)):
            rep.set_bm25(w)
            row("mesh weight, alpha", [w, alpha], alpha=alpha)
        rep.set_bm25(1.0)
    if "rm3" in levers:
        for m, e, lam in itertools.product((1, 3, 5), (5, 10, 20), (0.1, 0.3, 0.5)):
            row("rm3 (docs, terms, lambda)", [m, e, lam], rm3=(m, e, lam))
    if "rocchio" in levers:
        for m, beta in itertools.product((1, 3, 5), (0.1, 0.3, 0.5, 1.0)):
            row("rocchio (docs, beta)", [m, beta], rocchio=(m, beta))
    if "sentence" in levers:
        for lam, alpha in itertools.product((0.1, 0.2, 0.3, 0.5, 0.7, 1.0), (0.4, 0.5, 0.6)):
            row("sentence weight, alpha", [lam, alpha], sentence=lam, alpha=alpha)


if __name__ == "__main__":
    main()
