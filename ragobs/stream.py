"""Instrument one token stream: a span, the GenAI histograms, counters, summary.

Three forms share one recorder, :class:`StreamObservation`:

* ``@instrument_stream(...)`` on an async generator or generator function;
* ``observe_stream(iterable, ...)`` around any (async) iterable;
* ``with observe(...) as obs:`` for a loop written by hand
  (``obs.first_token()``, ``obs.tokens(n)``).

Guarantees, whatever way a stream ends (exhausted, raised, ``break`` then
``aclose()`` or garbage collection, task cancellation, a timeout): its span
ends and its figures are recorded exactly once, with one outcome — ``ok``,
``error``, ``timeout`` (a :class:`TimeoutError`) or ``cancelled`` (the
consumer stopped early; not an error).

Timing starts when the consumer first asks for a chunk. A chunk counts as a
token when it is truthy (empty strings, ``b""`` and ``None`` do not), unless
``count_tokens`` says otherwise. The stream's span is the current span while
the source works towards its first chunk (routing and retrieval stages become
its children); after that, chunks pass through a loop that only counts them,
so per-token overhead stays small. The time of the last chunk is taken when
the stream reports its end.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import time
from collections.abc import AsyncGenerator, AsyncIterable, Callable, Generator, Iterable
from types import TracebackType
from typing import Any, Final, ParamSpec, TypeVar, overload

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode

from ragobs import semconv
from ragobs.semconv import Outcome
from ragobs.summary_stats import SummaryStats
from ragobs.telemetry import ExemplarSeries, Telemetry, get_telemetry

T = TypeVar("T")
P = ParamSpec("P")

_perf = time.perf_counter
#: Passed as the context of records that take no exemplar from the SDK (no
#: span in it, so the SDK's trace-based filter skips its reservoir): only
#: latency and TTFT carry exemplars, and ragobs may keep those itself.
_NO_EXEMPLAR = Context()
_attach = otel_context.attach
_detach = otel_context.detach


def classify(exc: BaseException | None) -> Outcome:
    """The outcome of a request that ended with ``exc`` (``None``: success)."""
    if exc is None:
        return Outcome.OK
    if isinstance(exc, (GeneratorExit, KeyboardInterrupt, asyncio.CancelledError)):
        return Outcome.CANCELLED
    if isinstance(exc, TimeoutError):
        return Outcome.TIMEOUT
    return Outcome.ERROR


def error_type(exc: BaseException) -> str:
    """``error.type`` of ``exc``: its HTTP status when it carries one, else its class name."""
    for holder in (exc, getattr(exc, "response", None)):
        status = getattr(holder, "status_code", None) or getattr(holder, "status", None)
        if isinstance(status, int) and not isinstance(status, bool) and 100 <= status <= 599:
            return str(status)
    return type(exc).__name__


class _Ending:
    """Everything :meth:`StreamObservation.finish` needs for one (labels, outcome,
    error.type), built once and reused by every stream that ends that way."""

    __slots__ = ("attrs", "error_type", "exemplars", "input_attrs", "key", "outcome",
                 "output_attrs")

    def __init__(self, telemetry: Telemetry, span_attributes: dict[str, str],
                 outcome: Outcome, etype: str | None) -> None:
        attrs = dict(span_attributes)
        attrs[semconv.OUTCOME] = self.outcome = outcome.value
        if etype is not None:
            attrs[semconv.ERROR_TYPE] = telemetry.bound(semconv.ERROR_TYPE, etype)
        #: histogram attributes, and the sorted key of the counters and exemplars
        self.attrs = attrs
        self.key = tuple(sorted(attrs.items()))
        self.error_type = attrs.get(semconv.ERROR_TYPE)
        self.output_attrs = {**attrs, semconv.TOKEN_TYPE: semconv.TokenType.OUTPUT.value}
        self.input_attrs = {**attrs, semconv.TOKEN_TYPE: semconv.TokenType.INPUT.value}
        #: (latency, TTFT) series of ragobs' own exemplar table, if it keeps one
        self.exemplars: tuple[ExemplarSeries, ExemplarSeries] | None = None
        table = telemetry.exemplars
        if table is not None:
            self.exemplars = (
                table.series(semconv.OPERATION_DURATION.name, self.key,
                             semconv.DURATION_BUCKETS),
                table.series(semconv.TIME_TO_FIRST_CHUNK.name, self.key,
                             semconv.TIME_TO_FIRST_CHUNK_BUCKETS),
            )


class _LabelSet:
    """Attribute dicts and counter keys for one (operation, provider, model)."""

    __slots__ = ("_ends", "_telemetry", "active_key", "span_attributes", "span_name")

    def __init__(self, telemetry: Telemetry, operation: str, provider: str | None,
                 model: str | None) -> None:
        bound = telemetry.bound
        attrs: dict[str, str] = {semconv.OPERATION_NAME: bound(semconv.OPERATION_NAME, operation)}
        if provider is not None:
            attrs[semconv.PROVIDER_NAME] = bound(semconv.PROVIDER_NAME, provider)
        if model is not None:
            attrs[semconv.REQUEST_MODEL] = bound(semconv.REQUEST_MODEL, model)
        # The span name carries the real model (spans are not aggregated).
        self.span_name = f"{operation} {model}" if model else operation
        self.span_attributes = attrs
        self.active_key = tuple(sorted(attrs.items()))
        self._ends: dict[tuple[Outcome, str | None], _Ending] = {}
        self._telemetry = telemetry

    def end(self, outcome: Outcome, etype: str | None) -> _Ending:
        """The :class:`_Ending` for this outcome and (raw) error type, cached
        while fewer than ``_ENDINGS_CACHED`` are."""
        found = self._ends.get((outcome, etype))
        if found is None:
            found = _Ending(self._telemetry, self.span_attributes, outcome, etype)
            if len(self._ends) < _ENDINGS_CACHED:
                self._ends[(outcome, etype)] = found
        return found


#: The caches are keyed by raw names (the span name carries the real model),
#: which callers may vary without bound: past these sizes a new name is served
#: uncached (a few µs more), so memory never grows with the names seen.
_LABEL_SETS_CACHED: Final = 1024
#: Characters of answer text kept per stream when content capture is on.
CONTENT_LIMIT: Final = 65_536
_ENDINGS_CACHED: Final = 64


def _label_set(telemetry: Telemetry, operation: str, provider: str | None,
               model: str | None) -> _LabelSet:
    key = ("stream", operation, provider, model)
    cache = telemetry.cache
    found = cache.get(key)
    if found is None:
        found = _LabelSet(telemetry, operation, provider, model)
        if len(cache) < _LABEL_SETS_CACHED:
            cache[key] = found
    assert isinstance(found, _LabelSet)
    return found


def _check_names(operation: object, model: object, provider: object) -> None:
    if not isinstance(operation, str) or not operation:
        raise ValueError(f"operation must be a non-empty str, got {operation!r}")
    for arg, value in (("model", model), ("provider", provider)):
        if value is not None and (not isinstance(value, str) or not value):
            raise ValueError(f"{arg} must be a non-empty str or None, got {value!r}")


class StreamObservation:
    """The measurements of one stream, and the hand-written-loop API.

    Use it as ``with observe(...) as obs`` (or ``async with``): call
    :meth:`first_token` when the first chunk arrives (or just :meth:`tokens`,
    which implies it), and let the block end. An exception leaving the block
    sets the outcome; it is never swallowed.
    """

    __slots__ = (
        "_also",
        "_content",
        "_ctx",
        "_finished",
        "_input_tokens",
        "_labels",
        "_n_tokens",
        "_output_tokens",
        "_room",
        "_span",
        "_t_first",
        "_t_start",
        "_telemetry",
    )

    def __init__(self, telemetry: Telemetry, labels: _LabelSet,
                 also: SummaryStats | None = None) -> None:
        self._telemetry = telemetry
        self._also = also
        self._labels = labels
        self._span: trace.Span = trace.INVALID_SPAN
        self._ctx: Context | None = None
        self._t_start = 0.0
        self._t_first: float | None = None
        self._n_tokens = 0
        self._input_tokens: int | None = None
        self._output_tokens: int | None = None
        self._finished = False
        #: Answer text kept for the span, only when the user opted in.
        self._content: list[str] | None = [] if telemetry.capture_content else None
        self._room = CONTENT_LIMIT

    # -- the hand-written-loop API --------------------------------------

    def first_token(self) -> None:
        """Mark the first chunk as arrived now (later calls are ignored)."""
        if self._t_first is None:
            self._t_first = _perf()
            self._span.add_event(semconv.EVENT_FIRST_CHUNK)

    def tokens(self, n: int = 1) -> None:
        """Count ``n`` output tokens (marks the first token if not yet)."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"n must be an int >= 0, got {n!r}")
        if self._t_first is None and n:
            self.first_token()
        self._n_tokens += n

    def set_usage(self, *, input_tokens: int | None = None,
                  output_tokens: int | None = None) -> None:
        """Token usage reported by the provider; overrides counted chunks."""
        for arg, value in (("input_tokens", input_tokens), ("output_tokens", output_tokens)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                      or value < 0):
                raise ValueError(f"{arg} must be an int >= 0 or None, got {value!r}")
        if input_tokens is not None:
            self._input_tokens = input_tokens
        if output_tokens is not None:
            self._output_tokens = output_tokens

    def record_output(self, chunk: object) -> None:
        """Keep the text of ``chunk`` (str or UTF-8 bytes) for the span's
        ``gen_ai.output.messages``: only when the :class:`Telemetry` has
        ``capture_content=True``, and at most ``CONTENT_LIMIT`` characters."""
        content = self._content
        if content is None:
            return
        if isinstance(chunk, bytes):
            chunk = chunk.decode("utf-8", "replace")
        if not isinstance(chunk, str):
            return
        if self._room > 0:
            content.append(chunk[:self._room])
            self._room -= len(content[-1])

    def _capturing(self, count: Callable[[T], int] | None) -> Callable[[T], int]:
        """``count``, also keeping each chunk's text (the opted-in path only)."""
        def counted(chunk: T) -> int:
            self.record_output(chunk)
            return 1 if count is None else count(chunk)

        return counted

    @property
    def span(self) -> trace.Span:
        """The stream's span (non-recording before the stream starts)."""
        return self._span

    @property
    def token_count(self) -> int:
        return self._output_tokens if self._output_tokens is not None else self._n_tokens

    def __enter__(self) -> StreamObservation:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.finish(exc)

    async def __aenter__(self) -> StreamObservation:
        return self.__enter__()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.finish(exc)

    # -- recording ------------------------------------------------------

    def start(self, start_time: float | None = None) -> None:
        """Open the span and count the request as in flight (once)."""
        if self._ctx is not None:
            return
        self._t_start = _perf() if start_time is None else start_time
        labels = self._labels
        tel = self._telemetry
        self._span = tel.tracer.start_span(
            labels.span_name, kind=SpanKind.CLIENT, attributes=labels.span_attributes
        )
        self._ctx = trace.set_span_in_context(self._span)
        tel.active.add_key(labels.active_key, 1)
        tel.summary.started()
        if self._also is not None:
            self._also.started()

    def finish(self, exc: BaseException | None = None, end_time: float | None = None) -> Outcome:
        """Record everything for this stream, exactly once; returns the outcome."""
        outcome = classify(exc)
        if self._finished or self._ctx is None:
            return outcome
        self._finished = True
        t_end = _perf() if end_time is None else end_time
        tel = self._telemetry
        labels = self._labels
        etype = error_type(exc) if exc is not None and outcome is not Outcome.CANCELLED else None
        ending = labels.end(outcome, etype)
        attrs = ending.attrs
        span = self._span
        tokens = self.token_count
        input_tokens = self._input_tokens
        latency = t_end - self._t_start
        t_first = self._t_first
        ttft = rate = None
        # Latency and TTFT carry the stream's trace id as an exemplar: in our
        # own table when setup() gave us one (see ExemplarTable), else through
        # the SDK's reservoir, which reads the span from ``context``.
        exemplars = ending.exemplars
        exemplar_ctx = self._ctx if exemplars is None else _NO_EXEMPLAR

        tel.operation_duration.record(latency, attrs, context=exemplar_ctx)
        tel.token_usage.record(tokens, ending.output_attrs, context=_NO_EXEMPLAR)
        if input_tokens is not None:
            tel.token_usage.record(input_tokens, ending.input_attrs, context=_NO_EXEMPLAR)
        if t_first is not None:
            ttft = t_first - self._t_start
            tel.time_to_first_chunk.record(ttft, attrs, context=exemplar_ctx)
            window = t_end - t_first
            if tokens >= 2 and window > 0:
                rate = tokens / window
                tel.output_token_rate.record(rate, attrs, context=_NO_EXEMPLAR)
                tel.time_per_output_chunk.record(window / (tokens - 1), attrs,
                                                 context=_NO_EXEMPLAR)
        if exemplars is not None:
            span_context = span.get_span_context()
            if span_context.trace_flags.sampled:  # as the SDK's trace-based filter
                now = time.time()
                trace_id, span_id = span_context.trace_id, span_context.span_id
                exemplars[0].offer(latency, trace_id, span_id, now)
                if ttft is not None:
                    exemplars[1].offer(ttft, trace_id, span_id, now)
        key = ending.key
        tel.requests.add_key(key, 1)
        if outcome is Outcome.ERROR or outcome is Outcome.TIMEOUT:
            tel.errors.add_key(key, 1)
        tel.active.add_key(labels.active_key, -1)
        tel.summary.record(outcome, latency, ttft, tokens, rate)
        if self._also is not None:
            self._also.record(outcome, latency, ttft, tokens, rate)

        if span.is_recording():
            span_attrs: dict[str, Any] = {
                semconv.USAGE_OUTPUT_TOKENS: tokens,
                semconv.OUTCOME: ending.outcome,
            }
            if ttft is not None:
                span_attrs[semconv.RESPONSE_TIME_TO_FIRST_CHUNK] = ttft
            if input_tokens is not None:
                span_attrs[semconv.USAGE_INPUT_TOKENS] = input_tokens
            if self._content:
                span_attrs[semconv.OUTPUT_MESSAGES] = json.dumps([{
                    "role": "assistant",
                    "parts": [{"type": "text", "content": "".join(self._content)}],
                }], ensure_ascii=False)
            if ending.error_type is not None and exc is not None:
                span_attrs[semconv.ERROR_TYPE] = ending.error_type
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            span.set_attributes(span_attrs)
        span.end()
        return outcome


def _observation(telemetry: Telemetry | None, operation: str, provider: str | None,
                 model: str | None, also: SummaryStats | None = None) -> StreamObservation:
    tel = telemetry if telemetry is not None else get_telemetry()
    return StreamObservation(tel, _label_set(tel, operation, provider, model), also)


def observe(
    *,
    operation: str = "chat",
    model: str | None = None,
    provider: str | None = None,
    telemetry: Telemetry | None = None,
) -> StreamObservation:
    """A :class:`StreamObservation` for a loop written by hand.

    >>> with observe(operation="chat", model="gpt-4o") as obs:  # doctest: +SKIP
    ...     for chunk in client.stream(q):
    ...         obs.tokens(1)
    """
    _check_names(operation, model, provider)
    return _observation(telemetry, operation, provider, model)


async def _observe_async(
    source: AsyncIterable[T], obs: StreamObservation, count: Callable[[T], int] | None
) -> AsyncGenerator[T, None]:
    if obs._content is not None:
        count = obs._capturing(count)
    obs.start()
    it = source.__aiter__()
    failure: BaseException | None = None
    done = False
    n = 0
    try:
        nxt = it.__anext__
        ctx = obs._ctx
        while True:  # until the first non-empty chunk, with the span current
            token = _attach(ctx)  # type: ignore[arg-type]
            try:
                chunk = await nxt()
            except StopAsyncIteration:
                done = True
                return
            finally:
                _detach(token)
            if chunk:
                obs.first_token()
                n = 1 if count is None else count(chunk)
                yield chunk
                break
            yield chunk
        if count is None:
            async for chunk in it:  # the hot loop: count and pass through
                if chunk:
                    n += 1
                yield chunk
        else:
            async for chunk in it:
                if chunk:
                    n += count(chunk)
                yield chunk
        done = True
    except BaseException as exc:
        failure = exc
        raise
    finally:
        obs._n_tokens = n
        obs.finish(failure)
        if not done:
            aclose = getattr(it, "aclose", None)
            if aclose is not None:
                await aclose()


def _observe_sync(
    source: Iterable[T], obs: StreamObservation, count: Callable[[T], int] | None
) -> Generator[T, None, None]:
    if obs._content is not None:
        count = obs._capturing(count)
    obs.start()
    it = iter(source)
    failure: BaseException | None = None
    done = False
    n = 0
    try:
        ctx = obs._ctx
        while True:
            token = _attach(ctx)  # type: ignore[arg-type]
            try:
                chunk = next(it)
            except StopIteration:
                done = True
                return
            finally:
                _detach(token)
            if chunk:
                obs.first_token()
                n = 1 if count is None else count(chunk)
                yield chunk
                break
            yield chunk
        if count is None:
            for chunk in it:
                if chunk:
                    n += 1
                yield chunk
        else:
            for chunk in it:
                if chunk:
                    n += count(chunk)
                yield chunk
        done = True
    except BaseException as exc:
        failure = exc
        raise
    finally:
        obs._n_tokens = n
        obs.finish(failure)
        if not done:
            close = getattr(it, "close", None)
            if close is not None:
                close()


@overload
def observe_stream(
    stream: AsyncIterable[T], *, operation: str = ..., model: str | None = ...,
    provider: str | None = ..., telemetry: Telemetry | None = ...,
    count_tokens: Callable[[T], int] | None = ...,
) -> AsyncGenerator[T, None]: ...


@overload
def observe_stream(
    stream: Iterable[T], *, operation: str = ..., model: str | None = ...,
    provider: str | None = ..., telemetry: Telemetry | None = ...,
    count_tokens: Callable[[T], int] | None = ...,
) -> Generator[T, None, None]: ...


def observe_stream(
    stream: AsyncIterable[T] | Iterable[T],
    *,
    operation: str = "chat",
    model: str | None = None,
    provider: str | None = None,
    telemetry: Telemetry | None = None,
    count_tokens: Callable[[T], int] | None = None,
) -> AsyncGenerator[T, None] | Generator[T, None, None]:
    """Wrap ``stream`` so that consuming it records one observed request.

    An async iterable gives an async generator, a plain iterable a generator;
    chunks pass through unchanged. Closing the wrapper closes ``stream``.
    """
    _check_names(operation, model, provider)
    if count_tokens is not None and not callable(count_tokens):
        raise TypeError(f"count_tokens must be callable or None, got {count_tokens!r}")
    obs = _observation(telemetry, operation, provider, model)
    if hasattr(stream, "__aiter__"):
        return _observe_async(stream, obs, count_tokens)  # type: ignore[arg-type]
    if hasattr(stream, "__iter__"):
        return _observe_sync(stream, obs, count_tokens)
    raise TypeError(f"stream must be an iterable or async iterable, got {type(stream).__name__}")


def instrument_stream(
    fn: Callable[P, Any] | None = None,
    *,
    operation: str = "chat",
    model: str | None = None,
    provider: str | None = None,
    telemetry: Telemetry | None = None,
    count_tokens: Callable[[Any], int] | None = None,
) -> Any:
    """Decorate an async generator function (or generator function) so that
    every stream it returns is observed like :func:`observe_stream`.

    Usable bare (``@instrument_stream``) or with arguments. The decorated
    function keeps its name, docstring and signature.
    """
    _check_names(operation, model, provider)

    def decorate(func: Callable[P, Any]) -> Callable[P, Any]:
        if inspect.isasyncgenfunction(func):
            @functools.wraps(func)
            def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> AsyncGenerator[Any, None]:
                obs = _observation(telemetry, operation, provider, model)
                return _observe_async(func(*args, **kwargs), obs, count_tokens)

            return async_wrapper
        if inspect.isgeneratorfunction(func):
            @functools.wraps(func)
            def sync_wrapper(*args: P.args, **kwargs: P.kwargs) -> Generator[Any, None, None]:
                obs = _observation(telemetry, operation, provider, model)
                return _observe_sync(func(*args, **kwargs), obs, count_tokens)

            return sync_wrapper
        raise TypeError(
            "instrument_stream decorates async generator or generator functions, got "
            f"{getattr(func, '__qualname__', func)!r}; wrap other iterables with observe_stream()"
        )

    if fn is not None:
        return decorate(fn)
    return decorate
