"""How often a generated answer calls its evidence insufficient although the gold abstract is cited.

    MEDLLM_HOME=/tmp/mh python bench/no_label_claims.py pqa --n 60 --tag new
    MEDLLM_HOME=/tmp/mh python bench/no_label_claims.py ncbi --tag new

Each question is asked through the Assistant with default settings — `pqa`: the first N PQA-L
*training* questions with a yes/no answer, collection `pubmedqa`; `ncbi`:
bench/questions/ncbi_yesno.jsonl, collection `ncbi` (bench/mixed_store.py shows how both are
built). The text after the engine's no-label sentence is searched for claims of insufficient
or inconclusive evidence (a regular expression: it counts phrasing, it does not judge). Every
question has a yes/no gold answer and its abstract indexed, so such a claim with the gold
abstract cited is wrong. Writes bench/out/no_label_claims_<set>_<tag>.json. Issue 13,
bench/RESULTS.md ("Answers without a label").
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CLAIM = re.compile(
    r"insufficient|inconclusive|not enough|no (clear |conclusive |sufficient )?evidence|unclear"
    r"|cannot be determined|do(es)? not (provide|answer|address)|not (clear|possible to)",
    re.IGNORECASE,
)


def items(which: str, n: int) -> tuple[str, list[tuple[str, list[str]]]]:
    if which == "ncbi":
        rows = [json.loads(x) for x in (HERE / "questions/ncbi_yesno.jsonl").read_text().split("\n")
                if x.strip()]  # fmt: skip
        return "ncbi", [(r["question"], r["gold"]) for r in rows]
    from medllm import pubmedqa

    src = HERE.parents[1] / "shared/data/pubmedqa"
    test = set(pubmedqa.load_test_pmids(src / "test_ground_truth.json"))
    recs = pubmedqa.load(src / "ori_pqal.json", strict=True).records
    keep = [x for x in recs if x.pmid not in test and x.final_decision in ("yes", "no")][:n]
    return "pubmedqa", [(x.question, [x.pmid]) for x in keep]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("set", choices=("pqa", "ncbi"))
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--tag", default="run")
    args = ap.parse_args()

    from medllm.agents import prompts
    from medllm.agents.hygiene import max_ngram_repeats
    from medllm.assistant import Assistant
    from medllm.config import Settings

    collection, qs = items(args.set, args.n)
    settings = Settings.load().with_overrides(retrieval={"collection": collection})
    a = Assistant.from_settings(settings)
    # the no-label sentences of this checkout and of the code before them
    heads = [getattr(prompts, "INCONCLUSIVE", ""), getattr(prompts, "INCONCLUSIVE_SENTENCE", "")]
    for v in getattr(prompts, "NO_VERDICT_SENTENCES", {}).values():
        heads += [v + getattr(prompts, "REPORT", ""), v]
    heads = sorted((h for h in heads if h), key=len, reverse=True)
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for q, gold in qs:
        r = a.ask(q)
        if r.abstained:
            rows.append({"question": q, "abstained": True})
            continue
        body = next((r.answer[len(h) :] for h in heads if r.answer.startswith(h)), r.answer)
        rows.append(
            {
                "question": q,
                "gold_cited": bool(set(gold) & {c.pmid for c in r.citations}),
                "claim": bool(CLAIM.search(body)),
                "max_4gram": max_ngram_repeats(r.answer),
                "answer": r.answer,
            }
        )
    ans = [x for x in rows if not x.get("abstained")]
    cited = [x for x in ans if x["gold_cited"]]
    summary = {
        "set": args.set,
        "questions": len(rows),
        "answered": len(ans),
        "gold_cited": len(cited),
        "claims_insufficient_with_gold_cited": sum(x["claim"] for x in cited),
        "max_4gram_repeats": max((x["max_4gram"] for x in ans), default=0),
        "seconds_per_question": round((time.perf_counter() - t0) / max(len(rows), 1), 2),
    }
    print(json.dumps(summary))
    out = HERE / "out" / f"no_label_claims_{args.set}_{args.tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"summary": summary, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
