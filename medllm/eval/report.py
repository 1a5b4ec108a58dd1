"""Markdown reports and PNG plots of a run directory (matplotlib, headless)."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from medllm.eval.base import RunDir

logger = logging.getLogger(__name__)


def fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def ci(pair: Any) -> str:
    return f"[{fmt(pair[0])}, {fmt(pair[1])}]" if pair else "n/a"


class _Figures:
    """Figures without pyplot, so plotting never switches the matplotlib backend of a
    notebook or an application that embeds medllm."""

    @staticmethod
    def subplots(**kwargs: Any) -> tuple[Any, Any]:
        from matplotlib.figure import Figure

        fig = Figure(**kwargs)
        return fig, fig.subplots()

    @staticmethod
    def close(fig: Any) -> None:  # pyplot keeps a registry of figures; Figure() does not
        del fig


def _plt() -> Any:
    return _Figures


PLOTS_MISSING = (
    "plots skipped: matplotlib is not installed (`pip install 'medllm[eval]'`); every figure "
    "is in metrics.json"
)


def try_plot(fn: Any, *args: Any) -> Path | None:
    """``fn(*args)``, or None (with one warning) when matplotlib is missing: a run's figures
    are computed and saved whether or not they can be drawn."""
    try:
        return fn(*args)  # type: ignore[no-any-return]
    except ImportError:
        logger.warning(PLOTS_MISSING)
        return None


def plot_confusion(path: Path, labels: list[str], matrix: list[list[int]], title: str) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 2, 1.2 * len(labels) + 1.5))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    top = max((max(r) for r in matrix), default=0)
    for i, row in enumerate(matrix):
        for j, v in enumerate(row):
            ax.text(j, i, str(v), ha="center", va="center", color="white" if v > top / 2 else "k")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_reliability(path: Path, bins: list[dict[str, float]], ece: float, title: str) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    xs = [b["confidence"] for b in bins]
    ys = [b["accuracy"] for b in bins]
    ax.plot(xs, ys, "o-", label=f"model (ECE {ece:.3f})")
    for b in bins:
        ax.annotate(str(b["count"]), (b["confidence"], b["accuracy"]), fontsize=7)
    ax.set_xlabel("confidence of the predicted label")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_risk_coverage(path: Path, points: list[dict[str, float]], aurc: float, title: str) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([p["coverage"] for p in points], [p["risk"] for p in points], label=f"AURC {aurc:.3f}")
    ax.set_xlabel("coverage (answered fraction, most confident first)")
    ax.set_ylabel("risk (error rate among answered)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_hit_at_k(path: Path, curves: dict[str, dict[str, Any]], title: str) -> Path:
    """``curves``: {name: retrieval_report dict}."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 4))
    for name, rep in curves.items():
        ks = sorted(int(k) for k in rep["hit_at"])
        ax.plot(ks, [rep["hit_at"][str(k)]["hit"] for k in ks], "o-", label=name)
    ax.set_xlabel("k")
    ax.set_ylabel("hit@k (gold document in top k)")
    ax.set_ylim(0, 1.02)
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def label_plots(run: RunDir, m: dict[str, Any], title: str) -> list[str]:
    files = [
        try_plot(plot_confusion, run.path / "confusion.png", m["labels"], m["confusion"], title)
    ]
    if "calibration" in m:
        cal, rc = m["calibration"], m["risk_coverage"]
        files.append(
            try_plot(plot_reliability, run.path / "reliability.png", cal["bins"], cal["ece"], title)
        )
        files.append(
            try_plot(
                plot_risk_coverage, run.path / "risk_coverage.png", rc["points"], rc["aurc"], title
            )
        )
    if "retrieval" in m:
        files.append(
            try_plot(plot_hit_at_k, run.path / "hit_at_k.png", {"retrieval": m["retrieval"]}, title)
        )
    return [f.name for f in files if f is not None]


def write_label_report(run: RunDir, m: dict[str, Any], *, title: str) -> Path:
    from medllm.eval.base import scored_by

    plots = label_plots(run, m, title)
    ident = run.identity
    lines = [
        f"# {title}",
        "",
        f"Model `{ident.get('model')}`"
        + (
            f", adapter sha256 `{ident['adapter_sha256'][:12]}`"
            if ident.get("adapter_sha256")
            else ""
        )
        + f"; data `{ident.get('dataset')}` (sha256 `{str(ident.get('data_sha256'))[:12]}`); "
        f"{m['n']} items. Scored by {scored_by(run.config.get('adapter'))} over "
        f"{', '.join(m['labels'])}.",
        "",
        "| metric | value | 95% interval |",
        "| --- | --- | --- |",
        f"| accuracy | {fmt(m['accuracy'])} | {ci(m['accuracy_ci95'])} (Wilson) |",
        f"| macro-F1 | {fmt(m['macro_f1'])} | {ci(m['macro_f1_ci95'])} (bootstrap) |",
    ]
    for name, v in m.get("baselines", {}).items():
        lines.append(f"| baseline: {name} | {fmt(v)} | |")
    if "calibration" in m:
        lines.append(f"| expected calibration error | {fmt(m['calibration']['ece'])} | |")
        lines.append(f"| risk-coverage AURC | {fmt(m['risk_coverage']['aurc'])} | |")
    lines += ["", "## Per class", "", "| label | precision | recall | F1 | support |"]
    lines.append("| --- | --- | --- | --- | --- |")
    for lab, v in m["per_class"].items():
        lines.append(
            f"| {lab} | {fmt(v['precision'])} | {fmt(v['recall'])} | {fmt(v['f1'])} | "
            f"{v['support']} |"
        )
    lines += ["", "## Confusion matrix (rows gold, columns predicted)", ""]
    lines.append("| gold \\ pred | " + " | ".join(m["labels"]) + " |")
    lines.append("| --- " * (len(m["labels"]) + 1) + "|")
    for lab, row in zip(m["labels"], m["confusion"], strict=True):
        lines.append(f"| {lab} | " + " | ".join(str(v) for v in row) + " |")
    if "retrieval" in m:
        r = m["retrieval"]
        lines += ["", "## Retrieval (gold PMID among the retrieved)", ""]
        lines += ["| k | hit@k |", "| --- | --- |"]
        lines += [f"| {k} | {fmt(v['hit'])} |" for k, v in r["hit_at"].items()]
        lines.append(f"\nMRR {fmt(r['mrr'])}")
    t = m.get("timing", {})
    lines += [
        "",
        f"Timing: {t.get('items_this_call')} items scored in {t.get('seconds_this_call')} s "
        f"this call ({t.get('items_per_s')} items/s).",
        "",
        "## Plots",
        "",
    ]
    lines += [f"![{p}]({p})" for p in plots]
    p = run.path / "report.md"
    p.write_text("\n".join(lines) + "\n")
    return p
