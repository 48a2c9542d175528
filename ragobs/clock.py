"""Injectable time: every time-dependent part of ragobs reads a :class:`Clock`.

Tests pass a :class:`ManualClock` and advance it by hand, so limiters,
backoff and deadlines are exact and no test sleeps to wait for them.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
from collections.abc import Callable
from typing import Protocol

__all__ = ["SYSTEM_CLOCK", "Cancellable", "Clock", "ManualClock", "MonotonicClock"]


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    """A monotonic clock in seconds, and sleep / timers on the same time base."""

    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...

    def call_at(self, when: float, callback: Callable[[], object]) -> Cancellable:
        """Run ``callback`` in the event loop once ``now() >= when``."""
        ...


class MonotonicClock:
    """The real clock: :func:`time.monotonic` and :func:`asyncio.sleep`."""

    __slots__ = ()

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def sleep_sync(self, seconds: float) -> None:
        """Block the thread (the synchronous wrappers' wait)."""
        time.sleep(seconds)

    def call_at(self, when: float, callback: Callable[[], object]) -> Cancellable:
        # The default event loop's time() is time.monotonic(): same base.
        loop = asyncio.get_running_loop()
        return loop.call_later(max(0.0, when - time.monotonic()), callback)


SYSTEM_CLOCK = MonotonicClock()


class ManualClock:
    """A clock that only moves when :meth:`advance` is called.

    ``sleep(d)`` parks the caller until the clock has been advanced by ``d``;
    sleepers wake in deadline order, ties in the order they went to sleep.
    Cancelling a sleeper removes it.
    """

    def __init__(self, start: float = 0.0) -> None:
        if (not isinstance(start, (int, float)) or isinstance(start, bool)
                or not math.isfinite(start)):
            raise ValueError(f"start must be a finite number, got {start!r}")
        self._now = float(start)
        self._sleepers: list[tuple[float, int, _Timer]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        def wake() -> None:
            if not fut.done():
                fut.set_result(None)

        self._push(self._now + seconds, _Timer(wake))
        try:
            await fut
        finally:
            fut.cancel()

    def sleep_sync(self, seconds: float) -> None:
        """The synchronous wrappers' wait: moves the clock on by ``seconds``
        at once, running the timers that fall due (nothing else can run
        while a thread waits, so nobody else needs to advance it)."""
        if not 0 <= seconds < math.inf:  # also refuses NaN
            raise ValueError(f"seconds must be a finite number >= 0, got {seconds!r}")
        target = self._now + seconds
        while self._fire_next(target):
            pass
        self._now = target

    def _fire_next(self, target: float) -> bool:
        """Run the earliest timer due by ``target``; False when none is left."""
        if not self._sleepers or self._sleepers[0][0] > target:
            return False
        deadline, _, timer = heapq.heappop(self._sleepers)
        self._now = max(self._now, deadline)
        if not timer.cancelled:
            timer.cancelled = True
            timer.callback()
        return True

    def call_at(self, when: float, callback: Callable[[], object]) -> Cancellable:
        timer = _Timer(callback)
        self._push(when, timer)
        return timer

    def _push(self, when: float, timer: _Timer) -> None:
        heapq.heappush(self._sleepers, (when, next(self._seq), timer))

    @property
    def sleepers(self) -> int:
        """Number of pending sleeps and timers."""
        return sum(1 for _, _, t in self._sleepers if not t.cancelled)

    async def advance(self, seconds: float) -> None:
        """Move time forward, waking every sleeper whose deadline is reached.

        Sleepers are woken one deadline at a time and given a chance to run,
        so a task that sleeps again inside the advanced span is woken too.
        """
        if (not isinstance(seconds, (int, float)) or isinstance(seconds, bool)
                or not 0 <= seconds < math.inf):
            raise ValueError(f"seconds must be a finite number >= 0, got {seconds!r}")
        target = self._now + seconds
        await _settle()
        while self._fire_next(target):
            await _settle()
        self._now = target
        await _settle()


class _Timer:
    __slots__ = ("callback", "cancelled")

    def __init__(self, callback: Callable[[], object]) -> None:
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


async def _settle(rounds: int = 20) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)
