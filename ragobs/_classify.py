"""What a failure means: outcome, ``error.type``, HTTP status, retryability, server hints.

The one home of these rules for every part of ragobs (streams, stages,
events, retry, fallback). Exceptions are read duck-typed, so no SDK is
imported: the rules hold for the OpenAI and Anthropic clients (whose
connection and timeout errors do not derive from the standard classes),
httpx, aiohttp, and plain Python errors alike.

* A failure is a *timeout* when it, or an exception in its cause chain, is a
  :class:`TimeoutError` or an SDK / HTTP-client timeout (``APITimeoutError``,
  httpx's ``TimeoutException`` family).
* A failure is a *connection error* when it, or its cause chain, is a
  :class:`ConnectionError`, a network-level :class:`OSError`, or an SDK /
  HTTP-client transport error (``APIConnectionError``, httpx's
  ``NetworkError`` and ``RemoteProtocolError``, aiohttp's
  ``ClientConnectionError``).
* The HTTP status is the first int in 100..599 found in ``status_code`` or
  ``status`` of the exception, then of its ``response``.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import errno
import math
import socket
import time
from collections.abc import Callable, Iterator
from datetime import UTC, timedelta
from typing import Any, Final

from ragobs.semconv import Outcome

#: How deep the ``__cause__`` / ``__context__`` chain is followed.
_CHAIN_DEPTH: Final = 8

#: Class names (anywhere in an exception's MRO) of the SDKs' and HTTP
#: clients' timeouts: openai / anthropic ``APITimeoutError``, httpx
#: ``TimeoutException`` (and its ``ReadTimeout``... subclasses).
_TIMEOUT_CLASSES: Final = frozenset({"APITimeoutError", "TimeoutException"})
#: ... and of their transport failures: openai / anthropic
#: ``APIConnectionError``, httpx ``NetworkError`` / ``RemoteProtocolError``,
#: aiohttp ``ClientConnectionError`` / ``ClientPayloadError``.
_CONNECTION_CLASSES: Final = frozenset({
    "APIConnectionError", "NetworkError", "RemoteProtocolError", "ClientConnectionError",
    "ClientPayloadError", "ServerDisconnectedError",
})

_NETWORK_ERRNOS: Final = frozenset(
    getattr(errno, code) for code in (
        "ECONNABORTED", "ECONNREFUSED", "ECONNRESET", "EHOSTDOWN", "EHOSTUNREACH",
        "ENETDOWN", "ENETRESET", "ENETUNREACH", "EPIPE", "ETIMEDOUT",
    ) if hasattr(errno, code)
)

#: Statuses a retry may fix: request timeout, conflict (a lock timeout, as
#: the OpenAI SDK treats it), too many requests, and server errors.
_RETRYABLE_STATUSES: Final = frozenset({408, 409, 429})


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from, nearest first."""
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < _CHAIN_DEPTH:
        yield current
        seen += 1
        current = current.__cause__ or (
            None if current.__suppress_context__ else current.__context__)


def _named(exc: BaseException, names: frozenset[str]) -> bool:
    return any(cls.__name__ in names for cls in type(exc).__mro__)


def is_timeout(exc: BaseException) -> bool:
    """Is ``exc`` (or what it was raised from) a timeout?"""
    return any(isinstance(e, TimeoutError) or _named(e, _TIMEOUT_CLASSES) for e in _chain(exc))


def is_connection_error(exc: BaseException) -> bool:
    """Is ``exc`` (or what it was raised from) a failure to reach the server?"""
    for e in _chain(exc):
        if isinstance(e, ConnectionError) or _named(e, _CONNECTION_CLASSES):
            return True
        if isinstance(e, socket.gaierror):
            if e.errno == socket.EAI_AGAIN:
                return True
        elif isinstance(e, OSError) and e.errno in _NETWORK_ERRNOS:
            return True
    return False


def http_status(exc: BaseException) -> int | None:
    """The HTTP status ``exc`` carries (itself or on ``exc.response``), if any."""
    for holder in (exc, getattr(exc, "response", None)):
        if holder is None:
            continue
        for attr in ("status_code", "status"):
            status = getattr(holder, attr, None)
            if isinstance(status, int) and not isinstance(status, bool) \
                    and 100 <= status <= 599:
                return status
    return None


def classify(exc: BaseException | None) -> Outcome:
    """The outcome of a request that ended with ``exc`` (``None``: success)."""
    if exc is None:
        return Outcome.OK
    if isinstance(exc, (GeneratorExit, KeyboardInterrupt, asyncio.CancelledError)):
        return Outcome.CANCELLED
    if is_timeout(exc):
        return Outcome.TIMEOUT
    return Outcome.ERROR


def error_type(exc: BaseException) -> str:
    """``error.type`` of ``exc``: its HTTP status when it carries one, else its class name."""
    status = http_status(exc)
    return str(status) if status is not None else type(exc).__name__


def should_retry_hint(exc: BaseException) -> bool | None:
    """The server's ``x-should-retry`` answer on ``exc``'s response, if it gave one."""
    value = header(exc, "x-should-retry")
    if value is None:
        return None
    value = value.strip().lower()
    return True if value == "true" else False if value == "false" else None


def is_retryable(exc: BaseException) -> bool:
    """The default retry filter: is ``exc`` a failure a retry may fix?

    The server's ``x-should-retry: true|false`` header decides when present.
    Otherwise true for connection errors and timeouts (as described in this
    module, so the OpenAI and Anthropic SDKs' ``APIConnectionError`` and
    ``APITimeoutError`` too, and :class:`~ragobs.errors.StreamTimeout`) and
    for HTTP statuses 408, 409, 429 and 5xx. Never true for anything that is
    not an :class:`Exception` (cancellation, ``KeyboardInterrupt``).
    """
    if not isinstance(exc, Exception):
        return False
    hint = should_retry_hint(exc)
    if hint is not None:
        return hint
    status = http_status(exc)
    if status is not None:
        return status in _RETRYABLE_STATUSES or status >= 500
    return is_timeout(exc) or is_connection_error(exc)


# --- server hints --------------------------------------------------------


def header(exc: BaseException, key: str) -> str | None:
    """Header ``key`` (lower case) of ``exc.headers`` or ``exc.response.headers``."""
    for holder in (exc, getattr(exc, "response", None)):
        headers = getattr(holder, "headers", None) if holder is not None else None
        if headers is None or not hasattr(headers, "get"):
            continue
        found = _header(headers, key)
        if found is not None:
            return found
    return None


def _header(headers: Any, key: str) -> str | None:
    # Case-insensitive mappings (aiohttp, httpx, requests) find either
    # spelling directly; a plain dict may use any case.
    for spelling in (key, key.title()):
        with contextlib.suppress(Exception):
            value = headers.get(spelling)
            if value is not None:
                return str(value)
    with contextlib.suppress(Exception):
        for name, value in headers.items():
            if isinstance(name, str) and name.lower() == key:
                return str(value)
    return None


def retry_after(exc: BaseException, now: Callable[[], float] = time.time) -> float | None:
    """Seconds the server asked us to wait, from ``exc.retry_after`` or the
    ``retry-after-ms`` / ``Retry-After`` header on ``exc`` or ``exc.response``.

    ``Retry-After`` is delay-seconds or an HTTP-date (compared with ``now()``,
    the wall clock). Unparseable values are ignored; past dates give 0.
    """
    value = getattr(exc, "retry_after", None)
    if value is not None:
        found = _seconds(value, now)
        if found is not None:
            return found
    millis = header(exc, "retry-after-ms")
    if millis is not None:
        with contextlib.suppress(ValueError):
            ms = float(millis)
            if math.isfinite(ms) and ms >= 0:
                return ms / 1000.0
    raw = header(exc, "retry-after")
    return _seconds(raw, now) if raw is not None else None


def _seconds(value: object, now: Callable[[], float]) -> float | None:
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if not isinstance(value, str):
        return None
    text = value.strip()
    with contextlib.suppress(ValueError):
        seconds = float(text)
        if math.isnan(seconds) or seconds < 0:
            return None
        return seconds  # may be inf: a server that says "never" is above any cap
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now())
