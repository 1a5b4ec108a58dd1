"""Python API for chatbot prototypes.

    from medllm import Assistant
    a = Assistant.from_settings()
    r = a.ask("Do mitochondria play a role in ... programmed cell death?")
    print(r.answer, r.label, [c.pmid for c in r.citations])
    a.chat("Is statin therapy linked to ...?"); a.chat("And in older patients?")  # memory
    for delta in (s := a.stream_chat("...")): print(delta, end="")
    s.answer                                   # the Answer once the stream ends
    await a.aask("..."); async for delta in a.astream_chat("..."): ...

``ask`` is stateless; ``chat`` keeps the conversation, and follow-ups are condensed with the
history before retrieval. One Assistant may be shared by threads (model calls are serialised).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from medllm.agents.answer import SAME_SOURCES, Answer
from medllm.agents.engine import MODES, STRATEGIES, AnswerStream, Engine
from medllm.errors import DataError

if TYPE_CHECKING:
    from medllm.config import Settings

HISTORY_TURNS = 4  # (question, answer) pairs kept for condensing and direct answers


def same_sources_note(previous: Answer | None, ans: Answer) -> str | None:
    """A note for a follow-up that cites only what the previous answer cited.

    A follow-up is searched together with the earlier question (:func:`condense`), so the
    earlier abstracts usually come back; when nothing else is cited, the answer may not cover
    what the follow-up adds ("And in other plants?" after a lace-plant question)."""
    if previous is None or not previous.citations or not ans.citations or ans.abstained:
        return None
    if ans.retrieval_query in (None, ans.question):  # searched alone, not with the history
        return None
    before = [c.pmid for c in previous.citations]
    if not {c.pmid for c in ans.citations} <= set(before):
        return None
    return (
        f"{SAME_SOURCES} as the previous answer (PMID {', '.join(before)}): the follow-up was "
        "searched together with the earlier question and no other abstract was cited, so check "
        "that they address what it adds"
    )


class Assistant:
    def __init__(
        self,
        engine: Engine,
        *,
        mode: str = "auto",
        k: int | None = None,
        strategy: str | None = None,
    ):
        from medllm.retrieval import validate_k

        self.engine = engine
        self.k = validate_k(k)  # checked here, not at the first question
        self.mode = mode
        if strategy is not None and strategy not in STRATEGIES:
            raise DataError(
                f"unknown strategy {strategy!r}; use one of {', '.join(STRATEGIES)}",
                field="strategy",
            )
        self.strategy = strategy  # router | agent; None: the settings' agents.strategy
        self.history: list[tuple[str, str]] = []
        self.last: Answer | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_settings(
        cls,
        settings: Settings | None = None,
        *,
        model: str | None = None,
        adapter: str | None = None,
        mode: str = "auto",
        k: int | None = None,
        strategy: str | None = None,
        collection: str | None = None,
        where: str | None = None,
    ) -> Assistant:
        """Load the models named by ``settings`` (default: :meth:`Settings.load`).

        ``collection``: the corpus searched (``retrieval.collection``); ``where``: a metadata
        filter for every question (``retrieval.where``, e.g. ``"year>=2015,pubtype=Review"``;
        ``ask(..., where=...)`` sets one for a single question)."""
        from medllm.config import Settings

        s = settings or Settings.load()
        s = s.with_overrides(
            models={"llm": model, "adapter": adapter},
            retrieval={"collection": collection, "where": where},
        )
        retriever = None
        if mode != "direct":  # fail fast (before loading models) when nothing is ingested
            from medllm.retrieval import Retriever

            retriever = Retriever.from_settings(s)
        return cls(Engine.from_settings(s, retriever=retriever), mode=mode, k=k, strategy=strategy)

    @property
    def settings(self) -> Settings:
        return self.engine.settings

    @property
    def strategy(self) -> str:
        return self._strategy or self.settings.agents.strategy

    @strategy.setter
    def strategy(self, value: str | None) -> None:
        if value is not None and value not in STRATEGIES:
            raise DataError(
                f"unknown strategy {value!r}; use one of {', '.join(STRATEGIES)}",
                field="strategy",
            )
        self._strategy = value

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in MODES:
            raise DataError(f"unknown mode {value!r}; use one of {', '.join(MODES)}", field="mode")
        self._mode = value

    def reset(self) -> None:
        """Forget the conversation."""
        with self._lock:
            self.history.clear()
            self.last = None

    # ------------------------------------------------------------------ sync

    def ask(
        self, question: str, *, mode: str | None = None, k: int | None = None, **kw: Any
    ) -> Answer:
        """Answer one question, without conversation memory. ``kw``: :meth:`Engine.plan`'s
        (``where`` to filter this question's search, ``year_range``, ``strategy``, ``on_step``
        to watch the trace...)."""
        return self.engine.ask(question, **self._kw(mode, k, kw))

    def stream(
        self, question: str, *, mode: str | None = None, k: int | None = None, **kw: Any
    ) -> AnswerStream:
        return self.engine.stream(question, **self._kw(mode, k, kw))

    def _kw(self, mode: str | None, k: int | None, kw: dict[str, Any]) -> dict[str, Any]:
        if "collection" in kw:
            raise DataError(
                "an Assistant searches one collection: choose it when creating it, "
                "Assistant.from_settings(collection=...)",
                field="collection",
            )
        return {
            "mode": mode or self.mode,
            "k": k if k is not None else self.k,
            "strategy": self.strategy,
            **kw,
        }

    def chat(self, message: str, *, mode: str | None = None, **kw: Any) -> Answer:
        """Answer with the conversation so far; the exchange is added to the memory."""
        s = self.stream_chat(message, mode=mode, **kw)
        for _ in s:
            pass
        assert s.answer is not None
        return s.answer

    def stream_chat(self, message: str, *, mode: str | None = None, **kw: Any) -> AnswerStream:
        history = list(self.history[-HISTORY_TURNS:])
        inner = self.engine.stream(message, history=history, **self._kw(mode, None, kw))

        def gen() -> Any:
            yield from inner
            ans = inner.answer
            assert ans is not None
            with self._lock:
                note = same_sources_note(self.last, ans)
                if note:
                    ans.warnings.append(note)
                self.history.append((ans.question, ans.answer))
                self.last = ans
            return

        outer = AnswerStream(gen(), lambda _text: inner.answer)  # type: ignore[arg-type,return-value]
        return outer

    # ------------------------------------------------------------------ async

    async def aask(self, question: str, **kw: Any) -> Answer:
        return await asyncio.to_thread(self.ask, question, **kw)

    async def achat(self, message: str, **kw: Any) -> Answer:
        return await asyncio.to_thread(self.chat, message, **kw)

    async def astream(self, question: str, **kw: Any) -> AsyncIterator[str]:
        async for d in _aiter(lambda: self.stream(question, **kw)):
            yield d

    async def astream_chat(self, message: str, **kw: Any) -> AsyncIterator[str]:
        async for d in _aiter(lambda: self.stream_chat(message, **kw)):
            yield d


_END = object()


async def _aiter(make: Any) -> AsyncIterator[str]:
    """Run a blocking AnswerStream in a thread and yield its deltas asynchronously.

    Errors raised while planning or generating are re-raised here.
    """
    loop = asyncio.get_running_loop()
    q: asyncio.Queue[Any] = asyncio.Queue()

    def work() -> None:
        try:
            for d in make():
                loop.call_soon_threadsafe(q.put_nowait, d)
        except BaseException as e:  # handed to the consumer
            loop.call_soon_threadsafe(q.put_nowait, e)
        loop.call_soon_threadsafe(q.put_nowait, _END)

    fut = loop.run_in_executor(None, work)
    try:
        while (item := await q.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        await fut
