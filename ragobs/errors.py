"""The exceptions ragobs raises itself.

Everything ragobs raises of its own derives from :class:`RagobsError`, so
``except RagobsError`` catches ragobs's verdicts and nothing else. Where an
error also has a standard meaning it derives from the standard class too:
:class:`StreamTimeout` is a :class:`TimeoutError`, so code that already
handles timeouts (and ``retry``'s default filter) treats it as one.

There is deliberately no ``RetryExhausted``: like stamina, ``retry`` re-raises
the last attempt's own exception when it gives up (with a note saying why),
so ``except SomeProviderError`` keeps working with or without retries.
"""

from __future__ import annotations

import math
from typing import Final, Literal, get_args

__all__ = ["RagobsError", "RateLimitTimeout", "RateLimiterUnavailable", "StreamTimeout",
           "TimeoutKind"]

#: Which deadline fired: the whole call or stream, the wait for the first
#: non-empty chunk, or the wait for the next chunk after that.
TimeoutKind = Literal["total", "first_token", "idle"]
TIMEOUT_KINDS: Final[tuple[str, ...]] = get_args(TimeoutKind)

_WHAT = {
    "total": "not finished",
    "first_token": "no first chunk",
    "idle": "no next chunk",
}


class RagobsError(Exception):
    """Base class of the exceptions ragobs raises itself."""


class StreamTimeout(RagobsError, TimeoutError):
    """A deadline of :func:`~ragobs.resilience.stream_timeout` or
    :func:`~ragobs.resilience.timeout` fired.

    Attributes:
        kind: ``"total"`` (the whole stream or call), ``"first_token"`` (the
            wait for the first non-empty chunk) or ``"idle"`` (the wait for the
            next chunk after the first).
        limit: the deadline that fired, in seconds.
        elapsed: seconds from the start of what the deadline measures (the
            call / stream for ``total`` and ``first_token``, the wait for the
            chunk for ``idle``) to the moment it fired.
    """

    kind: TimeoutKind
    limit: float
    elapsed: float

    def __init__(self, kind: TimeoutKind, limit: float, elapsed: float) -> None:
        if kind not in TIMEOUT_KINDS:
            raise ValueError(f"kind must be one of {', '.join(TIMEOUT_KINDS)}, got {kind!r}")
        for arg, value in (("limit", limit), ("elapsed", elapsed)):
            if (not isinstance(value, (int, float)) or isinstance(value, bool)
                    or not math.isfinite(value) or value < 0):
                raise ValueError(f"{arg} must be a finite number >= 0, got {value!r}")
        super().__init__(
            f"{kind} timeout: {_WHAT[kind]} after {elapsed:.3f} s (limit {limit:g} s)"
        )
        self.kind = kind
        self.limit = float(limit)
        self.elapsed = float(elapsed)

    def __reduce__(self) -> tuple[type[StreamTimeout], tuple[str, float, float]]:
        return type(self), (self.kind, self.limit, self.elapsed)


class RateLimitTimeout(RagobsError, TimeoutError):
    """``acquire(max_wait=...)`` waited its whole ``max_wait`` without getting capacity.

    Nothing was taken from the limiter. Attributes: ``name`` (the limiter's)
    and ``timeout`` (seconds).
    """

    def __init__(self, name: str, timeout: float) -> None:
        super().__init__(f"rate limiter {name!r}: no capacity within {timeout:g} s")
        self.name = name
        self.timeout = float(timeout)

    def __reduce__(self) -> tuple[type[RateLimitTimeout], tuple[str, float]]:
        return type(self), (self.name, self.timeout)


class RateLimiterUnavailable(RagobsError, ConnectionError):
    """A shared rate limiter's backend (Redis) could not be reached and the
    limiter fails closed. Being a :class:`ConnectionError`, ``retry`` retries it
    by default.
    """
