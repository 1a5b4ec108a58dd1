"""``medllm retrieve``: documents for a query (dense, BM25 or hybrid)."""

from __future__ import annotations

from typing import Annotated

import typer

from medllm.cli.common import handle_errors, out, print_json, settings_from


def retrieve(
    ctx: typer.Context,
    query: Annotated[str, typer.Argument(help="The query.")],
    k: Annotated[int | None, typer.Option("-k", "--top-k", min=1, help="Documents.")] = None,
    mode: Annotated[str | None, typer.Option(help="dense | bm25 | hybrid.")] = None,
    collection: Annotated[str | None, typer.Option(help="Collection (corpus) name.")] = None,
    embed_model: Annotated[str | None, typer.Option(help="Embedding model of the store.")] = None,
    year_from: Annotated[int | None, typer.Option(help="Only documents from this year.")] = None,
    year_to: Annotated[int | None, typer.Option(help="Only documents up to this year.")] = None,
    where: Annotated[
        list[str] | None,
        typer.Option(help="Metadata filter, e.g. 'year>=2010,pubtype=Review,mesh=Aspirin'."),
    ] = None,
    chroma_host: Annotated[str | None, typer.Option(help="Chroma server host.")] = None,
    chroma_port: Annotated[int | None, typer.Option(help="Chroma server port.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Search the store; one result per document (its best-matching chunk shown)."""
    if mode not in (None, "dense", "bm25", "hybrid"):
        raise typer.BadParameter("use dense, bm25 or hybrid", param_hint="--mode")
    if not query.strip():
        raise typer.BadParameter("the query is empty", param_hint="QUERY")
    s = settings_from(
        ctx,
        models={"embedding": embed_model},
        retrieval={"chroma_host": chroma_host, "chroma_port": chroma_port},
    )
    years = None
    if year_from is not None or year_to is not None:
        years = (year_from if year_from is not None else 0, year_to or 9999)
    with handle_errors():
        from medllm.retrieval import Retriever

        r = Retriever.from_settings(s, collection)
        docs = r.search(query, k=k, mode=mode, year_range=years, where=where or None)
    if as_json:
        print_json([d.to_dict() for d in docs])
        return
    if not docs:
        why = r.empty_filter(where or None, years) if (where or years) else None
        out.print(f"no documents found: {why}" if why else "no documents found")
    for d in docs:
        meta = d.metadata
        year = f" ({meta['year']})" if "year" in meta else ""
        rerank = "" if d.rerank_score is None else f"  rerank={d.rerank_score:.3f}"
        out.print(
            f"{d.rank}. {d.doc_id}{year}  score={d.score:.4f}  similarity={d.similarity:.3f}"
            + rerank
        )
        text = " ".join(d.text.split())
        out.print("   " + (text[:300] + "…" if len(text) > 300 else text))
