"""What the local and the Redis rate limiter share: the checks of their
arguments, their reporting, their ``async with`` / decorator forms, and the
waiting line.

The line (:class:`WaitLine`) serves its waiters first come, first served:
a limiter grants from its head only (:meth:`WaitLine.head`,
:meth:`WaitLine.first`) and never skips a waiter that does not fit. A waiter
that times out (``max_wait``) or is cancelled leaves at once, takes nothing
(a grant it got but could not resume for is given back) and delays nobody:
when the head leaves, the limiter is woken to serve the next one. Waiters that
leave from the middle of the line are dropped once they are most of it, so a
head that waits long keeps the line bounded.

What a limiter supplies is how it takes capacity and when it looks again:
the local one takes from its sliding window or token bucket in a timer
callback, the Redis one in one script call per batch of the line, from a
driver task. Either calls :meth:`WaitLine.grant` for the waiters it served,
and passes :meth:`WaitLine.wait` its callbacks: ``serve`` (a waiter joined),
``wake`` (a waiter left, or capacity came back: ``wake(True)`` when those behind
may fit now) and ``give_back`` (undo the grant of a waiter that left before it
could resume).
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import functools
import inspect
import itertools
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, Final, Generic, Self, TypeVar, cast

from opentelemetry.util.types import AttributeValue

from ragobs import semconv
from ragobs._events import emit
from ragobs._telemetry import Telemetry, get_telemetry
from ragobs._turn import PHASE_RATELIMIT, current_turn, in_phase
from ragobs.clock import Cancellable, Clock
from ragobs.errors import RateLimiterUnavailable, RateLimitTimeout
from ragobs.resilience._checks import _describe, _in_range

F = TypeVar("F", bound=Callable[..., Any])
#: What a limiter records for a grant (what it gives back if the waiter leaves).
G = TypeVar("G")
W = TypeVar("W", bound="Waiter[Any]")

#: Rejection reasons (``ragobs.ratelimit.reason``).
REASON_NO_CAPACITY: Final = "no_capacity"
REASON_CANCELLED: Final = "cancelled"
REASON_TIMEOUT: Final = "timeout"
REASON_TOO_LARGE: Final = "too_large"
REASON_BACKEND_UNAVAILABLE: Final = "backend_unavailable"

# Span event / log attribute keys (declared in semconv).
WAIT: Final = semconv.RATELIMIT_WAIT_S
COST: Final = semconv.RATELIMIT_COST
LIMIT: Final = semconv.RATELIMIT_MAX_REQUESTS
WINDOW: Final = semconv.RATELIMIT_WINDOW_S


# --- checks ----------------------------------------------------------------------


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


def checked_cost(cost: object, capacity: int, report: LimiterReport) -> int:
    """:func:`check_cost`, counting a cost above the capacity as a rejection."""
    try:
        return check_cost(cost, capacity)
    except ValueError as exc:
        if isinstance(cost, int) and cost > capacity:
            report.rejected(REASON_TOO_LARGE, cost, error=exc)
        raise


# --- reporting -------------------------------------------------------------------


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
        """An acquisition granted after waiting ``seconds`` (a ``ratelimit``
        phase of the turn it waited in, when it waited directly inside one)."""
        turn = current_turn()
        if turn is not None and not in_phase():
            now = time.perf_counter()
            turn.phase(PHASE_RATELIMIT, now - seconds, now)
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

    def backend_error(self, mode: str, cost: int, error: BaseException) -> None:
        """The backend (Redis, the only one) could not be asked: the acquisition
        was decided by ``mode`` (``"open"`` or ``"closed"``)."""
        tel = self.telemetry or get_telemetry()
        tel.counter(semconv.RATELIMIT_BACKEND_ERRORS).add(1, {
            semconv.NAME: tel.bound(semconv.NAME, self.name),
            semconv.RATELIMIT_BACKEND_MODE: mode,
        })
        emit(semconv.EVENT_RATELIMIT_BACKEND_ERROR, self.name,
             {semconv.RATELIMIT_BACKEND_MODE: mode, COST: cost}, error=error,
             level=logging.WARNING,
             message=f"rate limit {self.name}: Redis unavailable ({_describe(error)}), "
                     f"failing {mode}")


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


# --- forms -----------------------------------------------------------------------


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


# --- the waiting line ------------------------------------------------------------

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


class Waiter(Generic[G]):
    """One acquisition in a line; its future resolves when it is granted."""

    __slots__ = ("context", "cost", "departed", "error", "future", "grant", "noticed", "queued")

    def __init__(self, cost: int, *, context: contextvars.Context | None = None) -> None:
        self.cost = cost
        self.future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        #: The caller's context, when others announce its wait (on the caller's span).
        self.context = context
        #: What was taken for it, None if nothing (granted without the backend).
        self.grant: G | None = None
        #: Granted without the backend, which failed with this (the limiter fails open).
        self.error: BaseException | None = None
        self.queued = True  # waiting: neither granted nor gone
        self.departed = False  # left ungranted (cancelled, timed out); in the deque until pruned
        self.noticed = False  # its wait was announced: it counts as having waited

    def resolve(self, grant: G | None, error: BaseException | None = None) -> None:
        """Granted: ``grant`` is what was taken, ``error`` why the backend was not asked."""
        self.grant = grant
        self.error = error
        self.future.set_result(None)


class WaitLine(Generic[W]):
    """A first come, first served line of :class:`Waiter`; see the module docstring.

    ``queued`` and ``queued_cost`` count the waiters still waiting and their
    costs; ``len()`` is the size of the deque, which also holds, until they are
    dropped, waiters that were granted or left.
    """

    __slots__ = ("_clock", "_departed", "_report", "_waiters", "queued", "queued_cost")

    def __init__(self, clock: Clock, report: LimiterReport) -> None:
        self._clock = clock
        self._report = report
        self._waiters: collections.deque[W] = collections.deque()
        self._departed = 0  # waiters that left ungranted but are still in the deque
        self.queued = 0
        self.queued_cost = 0

    def __len__(self) -> int:
        return len(self._waiters)

    def join(self, waiter: W) -> None:
        """``waiter`` gets in line, at the back."""
        self._waiters.append(waiter)
        self.queued += 1
        self.queued_cost += waiter.cost

    def head(self) -> W | None:
        """The first waiter still waiting (the ones before it, granted or gone,
        are dropped), or None when nobody waits."""
        waiters = self._waiters
        while waiters:
            head = waiters[0]
            if head.queued:
                return head
            waiters.popleft()
            if head.departed:
                self._departed -= 1
        return None

    def first(self, n: int) -> list[W]:
        """The first ``n`` waiters still waiting, in line order."""
        return list(itertools.islice((w for w in self._waiters if w.queued), n))

    def notice(self, waiter: W, estimate: float) -> None:
        """Announce that ``waiter`` waits, about ``estimate`` seconds: in its
        caller's context if it has one, else in the current one."""
        waiter.noticed = True
        if waiter.context is None:
            self._report.waiting(estimate, waiter.cost)
        else:
            waiter.context.run(self._report.waiting, estimate, waiter.cost)

    def grant(self, waiter: W, grant: object, error: BaseException | None = None) -> bool:
        """Serve ``waiter``, recording ``grant`` (None: nothing to give back;
        ``error``: granted because the backend failed so).

        False if it gave up meanwhile (cancelled, not yet resumed): it then
        leaves the line (if still in it), and the caller gives ``grant`` back.
        """
        if waiter.future.done():
            if waiter.queued:
                self._leave(waiter)
            return False
        self._dequeue(waiter)
        waiter.resolve(grant, error)
        return True

    def take_all(self) -> list[W]:
        """Empty the line; returns the waiters still waiting, out of it, for the
        caller to settle (grant or fail their futures)."""
        waiting = []
        for waiter in self._waiters:
            if waiter.queued:
                self._dequeue(waiter)
                if waiter.future.done():  # gave up, not yet resumed: it is gone
                    waiter.departed = True
                else:
                    waiting.append(waiter)
        self._waiters.clear()
        self._departed = 0
        return waiting

    async def wait(self, waiter: W, max_wait: float | None, start: float, *,
                   serve: Callable[[], None], wake: Callable[[bool], None],
                   give_back: Callable[[W], None]) -> float:
        """Wait until ``waiter``, in line since ``start``, is granted; return
        the seconds waited, 0.0 if it was served before its wait was announced.

        ``serve`` starts serving the line (once the ``max_wait`` alarm is set).
        Past ``max_wait`` (None: no limit) the waiter leaves with
        :class:`~ragobs.errors.RateLimitTimeout`. Leaving, whatever the cause,
        it takes nothing: ``give_back`` undoes a grant it could not resume for;
        ``wake(moved)`` follows every departure, ``moved`` True when the head
        left or capacity came back (those behind may fit now). Reports the
        acquisition or the rejection, by reason.
        """
        clock = self._clock
        report = self._report
        alarm: Cancellable | None = None
        if max_wait is not None:
            alarm = clock.call_at(start + max_wait,
                                  functools.partial(self._time_out, waiter, max_wait, wake))
        try:
            serve()
            await waiter.future
        except BaseException as exc:
            self._abandon(waiter, wake, give_back)
            waited = clock.now() - start
            error = exc if isinstance(exc, Exception) else None
            if isinstance(exc, RateLimiterUnavailable):  # the backend failed: failing closed
                report.backend_error("closed", waiter.cost, exc.__cause__ or exc)
                reason = REASON_BACKEND_UNAVAILABLE
            elif isinstance(exc, RateLimitTimeout):
                reason = REASON_TIMEOUT
            elif error is not None:  # the one serving the line failed unexpectedly
                reason = REASON_BACKEND_UNAVAILABLE
            else:
                reason = REASON_CANCELLED
            report.rejected(reason, waiter.cost, waited=waited, error=error)
            raise
        finally:
            if alarm is not None:
                alarm.cancel()
        if waiter.error is not None:
            report.backend_error("open", waiter.cost, waiter.error)
        if not waiter.noticed:
            report.acquired()
            return 0.0
        waited = clock.now() - start
        report.waited(waited)
        return waited

    def _time_out(self, waiter: W, timeout: float, wake: Callable[[bool], None]) -> None:
        if not waiter.future.done():
            head = self._depart(waiter)
            waiter.future.set_exception(RateLimitTimeout(self._report.name, timeout))
            wake(head)

    def _abandon(self, waiter: W, wake: Callable[[bool], None],
                 give_back: Callable[[W], None]) -> None:
        """The caller left (cancelled, timed out, refused): hold nothing."""
        if waiter.grant is not None:  # granted, but gone before it could resume
            give_back(waiter)
            wake(True)
        else:
            wake(self._depart(waiter))

    def _depart(self, waiter: W) -> bool:
        """An ungranted waiter leaves; True if it was the head of the line."""
        if not waiter.queued:
            return False
        head = self._is_head(waiter)
        self._leave(waiter)
        return head

    def _is_head(self, waiter: W) -> bool:
        for queued in self._waiters:
            if queued.queued:
                return queued is waiter
        return False

    def _leave(self, waiter: W) -> None:
        """A queued waiter leaves ungranted (it stays in the deque until pruned)."""
        self._dequeue(waiter)
        waiter.departed = True
        self._departed = prune_departed(self._waiters, self._departed + 1)

    def _dequeue(self, waiter: W) -> None:
        waiter.queued = False
        self.queued -= 1
        self.queued_cost -= waiter.cost
