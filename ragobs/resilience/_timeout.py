"""Deadlines for coroutines and streams, raising :class:`~ragobs.errors.StreamTimeout`.

* ``@timeout(total=30)`` on a coroutine function (or an async generator
  function: then ``total`` bounds the whole stream);
* ``await with_timeout(awaitable, total=30)``;
* ``stream_timeout(stream, total=..., first_token=..., idle=...)`` around an
  async iterable, or ``@stream_timeout(...)`` on an async generator function.

They work like :func:`asyncio.timeout`: a timer on the injected clock
cancels the waiting task when a deadline passes, and the resulting
:class:`asyncio.CancelledError` is turned into ``StreamTimeout`` only if that
timer caused it (``Task.uncancel``), so a real cancellation from outside
still propagates as ``CancelledError``. A deadline only ever cancels a wait
for the source, never the consumer while it holds a chunk. A stream keeps
at most one timer and moves it lazily (when it fires early because the
deadline moved on, or when an earlier deadline is needed), so a steady
stream costs a few attribute writes per chunk, not a timer handle each.

Each timeout is reported through :func:`ragobs._events.emit` (``timeout``
event with ``ragobs.timeout.kind``) and counted in ``ragobs.timeouts`` by
kind.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import math
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, TypeVar, cast, overload

from ragobs import semconv
from ragobs._events import emit
from ragobs._sources import aclose_source, aopen, is_deferred
from ragobs._telemetry import Telemetry, get_telemetry
from ragobs.chunks import carries_output
from ragobs.clock import Cancellable, Clock
from ragobs.errors import StreamTimeout, TimeoutKind
from ragobs.resilience._checks import (
    _check_clock,
    _check_name,
    _check_telemetry,
    _default_name,
    _optional_positive,
    _positive,
)

__all__ = ["stream_timeout", "timeout", "with_timeout"]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

#: Why the deadlines take no synchronous streams or functions.
_NO_SYNC: Final = (
    "ragobs deadlines need async code: a thread blocked in a synchronous read cannot be "
    "interrupted safely from Python, so a deadline could only be noticed after the read "
    "returns, too late to mean anything. For a sync client set its own timeout "
    "(openai.OpenAI(timeout=...), anthropic.Anthropic(timeout=...)): its timeout errors "
    "are recorded as outcome 'timeout' and retried by ragobs.retry")


_current_task = asyncio.current_task


class _Alarm:
    """Cancels the task waiting under it once ``clock`` passes the wait's deadline.

    The asyncio.timeout recipe: remember how many cancellations the task had
    pending when the wait began; after a CancelledError, ``uncancel()`` takes
    back ours and only if none is left over was the deadline its sole cause.

    The timer is lazy: it stays in place between waits and is moved only when
    it fires before the current deadline (which then moved on) or when a wait
    needs an earlier deadline. A stream whose chunks keep coming thus costs a
    few attribute writes per chunk, not a timer handle each.
    """

    __slots__ = ("_armed_at", "_baseline", "_callback", "_clock", "_deadline", "_handle",
                 "_task", "_waiting", "fired")

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._task: asyncio.Task[Any] | None = None
        self._handle: Cancellable | None = None
        self._armed_at = math.inf
        self._deadline = math.inf
        self._baseline = 0
        self._waiting = False
        self.fired = False
        self._callback = self._on_timer

    def begin(self, when: float) -> None:
        """A wait that must be over by ``when`` starts now, in the current task."""
        task = _current_task()
        if task is None:
            raise RuntimeError("ragobs timeouts must run inside an asyncio task")
        self._task = task
        self._baseline = task.cancelling()
        self.fired = False
        self._deadline = when
        self._waiting = True
        if self._handle is None or self._armed_at > when:
            if self._handle is not None:
                self._handle.cancel()
            self._armed_at = when
            self._handle = self._clock.call_at(when, self._callback)

    def end(self) -> bool:
        """The wait is over; True if the deadline alone cancelled it."""
        self._waiting = False
        if not self.fired:
            return False
        self.fired = False
        task = cast(asyncio.Task[Any], self._task)
        return task.uncancel() <= self._baseline

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _on_timer(self) -> None:
        self._handle = None
        if not self._waiting or self.fired:
            return  # the next wait re-arms
        if self._clock.now() >= self._deadline:
            self.fired = True
            cast(asyncio.Task[Any], self._task).cancel()
        else:
            self._armed_at = self._deadline
            self._handle = self._clock.call_at(self._deadline, self._callback)


def _report(error: StreamTimeout, name: str, telemetry: Telemetry | None) -> None:
    tel = telemetry or get_telemetry()
    tel.counter(semconv.TIMEOUTS).add(1, {
        semconv.NAME: tel.bound(semconv.NAME, name),
        semconv.TIMEOUT_KIND: error.kind,
    })
    emit(semconv.EVENT_TIMEOUT, name,
         {semconv.TIMEOUT_KIND: error.kind, semconv.TIMEOUT_LIMIT_S: error.limit,
          semconv.TIMEOUT_ELAPSED_S: error.elapsed},
         error=error, level=logging.WARNING, message=f"{name}: {error}")


def _timeout_error(kind: TimeoutKind, limit: float, elapsed: float, name: str,
                   telemetry: Telemetry | None) -> StreamTimeout:
    error = StreamTimeout(kind, limit, max(0.0, elapsed))
    _report(error, name, telemetry)
    return error


async def _run(aw: Awaitable[T], total: float, name: str, clock: Clock,
               telemetry: Telemetry | None) -> T:
    alarm = _Alarm(clock)
    start = clock.now()
    alarm.begin(start + total)
    try:
        result = await aw
    except asyncio.CancelledError as exc:
        if alarm.end():
            raise _timeout_error("total", total, clock.now() - start, name, telemetry) from exc
        raise
    except BaseException:
        alarm.end()
        raise
    else:
        alarm.end()
    finally:
        alarm.close()
    return result


async def with_timeout(
    aw: Awaitable[T],
    *,
    total: float,
    name: str | None = None,
    clock: Clock | None = None,
    telemetry: Telemetry | None = None,
) -> T:
    """Await ``aw`` for at most ``total`` seconds.

    Raises :class:`~ragobs.errors.StreamTimeout` (kind ``"total"``) when the
    deadline passes first; ``aw`` is then cancelled (a coroutine receives
    ``CancelledError`` where it waits, and its cleanup runs before this
    returns). Cancellation of the caller from outside propagates unchanged.

    Args:
        total: seconds, > 0.
        name: reported as ``ragobs.name``; default the awaitable's qualified name.
        clock: time source (tests: :class:`~ragobs.clock.ManualClock`).
        telemetry: where metrics go; default :func:`~ragobs.get_telemetry` at use.
    """
    try:
        if not inspect.isawaitable(aw):
            raise TypeError(f"aw must be awaitable, got {aw!r}")
        limit = _required_total(total)
        label = _check_name(name) or _default_name(aw, "with_timeout")
        clk = _check_clock(clock)
        tel = _check_telemetry(telemetry)
    except (TypeError, ValueError):
        if inspect.iscoroutine(aw):
            aw.close()  # never awaited: close it rather than warn
        raise
    return await _run(aw, limit, label, clk, tel)


def _required_total(total: object) -> float:
    if total is None:
        raise ValueError("total must be a number > 0 (finite), got None")
    return _positive("total", total)


@dataclass(frozen=True, slots=True)
class _StreamLimits:
    """The validated settings of one stream_timeout / timeout wrapper."""

    total: float | None
    first_token: float | None
    idle: float | None
    name: str
    clock: Clock
    telemetry: Telemetry | None


async def _timed_stream(source: Any, limits: _StreamLimits) -> AsyncGenerator[Any, None]:
    total, first_token, idle = limits.total, limits.first_token, limits.idle
    name, clock, telemetry = limits.name, limits.clock, limits.telemetry
    now = clock.now
    src: Any = None
    iterator: AsyncIterator[Any] | None = None
    finished = False
    alarm = _Alarm(clock)
    pull: Callable[[], Awaitable[Any]]

    async def open_and_pull() -> Any:
        # The first pull opens the source: a deferred one issues its request
        # here, so the wait for response headers is inside the deadlines.
        nonlocal src, iterator, pull
        src, iterator = await aopen(source)
        pull = iterator.__anext__
        return await pull()

    pull = open_and_pull
    try:
        start = now()
        total_at = math.inf if total is None else start + total
        first_at = math.inf if first_token is None else start + first_token
        got_first = False
        while True:
            t = now()
            # The deadline of this pull, and which one it is; ties go to the
            # more specific deadline.
            if not got_first:
                when, kind, limit = first_at, "first_token", first_token
                if total_at < first_at:
                    when, kind, limit = total_at, "total", total
            elif idle is not None:
                when, kind, limit = t + idle, "idle", idle
                if total_at < when:
                    when, kind, limit = total_at, "total", total
            else:
                when, kind, limit = total_at, "total", total
            if limit is None:
                if got_first or idle is None:  # no deadline left: pass the rest through
                    assert iterator is not None
                    async for chunk in iterator:
                        yield chunk
                    finished = True
                    return
                try:  # only idle is set, and it starts with the first chunk
                    chunk = await pull()
                except StopAsyncIteration:
                    finished = True
                    return
                got_first = carries_output(chunk)
                yield chunk
                continue
            if t >= when:
                raise _timeout_error(cast(TimeoutKind, kind), limit,
                                     t - start, name, telemetry)
            alarm.begin(when)
            try:
                chunk = await pull()
            except StopAsyncIteration:
                alarm.end()
                finished = True
                return
            except asyncio.CancelledError as exc:
                if alarm.end():
                    elapsed = now() - (t if kind == "idle" else start)
                    raise _timeout_error(cast(TimeoutKind, kind), limit, elapsed, name,
                                         telemetry) from exc
                raise
            except BaseException:
                alarm.end()
                raise
            alarm.end()
            if not got_first and carries_output(chunk):
                got_first = True
            yield chunk
    finally:
        alarm.close()
        if not finished and iterator is not None:
            await aclose_source(iterator, src)


def _check_stream_limits(total: object, first_token: object,
                         idle: object) -> tuple[float | None, float | None, float | None]:
    limits = (_optional_positive("total", total),
              _optional_positive("first_token", first_token),
              _optional_positive("idle", idle))
    if all(limit is None for limit in limits):
        raise ValueError("at least one of total, first_token, idle must be a number > 0, "
                         "got None for all three")
    return limits


@overload
def stream_timeout(
    stream: AsyncIterable[T], /, *, total: float | None = None,
    first_token: float | None = None, idle: float | None = None, name: str | None = None,
    clock: Clock | None = None, telemetry: Telemetry | None = None,
) -> AsyncGenerator[T, None]: ...


@overload
def stream_timeout(
    stream: None = None, /, *, total: float | None = None,
    first_token: float | None = None, idle: float | None = None, name: str | None = None,
    clock: Clock | None = None, telemetry: Telemetry | None = None,
) -> Callable[[F], F]: ...


def stream_timeout(
    stream: AsyncIterable[Any] | None = None,
    /,
    *,
    total: float | None = None,
    first_token: float | None = None,
    idle: float | None = None,
    name: str | None = None,
    clock: Clock | None = None,
    telemetry: Telemetry | None = None,
) -> Any:
    """The chunks of ``stream``, under up to three deadlines.

    ``stream`` is an async iterable, or an un-awaited call or zero-argument
    factory giving one (``client.chat.completions.create(..., stream=True)``):
    then the request itself, and the wait for response headers, count
    against ``first_token`` and ``total``.

    Each deadline is optional (at least one must be given), in seconds > 0:

    * ``total``: from the consumer's first request for a chunk to the end of
      the stream (time the consumer spends between chunks counts);
    * ``first_token``: from that first request until the first chunk that
      carries output arrives (an SDK's role or metadata chunks do not count;
      see :mod:`ragobs.chunks`);
    * ``idle``: after that first output chunk, how long the source may take
      to produce each next chunk (time the consumer spends does not count).

    When one passes, the wait is cancelled, the source is closed (its
    ``aclose()`` awaited) and :class:`~ragobs.errors.StreamTimeout` is raised
    with the deadline's ``kind``, ``limit`` and ``elapsed``. Closing the
    returned generator early closes the source too. Cancellation from outside
    propagates as ``CancelledError``.

    Without ``stream``, returns a decorator for async generator functions
    applying the same deadlines to each stream they return.
    """
    limits = _check_stream_limits(total, first_token, idle)
    label = _check_name(name)
    clk = _check_clock(clock)
    tel = _check_telemetry(telemetry)
    if stream is None:
        def decorate(func: F) -> F:
            if inspect.isgeneratorfunction(func):
                raise TypeError(_NO_SYNC)
            if not inspect.isasyncgenfunction(func):
                raise TypeError(
                    f"stream_timeout decorates async generator functions, got {func!r}")
            settings = _StreamLimits(*limits, label or _default_name(func, "stream_timeout"),
                                     clk, tel)

            @functools.wraps(func)
            def wrapper(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, None]:
                return _timed_stream(func(*args, **kwargs), settings)

            return cast(F, wrapper)

        return decorate
    if inspect.isasyncgenfunction(stream):
        raise TypeError("stream_timeout(stream) takes an async iterable; to decorate an async "
                        "generator function use @stream_timeout(...) with keyword arguments")
    if hasattr(stream, "__iter__") and not hasattr(stream, "__aiter__"):
        raise TypeError(_NO_SYNC)
    if not hasattr(stream, "__aiter__") and not is_deferred(stream):
        raise TypeError("stream must be an async iterable, an un-awaited call giving one or a "
                        f"zero-argument factory, got {stream!r}")
    return _timed_stream(stream, _StreamLimits(
        *limits, label or _default_name(stream, "stream_timeout"), clk, tel))


@overload
def timeout(fn: None = None, /, *, total: float, name: str | None = None,
            clock: Clock | None = None,
            telemetry: Telemetry | None = None) -> Callable[[F], F]: ...


@overload
def timeout(fn: F, /, *, total: float, name: str | None = None, clock: Clock | None = None,
            telemetry: Telemetry | None = None) -> F: ...


def timeout(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    total: float,
    name: str | None = None,
    clock: Clock | None = None,
    telemetry: Telemetry | None = None,
) -> Any:
    """Bound each call of a coroutine function to ``total`` seconds.

    ``@timeout(total=30)``. Calls that take longer are cancelled and raise
    :class:`~ragobs.errors.StreamTimeout` (kind ``"total"``), as
    :func:`with_timeout`. On an async generator function the deadline bounds
    each whole stream, as ``stream_timeout(total=...)``. The decorated
    function keeps its name, docstring and signature.
    """
    limit = _required_total(total)
    label = _check_name(name)
    clk = _check_clock(clock)
    tel = _check_telemetry(telemetry)

    def decorate(func: F) -> F:
        named = label or _default_name(func, "timeout")
        if inspect.isasyncgenfunction(func):
            settings = _StreamLimits(limit, None, None, named, clk, tel)

            @functools.wraps(func)
            def stream_wrapper(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, None]:
                return _timed_stream(func(*args, **kwargs), settings)

            return cast(F, stream_wrapper)
        if inspect.iscoroutinefunction(func):
            @functools.wraps(func)
            async def wrapper(*args: Any, **kwargs: Any) -> Any:
                return await _run(func(*args, **kwargs), limit, named, clk, tel)

            return cast(F, wrapper)
        if callable(func):
            raise TypeError(_NO_SYNC)
        raise TypeError(
            f"timeout decorates coroutine functions and async generator functions, got {func!r}")

    if fn is not None:
        return decorate(fn)
    return decorate
