"""An exact async rate limiter: strict sliding window, or a token bucket.

Seed-compatible::

    limiter = RateLimiter(max_requests=10, window_seconds=60)
    await limiter.acquire()

Guarantees (strategy ``"sliding_window"``, the default): the costs granted in
any interval of ``window_seconds`` sum to at most ``max_requests``, whatever
the concurrency. The limiter keeps a log of the grants still inside the
window, at most ``max_requests`` entries, so memory does not grow with the
traffic. With ``"token_bucket"`` capacity refills smoothly at
``max_requests / window_seconds`` per second up to a burst of
``max_requests``: any interval of ``T`` seconds grants at most
``max_requests + T * max_requests / window_seconds`` (so up to twice the
nominal rate inside one window, in exchange for no idle gaps).

Waiters are served first come, first served: a waiter never overtakes an
earlier one, and ``try_acquire`` never jumps the queue. A waiter that is
cancelled or times out takes no capacity and is removed at once, so it delays
nobody. One limiter serves one event loop; for several processes or replicas
use :class:`~ragobs.resilience.RedisRateLimiter`.

Every wait is reported (``ratelimit.wait`` span event, the seed's log line
"Rate limit reached (3 requests/5s). Waiting 5.0s...", hooks), and counted in
``ragobs.ratelimit.acquisitions`` (by whether it waited),
``ragobs.ratelimit.wait.duration`` (waits only) and
``ragobs.ratelimit.rejections`` (by reason).

The waiting line, the reporting and the argument checks are shared with the
Redis limiter (:mod:`ragobs.resilience._limiter`); what is this module's own
is the two strategies and the timer that serves the line from them.
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable
from typing import Final, Literal

from ragobs._telemetry import Telemetry
from ragobs.clock import Cancellable, Clock, MonotonicClock
from ragobs.resilience._checks import (
    _check_clock,
    _check_name,
    _check_telemetry,
    _optional_positive,
)
from ragobs.resilience._limiter import (
    COST,
    LIMIT,
    REASON_BACKEND_UNAVAILABLE,
    REASON_CANCELLED,
    REASON_NO_CAPACITY,
    REASON_TIMEOUT,
    REASON_TOO_LARGE,
    WAIT,
    WINDOW,
    LimiterForms,
    LimiterReport,
    Waiter,
    WaitLine,
    check_cost,
    check_limits,
    checked_cost,
    prune_departed,
)

__all__ = ["RateLimiter", "Strategy"]
# The shared base moved to _limiter, and stays importable from here.
__all__ += [
    "COST",
    "LIMIT",
    "REASON_BACKEND_UNAVAILABLE",
    "REASON_CANCELLED",
    "REASON_NO_CAPACITY",
    "REASON_TIMEOUT",
    "REASON_TOO_LARGE",
    "WAIT",
    "WINDOW",
    "LimiterForms",
    "LimiterReport",
    "check_cost",
    "check_limits",
    "checked_cost",
    "prune_departed",
]

Strategy = Literal["sliding_window", "token_bucket"]
STRATEGIES: Final[tuple[str, ...]] = ("sliding_window", "token_bucket")

# Timers may fire a hair early (float rounding between clocks): grant within this.
_EPSILON: Final = 1e-9


# --- strategies: what fits now, and when the next cost will fit --------------


class _SlidingWindow:
    """A log of ``(expiry, cost)`` grants, oldest first; at most ``limit`` entries."""

    __slots__ = ("_log", "_used", "limit", "window")

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._log: collections.deque[tuple[float, int]] = collections.deque()
        self._used = 0

    def _expire(self, now: float) -> None:
        log = self._log
        while log and log[0][0] <= now + _EPSILON:
            self._used -= log.popleft()[1]

    def try_take(self, now: float, cost: int) -> object:
        """A grant (to give back later) if ``cost`` fits now, else None."""
        log = self._log
        if log and log[0][0] <= now + _EPSILON:
            self._expire(now)
        if self._used + cost > self.limit:
            return None
        entry = (now + self.window, cost)
        log.append(entry)
        self._used += cost
        return entry

    def ready_at(self, now: float, cost: int) -> float:
        """When ``cost`` will fit, if nothing else is taken meanwhile."""
        self._expire(now)
        excess = self._used + cost - self.limit
        if excess <= 0:
            return now
        for expiry, held in self._log:
            excess -= held
            if excess <= 0:
                return expiry
        raise AssertionError("cost was checked against the capacity")  # pragma: no cover

    def give_back(self, grant: object, cost: int) -> None:
        log = self._log
        for i in range(len(log) - 1, -1, -1):
            if log[i] is grant:
                del log[i]
                self._used -= cost
                return

    def estimate(self, now: float, demand: int) -> float:
        """Seconds until ``demand`` (queued costs ahead plus this one) is served."""
        windows, rest = divmod(demand - 1, self.limit)
        return self.ready_at(now, rest + 1) - now + windows * self.window


class _TokenBucket:
    """``tokens`` refilled at ``limit / window`` per second, up to ``limit``."""

    __slots__ = ("_stamp", "_tokens", "limit", "rate", "window")

    def __init__(self, limit: int, window: float, now: float) -> None:
        self.limit = limit
        self.window = window
        self.rate = limit / window
        self._tokens = float(limit)
        self._stamp = now

    def _refill(self, now: float) -> float:
        if now > self._stamp:
            self._tokens = min(float(self.limit), self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
        return self._tokens

    def try_take(self, now: float, cost: int) -> object:
        if cost - self._refill(now) > _EPSILON:
            return None
        self._tokens -= cost
        return True  # buckets keep no per-grant record

    def ready_at(self, now: float, cost: int) -> float:
        missing = cost - self._refill(now)
        return now if missing <= _EPSILON else now + missing / self.rate

    def give_back(self, _grant: object, cost: int) -> None:
        self._tokens = min(float(self.limit), self._tokens + cost)

    def estimate(self, now: float, demand: int) -> float:
        return max(0.0, (demand - self._refill(now)) / self.rate)


# --- the limiter ---------------------------------------------------------------


class RateLimiter(LimiterForms):
    """At most ``max_requests`` acquisitions (weighted by cost) per ``window_seconds``.

    Args:
        max_requests: capacity per window, an int >= 1 (requests, or tokens
            when callers pass ``cost``).
        window_seconds: the window in seconds, > 0.
        strategy: ``"sliding_window"`` (strict, the default) or
            ``"token_bucket"`` (smooth refill, bursts up to ``max_requests``).
        name: reported as ``ragobs.name`` (default ``"ratelimit"``).
        clock: time source (tests: :class:`~ragobs.ManualClock`).
        telemetry: where metrics go; default :func:`~ragobs.get_telemetry` at use.

    Use ``await limiter.acquire()``, ``async with limiter:``, ``@limiter`` on a
    coroutine or async generator function, or ``limiter.try_acquire()``.
    """

    __slots__ = ("_clock", "_now", "_report", "_strategy", "_timer", "_timer_at", "_waiters",
                 "max_requests", "name", "strategy", "window_seconds")

    def __init__(self, max_requests: int = 10, window_seconds: float = 60.0, *,
                 strategy: Strategy = "sliding_window", name: str | None = None,
                 clock: Clock | None = None, telemetry: Telemetry | None = None) -> None:
        self.max_requests, self.window_seconds = check_limits(max_requests, window_seconds)
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
        self.strategy: Strategy = strategy
        self.name = _check_name(name) or "ratelimit"
        self._clock = _check_clock(clock)
        # The system clock's now() is time.monotonic(): call it directly.
        self._now: Callable[[], float] = (
            time.monotonic if isinstance(self._clock, MonotonicClock) else self._clock.now)
        self._report = LimiterReport(self.name, self.max_requests, self.window_seconds,
                                     _check_telemetry(telemetry))
        self._strategy: _SlidingWindow | _TokenBucket = (
            _SlidingWindow(self.max_requests, self.window_seconds)
            if strategy == "sliding_window"
            else _TokenBucket(self.max_requests, self.window_seconds, self._clock.now()))
        self._waiters: WaitLine[Waiter[object]] = WaitLine(self._clock, self._report)
        self._timer: Cancellable | None = None
        self._timer_at = math.inf

    # -- public API ---------------------------------------------------------------

    def has_capacity(self, cost: int = 1) -> bool:
        """Whether ``try_acquire(cost)`` would succeed now."""
        cost = check_cost(cost, self.max_requests)
        now = self._clock.now()
        return not self._waiters.queued and self._strategy.ready_at(now, cost) <= now

    def try_acquire(self, cost: int = 1) -> bool:
        """Take ``cost`` now if it fits and nobody is waiting; never waits.

        A refusal is counted as a rejection with reason ``no_capacity``.
        """
        if cost.__class__ is not int or not 0 < cost <= self.max_requests:
            cost = self._checked(cost)
        if self._take_now(cost):
            return True
        self._report.rejected(REASON_NO_CAPACITY, cost)
        return False

    async def acquire(self, cost: int = 1, *, max_wait: float | None = None) -> float:
        """Wait until ``cost`` fits, take it, and return the seconds waited.

        Returns at once while under the limit. ``max_wait`` (seconds, or None
        for no limit) bounds the wait: past it :class:`~ragobs.errors.RateLimitTimeout`
        is raised and nothing is taken. Cancelling a waiting ``acquire`` takes
        nothing either. A ``cost`` above ``max_requests`` is a ``ValueError``.
        """
        if cost.__class__ is not int or not 0 < cost <= self.max_requests:
            cost = self._checked(cost)
        if max_wait is not None:
            max_wait = _optional_positive("max_wait", max_wait)
        if not self._waiters.queued and self._strategy.try_take(self._now(), cost) is not None:
            self._report.acquired()
            return 0.0
        return await self._wait(cost, max_wait)

    async def __aenter__(self) -> RateLimiter:
        if not self._take_now(1):
            await self._wait(1, None)
        return self

    @property
    def waiting(self) -> int:
        """Number of acquisitions waiting in line."""
        return self._waiters.queued

    def __repr__(self) -> str:
        return (f"RateLimiter(max_requests={self.max_requests}, "
                f"window_seconds={self.window_seconds:g}, strategy={self.strategy!r}, "
                f"name={self.name!r}, waiting={self.waiting})")

    # -- waiting ------------------------------------------------------------------

    def _take_now(self, cost: int) -> bool:
        """The no-wait path: take ``cost`` if nobody waits and it fits."""
        if self._waiters.queued or self._strategy.try_take(self._now(), cost) is None:
            return False
        self._report.acquired()
        return True

    def _checked(self, cost: object) -> int:
        return checked_cost(cost, self.max_requests, self._report)

    async def _wait(self, cost: int, max_wait: float | None) -> float:
        line = self._waiters
        start = self._clock.now()
        waiter: Waiter[object] = Waiter(cost)
        estimate = self._strategy.estimate(start, line.queued_cost + cost)
        line.join(waiter)
        line.notice(waiter, estimate)
        return await line.wait(waiter, max_wait, start, serve=self._drain, wake=self._wake,
                               give_back=self._give_back)

    def _wake(self, _moved: bool) -> None:
        """A waiter left: look again (cheap here), whoever it was."""
        self._drain()

    def _give_back(self, waiter: Waiter[object]) -> None:
        self._strategy.give_back(waiter.grant, waiter.cost)

    def _drain(self) -> None:
        """Grant waiters from the head of the line while they fit; arm a timer
        for the head otherwise."""
        line = self._waiters
        strategy = self._strategy
        now = self._clock.now()
        while (head := line.head()) is not None:
            grant = strategy.try_take(now, head.cost)
            if grant is None:
                self._arm(strategy.ready_at(now, head.cost))
                return
            if not line.grant(head, grant):  # cancelled, not yet resumed: gone
                strategy.give_back(grant, head.cost)
        self._disarm()

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            if self._timer_at == when:
                return
            self._timer.cancel()
        self._timer_at = when
        self._timer = self._clock.call_at(when, self._on_timer)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._timer_at = math.inf

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = math.inf
        self._drain()
