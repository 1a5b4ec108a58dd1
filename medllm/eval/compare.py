"""Side-by-side comparison of label-task run directories (same task and data file)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medllm.errors import DataError
from medllm.eval.report import ci, fmt


@dataclass
class Comparison:
    rows: list[dict[str, Any]]
    warnings: list[str]

    def markdown(self) -> str:
        lines = [
            "| run | model | adapter | variant | split | n | accuracy | 95% CI | macro-F1 "
            "| 95% CI |",
            "| --- " * 10 + "|",
        ]
        for r in self.rows:
            lines.append(
                f"| {r['run']} | {r['model']} | {r['adapter'] or '-'} | {r['variant'] or '-'} | "
                f"{r['split'] or '-'} | {r['n']} | {fmt(r['accuracy'])} | "
                f"{ci(r['accuracy_ci95'])} | "
                f"{fmt(r['macro_f1'])} | {ci(r['macro_f1_ci95'])} |"
            )
        return "\n".join(lines)


def _read(run: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    cfg, met = run / "config.json", run / "metrics.json"
    if not cfg.is_file() or not met.is_file():
        raise DataError(
            "not a finished medllm run directory (needs config.json and metrics.json)", path=run
        )
    try:
        return json.loads(cfg.read_text()), json.loads(met.read_text())
    except ValueError as e:
        raise DataError(f"unreadable run files: {e}", path=run) from None


def compare_runs(runs: list[Path]) -> Comparison:
    if not runs:
        raise DataError("give at least one run directory")
    rows = []
    first: dict[str, Any] | None = None
    for run in runs:
        cfg, met = _read(Path(run))
        ident = cfg.get("identity", {})
        if "accuracy" not in met:
            kind = f"{ident.get('task')!r} {ident.get('variant') or ''}".strip()
            raise DataError(
                f"a {kind} run: compare takes label-scorer runs (pubmedqa no-context or "
                "gold-context, nli, mcq), not engine (rag, leave-gold-out, yesno), retrieval or "
                "ragas runs — read their report.md or metrics.json",
                path=run,
            )
        if first is None:
            first = ident
        elif (ident.get("task"), ident.get("data_sha256")) != (
            first.get("task"),
            first.get("data_sha256"),
        ):
            raise DataError(
                f"run from another dataset: {ident.get('task')} on {ident.get('dataset')} "
                f"(sha256 {str(ident.get('data_sha256'))[:12]}) vs {first.get('task')} on "
                f"{first.get('dataset')} (sha256 {str(first.get('data_sha256'))[:12]})",
                path=run,
            )
        adapter = (cfg.get("adapter") or {}).get("path")
        rows.append(
            {
                "run": Path(run).name,
                "model": ident.get("model"),
                "adapter": Path(adapter).name if adapter else None,
                "adapter_sha256": ident.get("adapter_sha256"),
                "variant": ident.get("variant"),
                "split": ident.get("split"),
                "n": met["n"],
                "accuracy": met["accuracy"],
                "accuracy_ci95": met["accuracy_ci95"],
                "macro_f1": met["macro_f1"],
                "macro_f1_ci95": met["macro_f1_ci95"],
            }
        )
    return Comparison(rows, _warnings(rows))


def _warnings(rows: list[dict[str, Any]]) -> list[str]:
    out = []
    splits = sorted({str(r["split"]) for r in rows if r["split"]})
    if len(splits) > 1:
        out.append(
            f"the runs are on different splits ({', '.join(splits)}): their figures are not "
            "comparable"
        )
    if len({r["n"] for r in rows}) > 1:
        out.append("the runs cover different numbers of items (--limit?): compare with care")
    for tuned in (r for r in rows if r["adapter_sha256"]):
        for base in rows:
            same = (base["model"], base["variant"], base["split"]) == (
                tuned["model"],
                tuned["variant"],
                tuned["split"],
            )
            if same and not base["adapter_sha256"] and tuned["accuracy"] < base["accuracy"]:
                out.append(
                    f"fine-tuned {tuned['run']} (adapter {tuned['adapter']}) scores below its base "
                    f"model {base['model']} in {base['run']}: accuracy {fmt(tuned['accuracy'])} < "
                    f"{fmt(base['accuracy'])}"
                )
    return out
