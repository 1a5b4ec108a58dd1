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
    """Collections with their document and chunk counts, embedding model and chunking."""
    s = settings_from(ctx)
    with handle_errors():
        from medllm.storage.store import list_stores

        rows = list_stores(s)
    if as_json:
        print_json({"home": str(s.paths.home), "stores": rows})
        return
    if not rows:
        out.print(f"no stores under {s.paths.home}; run `medllm ingest ...` first")
    for r in rows:
        out.print(
            f"{r['collection']}  embedding={r['embedding']}  documents={r['documents']}  "
            f"chunks={r['chunks']}  chunk_size={r['chunk_size']}/{r['chunk_overlap']}  "
            f"chroma={r['chroma']}"
        )


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
        from medllm.storage.store import StoreRef, drop_store

        ref = StoreRef.from_settings(s, collection)
        if not ref.exists():
            raise StoreError(f"no store {ref.name} under {s.paths.home}")
        if not yes:
            typer.confirm(f"delete {ref.name}?", abort=True)
        drop_store(ref)
    out.print(f"deleted {ref.name}")
