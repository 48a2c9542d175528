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
from opentelemetry.trace import Status, StatusCode

from ragobs import semconv
from ragobs._classify import classify, error_type
from ragobs._telemetry import Telemetry, get_telemetry
from ragobs.semconv import Outcome

P = ParamSpec("P")
R = TypeVar("R")


class stage:
    """Context manager (sync and async) and decorator for one pipeline stage."""

    __slots__ = ("_name", "_source", "_span", "_t0", "_telemetry", "_token")

    def __init__(self, name: str, *, source: str | None = None,
                 telemetry: Telemetry | None = None) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty str, got {name!r}")
        if source is not None and (not isinstance(source, str) or not source):
            raise ValueError(f"source must be a non-empty str or None, got {source!r}")
        self._name = name
        self._source = source
        self._telemetry = telemetry
        self._span: trace.Span = trace.INVALID_SPAN
        self._token: object = None
        self._t0 = 0.0

    def _copy(self) -> stage:
        return stage(self._name, source=self._source, telemetry=self._telemetry)

    def _attributes(self, tel: Telemetry) -> dict[str, str]:
        attrs = {semconv.STAGE: tel.bound(semconv.STAGE, self._name)}
        if self._source is not None:
            attrs[semconv.DATA_SOURCE_ID] = tel.bound(semconv.DATA_SOURCE_ID, self._source)
        return attrs

    def _open(self) -> None:
        tel = self._telemetry or get_telemetry()
        name = f"{self._name} {self._source}" if self._source else self._name
        self._span = tel.tracer.start_span(name, attributes=self._attributes(tel))
        self._t0 = time.perf_counter()

    def _close(self, exc: BaseException | None) -> None:
        elapsed = time.perf_counter() - self._t0
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
        self._token = otel_context.attach(trace.set_span_in_context(self._span))
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
        ctx = trace.set_span_in_context(self._span)
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
