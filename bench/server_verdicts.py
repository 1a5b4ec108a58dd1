"""Verdicts in the text of answers from a server backend: before (no check) and after.

    MEDLLM_HOME=... python bench/server_verdicts.py --api-base http://127.0.0.1:8080/v1 [--n 60]
    MEDLLM_HOME=... python bench/server_verdicts.py --api-base ... \
        --questions bench/questions/ncbi_yesno.jsonl --collection ncbi

A server (vLLM, Ollama, llama.cpp's) cannot continue the engine's first sentence ("No yes/no
verdict: …", "Yes."), so the model writes its own verdict after it. The same engine asks the
first ``--n`` PQA-L *training* questions (the official test split is never read) twice: once as
before this check existed (``TextGuard`` without ``verdicts``, no stance instruction in the
prompt), once as shipped. Counted per answer: a sentence after the first stating a verdict other
than the label shown (any verdict when none is shown, :func:`hygiene.verdict_of`), answers that
fell back to quoting the cited abstracts, and answers with nothing after the first sentence.
``--questions``: a JSONL of yes/no questions (``question`` field) instead, asked of
``--collection``. Needs the store (``medllm ingest``) and a server that serves the model;
writes bench/out/server_verdicts[--tag].json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def run(engine: Any, questions: list[str], check: bool) -> dict[str, Any]:
    from medllm.agents import engine as engine_mod
    from medllm.agents import hygiene, prompts
    from medllm.agents.hygiene import verdict_of

    class Before(hygiene.TextGuard):
        """The guard as it was: no verdict check, and (reporting text generated) no quotes
        when nothing is left."""

        generated = property(lambda self: "-", lambda self, v: None)  # type: ignore[assignment]

    real_guard, real_stance = engine_mod.TextGuard, prompts.stance_instruction
    if not check:  # the engine as it was: no verdict check, no stance instruction
        engine_mod.TextGuard = lambda **kw: Before()  # type: ignore[assignment,misc]
        prompts.stance_instruction = lambda label: ""  # type: ignore[assignment]
    try:
        rows = []
        for q in questions:
            a = engine.ask(q)
            rest = prompts.sentences(a.answer)[1:]
            off = [s for s in rest if verdict_of(s) not in (None, a.label)]
            rows.append(
                {
                    "question": q,
                    "label": a.label,
                    "withheld": a.label_withheld,
                    "off_label_verdicts": len(off),
                    "quoted": a.quoted,
                    "only_first_sentence": not rest,
                    "answer": a.answer,
                }
            )
    finally:
        engine_mod.TextGuard, prompts.stance_instruction = real_guard, real_stance  # type: ignore[misc]
    n = len(rows)
    return {
        "questions": n,
        "answers_with_an_off_label_verdict": sum(r["off_label_verdicts"] > 0 for r in rows),
        "quoted": sum(r["quoted"] for r in rows),
        "only_first_sentence": sum(r["only_first_sentence"] for r in rows),
        "labels_shown": sum(r["label"] is not None for r in rows),
        "rows": rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--api-base", required=True)
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--pubmedqa", default=str(ROOT.parent / "shared" / "data" / "pubmedqa"))
    ap.add_argument("--labels", default="calibrated", help="agents.labels for both runs")
    ap.add_argument("--questions", help="JSONL of yes/no questions instead of PQA-L training")
    ap.add_argument("--collection", help="store to ask (default: retrieval.collection)")
    ap.add_argument("--tag", default="", help="suffix of the output file name")
    args = ap.parse_args()

    from medllm import Assistant
    from medllm.config import Settings
    from medllm.pubmedqa import load, load_test_pmids

    if args.questions:
        lines = Path(args.questions).read_text().splitlines()
        questions = [json.loads(x)["question"] for x in lines if x.strip()][: args.n]
    else:
        src = Path(args.pubmedqa)
        test = load_test_pmids(src / "test_ground_truth.json")
        recs = [r for r in load(src / "ori_pqal.json").records if r.pmid not in test]
        questions = [r.question for r in recs][: args.n]
    over: dict[str, Any] = {
        "api": {"base": args.api_base},
        "models": {"backend": "openai-compatible"},
        "agents": {"labels": args.labels},
    }
    if args.collection:
        over["retrieval"] = {"collection": args.collection}
    engine = Assistant.from_settings(Settings.load().with_overrides(**over)).engine
    res: dict[str, Any] = {
        "api_base": args.api_base,
        "labels": args.labels,
        "questions": args.questions or "PQA-L training",
    }
    for name, check in (("before", False), ("after", True)):
        r = run(engine, questions, check)
        res[name] = r
        print(name, {k: v for k, v in r.items() if k != "rows"}, flush=True)
    out = ROOT / "bench" / "out"
    out.mkdir(exist_ok=True)
    (out / f"server_verdicts{args.tag}.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
