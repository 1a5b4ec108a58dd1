"""Retrieval tools for agents: LlamaIndex ``FunctionTool``s whose docstrings are the tool
descriptions a model sees. The deterministic engine calls the same functions directly."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from medllm.retrieval import RetrievedDoc, Retriever


def _brief(docs: list[RetrievedDoc]) -> list[dict[str, Any]]:
    return [
        {
            "pmid": d.doc_id,
            "year": d.metadata.get("year"),
            "score": round(d.score, 4),
            "similarity": round(d.similarity, 4),
            "text": d.text,
        }
        for d in docs
    ]


class SearchTools:
    """Search functions bound to one :class:`~medllm.retrieval.Retriever`."""

    def __init__(self, retriever: Retriever, k: int):
        self.retriever = retriever
        self.k = k

    def search(
        self, query: str, mode: str, year_range: tuple[int, int] | None = None
    ) -> list[RetrievedDoc]:
        return self.retriever.search(query, k=self.k, mode=mode, year_range=year_range)

    def dense_search(self, query: str) -> list[dict[str, Any]]:
        """Search the indexed abstracts by meaning (embedding similarity). Use for questions
        phrased differently from the papers. Returns PMIDs, years, scores and text."""
        return _brief(self.search(query, "dense"))

    def bm25_search(self, query: str) -> list[dict[str, Any]]:
        """Search the indexed abstracts by keywords (BM25). Use for exact terms: gene, drug or
        disease names, acronyms. Returns PMIDs, years, scores and text."""
        return _brief(self.search(query, "bm25"))

    def hybrid_search(self, query: str) -> list[dict[str, Any]]:
        """Search the indexed abstracts by meaning and keywords together (dense and BM25
        scores fused). The best default. Returns PMIDs, years, scores and text."""
        return _brief(self.search(query, "hybrid"))

    def search_years(self, query: str, min_year: int, max_year: int) -> list[dict[str, Any]]:
        """Hybrid search restricted to abstracts published from min_year to max_year
        (inclusive). Returns PMIDs, years, scores and text."""
        return _brief(self.search(query, "hybrid", (min_year, max_year)))

    def fetch_abstract(self, pmid: str) -> dict[str, Any] | None:
        """Fetch the full abstract of one PMID from the index (null when not indexed)."""
        d = self.retriever.get(pmid)
        return None if d is None else _brief([d])[0]

    def function_tools(self) -> list[Any]:
        """The tools as LlamaIndex ``FunctionTool`` objects (for a ReAct/function agent)."""
        from llama_index.core.tools import FunctionTool

        fns: list[Any] = [
            self.dense_search,
            self.bm25_search,
            self.hybrid_search,
            self.search_years,
            self.fetch_abstract,
        ]
        return [FunctionTool.from_defaults(fn=f) for f in fns]
