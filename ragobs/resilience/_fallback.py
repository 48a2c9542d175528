"""Error recovery: a failed request gets a friendly answer instead of an error.

::

    @fallback
    async def answer(question):              # an async generator function
        async for chunk in agent.answer(question):
            yield chunk

On failure the user sees ``I encountered an error. Please try rephrasing your
question.``; the error itself is logged with its trace id, added as a
``fallback`` event to the current span, handed to the hooks and counted in
``ragobs.fallbacks`` by ``error.type``. Each call recovers on its own: a
failure never touches other requests in flight.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Iterator,
)
from dataclasses import dataclass, replace
from typing import Any, Final, TypeVar, cast, overload

from ragobs import semconv
from ragobs._classify import error_type
from ragobs._events import emit, logger
from ragobs._sources import aclose_source, aopen, close_source, is_deferred, open_sync
from ragobs._telemetry import Telemetry, get_telemetry
from ragobs.resilience._checks import (
    _check_name,
    _check_telemetry,
    _default_name,
    _describe,
    _exception_filter,
)
from ragobs.resilience._retry import ExceptionFilter

__all__ = ["DEFAULT_FALLBACK_MESSAGE", "fallback", "fallback_stream"]

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

DEFAULT_FALLBACK_MESSAGE: Final = "I encountered an error. Please try rephrasing your question."


Message = str | Callable[[BaseException], Any]

_LEVELS: Final = (logging.WARNING, logging.ERROR, logging.CRITICAL)


@dataclass(frozen=True, slots=True)
class _Recovery:
    """Validated settings of one wrapper, and what it does with a failure."""

    message: Message
    recoverable: Callable[[BaseException], bool] | None
    level: int
    name: str | None
    telemetry: Telemetry | None

    @classmethod
    def checked(cls, *, message: object, on: object, level: object, name: object,
                telemetry: object) -> _Recovery:
        """The settings, each argument checked (naming it and its range)."""
        if not isinstance(message, str) and not callable(message):
            raise TypeError(
                f"message must be a str or a callable taking the exception, got {message!r}")
        if level not in _LEVELS:
            raise ValueError("level must be logging.WARNING, logging.ERROR or "
                             f"logging.CRITICAL, got {level!r}")
        return cls(message=message, recoverable=_exception_filter(on), level=level,
                   name=_check_name(name), telemetry=_check_telemetry(telemetry))

    def named(self, name: str) -> _Recovery:
        """These settings, with ``name`` filled in unless one was given."""
        return self if self.name is not None else replace(self, name=name)

    def recovers(self, exc: Exception) -> bool:
        return self.recoverable is None or self.recoverable(exc)

    def serve(self, exc: Exception, *, partial: bool | None = None) -> Any:
        """Report ``exc`` and return the fallback answer for it."""
        name = cast(str, self.name)
        tel = self.telemetry or get_telemetry()
        etype = tel.bound(semconv.ERROR_TYPE, error_type(exc))
        tel.counter(semconv.FALLBACKS).add(
            1, {semconv.NAME: tel.bound(semconv.NAME, name), semconv.ERROR_TYPE: etype})
        attrs: dict[str, Any] = {} if partial is None else {semconv.FALLBACK_PARTIAL: partial}
        emit(semconv.EVENT_FALLBACK, name, attrs, error=exc, level=self.level,
             message=f"fallback served by {name} after {_describe(exc)}")
        message = self.message
        if isinstance(message, str):
            return message
        try:
            return message(exc)
        except Exception:  # the safety net must not tear: use the default text
            logger.exception("ragobs fallback %s: message callable failed", name)
            return DEFAULT_FALLBACK_MESSAGE


async def _recover_stream(source: Any, policy: _Recovery) -> AsyncGenerator[Any, None]:
    src: Any = None
    iterator: AsyncIterator[Any] | None = None
    exhausted = False
    partial = False
    try:
        while True:
            try:
                if iterator is None:  # a deferred source issues its request here
                    src, iterator = await aopen(source)
                chunk = await iterator.__anext__()
            except StopAsyncIteration:
                exhausted = True
                return
            except Exception as exc:
                if not policy.recovers(exc):
                    raise
                failure: Exception = exc
                break
            partial = True
            yield chunk
        await aclose_source(iterator, src, quiet=True)
        iterator = None
        yield policy.serve(failure, partial=partial)
    finally:
        if not exhausted and iterator is not None:
            await aclose_source(iterator, src, quiet=True)


def _recover_sync_stream(source: Any, policy: _Recovery) -> Generator[Any, None, None]:
    """:func:`_recover_stream` for iterators."""
    src: Any = None
    iterator: Iterator[Any] | None = None
    exhausted = False
    partial = False
    try:
        while True:
            try:
                if iterator is None:
                    src, iterator = open_sync(source)
                chunk = next(iterator)
            except StopIteration:
                exhausted = True
                return
            except Exception as exc:
                if not policy.recovers(exc):
                    raise
                failure: Exception = exc
                break
            partial = True
            yield chunk
        close_source(iterator, src, quiet=True)
        iterator = None
        yield policy.serve(failure, partial=partial)
    finally:
        if not exhausted and iterator is not None:
            close_source(iterator, src, quiet=True)


def fallback_stream(
    stream: AsyncIterable[T] | Awaitable[AsyncIterable[T]] | Callable[[], Any],
    *,
    message: Message = DEFAULT_FALLBACK_MESSAGE,
    on: ExceptionFilter | None = None,
    level: int = logging.ERROR,
    name: str | None = None,
    telemetry: Telemetry | None = None,
) -> AsyncGenerator[T | Any, None]:
    """The chunks of ``stream``; if it fails, the fallback message as a last chunk.

    ``stream`` is an async iterable, or an un-awaited call or zero-argument
    factory giving one: then a failure of the request itself (a 429 before
    any chunk) is recovered too. Same arguments and guarantees as
    :func:`fallback`; closing the returned generator closes the source object.
    """
    if not hasattr(stream, "__aiter__") and not is_deferred(stream):
        raise TypeError("stream must be an async iterable, an un-awaited call giving one or a "
                        f"zero-argument factory, got {stream!r}")
    policy = _Recovery.checked(message=message, on=on, level=level, name=name, telemetry=telemetry)
    return _recover_stream(stream, policy.named(_default_name(stream, "fallback_stream")))


@overload
def fallback(fn: F, /) -> F: ...


@overload
def fallback(
    fn: None = None, /, *, message: Message = DEFAULT_FALLBACK_MESSAGE,
    on: ExceptionFilter | None = None, level: int = logging.ERROR, name: str | None = None,
    telemetry: Telemetry | None = None,
) -> Callable[[F], F]: ...


def fallback(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    message: Message = DEFAULT_FALLBACK_MESSAGE,
    on: ExceptionFilter | None = None,
    level: int = logging.ERROR,
    name: str | None = None,
    telemetry: Telemetry | None = None,
) -> Any:
    """Answer with a fallback message when a request fails, instead of raising.

    Usable bare (``@fallback``) or with arguments; the decorated function
    keeps its name, docstring and signature.

    * A function (async or sync) returns the fallback message in place of raising.
    * A generator function (async or sync) yields the fallback message as its last
      chunk and ends normally. If it had already yielded part of an answer,
      the message is still appended after that partial output (so the user
      learns the answer is cut short); the event's ``fallback.partial`` says
      which case it was.

    Only failures of the call itself are recovered, and only
    :class:`Exception` subclasses (narrowed by ``on``): cancellation,
    ``KeyboardInterrupt`` and a consumer closing the stream early are never
    swallowed. Each recovery is reported with the exception (``fallback``
    span event with ``error.type``, a log record at ``level`` carrying the
    trace id, the hooks) and counted in ``ragobs.fallbacks`` by
    ``error.type``. Nothing is shared between calls, so one request's failure
    never affects another's.

    Args:
        message: the text served, or a callable taking the exception and
            returning it (if that callable raises, the default text is used).
        on: what to recover: an exception type, a tuple of them, or a
            predicate taking the exception. Default: every ``Exception``.
        level: log level of the report: logging.WARNING, ERROR or CRITICAL.
        name: reported as ``ragobs.name``; default the function's qualified name.
        telemetry: where metrics go; default :func:`~ragobs.get_telemetry` at use.
    """
    policy = _Recovery.checked(message=message, on=on, level=level, name=name, telemetry=telemetry)

    def decorate(func: F) -> F:
        named = policy.named(_default_name(func, "fallback"))
        if inspect.isasyncgenfunction(func):
            @functools.wraps(func)
            def stream_wrapper(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, None]:
                return _recover_stream(func(*args, **kwargs), named)

            return cast(F, stream_wrapper)
        if inspect.iscoroutinefunction(func):
            @functools.wraps(func)
            async def wrapper(*args: Any, **kwargs: Any) -> Any:
                try:
                    return await func(*args, **kwargs)
                except Exception as exc:
                    if not named.recovers(exc):
                        raise
                    return named.serve(exc)

            return cast(F, wrapper)
        if inspect.isgeneratorfunction(func):
            @functools.wraps(func)
            def sync_stream_wrapper(*args: Any, **kwargs: Any) -> Generator[Any, None, None]:
                return _recover_sync_stream(func(*args, **kwargs), named)

            return cast(F, sync_stream_wrapper)
        if callable(func):
            @functools.wraps(func)
            def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
                try:
                    return func(*args, **kwargs)
                except Exception as exc:
                    if not named.recovers(exc):
                        raise
                    return named.serve(exc)

            return cast(F, sync_wrapper)
        raise TypeError(f"fallback decorates functions and generator functions (sync or "
                        f"async), got {func!r}; wrap a stream with fallback_stream()")

    if fn is not None:
        return decorate(fn)
    return decorate
