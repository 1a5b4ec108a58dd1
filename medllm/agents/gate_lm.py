"""The gate's second opinion: does reading the abstract make the question predictable?

For the (question, abstract) pairs the gate's term and similarity features leave in doubt,
:class:`QuestionLikelihood` asks a small language model how much more likely the question's
tokens become once the abstract has been read:

    pmi = mean log P(question | "Abstract: <text> ... A question this abstract answers:")
        - mean log P(question | "Question:")

An abstract that addresses the question predicts its rare words and its phrasing; a
neighbouring abstract on the same field predicts only the field's words. It is meant for the
wording term matching misses (the gold abstracts v1 rejected said "sex education" for a
question's "sexual health", "time to appendectomy" for "delayed surgery"); what it adds is
measured as a whole, on the PQA-L training questions (bench/RESULTS.md, issue 13, gate v3),
not per example.

The scorer is the gate's own model, like the embedder is retrieval's: the packaged
SmolLM2-135M-Instruct GGUF, in-process through llama.cpp, whatever model answers — an 8B model
or one behind an OpenAI-compatible server is neither asked nor loaded twice; when the answering
model *is* that GGUF on llama.cpp, its model is shared (one copy). It runs with the weights
``models.gguf_weights`` gives (by default a BF16/F16 copy of the Q4_1 file,
:mod:`medllm.models.gguf_float`), so an own copy and a shared model give the same values; the
stage was fitted on values from the Q4_1 kernels, which differ from the copy's by 0.035 nats on
average (bench/RESULTS.md). It costs one prompt evaluation of the abstract (~1.3 s a pair on
2 CPU cores from the Q4_1 file, ~2.5x less from the copy), which is why the gate asks it only
inside its uncertainty band.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from functools import lru_cache
from typing import Any

logger = logging.getLogger(__name__)

SCORER_MODEL = "smollm2-135m-instruct"
N_CTX = 1024
PREFIX = "Abstract: {text}\n\nA question this abstract answers:"
PRIOR = "Question:"


class QuestionLikelihood:
    """``scorer(question, text) -> float``: the question's per-token pointwise mutual
    information with the abstract (nats), under a small llama.cpp model."""

    def __init__(
        self,
        model_path: str | None = None,
        n_threads: int | None = None,
        *,
        llama: Any = None,
        lock: Any = None,
    ) -> None:
        """Load ``model_path``, or share ``llama`` — the answering backend's own llama.cpp
        model when it is the same GGUF (one copy in the process), used under the backend's
        ``lock``."""
        if llama is None:
            if model_path is None:
                raise ValueError("QuestionLikelihood needs a model_path or a llama to share")
            from llama_cpp import Llama

            from medllm.models.llamacpp import _no_extra_buffers, _threads

            threads = n_threads or _threads()[1]
            with _no_extra_buffers():  # loaded as the backend loads it (no AMX repacking)
                llama = Llama(
                    model_path=model_path,
                    n_ctx=N_CTX,
                    n_batch=N_CTX,
                    n_ubatch=N_CTX,
                    n_threads=threads,
                    n_threads_batch=threads,
                    n_gpu_layers=0,
                    logits_all=False,
                    verbose=False,
                )
        self.llm = llama
        self.shared = lock is not None
        self._lock = lock if lock is not None else threading.Lock()
        self._prior: OrderedDict[str, float] = OrderedDict()

    def _tok(self, text: str, bos: bool) -> list[int]:
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=bos, special=False))

    def _mean_logprob(self, prefix: list[int], target: list[int]) -> float:
        """Mean log-probability of ``target`` after ``prefix`` (one prompt evaluation; logits
        are computed for the target's positions only)."""
        import llama_cpp
        import numpy as np

        from medllm.models.llamacpp import log_softmax

        lm = self.llm
        ctx, batch, vocab, step = lm._ctx, lm._batch, lm.n_vocab(), lm.n_batch
        ctx.kv_cache_seq_rm(-1, 0, -1)
        lm.n_tokens = 0  # a shared model re-evaluates its next prompt from the start
        for i in range(0, len(prefix), step):  # logits for the prefix's last token only
            batch.set_batch(prefix[i : i + step], i, False)
            ctx.decode(batch)
        first = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx.ctx, -1), shape=(vocab,))
        rows = [first.copy()]
        rest = target[:-1]
        for i in range(0, len(rest), step):
            part = rest[i : i + step]
            batch.set_batch(part, len(prefix) + i, True)
            ctx.decode(batch)
            out = np.ctypeslib.as_array(ctx.get_logits(), shape=(len(part) * vocab,))
            rows.append(out.reshape(len(part), vocab).copy())
        ctx.kv_cache_seq_rm(-1, 0, -1)
        lp = log_softmax(np.vstack(rows))
        return float(lp[np.arange(len(target)), target].mean())

    def __call__(self, question: str, text: str) -> float:
        target = self._tok(" " + question.strip(), bos=False)[: N_CTX // 4]
        if not target:
            return 0.0
        with self._lock:
            prior = self._prior.get(question)
            if prior is None:
                prior = self._mean_logprob(self._tok(PRIOR, bos=True), target)
                self._prior[question] = prior
                while len(self._prior) > 256:
                    self._prior.popitem(last=False)
            prefix = self._tok(PREFIX.format(text=text.strip()), bos=True)
            room = min(N_CTX, self.llm.n_ctx()) - len(target) - 1
            if len(prefix) > room:  # keep the start (BOS) and the end (findings, the cue)
                prefix = prefix[:1] + prefix[len(prefix) - room + 1 :]
            value = self._mean_logprob(prefix, target) - prior
        return value if math.isfinite(value) else 0.0

    def close(self) -> None:
        if not self.shared:
            self.llm.close()


@lru_cache(maxsize=1)
def load_scorer(models_dir: str, weights: str = "auto") -> QuestionLikelihood:
    """The gate's own copy of the scorer model, loaded once per process; ``weights`` as
    ``models.gguf_weights`` (the same rule as the answering backend, so that a shared model
    and an own copy give the same values)."""
    from pathlib import Path

    from medllm.models.gguf_float import runtime_path
    from medllm.models.registry import KNOWN_MODELS

    path = KNOWN_MODELS[SCORER_MODEL].locate(Path(models_dir))
    run, _ = runtime_path(path, weights, Path(models_dir))
    scorer = QuestionLikelihood(str(run))
    import atexit

    atexit.register(scorer.close)  # before interpreter teardown (llama-cpp-python's __del__)
    return scorer


class LazyScorer:
    """The scorer, loaded on the first doubtful pair: a question whose abstracts are all clear
    passes or fails never loads it (``medllm ask`` peak RSS 715 MB without it, ~840 MB with
    it, bench/RESULTS.md)."""

    def __init__(self, models_dir: str, weights: str = "auto") -> None:
        self.models_dir, self.weights = models_dir, weights

    def __call__(self, question: str, text: str) -> float:
        return load_scorer(self.models_dir, self.weights)(question, text)


def gate_scorer(
    settings: Any, backend: Any = None, lock: Any = None
) -> LazyScorer | QuestionLikelihood | None:
    """The gate's scorer (its own copy loaded once per process, on first use; the engine keeps
    the result); None (and the gate's
    term-only threshold) when ``agents.gate_lm`` is off or llama.cpp / the packaged model is
    not installed. When ``backend`` — the answering model — is the same GGUF on llama.cpp,
    its model is shared (under ``lock``) instead of loading a second one."""
    if not settings.agents.gate_lm:
        return None
    shared = _shared(backend, lock)
    if shared is not None:
        return shared
    import importlib.util

    from medllm.models.registry import KNOWN_MODELS

    spec = KNOWN_MODELS[SCORER_MODEL]
    missing = [spec.distribution] if not spec.installed() else []
    if importlib.util.find_spec("llama_cpp") is None:
        missing.insert(0, "llama-cpp-python")
    if missing:
        logger.warning(
            "answerability gate without its language-model check: pip install %s",
            " ".join(missing),
        )
        return None
    return LazyScorer(str(settings.paths.models_dir), settings.models.gguf_weights)


def _shared(backend: Any, lock: Any) -> QuestionLikelihood | None:
    from pathlib import Path

    from medllm.models.registry import KNOWN_MODELS

    path, llama = getattr(backend, "path", None), getattr(backend, "llama", None)
    if path is None or llama is None or getattr(backend, "name", "") != "llama-cpp":
        return None
    if getattr(llama, "lora_path", None) or llama.n_ctx() < 256:
        return None  # an adapter changes the model; a tiny context cannot hold an abstract
    try:
        mine = KNOWN_MODELS[SCORER_MODEL].locate(Path("."))
    except Exception:
        return None
    if Path(path).resolve() != mine.resolve():
        return None
    return QuestionLikelihood(llama=llama, lock=lock)
