"""A strict sliding-window rate limiter shared by processes and replicas through Redis.

Same API and meaning as :class:`~ragobs.resilience.RateLimiter`, except that
``try_acquire`` and ``has_capacity`` are coroutines (they ask Redis)::

    limiter = RedisRateLimiter(60, 60.0, url="redis://redis:6379/0", name="openai")
    await limiter.acquire()              # or: async with limiter / @limiter
    await limiter.acquire(cost=tokens)   # a tokens-per-minute budget

Guarantee: every limiter sharing one ``key`` (same ``max_requests`` and
``window_seconds``) is granted costs that sum to at most ``max_requests`` in
any interval of ``window_seconds``, whatever the number of processes,
replicas and concurrent callers. One Lua script decides each grant atomically
on the server, on Redis's own clock (``TIME``), so replicas' clocks do not
matter; it keeps the grants still inside the window in a sorted set (at most
``max_requests`` members) and their sum in a companion key ``<key>:sum``, and
sets both to expire one window after the last grant, so an idle limiter leaves
nothing behind. When capacity is short the script says how long until enough
of the oldest grants expire, and the caller sleeps exactly that long.
Needs Redis >= 6.0 and redis-py >= 5 (the ``[redis]`` extra). Limits of the
guarantee: a failover to a replica that had not yet received the latest
grants forgets them (over-granting up to one window's worth once); Redis's
clock stepping forward frees capacity early (a step back never does). Redis
Cluster: a key of your own needs a hash tag, e.g. ``"ragobs:ratelimit:{openai}"``,
so both keys live in one slot (the default key has one).

Order: waiters in one process are served first come, first served: only the
head of the local line talks to Redis (together with the waiters right behind
it, in one script call that grants the longest prefix of the line that fits,
never skipping ahead). Across processes the order is best effort: whichever
process's head asks first after capacity frees up gets it, so a large cost in
one process can wait indefinitely behind a steady stream of small ones from
another (give such a budget a limiter of its own, or a local limiter in front). A waiter that is
cancelled or times out (``max_wait``) leaves the line at once and takes
nothing; if the script granted it at that very moment, the grant is removed
from Redis (``ZREM``) on the next call. The wait notice (the seed's "Rate limit
reached ... Waiting 5.0s...") gives the server's exact figure for the head of
the line and a lower bound for those behind it.

Redis unreachable (connection refused, timeout after ``backend_timeout``,
any Redis error): with ``on_unavailable="closed"``, the default, the
acquisition raises :class:`~ragobs.errors.RateLimiterUnavailable` (a
``ConnectionError``, so :func:`~ragobs.resilience.retry` retries it and
:func:`~ragobs.resilience.fallback` answers politely); with ``"open"`` it is
granted without limit. Closed is the default because it never breaks the
guarantee above silently: a limiter that stops limiting exactly when the
infrastructure is degraded hands the provider N replicas' worth of unthrottled
traffic. Choose ``"open"`` when availability matters more than the quota.
Either way each affected acquisition is counted in
``ragobs.ratelimit.backend.errors`` (``ragobs.ratelimit.backend_mode`` = the mode
applied) and reported as a ``ratelimit.backend_error`` event; fail-closed ones
are also rejections with reason ``backend_unavailable``. For
``retry_backend_after`` seconds after an error the mode is applied at once
without asking Redis (so a dead Redis costs no latency); then the next
acquisition tries again, and the limiter recovers by itself when Redis is back.

The waiting line (cancellation, ``max_wait``, the wait notices) and the
reporting are the local limiter's (:mod:`ragobs.resilience._limiter`): the
same metrics, span events, log lines and hooks. What is Redis's own here is the
driver that asks the script (``sliding_window.lua``, beside this module) for
the head of the line, and what happens when Redis cannot be asked.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import functools
import itertools
import logging
import math
import os
from collections.abc import Sequence
from importlib import resources
from typing import TYPE_CHECKING, Final, Literal

from ragobs._telemetry import Telemetry
from ragobs.clock import Clock
from ragobs.errors import RateLimiterUnavailable
from ragobs.resilience._checks import (
    _check_clock,
    _check_name,
    _check_telemetry,
    _describe,
    _number,
    _optional_positive,
    _positive,
)
from ragobs.resilience._limiter import (
    REASON_BACKEND_UNAVAILABLE,
    REASON_NO_CAPACITY,
    LimiterForms,
    LimiterReport,
    Waiter,
    WaitLine,
    check_cost,
    check_limits,
    checked_cost,
)

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

__all__ = ["OnUnavailable", "RedisRateLimiter"]

OnUnavailable = Literal["open", "closed"]
MODES: Final[tuple[str, ...]] = ("open", "closed")

# Waiters asked for in one script call: bounds the call's size, not fairness.
_BATCH: Final = 64
# Grants to give back (ZREM) sent in one script call.
_VOIDS: Final = 256


@functools.cache
def _script() -> str:
    """The grant script (``sliding_window.lua``: its header says what it takes
    and returns), read once."""
    return (resources.files("ragobs.resilience").joinpath("sliding_window.lua")
            .read_text(encoding="utf-8"))


class _Waiter(Waiter[int]):
    """A waiter and its member in the sorted set; its grant is the grant's time
    on Redis's clock in µs (None when granted without Redis)."""

    __slots__ = ("member",)

    def __init__(self, cost: int, member: str) -> None:
        # The caller's context, so the wait notice lands on the caller's span.
        super().__init__(cost, context=contextvars.copy_context())
        self.member = member


class RedisRateLimiter(LimiterForms):
    """At most ``max_requests`` (weighted by cost) per ``window_seconds``, shared
    by every limiter on the same Redis ``key``.

    Args:
        max_requests: capacity per window, an int >= 1 (requests, or tokens
            when callers pass ``cost``). Every limiter sharing ``key`` must use
            the same ``max_requests`` and ``window_seconds``.
        window_seconds: the sliding window in seconds, > 0.
        redis: a ``redis.asyncio.Redis`` client (not closed by the limiter), or
        url: a Redis URL; the limiter then owns its client (``aclose()``) and
            sets its socket timeouts to ``backend_timeout``. Exactly one of the two.
        key: the sorted set's key (default ``"ragobs:ratelimit:{<name>}"``, whose
            hash tag keeps both keys in one Redis Cluster slot);
            ``<key>:sum`` is used too.
        name: reported as ``ragobs.name`` (default ``"ratelimit"``).
        on_unavailable: ``"closed"`` (default: raise
            :class:`~ragobs.errors.RateLimiterUnavailable`) or ``"open"``
            (grant without limit) when Redis cannot be reached.
        backend_timeout: bound in seconds on each call to Redis, > 0.
        retry_backend_after: after a Redis error, seconds (>= 0) during which
            ``on_unavailable`` is applied without asking Redis.
        clock: time source of waits and ``max_wait`` (Redis's clock decides grants).
        telemetry: where metrics go; default :func:`~ragobs.get_telemetry` at use.

    One limiter serves one event loop (its Redis client is bound to it).
    """

    __slots__ = ("_blocked", "_clock", "_down_until", "_driver", "_in_flight", "_keys",
                 "_last_error", "_line", "_loop", "_owns_client", "_redis", "_redis_errors",
                 "_report", "_retry_at", "_script", "_seq", "_stale_errors", "_token",
                 "_unnoticed", "_url", "_voids", "_wake", "_window_us", "backend_timeout", "key",
                 "max_requests", "name", "on_unavailable", "retry_backend_after",
                 "window_seconds")

    def __init__(self, max_requests: int = 10, window_seconds: float = 60.0, *,
                 redis: Redis | None = None, url: str | None = None, key: str | None = None,
                 name: str | None = None, on_unavailable: OnUnavailable = "closed",
                 backend_timeout: float = 1.0, retry_backend_after: float = 1.0,
                 clock: Clock | None = None, telemetry: Telemetry | None = None) -> None:
        try:
            from redis.asyncio import Redis as AsyncRedis
            from redis.exceptions import ConnectionError as RedisConnectionError
            from redis.exceptions import RedisError
        except ImportError as exc:  # pragma: no cover - the [redis] extra is missing
            raise ImportError("RedisRateLimiter needs redis-py >= 5: "
                              "pip install 'ragobs[redis]'") from exc
        self.max_requests, self.window_seconds = check_limits(max_requests, window_seconds)
        self.name = _check_name(name) or "ratelimit"
        if on_unavailable not in MODES:
            raise ValueError(f"on_unavailable must be 'open' or 'closed', got {on_unavailable!r}")
        self.on_unavailable: OnUnavailable = on_unavailable
        self.backend_timeout = _positive("backend_timeout", backend_timeout)
        after = _number("retry_backend_after", retry_backend_after, ">= 0 (finite)")
        if not (after >= 0 and math.isfinite(after)):
            raise ValueError(f"retry_backend_after must be a number >= 0 (finite), "
                             f"got {retry_backend_after!r}")
        self.retry_backend_after = after
        if key is None:
            key = f"ragobs:ratelimit:{{{self.name}}}"  # hash tag: one Cluster slot
        if not isinstance(key, str) or not key:
            raise ValueError(f"key must be a non-empty str or None, got {key!r}")
        self.key = key
        if (redis is None) == (url is None):
            raise ValueError("pass exactly one of redis= (a redis.asyncio.Redis client) or url=")
        if url is not None:
            if not isinstance(url, str) or not url:
                raise ValueError(f"url must be a non-empty Redis URL, got {url!r}")
            # One immediate retry covers a pooled connection that went stale
            # when Redis restarted; redis-py's default backoff would outlast
            # backend_timeout.
            client = self._connect(url)
        elif isinstance(redis, AsyncRedis):
            client = redis
        else:
            raise TypeError(f"redis must be a redis.asyncio.Redis client, got {redis!r}")
        self._redis: Redis = client
        self._url = url
        self._owns_client = url is not None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._script: AsyncScript = client.register_script(_script())
        self._keys = (key, f"{key}:sum")
        self._redis_errors: tuple[type[BaseException], ...] = (RedisError, OSError)
        self._stale_errors: tuple[type[BaseException], ...] = (RedisConnectionError,)
        self._window_us = max(1, round(self.window_seconds * 1_000_000))
        self._clock = _check_clock(clock)
        self._report = LimiterReport(self.name, self.max_requests, self.window_seconds,
                                     _check_telemetry(telemetry))
        self._token = os.urandom(8).hex()  # makes members unique across processes
        self._seq = itertools.count()
        self._line: WaitLine[_Waiter] = WaitLine(self._clock, self._report)
        self._unnoticed: list[_Waiter] = []
        self._blocked = False  # the head was refused and waits for capacity
        self._retry_at = 0.0
        self._voids: collections.deque[tuple[str, float]] = collections.deque()
        self._in_flight: list[_Waiter] = []  # the batch of the script call under way
        self._driver: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._down_until = -math.inf
        self._last_error: BaseException | None = None

    # -- public API ---------------------------------------------------------------

    async def acquire(self, cost: int = 1, *, max_wait: float | None = None) -> float:
        """Wait until ``cost`` fits, take it, and return the seconds waited.

        Returns 0.0 at once (one Redis round trip) while under the limit.
        ``max_wait`` (seconds, or None for no limit) bounds the wait: past it
        :class:`~ragobs.errors.RateLimitTimeout` is raised and nothing is
        taken. Cancelling a waiting ``acquire`` takes nothing either. A
        ``cost`` above ``max_requests`` is a ``ValueError``. Redis unreachable:
        see ``on_unavailable``.
        """
        waited, _ = await self._acquire(cost, max_wait)
        return waited

    def _connect(self, url: str) -> Redis:
        from redis.asyncio import Redis as AsyncRedis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # One immediate retry covers a pooled connection that went stale when
        # Redis restarted; redis-py's default backoff would outlast backend_timeout.
        client: Redis = AsyncRedis.from_url(url, socket_timeout=self.backend_timeout,
                                            socket_connect_timeout=self.backend_timeout,
                                            retry=Retry(NoBackoff(), 1))
        return client

    def _bind_loop(self) -> None:
        """Tie the limiter to the running event loop; a later loop (a second
        ``asyncio.run``) gets fresh loop-bound state, and a client of its own
        when the limiter owns it."""
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            return
        if self._loop is not None:
            if not self._owns_client:
                raise RuntimeError(
                    f"RedisRateLimiter {self.name!r} is used from a second event loop, but "
                    "its redis client belongs to the first: pass url= (the limiter then "
                    "makes a client per loop) or a client created in this loop")
            assert self._url is not None  # owned clients come from url=
            self._redis = self._connect(self._url)
            self._script = self._redis.register_script(_script())
            self._line = WaitLine(self._clock, self._report)
            self._unnoticed.clear()
            self._blocked = False
            self._driver = None
            self._wake = asyncio.Event()
        self._loop = loop

    async def try_acquire(self, cost: int = 1) -> bool:
        """Take ``cost`` now if it fits and nobody in this process is waiting.

        A coroutine (one Redis round trip) that never waits for capacity. A
        refusal is counted as a rejection with reason ``no_capacity``. Redis
        unreachable: ``True`` when failing open, ``RateLimiterUnavailable``
        when failing closed.
        """
        cost = self._checked(cost)
        self._bind_loop()
        if self._line.queued:
            self._report.rejected(REASON_NO_CAPACITY, cost)
            return False
        if self._down_until > self._clock.now():
            self._unavailable(cost, self._last_error)
            return True
        member = self._member(cost)
        # Shielded: if the caller is cancelled mid-call, the call still ends
        # and a grant it made is given back.
        call = asyncio.ensure_future(self._call((), ((member, cost),)))
        try:
            _, granted, _ = await asyncio.shield(call)
        except asyncio.CancelledError:
            call.add_done_callback(functools.partial(self._void_if_granted, member))
            raise
        except self._redis_errors as exc:
            self._went_down(exc)
            if self.on_unavailable == "closed":
                self._void(member)  # the script may have run before the error
            self._unavailable(cost, exc)
            return True
        if granted:
            self._report.acquired()
            return True
        self._report.rejected(REASON_NO_CAPACITY, cost)
        return False

    async def has_capacity(self, cost: int = 1) -> bool:
        """Whether ``try_acquire(cost)`` would succeed now (one Redis round
        trip, takes nothing). Redis unreachable: ``on_unavailable == "open"``."""
        cost = check_cost(cost, self.max_requests)
        self._bind_loop()
        if self._line.queued:
            return False
        if self._down_until > self._clock.now():
            return self.on_unavailable == "open"
        try:
            _, granted, _ = await self._call((), ((self._member(cost), cost),), peek=True)
        except self._redis_errors as exc:
            self._went_down(exc)
            return self.on_unavailable == "open"
        return granted == 1

    @property
    def waiting(self) -> int:
        """Number of acquisitions of this process waiting in line."""
        return self._line.queued

    async def aclose(self) -> None:
        """Stop the driver task, and close the Redis client if the limiter
        created it (``url=``)."""
        driver = self._driver
        if driver is not None and not driver.done() \
                and driver.get_loop() is asyncio.get_running_loop():
            driver.cancel()
            await asyncio.gather(driver, return_exceptions=True)
        if self._owns_client:
            await self._redis.aclose()

    def __repr__(self) -> str:
        return (f"RedisRateLimiter(max_requests={self.max_requests}, "
                f"window_seconds={self.window_seconds:g}, key={self.key!r}, "
                f"name={self.name!r}, on_unavailable={self.on_unavailable!r}, "
                f"waiting={self.waiting})")

    # -- acquiring ----------------------------------------------------------------

    def _checked(self, cost: object) -> int:
        return checked_cost(cost, self.max_requests, self._report)

    def _member(self, cost: int) -> str:
        return f"{cost}:{self._token}:{next(self._seq)}"

    async def _acquire(self, cost: int, max_wait: float | None) -> tuple[float, int | None]:
        """``acquire``, also returning the grant's time on Redis's clock in µs
        (None when granted without Redis)."""
        cost = self._checked(cost)
        max_wait = _optional_positive("max_wait", max_wait)
        self._bind_loop()
        clock = self._clock
        start = clock.now()
        if self._down_until > start:  # Redis failed a moment ago: do not wait on it again
            self._unavailable(cost, self._last_error)
            return 0.0, None
        waiter = _Waiter(cost, self._member(cost))
        self._line.join(waiter)
        if self._blocked:  # behind a head that is waiting for capacity
            self._line.notice(waiter, max(0.0, self._retry_at - start))
        else:
            self._unnoticed.append(waiter)
        waited = await self._line.wait(waiter, max_wait, start, serve=self._ensure_driver,
                                       wake=self._wake_driver, give_back=self._give_back)
        return waited, waiter.grant

    def _wake_driver(self, moved: bool) -> None:
        """A waiter left: if it was the head, or capacity came back, ask Redis
        again now."""
        if moved:
            self._wake.set()

    def _give_back(self, waiter: _Waiter) -> None:
        self._void(waiter.member)

    def _void(self, member: str) -> None:
        """Give a grant back: removed from Redis by the next script call.

        A driver is started for it only while others wait (they gain from the
        capacity). With nobody waiting the grant goes with the next call, or
        expires with its window: no task is started that a shutting-down
        loop could leave pending.
        """
        self._voids.append((member, self._clock.now()))
        self._wake.set()
        if self._line.queued:
            self._ensure_driver()

    def _void_if_granted(self, member: str, call: asyncio.Future[tuple[int, int, int]]) -> None:
        if not call.cancelled() and call.exception() is None and call.result()[1]:
            self._void(member)

    # -- the driver: the one task that asks Redis for the head of the line -------

    def _ensure_driver(self) -> None:
        loop = asyncio.get_running_loop()
        driver = self._driver
        # A driver left behind by a loop that was shut down is replaced.
        if driver is None or driver.done() or driver.get_loop() is not loop:
            # An empty context: the driver serves every caller, not the first one.
            self._driver = loop.create_task(
                self._drive(), name=f"ragobs-ratelimit-{self.name}",
                context=contextvars.Context())

    async def _drive(self) -> None:
        clock = self._clock
        line = self._line
        try:
            while True:
                head = line.head()
                voids = self._take_voids()
                if head is None and not voids:
                    self._unnoticed.clear()
                    return
                batch = line.first(_BATCH)
                self._wake.clear()
                self._in_flight = batch
                try:
                    now_us, granted, wait_ms = await self._call(
                        voids, [(w.member, w.cost) for w in batch])
                except self._redis_errors as exc:
                    self._went_down(exc)
                    self._voids.extend((m, clock.now()) for m in voids)
                    if self.on_unavailable == "closed":  # it may have run before the error
                        self._voids.extend((w.member, clock.now()) for w in batch)
                    self._fail_line(exc)
                    return
                self._in_flight = []
                for waiter in batch[:granted]:
                    if not line.grant(waiter, now_us):  # left while the call was in flight
                        self._voids.append((waiter.member, clock.now()))
                if granted == len(batch):
                    self._blocked = False
                    self._unnoticed = [w for w in self._unnoticed if w.queued]
                    continue
                # The head does not fit: everyone queued is now waiting for capacity.
                wait = wait_ms / 1000
                self._blocked = True
                self._retry_at = clock.now() + wait
                for waiter in (batch[granted], *self._unnoticed):
                    if waiter.queued and not waiter.noticed:
                        line.notice(waiter, wait)
                self._unnoticed.clear()
                if not self._wake.is_set():  # a head that left meanwhile: ask again now
                    timer = clock.call_at(self._retry_at, self._wake.set)
                    try:
                        await self._wake.wait()
                    finally:
                        timer.cancel()
        except BaseException as exc:
            self._crash(exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            self._driver = None
            self._blocked = False
            self._in_flight = []

    async def _call(self, voids: Sequence[str], requests: Sequence[tuple[str, int]], *,
                    peek: bool = False) -> tuple[int, int, int]:
        """One script call: (server time µs, number granted, ms until the next fits)."""
        args: list[str | int] = [self.max_requests, self._window_us, int(peek), len(voids),
                                 *voids]
        for member, cost in requests:
            args += (member, cost)
        try:
            async with asyncio.timeout(self.backend_timeout):
                try:
                    reply = await self._script(keys=self._keys, args=args, client=self._redis)
                except self._stale_errors:
                    # A pooled connection gone stale (Redis restarted): ask once
                    # more. Safe: a call that already ran grants nothing twice.
                    reply = await self._script(keys=self._keys, args=args, client=self._redis)
        except TimeoutError as exc:  # asyncio's says nothing; say what timed out
            raise TimeoutError(
                f"no answer from Redis within {self.backend_timeout:g} s") from exc
        return int(reply[0]), int(reply[1]), int(reply[2])

    def _take_voids(self) -> list[str]:
        voids = self._voids
        oldest = self._clock.now() - self.window_seconds
        while voids and voids[0][1] < oldest:  # expired on the server by now anyway
            voids.popleft()
        return [voids.popleft()[0] for _ in range(min(len(voids), _VOIDS))]

    # -- Redis unreachable --------------------------------------------------------

    def _went_down(self, exc: BaseException) -> None:
        self._last_error = exc
        self._down_until = self._clock.now() + self.retry_backend_after

    def _closed_error(self, error: BaseException | None) -> RateLimiterUnavailable:
        exc = RateLimiterUnavailable(
            f"rate limiter {self.name!r}: Redis unavailable "
            f"({_describe(error) if error is not None else 'unknown error'}); failing closed")
        exc.__cause__ = error
        return exc

    def _fail_line(self, error: BaseException) -> None:
        """Apply ``on_unavailable`` to everyone waiting."""
        for waiter in self._line.take_all():
            if self.on_unavailable == "open":
                waiter.resolve(None, error)
            else:
                waiter.future.set_exception(self._closed_error(error))
        self._unnoticed.clear()

    def _unavailable(self, cost: int, error: BaseException | None) -> None:
        """Decide one acquisition without Redis: return (open) or raise (closed)."""
        cause = error if error is not None else ConnectionError("Redis unavailable")
        if self.on_unavailable == "open":
            self._report.backend_error("open", cost, cause)
            self._report.acquired()
            return
        exc = self._closed_error(cause)
        self._report.backend_error("closed", cost, cause)
        self._report.rejected(REASON_BACKEND_UNAVAILABLE, cost, error=exc)
        raise exc

    def _crash(self, exc: BaseException) -> None:
        """The driver died of something unexpected: nobody may wait forever."""
        # A call cut short may have granted its batch: give those grants back.
        now = self._clock.now()
        self._voids.extend((w.member, now) for w in self._in_flight)
        if isinstance(exc, Exception):
            logging.getLogger("ragobs").error("rate limit %s: driver failed", self.name,
                                              exc_info=exc)
        for waiter in self._line.take_all():
            if isinstance(exc, Exception):
                waiter.future.set_exception(exc)
            else:
                waiter.future.cancel()
        self._unnoticed.clear()
