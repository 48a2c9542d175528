"""Requests and tokens per caller, with ragobs' own rate limiters.

A caller is its API key (``Authorization: Bearer``, ``x-api-key`` or Azure's
``api-key``; requests without one are one caller together). The key itself
is never kept, logged or used as a label: only a SHA-256 digest of it names
the caller's windows (and the Redis keys, ``ragobs:proxy:{<digest>}:...``).

* Requests: each request takes one from the caller's window before it is
  forwarded, or is refused.
* Tokens: the provider's usage (input + output; chunks counted when the
  upstream gave none) is charged when the call ends, since nobody knows it
  before. A charge that does not fit is queued on the caller's window and
  the caller is refused until it has been paid, so a window is exceeded by
  at most the calls already running when it filled up.

Refusals are ``429`` with ``Retry-After`` (and ``retry-after-ms``) and the
``x-ratelimit-limit-*`` / ``-remaining-*`` / ``-reset-*`` headers of each
configured limit. With a local window the wait is exact; with Redis it is
the window (an upper bound), and ``remaining`` of a limit that was not the
one refused is left out (it would cost round trips).

Local windows are :class:`ragobs.RateLimiter` (strict sliding windows),
shared ones :class:`ragobs.RedisRateLimiter`, which fails open when Redis
cannot be reached (a limiter outage is not a proxy outage; each such
decision is counted in ``ragobs.ratelimit.backend.errors``). The limiters
report as ``proxy.requests`` and ``proxy.tokens``.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import math
from dataclasses import dataclass
from typing import Any, Final

from multidict import CIMultiDictProxy

from ragobs._telemetry import Telemetry
from ragobs.clock import Clock
from ragobs.proxy._config import CallerLimits
from ragobs.resilience import RateLimiter, RedisRateLimiter

__all__ = ["Limits", "Refusal", "caller_of"]

REQUESTS: Final = "requests"
TOKENS: Final = "tokens"
_Limiter = RateLimiter | RedisRateLimiter


def caller_of(headers: CIMultiDictProxy[str]) -> str:
    """The digest naming the caller of a request (see the module docstring)."""
    key = headers.get("Authorization", "")
    if key[:7].lower() == "bearer ":
        key = key[7:]
    key = key.strip() or headers.get("x-api-key", "") or headers.get("api-key", "")
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Refusal:
    """A request refused by a caller's limit."""

    #: ``requests`` or ``tokens``.
    limit: str
    #: Seconds until the caller may try again.
    retry_after: float
    headers: dict[str, str]


def _reset(seconds: float) -> str:
    """A wait as the ``x-ratelimit-reset-*`` headers write it (``20ms``, ``1.5s``)."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    return f"{seconds:.3g}s"


def _local_wait(limiter: RateLimiter, cost: int) -> float:
    """Seconds until ``cost`` fits a local window, after the charges queued on it.

    The limiter keeps this to itself; its strategy answers it exactly."""
    queued = limiter._waiters.queued_cost
    return max(0.0, limiter._strategy.estimate(limiter._clock.now(), queued + cost))


def _local_remaining(limiter: RateLimiter) -> int:
    """What a local window could grant now (the largest cost that fits)."""
    low, high = 0, limiter.max_requests
    while low < high:
        mid = (low + high + 1) // 2
        if limiter.has_capacity(mid):
            low = mid
        else:
            high = mid - 1
    return low


class _Caller:
    __slots__ = ("requests", "tokens")

    def __init__(self, requests: _Limiter | None, tokens: _Limiter | None) -> None:
        self.requests = requests
        self.tokens = tokens


class Limits:
    """The windows of every caller seen (at most ``max_callers``)."""

    __slots__ = ("_callers", "_clock", "_debts", "_redis", "_telemetry", "settings")

    def __init__(self, settings: CallerLimits, *, telemetry: Telemetry | None = None,
                 clock: Clock | None = None) -> None:
        self.settings = settings
        self._telemetry = telemetry
        self._clock = clock
        self._callers: collections.OrderedDict[str, _Caller] = collections.OrderedDict()
        self._debts: set[asyncio.Task[Any]] = set()
        self._redis: Any = None

    @property
    def enabled(self) -> bool:
        return self.settings.enabled

    def _limiter(self, caller: str, kind: str, limit: int | None) -> _Limiter | None:
        if limit is None:
            return None
        s = self.settings
        name = f"proxy.{kind}"
        if s.redis_url is None:
            return RateLimiter(limit, s.window, name=name, clock=self._clock,
                               telemetry=self._telemetry)
        if self._redis is None:
            try:
                from redis.asyncio import Redis
            except ImportError as exc:  # pragma: no cover - the [redis] extra is missing
                raise ImportError("shared proxy limits need redis-py: "
                                  "pip install 'ragobs[redis]'") from exc
            self._redis = Redis.from_url(s.redis_url, socket_timeout=1.0,
                                         socket_connect_timeout=1.0)
        return RedisRateLimiter(limit, s.window, redis=self._redis,
                                key=f"ragobs:proxy:{{{caller}}}:{kind}", name=name,
                                on_unavailable="open", clock=self._clock,
                                telemetry=self._telemetry)

    def _caller(self, caller: str) -> _Caller:
        found = self._callers.get(caller)
        if found is None:
            s = self.settings
            found = self._callers[caller] = _Caller(self._limiter(caller, REQUESTS, s.requests),
                                                    self._limiter(caller, TOKENS, s.tokens))
            if len(self._callers) > s.max_callers:
                self._callers.popitem(last=False)
        else:
            self._callers.move_to_end(caller)
        return found

    async def admit(self, caller: str) -> Refusal | None:
        """Take one request from ``caller``'s window, or the reason it may not."""
        windows = self._caller(caller)
        tokens, requests = windows.tokens, windows.requests
        if tokens is not None:
            free = tokens.has_capacity(1) if isinstance(tokens, RateLimiter) \
                else await tokens.has_capacity(1)
            if not free:
                return self._refusal(windows, TOKENS)
        if requests is not None:
            taken = requests.try_acquire(1) if isinstance(requests, RateLimiter) \
                else await requests.try_acquire(1)
            if not taken:
                return self._refusal(windows, REQUESTS)
        return None

    def charge(self, caller: str, tokens: int) -> None:
        """Charge ``tokens`` used by a call of ``caller`` that ended."""
        window = self._caller(caller).tokens
        if window is None or tokens <= 0:
            return
        cost = min(tokens, window.max_requests)
        if isinstance(window, RateLimiter) and window.has_capacity(cost):
            window.try_acquire(cost)
            return
        # Queued: the caller is refused until it fits (see the module docstring).
        task = asyncio.get_running_loop().create_task(window.acquire(cost))
        self._debts.add(task)
        task.add_done_callback(self._paid)

    def _paid(self, task: asyncio.Task[Any]) -> None:
        self._debts.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a failed charge is the limiter's to report

    def _refusal(self, windows: _Caller, refused: str) -> Refusal:
        headers: dict[str, str] = {}
        wait = 0.0
        for kind, limiter in ((REQUESTS, windows.requests), (TOKENS, windows.tokens)):
            if limiter is None:
                continue
            headers[f"x-ratelimit-limit-{kind}"] = str(limiter.max_requests)
            until: float | None = None
            if isinstance(limiter, RateLimiter):
                until = _local_wait(limiter, 1)
                headers[f"x-ratelimit-remaining-{kind}"] = str(
                    0 if kind == refused else _local_remaining(limiter))
            elif kind == refused:  # Redis: the window is an upper bound
                until = limiter.window_seconds
                headers[f"x-ratelimit-remaining-{kind}"] = "0"
            if until is not None:
                headers[f"x-ratelimit-reset-{kind}"] = _reset(until)
                if kind == refused:
                    wait = until
        headers["retry-after"] = str(max(1, math.ceil(wait)))
        headers["retry-after-ms"] = str(math.ceil(wait * 1000))
        return Refusal(refused, wait, headers)

    async def aclose(self) -> None:
        """Drop queued charges and close the Redis client, if any."""
        for task in list(self._debts):
            task.cancel()
        if self._debts:
            await asyncio.gather(*self._debts, return_exceptions=True)
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None
