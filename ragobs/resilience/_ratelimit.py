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
"""

from __future__ import annotations

import asyncio
import collections
import functools
import inspect
import logging
import math
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, Final, Literal, Self, TypeVar, cast

from opentelemetry.util.types import AttributeValue

from ragobs import semconv
from ragobs.clock import Cancellable, Clock, MonotonicClock
from ragobs.errors import RateLimitTimeout
from ragobs.events import emit
from ragobs.resilience._checks import (
    _check_clock,
    _check_name,
    _check_telemetry,
    _in_range,
    _optional_positive,
)
from ragobs.telemetry import Telemetry, get_telemetry

__all__ = ["RateLimiter", "Strategy"]

F = TypeVar("F", bound=Callable[..., Any])

Strategy = Literal["sliding_window", "token_bucket"]
STRATEGIES: Final[tuple[str, ...]] = ("sliding_window", "token_bucket")

#: Rejection reasons (``ragobs.ratelimit.reason``).
REASON_NO_CAPACITY: Final = "no_capacity"
REASON_CANCELLED: Final = "cancelled"
REASON_TIMEOUT: Final = "timeout"
REASON_TOO_LARGE: Final = "too_large"
REASON_BACKEND_UNAVAILABLE: Final = "backend_unavailable"

# Span event / log attribute keys.
WAIT: Final = "ratelimit.wait_s"
COST: Final = "ratelimit.cost"
LIMIT: Final = "ratelimit.max_requests"
WINDOW: Final = "ratelimit.window_s"

# Timers may fire a hair early (float rounding between clocks): grant within this.
_EPSILON: Final = 1e-9


def check_cost(cost: object, capacity: int) -> int:
    """``cost`` as an int in ``[1, capacity]``, else a clear error."""
    if not isinstance(cost, int) or isinstance(cost, bool):
        raise TypeError(f"cost must be an int in [1, {capacity}], got {cost!r}")
    if not 1 <= cost <= capacity:
        why = ": a cost above the capacity could never be granted" if cost > capacity else ""
        raise ValueError(f"cost must be an int in [1, {capacity}] (max_requests), "
                         f"got {cost!r}{why}")
    return cost


def check_limits(max_requests: object, window_seconds: object) -> tuple[int, float]:
    if not isinstance(max_requests, int) or isinstance(max_requests, bool):
        raise TypeError(f"max_requests must be an int >= 1, got {max_requests!r}")
    if max_requests < 1:
        raise ValueError(f"max_requests must be an int >= 1, got {max_requests!r}")
    # Below a microsecond the clocks cannot tell grants apart (the window would
    # stop limiting); past a year it is a typo.
    return max_requests, _in_range("window_seconds", window_seconds, 1e-6, 31_536_000.0)


class LimiterReport:
    """How a limiter reports itself; shared by the local and the Redis limiter.

    Uncontended acquisitions cost one lock-free tally increment (no span
    event, no histogram record), so the limiter stays as cheap as an
    unreported one. Like the limiters, a report belongs to one event loop.
    """

    __slots__ = ("__weakref__", "_keys", "limit", "name", "telemetry", "window")

    def __init__(self, name: str, limit: int, window: float,
                 telemetry: Telemetry | None) -> None:
        self.name = name
        self.limit = limit
        self.window = window
        self.telemetry = telemetry
        self._keys: _Keys | None = None

    def _resolve(self) -> _Keys:
        tel = self.telemetry or get_telemetry()
        keys = self._keys
        if keys is None or keys.telemetry is not tel:
            keys = self._keys = _Keys(tel, tel.bound(semconv.NAME, self.name), self)
        return keys

    def acquired(self) -> None:
        """An acquisition that did not wait: one in-process counter add."""
        keys = self._keys
        if keys is None or keys.telemetry is not (self.telemetry or get_telemetry()):
            keys = self._resolve()
        keys.no_wait.value += 1

    def waiting(self, estimate: float, cost: int) -> None:
        """About to wait about ``estimate`` seconds (the seed's notice)."""
        emit(semconv.EVENT_RATELIMIT_WAIT, self.name,
             {WAIT: estimate, COST: cost, LIMIT: self.limit, WINDOW: self.window},
             level=logging.WARNING,
             message=f"Rate limit reached ({self.limit} requests/{self.window:g}s). "
                     f"Waiting {estimate:.1f}s...",
             details=False)  # the seed's line, word for word

    def waited(self, seconds: float) -> None:
        """An acquisition granted after waiting ``seconds``."""
        keys = self._resolve()
        keys.acquisitions.add_key(keys.waited)
        keys.telemetry.histogram(semconv.RATELIMIT_WAIT).record(
            seconds, {semconv.NAME: keys.name})

    def rejected(self, reason: str, cost: int, *, waited: float = 0.0,
                 error: BaseException | None = None) -> None:
        """An acquisition refused or abandoned, by ``reason``."""
        keys = self._resolve()
        keys.telemetry.counter(semconv.RATELIMIT_REJECTIONS).add(
            1, {semconv.NAME: keys.name, semconv.RATELIMIT_REASON: reason})
        attrs: dict[str, AttributeValue] = {semconv.RATELIMIT_REASON: reason, COST: cost}
        if waited:
            attrs[WAIT] = waited
        emit(semconv.EVENT_RATELIMIT_REJECTED, self.name, attrs, error=error,
             level=logging.INFO, message=f"rate limit {self.name}: not acquired ({reason})")


class _Keys:
    """Pre-built counter keys of one limiter on one :class:`Telemetry`."""

    __slots__ = ("acquisitions", "name", "no_wait", "telemetry", "waited")

    def __init__(self, telemetry: Telemetry, bounded_name: str, owner: object) -> None:
        self.telemetry = telemetry
        self.name = bounded_name
        self.acquisitions = telemetry.counter(semconv.RATELIMIT_ACQUISITIONS)
        #: Uncontended acquisitions: a lock-free tally (the limiter is loop-bound).
        self.no_wait = self.acquisitions.tally(
            ((semconv.NAME, bounded_name), (semconv.RATELIMIT_WAITED, "false")), owner)
        self.waited = ((semconv.NAME, bounded_name), (semconv.RATELIMIT_WAITED, "true"))


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


class LimiterForms:
    """``async with limiter:`` and ``@limiter``, for any limiter with ``acquire()``."""

    __slots__ = ()

    #: Defined by each limiter: wait for ``cost``, return the seconds waited.
    acquire: Callable[..., Awaitable[float]]

    async def __aenter__(self) -> Self:
        await self.acquire()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        return None

    def __call__(self, fn: F) -> F:
        """Decorate a coroutine function (one acquisition per call) or an async
        generator function (one acquisition before its first item)."""
        if inspect.isasyncgenfunction(fn):
            @functools.wraps(fn)
            async def stream(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, None]:
                await self.acquire()
                async for item in fn(*args, **kwargs):
                    yield item

            return cast(F, stream)
        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def call(*args: Any, **kwargs: Any) -> Any:
                await self.acquire()
                return await fn(*args, **kwargs)

            return cast(F, call)
        raise TypeError(f"a {type(self).__name__} decorates coroutine or async generator "
                        f"functions, got {fn!r}")


#: Waiters that left are dropped from the middle of a line once they outnumber
#: this and the live ones, so a head that waits long keeps the line bounded.
_PRUNE_AT: Final = 64


def prune_departed(line: collections.deque[Any], departed: int) -> int:
    """Drop the waiters no longer ``queued`` from ``line`` (in place) once they
    are most of it; returns the departed count still in the line."""
    if departed > _PRUNE_AT and 2 * departed > len(line):
        live = [w for w in line if w.queued]
        line.clear()
        line.extend(live)
        return 0
    return departed


def checked_cost(cost: object, capacity: int, report: LimiterReport) -> int:
    """:func:`check_cost`, counting a cost above the capacity as a rejection."""
    try:
        return check_cost(cost, capacity)
    except ValueError as exc:
        if isinstance(cost, int) and cost > capacity:
            report.rejected(REASON_TOO_LARGE, cost, error=exc)
        raise


class _Waiter:
    __slots__ = ("cost", "future", "grant", "queued")

    def __init__(self, cost: int, future: asyncio.Future[float]) -> None:
        self.cost = cost
        self.future = future
        self.grant: object = None
        self.queued = True


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

    __slots__ = ("_clock", "_departed", "_now", "_queued_cost", "_report", "_strategy",
                 "_timer", "_timer_at", "_waiters", "max_requests", "name", "strategy",
                 "window_seconds")

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
        self._waiters: collections.deque[_Waiter] = collections.deque()
        self._departed = 0  # waiters that left but are still in the deque
        self._queued_cost = 0
        self._timer: Cancellable | None = None
        self._timer_at = math.inf

    # -- public API ---------------------------------------------------------------

    def has_capacity(self, cost: int = 1) -> bool:
        """Whether ``try_acquire(cost)`` would succeed now."""
        cost = check_cost(cost, self.max_requests)
        now = self._clock.now()
        return not self._queued_cost and self._strategy.ready_at(now, cost) <= now

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
        if not self._queued_cost and self._strategy.try_take(self._now(), cost) is not None:
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
        return sum(1 for w in self._waiters if w.queued)

    def __repr__(self) -> str:
        return (f"RateLimiter(max_requests={self.max_requests}, "
                f"window_seconds={self.window_seconds:g}, strategy={self.strategy!r}, "
                f"name={self.name!r}, waiting={self.waiting})")

    # -- waiting ------------------------------------------------------------------

    def _take_now(self, cost: int) -> bool:
        """The no-wait path: take ``cost`` if nobody waits and it fits."""
        if self._queued_cost or self._strategy.try_take(self._now(), cost) is None:
            return False
        self._report.acquired()
        return True

    def _checked(self, cost: object) -> int:
        return checked_cost(cost, self.max_requests, self._report)

    async def _wait(self, cost: int, max_wait: float | None) -> float:
        clock = self._clock
        start = clock.now()
        waiter = _Waiter(cost, asyncio.get_running_loop().create_future())
        estimate = self._strategy.estimate(start, self._queued_cost + cost)
        self._waiters.append(waiter)
        self._queued_cost += cost
        self._report.waiting(estimate, cost)
        alarm: Cancellable | None = None
        if max_wait is not None:
            alarm = clock.call_at(start + max_wait,
                                  functools.partial(self._time_out, waiter, max_wait))
        self._drain()
        try:
            await waiter.future
        except BaseException as exc:
            self._abandon(waiter)
            reason = REASON_TIMEOUT if isinstance(exc, RateLimitTimeout) else REASON_CANCELLED
            self._report.rejected(reason, cost, waited=clock.now() - start,
                                  error=exc if isinstance(exc, Exception) else None)
            raise
        finally:
            if alarm is not None:
                alarm.cancel()
        waited = clock.now() - start
        self._report.waited(waited)
        return waited

    def _time_out(self, waiter: _Waiter, timeout: float) -> None:
        if not waiter.future.done():
            self._depart(waiter)
            waiter.future.set_exception(RateLimitTimeout(self.name, timeout))
            self._drain()

    def _dequeue(self, waiter: _Waiter) -> bool:
        if not waiter.queued:
            return False
        waiter.queued = False
        self._queued_cost -= waiter.cost
        return True

    def _depart(self, waiter: _Waiter) -> None:
        """An ungranted waiter leaves the line (it stays in the deque until pruned)."""
        if self._dequeue(waiter):
            self._departed = prune_departed(self._waiters, self._departed + 1)

    def _abandon(self, waiter: _Waiter) -> None:
        """A waiter left (cancelled or timed out): take back whatever it holds."""
        if waiter.grant is not None:  # granted, but cancelled before it could resume
            self._strategy.give_back(waiter.grant, waiter.cost)
        else:
            self._depart(waiter)
        self._drain()

    def _drain(self) -> None:
        """Grant waiters from the head of the line while they fit; arm a timer
        for the head otherwise."""
        waiters = self._waiters
        strategy = self._strategy
        now = self._clock.now()
        while waiters:
            head = waiters[0]
            if not head.queued:  # granted ones are popped below: this one departed
                waiters.popleft()
                self._departed -= 1
                continue
            grant = strategy.try_take(now, head.cost)
            if grant is None:
                self._arm(strategy.ready_at(now, head.cost))
                return
            waiters.popleft()
            self._dequeue(head)
            head.grant = grant
            head.future.set_result(now)
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
