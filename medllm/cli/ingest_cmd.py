"""``medllm ingest``: PubMedQA or generic files into the store (Chroma + docstore + BM25)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from medllm.cli.common import err, handle_errors, out, print_json, settings_from
from medllm.pipelines.readers import plural as _n

app = typer.Typer(help="Ingest documents into a searchable store.", no_args_is_help=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable summary.")]
CollectionOpt = Annotated[
    str | None, typer.Option(help="Collection (corpus) name; default retrieval.collection.")
]
EmbedOpt = Annotated[str | None, typer.Option(help="Embedding model: known name, hub id, dir.")]
ChunkOpt = Annotated[int | None, typer.Option(min=32, help="Chunk size in tokens.")]
OverlapOpt = Annotated[int | None, typer.Option(min=0, help="Chunk overlap in tokens.")]
HostOpt = Annotated[str | None, typer.Option(help="Chroma server host (default: embedded).")]
PortOpt = Annotated[int | None, typer.Option(help="Chroma server port.")]


def _settings(ctx: typer.Context, embed_model: str | None, **retrieval: Any) -> Any:
    return settings_from(ctx, models={"embedding": embed_model}, retrieval=retrieval)


def _report(summary: Any, as_json: bool) -> None:
    if as_json:
        print_json(summary.to_dict())
    else:
        for w in summary.warnings:
            err.print(f"warning: {w}", markup=False)
        for e in summary.errors:
            err.print(f"rejected: {e}", markup=False)
        n = summary.restamped
        only_meta = f" ({n} only in metadata, not re-embedded)" if n else ""
        out.print(
            f"{summary.store}: {summary.new} new, {summary.updated} updated{only_meta}, "
            f"{summary.unchanged} unchanged, {summary.rejected} rejected; "
            f"{_n(summary.chunks, 'chunk')} embedded; store holds "
            f"{_n(summary.documents_total, 'document')} in {_n(summary.chunks_total, 'chunk')} "
            f"({summary.seconds:.1f} s)"
        )


@app.command("pubmedqa")
def pubmedqa(
    ctx: typer.Context,
    source: Annotated[
        str | None,
        typer.Option(help="Official-schema JSON file or URL; default downloads PQA-L."),
    ] = None,
    collection: CollectionOpt = None,
    embed_model: EmbedOpt = None,
    chunk_size: ChunkOpt = None,
    chunk_overlap: OverlapOpt = None,
    chroma_host: HostOpt = None,
    chroma_port: PortOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Ingest PubMedQA abstracts (PQA-L, PQA-A or PQA-U schema); one document per PMID."""
    s = _settings(
        ctx,
        embed_model,
        chunk_size=chunk_size,
        chunk_overlap=chunk_overlap,
        chroma_host=chroma_host,
        chroma_port=chroma_port,
    )
    with handle_errors():
        from medllm.pipelines.ingest import ingest_pubmedqa

        summary = ingest_pubmedqa(s, source, collection=collection, show_progress=not as_json)
    _report(summary, as_json)


@app.command("files")
def files(
    ctx: typer.Context,
    paths: Annotated[
        list[Path], typer.Argument(help="JSONL/CSV files, .txt/.md/.pdf files or directories.")
    ],
    format: Annotated[
        str | None, typer.Option("--format", help="jsonl | csv | dir (default: from the name).")
    ] = None,
    id_field: Annotated[str, typer.Option(help="Id field/column (JSONL, CSV).")] = "id",
    text_field: Annotated[str, typer.Option(help="Text field/column (JSONL, CSV).")] = "text",
    metadata_field: Annotated[
        list[str] | None,
        typer.Option(help="Metadata field to keep (repeatable; default: all other fields)."),
    ] = None,
    collection: CollectionOpt = None,
    embed_model: EmbedOpt = None,
    chunk_size: ChunkOpt = None,
    chunk_overlap: OverlapOpt = None,
    chroma_host: HostOpt = None,
    chroma_port: PortOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Ingest JSONL/CSV records, or .txt/.md/.pdf files (given alone or in directories)."""
    if format not in (None, "jsonl", "csv", "dir"):
        raise typer.BadParameter("use jsonl, csv or dir", param_hint="--format")
    s = _settings(
        ctx,
        embed_model,
        chunk_size=chunk_size,
        chunk_overlap=chunk_overlap,
        chroma_host=chroma_host,
        chroma_port=chroma_port,
    )
    with handle_errors():
        from medllm.pipelines.ingest import ingest_files

        summary = ingest_files(
            s,
            paths,
            format=format,  # type: ignore[arg-type]
            id_field=id_field,
            text_field=text_field,
            metadata_fields=metadata_field,
            collection=collection,
            show_progress=not as_json,
        )
    _report(summary, as_json)


@app.command("pubmed")
def pubmed(
    ctx: typer.Context,
    paths: Annotated[
        list[Path],
        typer.Argument(help="MEDLINE/PubMed XML files (.xml, .xml.gz) or directories of them."),
    ],
    collection: CollectionOpt = None,
    embed_model: EmbedOpt = None,
    chunk_size: ChunkOpt = None,
    chunk_overlap: OverlapOpt = None,
    chroma_host: HostOpt = None,
    chroma_port: PortOpt = None,
    limit_files: Annotated[
        int | None, typer.Option(min=1, help="Only the first N files (in NLM order).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Ingest PubMed baseline/update XML files in order: deletions and revised citations
    applied, bad records named and skipped; files already read are skipped on a re-run."""
    s = _settings(
        ctx,
        embed_model,
        chunk_size=chunk_size,
        chunk_overlap=chunk_overlap,
        chroma_host=chroma_host,
        chroma_port=chroma_port,
    )
    with handle_errors():
        from medllm.pipelines.pubmed_ingest import ingest_pubmed

        summary = ingest_pubmed(
            s, paths, collection=collection, limit_files=limit_files, show_progress=not as_json
        )
    _report(summary, as_json)
    if not as_json:
        out.print(
            f"files: {summary.files} read, {summary.files_skipped} already done, "
            f"{len(summary.files_failed)} failed; {summary.deleted} deleted, "
            f"{summary.no_abstract} without abstract, {summary.superseded} superseded"
        )
    for e in summary.files_failed:
        err.print(f"[bold red]error:[/] {e}", markup=True, highlight=False)
    if summary.files_failed:
        raise typer.Exit(1)
