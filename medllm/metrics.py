"""Classification and retrieval metrics with intervals: plain Python, no heavy imports.

* accuracy with a Wilson 95% interval; macro-F1 with a percentile-bootstrap 95% interval
  (seeded, so reports are reproducible);
* per-class precision/recall/F1 and the confusion matrix (rows = gold, columns = predicted);
* calibration: reliability bins and expected calibration error of the top-label confidence;
* risk-coverage: error rate among the items kept when abstaining below a confidence;
* retrieval: hit@k and reciprocal rank of the gold id in a ranked list.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from typing import Any

Z95 = 1.959963984540054


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion ``k/n``."""
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, centre - half), min(1.0, centre + half))


def per_class(
    gold: Sequence[str], pred: Sequence[str], labels: Sequence[str]
) -> dict[str, dict[str, float]]:
    out = {}
    for lab in labels:
        tp = sum(g == lab and p == lab for g, p in zip(gold, pred, strict=True))
        fp = sum(g != lab and p == lab for g, p in zip(gold, pred, strict=True))
        fn = sum(g == lab and p != lab for g, p in zip(gold, pred, strict=True))
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        out[lab] = {"precision": prec, "recall": rec, "f1": f1, "support": tp + fn}
    return out


def accuracy(gold: Sequence[str], pred: Sequence[str]) -> float:
    return sum(g == p for g, p in zip(gold, pred, strict=True)) / max(len(gold), 1)


def macro_f1(gold: Sequence[str], pred: Sequence[str], labels: Sequence[str]) -> float:
    pc = per_class(gold, pred, labels)
    return sum(v["f1"] for v in pc.values()) / len(labels) if labels else math.nan


def bootstrap_ci(
    gold: Sequence[str],
    pred: Sequence[str],
    labels: Sequence[str],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    statistic: Callable[[Sequence[str], Sequence[str]], float] | None = None,
) -> tuple[float, float]:
    """Percentile-bootstrap 95% interval of ``statistic`` (default: macro-F1 over ``labels``),
    resampling items."""
    n = len(gold)
    if n == 0:
        return (math.nan, math.nan)
    stat = statistic or (lambda g, p: macro_f1(g, p, labels))
    rng = random.Random(seed)
    stats = []
    for _ in range(n_boot):
        idx = [rng.randrange(n) for _ in range(n)]
        stats.append(stat([gold[i] for i in idx], [pred[i] for i in idx]))
    stats.sort()
    return (stats[int(0.025 * n_boot)], stats[min(n_boot - 1, int(0.975 * n_boot))])


def confusion(gold: Sequence[str], pred: Sequence[str], labels: Sequence[str]) -> list[list[int]]:
    """Counts with rows = gold label, columns = predicted label (in ``labels`` order)."""
    idx = {lab: i for i, lab in enumerate(labels)}
    m = [[0] * len(labels) for _ in labels]
    for g, p in zip(gold, pred, strict=True):
        m[idx[g]][idx[p]] += 1
    return m


def reliability(
    confidence: Sequence[float], correct: Sequence[bool], n_bins: int = 10
) -> dict[str, Any]:
    """Equal-width confidence bins (accuracy vs mean confidence) and the ECE."""
    bins: list[dict[str, float]] = []
    n = len(confidence)
    ece = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        members = [
            i for i, c in enumerate(confidence) if lo <= c < hi or (b == n_bins - 1 and c == 1.0)
        ]
        if not members:
            continue
        acc = sum(correct[i] for i in members) / len(members)
        conf = sum(confidence[i] for i in members) / len(members)
        ece += len(members) / n * abs(acc - conf)
        bins.append(
            {"lo": lo, "hi": hi, "count": len(members), "accuracy": acc, "confidence": conf}
        )
    return {"bins": bins, "ece": ece if n else math.nan}


def risk_coverage(confidence: Sequence[float], correct: Sequence[bool]) -> list[dict[str, float]]:
    """Keep the most confident items first: (coverage, risk=error rate, threshold) points."""
    order = sorted(range(len(confidence)), key=lambda i: -confidence[i])
    points = []
    errors = 0
    for kept, i in enumerate(order, start=1):
        errors += not correct[i]
        points.append(
            {"coverage": kept / len(order), "risk": errors / kept, "threshold": confidence[i]}
        )
    return points


def aurc(points: Sequence[dict[str, float]]) -> float:
    """Area under the risk-coverage curve (lower is better)."""
    return sum(p["risk"] for p in points) / len(points) if points else math.nan


def classification_report(
    gold: Sequence[str],
    pred: Sequence[str],
    labels: Sequence[str],
    confidence: Sequence[float] | None = None,
    *,
    seed: int = 0,
) -> dict[str, Any]:
    """Everything a label task reports, as a JSON-ready dict."""
    n = len(gold)
    k = sum(g == p for g, p in zip(gold, pred, strict=True))
    correct = [g == p for g, p in zip(gold, pred, strict=True)]
    out: dict[str, Any] = {
        "n": n,
        "accuracy": k / n if n else math.nan,
        "accuracy_ci95": list(wilson(k, n)),
        "macro_f1": macro_f1(gold, pred, labels),
        "macro_f1_ci95": list(bootstrap_ci(gold, pred, labels, seed=seed)),
        "per_class": per_class(gold, pred, labels),
        "labels": list(labels),
        "confusion": confusion(gold, pred, labels),
        "gold_distribution": {lab: sum(g == lab for g in gold) for lab in labels},
        "pred_distribution": {lab: sum(p == lab for p in pred) for lab in labels},
    }
    if confidence is not None:
        rel = reliability(confidence, correct)
        rc = risk_coverage(confidence, correct)
        out["calibration"] = {"ece": rel["ece"], "bins": rel["bins"]}
        out["risk_coverage"] = {"aurc": aurc(rc), "points": _thin(rc)}
    return out


def _thin(points: list[dict[str, float]], keep: int = 200) -> list[dict[str, float]]:
    if len(points) <= keep:
        return points
    step = len(points) / keep
    return [points[int(i * step)] for i in range(keep)] + [points[-1]]


def rank_of(gold: str, ranked: Sequence[str]) -> int | None:
    """1-based rank of ``gold`` in ``ranked`` (None when absent)."""
    try:
        return list(ranked).index(gold) + 1
    except ValueError:
        return None


def retrieval_report(ranks: Sequence[int | None], ks: Sequence[int] = (1, 3, 5, 10)) -> dict:
    """hit@k (with Wilson intervals) and MRR from the gold document's ranks."""
    n = len(ranks)
    hits = {}
    for k in ks:
        h = sum(r is not None and r <= k for r in ranks)
        hits[str(k)] = {"hit": h / n if n else math.nan, "ci95": list(wilson(h, n))}
    mrr = sum(1 / r for r in ranks if r is not None) / n if n else math.nan
    return {"n": n, "hit_at": hits, "mrr": mrr}
