"""End-to-end `ask` latency over PubMedQA questions.

    .venv/bin/python bench/ask_latency.py [--pubmedqa ../shared/data/pubmedqa/ori_pqal.json]
        [--n 20]

Needs a store with PubMedQA ingested (`medllm ingest pubmedqa --source FILE`) in MEDLLM_HOME.

``Assistant.ask`` (mode auto) on ``--n`` PubMedQA questions; p50/p90 seconds, the
route/abstain counts and whether the question's own PMID was cited. (Abstention is now decided
by the answerability gate, measured by `medllm eval pubmedqa --mode rag|leave-gold-out`; the
similarity-threshold calibration this script used to do is gone with that threshold.)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pubmedqa", default="../shared/data/pubmedqa/ori_pqal.json")
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
    report = {"date": date.today().isoformat(), "latency": lat, "rows": rows}
    a.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
