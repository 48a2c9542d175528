"""RAG pipeline stages: a child span and a duration per stage.

Answers "TTFT is rising: is it routing, retrieval or generation?"::

    async with stage("retrieve", source="python_docs"):
        docs = await search(q)

    @stage("route")
    async def route(q): ...

A stage records ``ragobs.stage.duration`` with ``ragobs.stage``,
``gen_ai.data_source.id`` (the source, when given) and ``error.type`` on
failure, and opens a span named ``"{stage} {source}"`` that is current for the
code inside it. On an async generator function the span is current while the
generator runs (each pull), never while the consumer holds a chunk.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import AsyncGenerator, Callable
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from ragobs import semconv
from ragobs._classify import classify, error_type
from ragobs._telemetry import Telemetry, get_telemetry
from ragobs._turn import Turn, current_turn, in_phase, phase_context, turn_of
from ragobs.semconv import Outcome

P = ParamSpec("P")
R = TypeVar("R")


def _check_name(arg: str, value: object, *, optional: bool = False) -> None:
    if (value is None and optional) or (isinstance(value, str) and value):
        return
    kind = "a non-empty str or None" if optional else "a non-empty str"
    raise ValueError(f"{arg} must be {kind}, got {value!r}")


class stage:
    """Context manager (sync and async) and decorator for one pipeline stage."""

    __slots__ = ("_name", "_phase", "_source", "_span", "_t0", "_telemetry", "_token", "_turn")

    def __init__(self, name: str, *, source: str | None = None,
                 telemetry: Telemetry | None = None) -> None:
        _check_name("name", name)
        _check_name("source", source, optional=True)
        self._name = name
        self._source = source
        self._telemetry = telemetry
        self._span: trace.Span = trace.INVALID_SPAN
        self._token: object = None
        self._t0 = 0.0
        #: The turn this stage is a phase of (it runs directly inside it).
        self._turn: Turn | None = None
        self._phase = False

    def _copy(self) -> stage:
        return stage(self._name, source=self._source, telemetry=self._telemetry)

    def _span_name(self) -> str:
        return f"{self._name} {self._source}" if self._source else self._name

    def _span_kind(self) -> SpanKind:
        return SpanKind.INTERNAL

    def _span_attributes(self, tel: Telemetry) -> dict[str, AttributeValue]:
        return dict(self._attributes(tel))

    def _ended(self, turn: Turn | None) -> None:
        """What the stage tells the turn it ran in, if any (besides its phase)."""

    @property
    def span(self) -> trace.Span:
        """The stage's span (non-recording until the stage starts)."""
        return self._span

    def _context(self) -> Context:
        """The context inside the stage: its span current, inside a phase of its turn."""
        return phase_context(trace.set_span_in_context(self._span), self._turn)

    def _attributes(self, tel: Telemetry) -> dict[str, str]:
        attrs = {semconv.STAGE: tel.bound(semconv.STAGE, self._name)}
        if self._source is not None:
            attrs[semconv.DATA_SOURCE_ID] = tel.bound(semconv.DATA_SOURCE_ID, self._source)
        return attrs

    def _open(self, context: Context | None = None) -> None:
        """Start: in the current context, or in ``context`` (its turn and parent span)."""
        tel = self._telemetry or get_telemetry()
        if context is None:
            self._turn = current_turn()
            self._phase = self._turn is not None and not in_phase()
        else:
            self._turn = turn_of(context)
            self._phase = self._turn is not None and not in_phase(context)
        self._span = tel.tracer.start_span(self._span_name(), context=context,
                                           kind=self._span_kind(),
                                           attributes=self._span_attributes(tel))
        self._t0 = time.perf_counter()

    def _close(self, exc: BaseException | None) -> None:
        t1 = time.perf_counter()
        elapsed = t1 - self._t0
        turn = self._turn
        if turn is not None:
            if self._phase:
                turn.phase(self._name, self._t0, t1)
            self._ended(turn)
        tel = self._telemetry or get_telemetry()
        attrs = self._attributes(tel)
        outcome = classify(exc)
        if exc is not None and outcome is not Outcome.CANCELLED:
            attrs[semconv.ERROR_TYPE] = tel.bound(semconv.ERROR_TYPE, error_type(exc))
            self._span.record_exception(exc)
            self._span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            self._span.set_attribute(semconv.ERROR_TYPE, attrs[semconv.ERROR_TYPE])
        ctx = trace.set_span_in_context(self._span)
        tel.stage_duration.record(elapsed, attrs, context=ctx)
        tel.summary.record_stage(attrs[semconv.STAGE], elapsed)
        self._span.end()

    # -- context manager ------------------------------------------------

    def __enter__(self) -> trace.Span:
        self._open()
        self._token = otel_context.attach(self._context())
        return self._span

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        otel_context.detach(self._token)  # type: ignore[arg-type]
        self._close(exc)

    async def __aenter__(self) -> trace.Span:
        return self.__enter__()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.__exit__(exc_type, exc, tb)

    # -- decorator ------------------------------------------------------

    def __call__(self, func: Callable[P, R]) -> Callable[P, R]:
        if inspect.isasyncgenfunction(func):
            @functools.wraps(func)
            def agen_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                return self._copy()._run_agen(func(*args, **kwargs))

            return agen_wrapper
        if inspect.iscoroutinefunction(func):
            @functools.wraps(func)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                with self._copy():
                    return await func(*args, **kwargs)

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(func)
        def sync_wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            with self._copy():
                return func(*args, **kwargs)

        return sync_wrapper

    async def _run_agen(self, agen: AsyncGenerator[Any, None]) -> AsyncGenerator[Any, None]:
        self._open()
        ctx = self._context()
        failure: BaseException | None = None
        done = False
        try:
            while True:
                token = otel_context.attach(ctx)
                try:
                    item = await agen.__anext__()
                except StopAsyncIteration:
                    done = True
                    return
                finally:
                    otel_context.detach(token)
                yield item
        except BaseException as exc:
            failure = exc
            raise
        finally:
            self._close(failure)
            if not done:
                await agen.aclose()


class retrieval(stage):
    """A retrieval from ``source`` (a ``retrieve`` stage), traced as the GenAI
    conventions' ``retrieval {gen_ai.data_source.id}`` CLIENT span with
    ``gen_ai.retrieval.top_k``; tell it how many documents came back::

        async with retrieval("python_docs", top_k=5) as found:
            docs = await search(q, k=5)
            found.documents(len(docs))
    """

    __slots__ = ("_documents", "_top_k")

    def __init__(self, source: str, *, top_k: int | None = None, name: str = "retrieve",
                 telemetry: Telemetry | None = None) -> None:
        _check_name("source", source)
        if top_k is not None and (type(top_k) is not int or top_k < 1):
            raise ValueError(f"top_k must be an int >= 1 or None, got {top_k!r}")
        super().__init__(name, source=source, telemetry=telemetry)
        self._top_k = top_k
        self._documents: int | None = None

    def _copy(self) -> retrieval:
        return retrieval(self._source or "", top_k=self._top_k, name=self._name,
                         telemetry=self._telemetry)

    def _span_name(self) -> str:
        return f"{semconv.OPERATION_RETRIEVAL} {self._source}"

    def _span_kind(self) -> SpanKind:
        return SpanKind.CLIENT

    def _span_attributes(self, tel: Telemetry) -> dict[str, AttributeValue]:
        attrs = super()._span_attributes(tel)
        attrs[semconv.OPERATION_NAME] = semconv.OPERATION_RETRIEVAL
        if self._top_k is not None:
            attrs[semconv.RETRIEVAL_TOP_K] = self._top_k
        return attrs

    def documents(self, n: int) -> None:
        """The number of documents the retrieval returned."""
        if type(n) is not int or n < 0:
            raise ValueError(f"n must be an int >= 0, got {n!r}")
        self._documents = n
        self._span.set_attribute(semconv.RETRIEVAL_DOCUMENTS, n)

    def _ended(self, turn: Turn | None) -> None:
        if turn is not None:
            turn.retrieved()

    def __enter__(self) -> retrieval:  # type: ignore[override]
        super().__enter__()
        return self

    async def __aenter__(self) -> retrieval:  # type: ignore[override]
        return self.__enter__()


class tool(stage):
    """One tool call (a ``tool`` stage), traced as the GenAI conventions'
    ``execute_tool {gen_ai.tool.name}`` span and counted on its turn::

        async with tool("web_search"):
            result = await web_search(q)
    """

    __slots__ = ("_call_id", "_tool")

    def __init__(self, name: str, *, call_id: str | None = None,
                 telemetry: Telemetry | None = None) -> None:
        _check_name("name", name)
        _check_name("call_id", call_id, optional=True)
        super().__init__("tool", telemetry=telemetry)
        self._tool = name
        self._call_id = call_id

    def _copy(self) -> tool:
        return tool(self._tool, call_id=self._call_id, telemetry=self._telemetry)

    def _span_name(self) -> str:
        return f"{semconv.OPERATION_EXECUTE_TOOL} {self._tool}"

    def _span_attributes(self, tel: Telemetry) -> dict[str, AttributeValue]:
        attrs = super()._span_attributes(tel)
        attrs[semconv.OPERATION_NAME] = semconv.OPERATION_EXECUTE_TOOL
        attrs[semconv.TOOL_NAME] = self._tool
        if self._call_id is not None:
            attrs[semconv.TOOL_CALL_ID] = self._call_id
        return attrs

    def _ended(self, turn: Turn | None) -> None:
        if turn is not None:
            turn.tool_called()
