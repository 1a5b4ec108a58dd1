"""What quoted answers quote, through the engine: before (the sentence sharing the most words
with the question) and after (a sentence reporting a finding, medllm/agents/findings.py).

    MEDLLM_HOME=... python bench/quote_findings.py pqa [--n 60]
    MEDLLM_HOME=... python bench/quote_findings.py ncbi     # 30 questions, collection `ncbi`

Default settings (the packaged SmolLM2, whose calibration shows no skill, so every answered
yes/no question is quoted). ``pqa``: the first ``--n`` PQA-L *training* questions (the official
test split is never read), each quote traced back to its abstract's section label — the share
from results/conclusions sections is reported, with the share of aim-phrased quotes ("We
aimed to determine whether …", ``bench/train_findings.AIM``). ``ncbi``: the 30 questions of
``bench/questions/ncbi_yesno.jsonl`` over the NCBI-disease abstracts (unstructured: the learnt
model decides; data it was not fitted on) — aim-phrased quotes, quotes of an abstract's first
sentence, and the quote's mean relative position in its abstract. Writes
bench/out/quote_findings_{set}.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
_QUOTE = re.compile(r"“(.+?)”\s*\[(\d+)\]")


def old_best_sentence(doc_text: str, query: str) -> str:
    """The choice before this change (medllm 296fe1a's citations.best_sentence)."""
    from medllm.agents.citations import _words
    from medllm.agents.prompts import sanitize, sentences

    clean, _ = sanitize(doc_text)
    cands = sentences(clean) or [clean]
    q = _words(query)
    best = max(cands, key=lambda s: (len(_words(s) & q), -abs(len(s) - 200)))
    return best if len(best) <= 400 else best[:397] + "..."


def run(engine: Any, items: list[dict[str, Any]], sections: dict[str, Any]) -> dict[str, Any]:
    from train_findings import AIM

    from medllm.agents.prompts import sentences

    quotes = finding = aim = first = 0
    position = 0.0
    rows = []
    for it in items:
        a = engine.ask(it["question"])
        for text, n in _QUOTE.findall(a.answer):
            doc = a.citations and next((c for c in a.citations if c.number == int(n)), None)
            if doc is None:
                continue
            quotes += 1
            aim += bool(AIM.search(text))
            body = text.rstrip(".")[:80]
            secs = sections.get(doc.pmid)
            if secs is not None:  # PQA-L: (label, context) pairs
                finding += any(
                    body.split(": ", 1)[-1][:60] in ctx and lab for lab, ctx in secs if lab
                )
            sents = sentences(it["texts"].get(doc.pmid, "")) if it.get("texts") else []
            idx = next((i for i, s in enumerate(sents) if body[:60] in s), None)
            if idx is not None:
                first += idx == 0
                position += idx / max(1, len(sents) - 1)
            rows.append({"question": it["question"], "pmid": doc.pmid, "quote": text})
    return {
        "questions": len(items),
        "quotes": quotes,
        "from_results_or_conclusions": finding if sections else None,
        "aim_phrased": aim,
        "first_sentence": first,
        "mean_relative_position": round(position / max(1, quotes), 3),
        "rows": rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("set", choices=["pqa", "ncbi"])
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--pubmedqa", default=str(ROOT.parent / "shared" / "data" / "pubmedqa"))
    ap.add_argument("--ncbi", default=str(ROOT.parent / "shared" / "data" / "ncbi-disease"))
    args = ap.parse_args()

    from medllm import Assistant
    from medllm.agents import citations
    from medllm.agents.findings import is_finding_label
    from medllm.config import Settings
    from medllm.pubmedqa import load, load_test_pmids

    over: dict[str, Any] = {}
    sections: dict[str, Any] = {}
    if args.set == "pqa":
        src = Path(args.pubmedqa)
        test = load_test_pmids(src / "test_ground_truth.json")
        recs = [r for r in load(src / "ori_pqal.json").records if r.pmid not in test][: args.n]
        items = [{"question": r.question, "texts": {r.pmid: r.context_text}} for r in recs]
        for r in load(src / "ori_pqal.json").records:
            labels = list(r.labels) + [""] * (len(r.contexts) - len(r.labels))
            sections[r.pmid] = [
                (lab if is_finding_label(lab) else "", ctx)
                for lab, ctx in zip(labels, r.contexts, strict=False)
            ]
    else:
        texts = {}
        for line in (Path(args.ncbi) / "abstracts.jsonl").read_text().splitlines():
            d = json.loads(line)
            texts[d["pmid"]] = d["text"]
        qs = [json.loads(x) for x in (ROOT / "bench/questions/ncbi_yesno.jsonl").open()]
        items = [{"question": q["question"], "texts": texts} for q in qs]
        over["retrieval"] = {"collection": "ncbi"}
    engine = Assistant.from_settings(Settings.load().with_overrides(**over)).engine
    res: dict[str, Any] = {"set": args.set}
    new = citations.best_sentence
    for name, fn in (("before", old_best_sentence), ("after", new)):
        citations.best_sentence = fn  # type: ignore[assignment]
        try:
            got = run(engine, items, sections)
        finally:
            citations.best_sentence = new  # type: ignore[assignment]
        res[name] = got
        print(name, {k: v for k, v in got.items() if k != "rows"}, flush=True)
    out = ROOT / "bench" / "out"
    out.mkdir(exist_ok=True)
    (out / f"quote_findings_{args.set}.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
