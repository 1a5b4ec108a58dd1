"""The RAG tutorial's PubMedQA table with local models, produced by the eval harness.

Rows: no-context, gold-context, RAG per retrieval mode (with the store's embedding model; RAG
rows ask the engine itself with uncalibrated labels: accuracy over the answered questions, the
rest abstained, coverage in the JSON);
columns: models (and adapters given as MODEL=ADAPTER_DIR). Cells: accuracy on PQA-L
(``--split all``, the tutorial's protocol) with a 95% Wilson interval. Each cell is a normal
run directory under bench/out/eval_table/ (resumable), and the table goes to
bench/out/eval_table.json (``--json-out``) and stdout (markdown).

    .venv/bin/python bench/eval_table.py --limit 30 --models smollm2-135m-instruct,gemma3-270m

With a fine-tuned adapter as a column use ``--split test``: adapters are trained on the other
500 PQA-L questions, so ``--split all`` would score them on their own training data.

RAG rows need the PubMedQA store: `medllm ingest pubmedqa` first.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

REFERENCE = {  # the tutorial's own figures (Gemma-7b-it, all 1,000 PQA-L questions)
    "no-context": "0.551",
    "gold-context": "0.679",
    "rag": "0.672-0.678",
}
OUT = Path(__file__).parent / "out"


def main() -> None:
    from medllm.config import Settings
    from medllm.eval.engine_eval import run_engine_eval
    from medllm.eval.label import run_label_task
    from medllm.eval.pubmedqa import engine_items, pubmedqa_task

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="smollm2-135m-instruct,gemma3-270m")
    ap.add_argument("--rag-modes", default="hybrid,dense,bm25")
    ap.add_argument(
        "--rag-models",
        default=None,
        help="columns that also get the RAG rows (comma-separated, as in --models; default: all)",
    )
    ap.add_argument("--split", default="all")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("-k", type=int, default=3)
    ap.add_argument("--source", default=None, help="PubMedQA directory (default eval.pubmedqa_dir)")
    ap.add_argument("--json-out", default="eval_table.json", help="file name under bench/out/")
    args = ap.parse_args()

    rows = ["no-context", "gold-context"] + [f"rag-{m}" for m in args.rag_modes.split(",") if m]
    cols = [c for c in args.models.split(",") if c]
    results: dict[str, dict[str, dict]] = {r: {} for r in rows}
    record = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, 2-core CPU",
        "args": vars(args),
        "rows": rows,
        "columns": cols,
        "results": results,
        "reference_gemma_7b_it": REFERENCE,
    }
    OUT.mkdir(exist_ok=True)
    # Row by row (the cheap settings first for every model); the table is rewritten after
    # every cell, so an interrupted run still leaves what it measured.
    rag_cols = set(args.rag_models.split(",")) if args.rag_models else set(cols)
    for row, col in ((r, c) for r in rows for c in cols):
        if row.startswith("rag") and col not in rag_cols:
            results[row][col] = {"skipped": "not in --rag-models"}
            continue
        model, _, adapter = col.partition("=")
        s = Settings.load(models={"llm": model, "adapter": adapter or None})
        mode, _, rmode = row.partition("-") if row.startswith("rag") else (row, "", "")
        t0 = time.perf_counter()
        try:
            run_out = OUT / "eval_table" / f"{col.replace('/', '_')}-{row}"
            if mode == "rag":  # the engine users get; its scorer's argmax on answered items
                s = s.with_overrides(
                    retrieval={"mode": rmode, "top_k": args.k}, agents={"labels": "uncalibrated"}
                )
                items, path = engine_items(s, split=args.split, source=args.source)
                eres = run_engine_eval(
                    items,
                    s,
                    name="eval-table",
                    data_path=path,
                    generate=False,
                    out=run_out,
                    limit=args.limit,
                )
                em = eres.metrics
                results[row][col] = {
                    "accuracy": em["accuracy_labelled"],
                    "ci95": em["accuracy_labelled_ci95"],
                    "coverage": em["coverage"],
                    "n": em["n"],
                    "seconds": round(time.perf_counter() - t0, 1),
                    "run_dir": str(eres.path),
                }
                print(f"{col} {row}: acc {em['accuracy_labelled']} (n={em['n']})", flush=True)
                (OUT / args.json_out).write_text(json.dumps(record, indent=2))
                continue
            task = pubmedqa_task(s, mode=mode, split=args.split, source=args.source)
            res = run_label_task(task, s, out=run_out, limit=args.limit)
        except Exception as e:  # one failing model (e.g. not installed) keeps its column
            results[row][col] = {"error": f"{type(e).__name__}: {e}"[:200]}
            print(f"{col} {row}: {results[row][col]['error']}", flush=True)
            continue
        m = res.metrics
        results[row][col] = {
            "accuracy": m["accuracy"],
            "ci95": m["accuracy_ci95"],
            "macro_f1": m["macro_f1"],
            "predicted": m["pred_distribution"],
            "n": m["n"],
            "seconds": round(time.perf_counter() - t0, 1),
            "run_dir": str(res.path),
        }
        print(f"{col} {row}: acc {m['accuracy']:.3f} (n={m['n']})", flush=True)
        (OUT / args.json_out).write_text(json.dumps(record, indent=2))
    (OUT / args.json_out).write_text(json.dumps(record, indent=2))
    print(markdown(record))


def markdown(rec: dict) -> str:
    cols = rec["columns"]

    def head(col: str) -> str:
        model, _, adapter = col.partition("=")
        return f"{model} + adapter {Path(adapter).name}" if adapter else model

    lines = [
        "| setting | " + " | ".join(head(c) for c in cols) + " | tutorial: Gemma-7b-it |",
        "| --- " * (len(cols) + 2) + "|",
    ]
    for row in rec["rows"]:
        cells = []
        for c in cols:
            v = rec["results"][row].get(c, {})
            if "accuracy" in v and v["accuracy"] is None:  # a RAG row that labelled nothing
                cells.append(f"no label (coverage {v['coverage']:.2f}, n={v['n']})")
            elif "accuracy" in v:
                # label rows carry macro-F1; RAG rows the coverage (accuracy is on answered items)
                extra = (
                    f"F1 {v['macro_f1']:.2f}"
                    if "macro_f1" in v
                    else f"coverage {v['coverage']:.2f}"
                )
                cells.append(
                    f"{v['accuracy']:.3f} [{v['ci95'][0]:.2f}, {v['ci95'][1]:.2f}] "
                    f"({extra}, n={v['n']})"
                )
            elif "skipped" in v:
                cells.append("not run")
            else:
                cells.append("n/a")
        ref = REFERENCE["rag" if row.startswith("rag") else row]
        lines.append(f"| {row} | " + " | ".join(cells) + f" | {ref} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
