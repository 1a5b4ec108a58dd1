"""Abstention threshold calibration and end-to-end `ask` latency over PubMedQA questions.

    .venv/bin/python bench/ask_latency.py [--pubmedqa ../shared/data/pubmedqa/ori_pqal.json]
        [--calib 200] [--n 20]

Needs a store with PubMedQA ingested (`medllm ingest pubmedqa --source FILE`) in MEDLLM_HOME.

1. Calibration: the best retrieval similarity (the abstention signal) for ``--calib`` PubMedQA
   questions (answerable: their abstract is indexed) and for off-topic questions (not
   answerable from the corpus). Reports the threshold that separates them best (balanced
   accuracy) and the error rates at the configured threshold.
2. Latency: ``Assistant.ask`` (mode auto) on ``--n`` PubMedQA questions; p50/p90 seconds, the
   route/abstain counts and whether the question's own PMID was cited.
Writes bench/out/ask_latency.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import date
from pathlib import Path
from typing import Any

OFF_TOPIC = [
    "What is the boiling point of liquid nitrogen on Mars?",
    "Who won the football world cup in 1998?",
    "How do I bake sourdough bread at home?",
    "What is the capital city of Australia?",
    "How many moons does Jupiter have?",
    "What is the best programming language for web development?",
    "When was the Eiffel Tower built?",
    "How do I change a flat tyre on a bicycle?",
    "What is the plot of the novel Moby Dick?",
    "Which stock market index tracks technology companies?",
    "How fast can a cheetah run?",
    "What is the exchange rate between the euro and the yen?",
    "How do solar panels generate electricity?",
    "What is the tallest mountain in South America?",
    "Who painted the Mona Lisa?",
    "How does a blockchain reach consensus?",
    "What temperature should I set my oven for roasting vegetables?",
    "What are the rules of chess castling?",
    "How long does it take light to travel from the Sun to Earth?",
    "Which planets in the solar system have rings?",
    "How do I train a puppy to sit?",
    "What is the speed of sound in dry air?",
    "Who composed the Four Seasons?",
    "What causes the northern lights?",
    "How do I install Python packages with pip?",
    "What is the population of Tokyo?",
    "How are diamonds formed?",
    "What is the difference between weather and climate?",
    "Which language has the most native speakers?",
    "How does a jet engine work?",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pubmedqa", default="../shared/data/pubmedqa/ori_pqal.json")
    ap.add_argument("--calib", type=int, default=200)
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "ask_latency.json")
    a = ap.parse_args()

    from medllm.assistant import Assistant
    from medllm.config import Settings
    from medllm.pubmedqa import load

    s = Settings.load()
    recs = load(Path(a.pubmedqa)).records
    assistant = Assistant.from_settings(s)
    engine = assistant.engine

    def best(q: str) -> float:
        return max((d.similarity for d in engine.retrieve(q)), default=0.0)

    # Calibration on the last --calib records; latency on the first --n (disjoint).
    pos = [best(r.question) for r in recs[-a.calib :]]
    neg = [best(q) for q in OFF_TOPIC]
    vals = sorted(set(pos + neg))
    cands = [round((x + y) / 2, 3) for x, y in zip(vals, vals[1:], strict=False)]

    def bal_acc(t: float) -> float:
        tpr = sum(x >= t for x in pos) / len(pos)
        tnr = sum(x < t for x in neg) / len(neg)
        return (tpr + tnr) / 2

    # Midpoint of the widest gap among the thresholds with the best balanced accuracy.
    best_t = max(cands, key=lambda t: (bal_acc(t), -abs(t - (max(neg) + min(pos)) / 2)))
    cur = s.retrieval.relevance_threshold
    calib = {
        "pubmedqa": {"n": len(pos), "min": min(pos), "p05": sorted(pos)[len(pos) // 20]},
        "off_topic": {"n": len(neg), "max": max(neg), "p95": sorted(neg)[int(len(neg) * 0.95)]},
        "best_threshold": best_t,
        "best_balanced_accuracy": bal_acc(best_t),
        "configured_threshold": cur,
        "answerable_abstain_rate_at_configured": sum(x < cur for x in pos) / len(pos),
        "off_topic_answer_rate_at_configured": sum(x >= cur for x in neg) / len(neg),
    }
    print(json.dumps(calib, indent=2))

    times: list[float] = []
    rows: list[dict[str, Any]] = []
    for r in recs[: a.n]:
        t0 = time.perf_counter()
        ans = assistant.ask(r.question)
        dt = time.perf_counter() - t0
        times.append(dt)
        rows.append(
            {
                "pmid": r.pmid,
                "seconds": dt,
                "route": ans.route,
                "abstained": ans.abstained,
                "label": ans.label,
                "gold": r.final_decision,
                "own_pmid_cited": r.pmid in {c.pmid for c in ans.citations},
                "timing": ans.timing,
            }
        )
        print(f"{r.pmid} {dt:6.2f}s {ans.route:6s} label={ans.label} gold={r.final_decision}")
    q = statistics.quantiles(times, n=10)
    lat = {
        "n": len(times),
        "p50_s": statistics.median(times),
        "p90_s": q[-1],
        "rag": sum(x["route"] == "rag" for x in rows),
        "abstained": sum(x["abstained"] for x in rows),
        "own_pmid_cited": sum(x["own_pmid_cited"] for x in rows),
        "label_accuracy": sum(x["label"] == x["gold"] for x in rows) / len(rows),
        "backend": engine.backend,
        "max_new_tokens": s.generation.max_new_tokens,
    }
    print(json.dumps(lat, indent=2))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    report = {"date": date.today().isoformat(), "calibration": calib, "latency": lat, "rows": rows}
    a.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
