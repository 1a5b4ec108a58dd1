"""RAGAS with a local judge, plus judge-free retrieval metrics, on PubMedQA questions.

For each question the engine users get answers it (:class:`medllm.agents.engine.Engine`:
retrieval, answerability gate, selective label, checked citations; the answer capped at
``answer_tokens``); its contexts are the abstracts it cited (none when it abstained), and the
label is the engine's calibrated label (None when withheld). Then the answer is scored with

* LLM-judged RAGAS metrics (faithfulness, response relevancy, context precision, context
  recall), judged by a local model from the registry through RAGAS' ``LlamaIndexLLMWrapper``
  with local embeddings through ``LlamaIndexEmbeddingsWrapper``;
* judge-free metrics: RAGAS ``IDBasedContextPrecision``/``IDBasedContextRecall`` against the
  gold PMID, ``NonLLMContextRecall`` (string similarity to the gold abstract), and exact match
  of the engine's label against the gold decision (over the labelled items).

A judge output that cannot be parsed (or yields no verdict) is counted per metric and shown in
the report with its most common reason; it is never averaged as zero — means are over the items
that got a score. The judge runs with a context of its own (:func:`judge_context_window`): RAGAS'
prompts do not fit ``generation.context_window``'s default. Nothing leaves the machine and RAGAS
telemetry is off (``RAGAS_DO_NOT_TRACK``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import shutil
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medllm.errors import DataError, MedllmError
from medllm.eval import report
from medllm.eval.base import (
    RunDir,
    RunResult,
    base_config,
    check_limit,
    default_run_path,
    model_hash,
    progress,
    run_items,
    sha256_file,
)
from medllm.eval.pubmedqa import data_files, load_split

if TYPE_CHECKING:
    from medllm.config import Settings

logger = logging.getLogger(__name__)

JUDGED = ("faithfulness", "response_relevancy", "context_precision", "context_recall")
JUDGE_FREE = ("id_context_precision", "id_context_recall", "nonllm_context_recall")
FAILURES = (("parse_error", "parse errors"), ("no_verdict", "no verdict"), ("error", "errors"))

# RAGAS' prompts (instructions, few-shot examples, question, answer, the cited abstracts) run to
# 2-3k tokens for one PubMedQA question, and a parse failure sends the whole prompt again inside
# the fix-the-format prompt: past generation.context_window's 2048 default. 8192 holds them and
# keeps a llama.cpp KV cache small; a model trained on less gets its own length.
JUDGE_CONTEXT = 8192


def trained_context(settings: Settings, name: str) -> int | None:
    """The context length model ``name`` was trained on, where medllm runs it through llama.cpp
    (the GGUF's ``<arch>.context_length``); None when unknown. The other backends need none:
    transformers caps its window at the model's ``max_position_embeddings`` itself, and a server
    sizes its own context."""
    from medllm.models.backend import resolve_backend

    js = settings.with_overrides(models={"llm": name})
    try:
        if resolve_backend(js) != "llama-cpp":
            return None
        from medllm.models.gguf_tokenizer import read_gguf_metadata
        from medllm.models.llamacpp import gguf_path

        meta = read_gguf_metadata(gguf_path(name, js))
        n = meta.get(f"{meta.get('general.architecture')}.context_length")
    except Exception as e:  # unreadable: the judge gets JUDGE_CONTEXT and llama.cpp warns
        logger.debug("no trained context length for %s: %s", name, e)
        return None
    return int(n) if isinstance(n, int) and n > 0 else None


def judge_context_window(settings: Settings, name: str) -> int:
    """Tokens the judge's context holds: ``generation.context_window`` raised to
    :data:`JUDGE_CONTEXT`, capped at the model's trained length when known. Only the judge (and
    the answering model when it is the judge, in this evaluation) runs with it: llama.cpp's
    context size changes what fits, not what the model answers."""
    want = max(settings.generation.context_window, JUDGE_CONTEXT)
    trained = trained_context(settings, name)
    return min(want, trained) if trained else want


def _metrics(judge: Any, embeddings: Any, names: tuple[str, ...]) -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from ragas.metrics._answer_relevance import ResponseRelevancy
        from ragas.metrics._context_precision import (
            IDBasedContextPrecision,
            LLMContextPrecisionWithReference,
        )
        from ragas.metrics._context_recall import (
            IDBasedContextRecall,
            LLMContextRecall,
            NonLLMContextRecall,
        )
        from ragas.metrics._faithfulness import Faithfulness
        from ragas.run_config import RunConfig

    made: dict[str, Any] = {
        "id_context_precision": IDBasedContextPrecision(),
        "id_context_recall": IDBasedContextRecall(),
        "nonllm_context_recall": NonLLMContextRecall(),
    }
    if judge is not None:
        judged = {
            "faithfulness": Faithfulness(llm=judge),
            "response_relevancy": ResponseRelevancy(llm=judge, embeddings=embeddings, strictness=1),
            "context_precision": LLMContextPrecisionWithReference(llm=judge),
            "context_recall": LLMContextRecall(llm=judge),
        }
        made.update({k: v for k, v in judged.items() if k in names})
    rc = RunConfig(timeout=600, max_retries=1, max_wait=1, max_workers=1)
    for m in made.values():
        m.init(rc)
    return made


def _classify(exc: BaseException) -> str:
    name = type(exc).__name__
    if "Parser" in name or name in {"ValidationError", "JSONDecodeError", "OutputParserException"}:
        return "parse_error"
    return "error"


def _one_line(message: str, width: int = 160) -> str:
    text = " ".join(message.split())
    return text if len(text) <= width else text[: width - 1] + "…"


_RETRIES_USED = "RagasOutputParserException (retries used up), last: "


def _reason_key(message: str) -> str:
    """Messages alike in their first 60 characters, numbers aside, are one reason: token counts
    differ, and so does the tail of a judge's output quoted by a parser error."""
    text = " ".join(message.split()).removeprefix(_RETRIES_USED)
    return re.sub(r"\d+", "#", text)[:60]


def _reasons(rows: list[dict[str, Any]], status: str) -> str | None:
    """The most common error message among ``rows`` with ``status``, on one line, as first
    seen (see :func:`_reason_key`); ``"k of n: …"`` when others differ. None when there are none
    or they recorded no message."""
    msgs = [r["error"] for r in rows if r["status"] == status and r.get("error")]
    if not msgs:
        return None
    groups = Counter(_reason_key(m) for m in msgs)
    key, k = groups.most_common(1)[0]
    shown = _one_line(next(m for m in msgs if _reason_key(m) == key))
    n = sum(r["status"] == status for r in rows)
    return shown if k == n else f"{k} of {n}: {shown}"


def failure_summary(v: dict[str, Any]) -> str:
    """One metric's failure counts, each with its most common reason when recorded, e.g.
    ``parse errors 0  no verdict 0  errors 2 (ValueError: Requested tokens …)``."""
    why = v.get("why") or {}
    parts = []
    for status, label in FAILURES:
        n = v.get(status, 0)
        parts.append(f"{label} {n} ({why[status]})" if n and why.get(status) else f"{label} {n}")
    return "  ".join(parts)


def judge_verdict(m: dict[str, Any]) -> str | None:
    """A plain sentence when the judge scored nothing at all; None otherwise."""
    judged = {k: v for k, v in m["metrics"].items() if k in JUDGED}
    if judged and not any(v["scored"] for v in judged.values()):
        return (
            f"The judge gave no usable verdict: none of the {len(judged)} judged metrics scored "
            "an item (the reasons are listed per metric)."
        )
    return None


def _error_text(exc: BaseException) -> str:
    """``Type: message``; for RAGAS' bare "failed to parse … including retries" also the
    parser's own error on the judge's last output (the exception it was raised from), which
    quotes that output."""
    text = f"{type(exc).__name__}: {exc}"
    inner = exc.__cause__ or exc.__context__
    if type(exc).__name__ == "RagasOutputParserException" and inner is not None:
        last = str(inner).split("For troubleshooting, visit:")[0].strip()
        text = f"{_RETRIES_USED}{type(inner).__name__}: {last}"
    return text[:300]


async def _score(metric: Any, sample: Any) -> dict[str, Any]:
    t0 = time.perf_counter()
    row: dict[str, Any]
    try:
        v = await metric.single_turn_ascore(sample)
    except Exception as e:  # a judge failure is data, not a crash: count it
        row = {"value": None, "status": _classify(e), "error": _error_text(e)}
    else:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            row = {"value": None, "status": "no_verdict"}
        else:
            row = {"value": float(v), "status": "ok"}
    row["seconds"] = round(time.perf_counter() - t0, 2)  # a judged metric can take minutes
    return row


def run_ragas_eval(
    settings: Settings,
    *,
    limit: int | None = 5,
    split: str = "test",
    source: str | Path | None = None,
    k: int | None = None,
    retrieval: str | None = None,
    judge_metrics: tuple[str, ...] = JUDGED,
    answer_tokens: int = 96,
    out: Path | None = None,
    fresh: bool = False,
    show_progress: bool = True,
) -> RunResult:
    check_limit(limit)
    unknown = [m for m in judge_metrics if m not in JUDGED]
    if unknown:
        raise DataError(f"unknown RAGAS metric(s) {unknown}; choose from {', '.join(JUDGED)}")
    from medllm.models.backend import load_backend, model_identity
    from medllm.retrieval import Retriever
    from medllm.storage import filters

    pqal, gt = data_files(settings, source)
    records, _ = load_split(pqal, gt, split)
    every_id = [r.pmid for r in records]
    records = records[:limit] if limit else records
    filters.parse(settings.retrieval.where)  # a bad --where stops here, before any run directory
    retriever = Retriever.from_settings(settings)
    kk = k or settings.retrieval.top_k
    rmode = retrieval or settings.retrieval.mode
    # No judged metric, no judge: it is neither loaded nor named (run directory, report).
    judge_name = (settings.eval.judge_llm or settings.models.llm) if judge_metrics else None
    judge_ctx = judge_context_window(settings, judge_name) if judge_name else None
    ident = model_identity(settings)
    identity = {
        "task": "ragas",
        "dataset": pqal.name,
        "data_sha256": sha256_file(pqal),
        "split": split,
        "retrieval": rmode,
        "k": kk,
        "embedding": settings.models.embedding,
        "collection": settings.retrieval.collection,
        "model": settings.models.llm,
        "model_sha256": model_hash(ident["path"]) if ident["source"] != "server" else None,
        "backend": ident["backend"],
        "judge": judge_name,
        "judge_context_window": judge_ctx,
        "judge_metrics": list(judge_metrics),
        # a filtered run never resumes an unfiltered one
        **({"where": settings.retrieval.where} if settings.retrieval.where else {}),
    }
    path = out or default_run_path(
        settings,
        "ragas",
        rmode,
        f"k{kk}",
        settings.models.llm,
        f"judge-{judge_name}" if judge_name else "no-judge",
        where=settings.retrieval.where,
    )
    config = base_config(
        settings,
        data={"path": str(pqal), "n_items": len(records), "limit": limit},
        judge={
            "llm": judge_name,
            "embedding": settings.models.embedding,
            "context_window": judge_ctx,
        },
        telemetry="off (RAGAS_DO_NOT_TRACK=true)",
    )
    run = RunDir.open(path, identity, config, fresh=fresh, default=out is None)
    by_id = {r.pmid: r for r in records}
    state: dict[str, Any] = {}
    # The judge's context: its own, not generation.context_window (RAGAS' prompts outgrow it).
    judge_gen = {"context_window": judge_ctx} if judge_ctx else None

    def setup() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            from ragas.embeddings.base import LlamaIndexEmbeddingsWrapper
            from ragas.llms.base import LlamaIndexLLMWrapper
        from medllm.agents.engine import Engine

        shared = bool(judge_metrics) and judge_name == settings.models.llm
        # When the answering model is the judge it runs with the judge's context (llama.cpp's
        # context size changes what fits, not what it answers); else with its own.
        state["backend"] = load_backend(
            settings.with_overrides(generation=judge_gen) if shared else settings
        )
        engine_settings = settings.with_overrides(
            retrieval={"mode": rmode, "top_k": kk},
            generation={"max_new_tokens": min(answer_tokens, settings.generation.max_new_tokens)},
        )
        # One model: the engine answers on the same backend that judges (when it is the judge).
        state["engine"] = Engine(engine_settings, backend=state["backend"], retriever=retriever)
        judge_llm = None
        if judge_metrics:  # the judge: the same backend, or the judge model on its backend
            if shared:
                judge_llm = state["backend"].llm
            else:
                js = settings.with_overrides(
                    models={"llm": judge_name}, api={"model": judge_name}, generation=judge_gen
                )
                judge_llm = load_backend(js).llm
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            judge = LlamaIndexLLMWrapper(judge_llm) if judge_llm is not None else None
            emb = LlamaIndexEmbeddingsWrapper(retriever.embed_model)
        state["metrics"] = _metrics(judge, emb, judge_metrics)

    def step(ids: list[str]) -> list[dict[str, Any]]:
        from ragas.dataset_schema import SingleTurnSample

        if not state:
            setup()
        out_recs = []
        for pmid in ids:
            r = by_id[pmid]
            bar.set_postfix_str(f"{pmid}: answering")
            # The engine users get answers (gate, selective label, checked citations); the
            # contexts are the abstracts it cited, none when it abstained.
            ans = state["engine"].ask(r.question, mode="auto", k=kk)
            cited = [retriever.get(c.pmid) for c in ans.citations]
            docs = [d for d in cited if d is not None]
            contexts = [d.text for d in docs]
            answer = ans.answer.strip()
            label = ans.label
            sample = SingleTurnSample(
                user_input=r.question,
                response=answer or "(empty)",
                retrieved_contexts=contexts or [""],
                reference=r.long_answer or r.final_decision or "",
                reference_contexts=[r.context_text],
                retrieved_context_ids=[d.doc_id for d in docs],
                reference_context_ids=[pmid],
            )
            scores = {}
            for name, m in state["metrics"].items():  # a judged metric can take minutes
                bar.set_postfix_str(f"{pmid}: {name}")
                scores[name] = asyncio.run(_score(m, sample))
            out_recs.append(
                {
                    "id": pmid,
                    "gold": r.final_decision,
                    "retrieved": [d.doc_id for d in docs],
                    "answer": answer,
                    "answer_label": label,
                    "exact_match": None if label is None else label == r.final_decision,
                    "abstained": ans.abstained,
                    "scores": scores,
                }
            )
            bar.update(1)
        return out_recs

    # Its own bar (run_items' shows none), so that it can name the metric being judged.
    bar = progress(len(by_id), sum(i in by_id for i in run.done()), "ragas", show_progress)
    try:
        items = run_items(
            run, list(by_id), step, batch_size=1, desc="ragas", show_progress=False, known=every_id
        )
    except MedllmError:  # e.g. a model that cannot be loaded: nothing asked, nothing left
        if run.created and not run.done():
            shutil.rmtree(run.path, ignore_errors=True)
        raise
    finally:
        bar.close()
    metrics = aggregate(items, list(JUDGE_FREE) + list(judge_metrics))
    metrics["identity"] = identity
    run.write_json("metrics.json", metrics)
    _write_report(run, metrics)
    return RunResult(run.path, metrics, items)


def aggregate(items: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    """Per metric: mean over scored items only, and counts of each failure kind."""
    per: dict[str, Any] = {}
    for name in names:
        rows = [it["scores"].get(name) for it in items if name in it["scores"]]
        vals = [r["value"] for r in rows if r["status"] == "ok"]
        counts = {
            s: sum(r["status"] == s for r in rows)
            for s in ("ok", "parse_error", "no_verdict", "error")
        }
        per[name] = {
            "mean": sum(vals) / len(vals) if vals else None,
            "scored": len(vals),
            "of": len(rows),
            **{k: v for k, v in counts.items() if k != "ok"},
        }
        why = {s: w for s, _ in FAILURES if (w := _reasons(rows, s))}
        if why:
            per[name]["why"] = why
    labelled = [it for it in items if it["answer_label"] is not None]
    em = sum(bool(it["exact_match"]) for it in labelled)
    return {
        "n": len(items),
        "metrics": per,
        # The engine's label (calibrated, selective) against the gold decision; an item the
        # engine abstained on or withheld the label of has none.
        "exact_match": {
            "accuracy_over_labelled": em / len(labelled) if labelled else None,
            "accuracy_over_all": em / len(items) if items else None,
            "labelled": len(labelled),
            "unlabelled": len(items) - len(labelled),
            "abstained": sum(bool(it.get("abstained")) for it in items),
        },
    }


def exact_match_summary(em: dict[str, Any]) -> str:
    """The engine's label against the gold decision, in words."""
    return (
        f"Exact match of the engine's label: {report.fmt(em['accuracy_over_labelled'])} over "
        f"{em['labelled']} labelled answers, {report.fmt(em['accuracy_over_all'])} over all; "
        f"{em['unlabelled']} without a label ({em['abstained']} abstained, the rest withheld: "
        "uncalibrated, no skill or below the threshold)"
    )


def _write_report(run: RunDir, m: dict[str, Any]) -> None:
    ident = run.identity
    lines = [
        "# RAGAS with a local judge",
        "",
        f"Answers by `{ident['model']}`, "
        + (
            f"judged by `{ident['judge']}` (RAGAS LlamaIndexLLMWrapper)"
            if ident.get("judge")
            else "no judge (judge-free metrics only)"
        )
        + f", embeddings `{ident['embedding']}`; retrieval {ident['retrieval']} "
        f"top-{ident['k']} over `{ident['collection']}`"
        + (f" (filter `{ident['where']}`)" if ident.get("where") else "")
        + f"; {m['n']} questions.",
        "",
        "Means are over scored items only: judge outputs that failed to parse or gave no "
        "verdict are counted, not averaged as zero.",
        "",
        "| metric | mean | scored / items | parse errors | no verdict | other errors |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, v in m["metrics"].items():
        lines.append(
            f"| {name} | {report.fmt(v['mean'])} | {v['scored']} / {v['of']} | "
            f"{v['parse_error']} | {v['no_verdict']} | {v['error']} |"
        )
    why = [(name, v) for name, v in m["metrics"].items() if v.get("why")]
    if why:
        lines += ["", "Why items were not scored (the most common reason per metric):", ""]
        labels = dict(FAILURES)
        for name, v in why:
            for status, text in v["why"].items():
                shown = text.replace("`", "'")
                lines.append(f"- {name}, {labels[status]} {v[status]}: `{shown}`")
    verdict = judge_verdict(m)
    if verdict:
        lines += ["", f"**{verdict}**"]
    em = m["exact_match"]
    lines += ["", exact_match_summary(em) + "."]
    (run.path / "report.md").write_text("\n".join(lines) + "\n")
