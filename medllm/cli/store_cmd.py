"""``medllm store``: what is stored (collections, document and chunk counts, models)."""

from __future__ import annotations

from typing import Annotated

import typer

from medllm.cli.common import handle_errors, out, print_json, settings_from

app = typer.Typer(help="Inspect and manage stores.", no_args_is_help=True)


@app.command("stats")
def stats(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Collections with their document and chunk counts, embedding model, chunking, sizes on
    disk and the memory a query process needs (estimated)."""
    s = settings_from(ctx)
    with handle_errors():
        from medllm.storage.store import list_stores, store_sizes, unfinished_stores

        rows = list_stores(s)
        for row in rows:
            row.update(store_sizes(row))
        unfinished = unfinished_stores(s)
    if as_json:
        print_json({"home": str(s.paths.home), "stores": rows, "unfinished": unfinished})
        return
    if not rows and not unfinished:
        out.print(f"no stores under {s.paths.home}; run `medllm ingest ...` first")
    for u in unfinished:
        why = (
            "not complete: its first ingestion is running or was stopped (run it again to "
            "complete it, or `medllm store drop`)"
            if u["problem"] == "no manifest"
            else f"{u['problem']} ({u['path']}/manifest.json): `medllm store drop` it and ingest "
            "again"
        )
        out.print(f"{u['store']}  {why}", markup=False)
    for r in rows:
        out.print(
            f"{r['collection']}  embedding={r['embedding']}  documents={r['documents']}  "
            f"chunks={r['chunks']}  chunk_size={r['chunk_size']}/{r['chunk_overlap']}  "
            f"chroma={r['chroma']}"
        )
        disk, mem = r["disk_bytes"], r["memory_bytes_estimate"]
        chroma = disk["chroma_all_collections"]
        out.print(
            f"  disk: BM25 {_mb(disk['bm25'])}, docstore {_mb(disk['docstore'])}, "
            + (
                f"Chroma (all collections) {_mb(chroma)}"
                if chroma is not None
                else "Chroma: server"
            )
            + f"; memory to query (est.): HNSW {_mb(mem['hnsw'])}, BM25 "
            f"{_mb(mem['bm25_resident'])} resident + {_mb(mem['bm25_read_per_query'])} read "
            "per query"
        )
        bm = r["bm25_index"]
        if bm["segments"]:
            out.print(
                f"  BM25: {bm['segments']} segment(s), {bm['documents']} documents"
                + (
                    f", {bm['dead_documents']} removed or replaced (merged away later)"
                    if bm["dead_documents"]
                    else ""
                )  # fmt: skip
            )


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


@app.command("drop")
def drop(
    ctx: typer.Context,
    collection: Annotated[str, typer.Argument(help="Collection (corpus) name.")],
    embed_model: Annotated[str | None, typer.Option(help="Embedding model of the store.")] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask.")] = False,
) -> None:
    """Delete a store (its Chroma collection, docstore and BM25 index)."""
    s = settings_from(ctx, models={"embedding": embed_model})
    with handle_errors():
        from medllm.errors import StoreError
        from medllm.storage.store import StoreRef, drop_store, list_stores

        ref = StoreRef.from_settings(s, collection)
        if not ref.exists() and not ref.dir.is_dir():  # a directory alone: a first run stopped
            rows = list_stores(s)
            same = [r["embedding"] for r in rows if r.get("collection") == collection]
            there = ", ".join(f"{r['collection']} (embedding {r['embedding']})" for r in rows)
            raise StoreError(
                f"no store {ref.name} under {s.paths.home}; "
                + (
                    f"collection {collection!r} is stored with embedding model(s) "
                    f"{', '.join(same)}: add --embed-model {same[0]}"
                    if same
                    else (f"stores there: {there}" if rows else "there are no stores")
                )
            )
        if not yes:
            typer.confirm(f"delete {ref.name}?", abort=True)
        drop_store(ref)
    out.print(f"deleted {ref.name}")
