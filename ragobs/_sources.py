"""Opening and closing what a wrapper reads from: one rule for every wrapper.

A *source* is what the user handed over: an (async) iterable, an
un-awaited call that gives one (``client.chat.completions.create(...,
stream=True)``), or a zero-argument factory. Opening it inside the wrapper
puts the request phase (the wait for response headers) inside the
measurement and the deadlines.

Closing is closing: the iterator a wrapper got from ``__aiter__`` is often
not the object that holds the connection (an OpenAI ``AsyncStream``'s
``__aiter__`` is a fresh async generator over its private iterator), so
closing the iterator alone would leave the HTTP response open and the
provider generating. :func:`aclose_source` closes both.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Iterator
from typing import Any


def is_deferred(source: object) -> bool:
    """Is ``source`` an un-awaited call or a factory rather than an iterable?"""
    if hasattr(source, "__aiter__") or hasattr(source, "__iter__"):
        return False
    return inspect.isawaitable(source) or callable(source)


def check_streamed(source: object) -> None:
    """Refuse a complete, non-streamed SDK response (a pydantic model such as
    ``ChatCompletion``, which iterates over its fields) with what was meant."""
    if hasattr(type(source), "model_dump") and not hasattr(source, "__next__"):
        raise TypeError(
            f"the stream is a complete {type(source).__name__}, not a stream: call the "
            "provider with stream=True (create(..., stream=True)) to observe its chunks")


async def aopen(source: Any) -> tuple[Any, AsyncIterator[Any]]:
    """(the source object, its async iterator), calling / awaiting a deferred source."""
    if not hasattr(source, "__aiter__"):
        if callable(source) and not inspect.isawaitable(source):
            source = source()
        if not hasattr(source, "__aiter__") and inspect.isawaitable(source):
            source = await source
        check_streamed(source)
        if not hasattr(source, "__aiter__"):
            raise TypeError(f"the stream must be an async iterable, or a call or factory "
                            f"giving one, got {type(source).__name__}")
    iterator: AsyncIterator[Any] = source.__aiter__()
    return source, iterator


def open_sync(source: Any) -> tuple[Any, Iterator[Any]]:
    """(the source object, its iterator), calling a factory."""
    if not hasattr(source, "__iter__") and callable(source):
        source = source()
    check_streamed(source)
    if not hasattr(source, "__iter__"):
        raise TypeError(f"the stream must be an iterable, or a factory giving one, "
                        f"got {type(source).__name__}")
    return source, iter(source)


async def aclose_source(iterator: object, source: object = None, *, quiet: bool = False) -> None:
    """Close ``iterator`` (``aclose()``) and then ``source`` (``aclose()`` or
    ``close()``, awaited when it returns an awaitable) if it is another object.

    ``quiet``: a failure to close is swallowed (a broken stream may fail to
    close too); otherwise the first failure is raised after both were tried.
    """
    failure: BaseException | None = None
    targets: list[tuple[object, tuple[str, ...]]] = [(iterator, ("aclose",))]
    if source is not iterator:
        targets.append((source, ("aclose", "close")))
    for target, names in targets:
        if target is None:
            continue
        for name in names:
            method = getattr(target, name, None)
            if method is None:
                continue
            try:
                result = method()
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:
                if failure is None and not quiet:
                    failure = exc
            break
    if failure is not None:
        raise failure


def close_source(iterator: object, source: object = None, *, quiet: bool = False) -> None:
    """The synchronous :func:`aclose_source`: ``close()`` on both."""
    failure: BaseException | None = None
    for target in (iterator, source) if source is not iterator else (iterator,):
        if target is None:
            continue
        method = getattr(target, "close", None)
        if method is None:
            continue
        try:
            method()
        except Exception as exc:
            if failure is None and not quiet:
                failure = exc
    if failure is not None:
        raise failure
