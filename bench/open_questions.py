"""Open (not yes/no) questions through the engine: is every sentence of an answer the cited
abstracts' own words? ``agents.answer_text`` 'generate' against the shipped 'auto'.

    MEDLLM_HOME=... python bench/open_questions.py --questions bench/questions/ncbi_open.jsonl \\
        --collection ncbi

The store: ``medllm ingest files ../shared/data/ncbi-disease/abstracts.jsonl --id-field pmid
--collection ncbi``. The questions (JSONL: ``question``, ``gold`` document ids) were written
from NCBI-disease titles for this check; nothing was tuned on them. Prints each answer and,
per setting: answered, abstained, answers all of whose sentences (over 20 characters) appear
verbatim in a cited abstract, and answers citing the gold abstract.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _sentences(answer: str) -> list[str]:
    from medllm.agents import prompts

    body = re.sub(r"\s*\[\d+\]", "", answer.replace(prompts.QUOTED, ""))
    body = body.replace("“", "").replace("”", "")
    return [x.strip() for x in re.split(r"(?<=[.!?])\s+", body) if len(x.strip()) > 20]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--questions", default="bench/questions/ncbi_open.jsonl")
    ap.add_argument("--collection", default="ncbi")
    args = ap.parse_args()

    from medllm.assistant import Assistant
    from medllm.config import Settings

    s = Settings.load(retrieval={"collection": args.collection})
    a = Assistant.from_settings(s)
    e = a.engine
    assert e.retriever is not None
    qs = [json.loads(line) for line in Path(args.questions).read_text().splitlines() if line]
    for how in ("generate", "auto"):
        e.settings = s.with_overrides(agents={"answer_text": how})
        answered = abstained = verbatim = gold = 0
        for q in qs:
            r = e.ask(q["question"])
            if r.abstained:
                abstained += 1
                print(f"{how} ABSTAINED | {q['question']}")
                continue
            answered += 1
            texts = []
            for c in r.citations:
                d = e.retriever.get(c.pmid)
                texts.append(" ".join(d.text.split()) if d else "")
            sents = _sentences(r.answer)
            ok = bool(sents) and all(any(x[:-1] in t for t in texts) for x in sents)
            verbatim += ok
            gold += any(c.pmid in q.get("gold", []) for c in r.citations)
            tag = "VERBATIM" if ok else "NOT-VERBATIM"
            print(f"{how} {tag} | {q['question']} | {' '.join(r.answer.split())[:300]}")
        print(
            f"== {how}: answered {answered}/{len(qs)}, abstained {abstained}, every sentence "
            f"verbatim from a cited abstract {verbatim}/{answered}, gold cited {gold}/{answered}"
        )


if __name__ == "__main__":
    main()
