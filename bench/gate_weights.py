"""The gate's likelihood stage on the Q4_1 file vs its float copy: how many decisions change.

    MEDLLM_HOME=/tmp/mh python bench/gate_weights.py --n 200

The first N PQA-L *training* questions, hybrid top 5 of the `pubmedqa` collection, with the
gold abstract and with it left out; every retrieved abstract is judged twice by the shipped
gate — its likelihood stage scored from the packaged Q4_1 GGUF as it is, and from the float
copy that ``models.gguf_weights = "auto"`` runs (medllm.models.gguf_float). Prints the pmi
differences over the pairs the stage scored and the decisions that change. Issue 12 / 13,
bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    args = ap.parse_args()

    from medllm import pubmedqa
    from medllm.agents.gate import judge
    from medllm.agents.gate_lm import QuestionLikelihood
    from medllm.config import Settings
    from medllm.models.gguf_float import runtime_path
    from medllm.models.registry import KNOWN_MODELS
    from medllm.retrieval import Retriever

    s = Settings.load()
    r = Retriever.from_settings(s)
    src = HERE.parents[1] / "shared/data/pubmedqa"
    test = set(pubmedqa.load_test_pmids(src / "test_ground_truth.json"))
    recs = [x for x in pubmedqa.load(src / "ori_pqal.json", strict=True).records
            if x.pmid not in test][: args.n]  # fmt: skip
    models = Path(s.paths.models_dir)
    gguf = KNOWN_MODELS["smollm2-135m-instruct"].locate(models)
    copy, ftype = runtime_path(gguf, "auto", models)
    print(f"float copy: {ftype} {copy}", flush=True)
    scorers = {"as-is": QuestionLikelihood(str(gguf)), "copy": QuestionLikelihood(str(copy))}

    def recording(name: str, out: list[float]) -> Callable[[str, str], float]:
        def f(q: str, text: str) -> float:
            v = scorers[name](q, text)
            out.append(v)
            return v

        return f

    diffs: list[float] = []
    flips = {"gold": 0, "leave-gold-out": 0}
    answered = {"gold": [0, 0], "leave-gold-out": [0, 0]}
    t0 = time.perf_counter()
    for x in recs:
        for mode in flips:
            docs = r.search(
                x.question, k=5, mode="hybrid", exclude=[x.pmid] if mode != "gold" else []
            )
            va: list[float] = []
            vb: list[float] = []
            t = s.agents.gate_threshold
            da = judge(x.question, docs, r.idf, threshold=t, scorer=recording("as-is", va))
            db = judge(x.question, docs, r.idf, threshold=t, scorer=recording("copy", vb))
            diffs += [abs(u - v) for u, v in zip(va, vb, strict=True)]
            pa, pb = [d.passed for d in da], [d.passed for d in db]
            flips[mode] += sum(u != v for u, v in zip(pa, pb, strict=True))
            answered[mode][0] += any(pa)
            answered[mode][1] += any(pb)
    print(
        json.dumps(
            {
                "questions": len(recs),
                "copy": ftype,
                "pairs_scored": len(diffs),
                "max_abs_dpmi": round(max(diffs, default=0.0), 4),
                "mean_abs_dpmi": round(sum(diffs) / max(len(diffs), 1), 4),
                "pair_decisions_changed": flips,
                "questions_answered_as_is_vs_copy": answered,
                "seconds": round(time.perf_counter() - t0),
            }
        )
    )


if __name__ == "__main__":
    main()
