"""RedisRateLimiter against a real redis-server: strictness across processes, FIFO,
weights, max_wait and cancellation leaving nothing taken, fail open / closed, recovery.

Redis decides grants on its own clock, so these tests use real time with short
windows; strictness is checked on the grant times the script returns (Redis's
clock, µs), never on local timings.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from ragobs import semconv
from ragobs._events import Event, add_hook, remove_hook
from ragobs.errors import RateLimiterUnavailable, RateLimitTimeout
from ragobs.resilience._redis_ratelimit import RedisRateLimiter
from tests.conftest import OTelHarness
from tests.redisserver import RedisServer, redis_server, redis_url  # noqa: F401 (fixtures)
from tests.support import free_port

pytestmark = [pytest.mark.needs_redis, pytest.mark.realtime]

REPO = Path(__file__).resolve().parent.parent
ACQ = "ragobs.ratelimit.acquisitions"
REJ = "ragobs.ratelimit.rejections"
BACKEND = "ragobs.ratelimit.backend.errors"


def max_in_any_window(grants: list[tuple[int, int]], window_us: int) -> int:
    """Largest cost sum over every half-open interval [t, t + window) starting at
    a grant, on integer µs (enough: a window's sum peaks when it starts at a grant)."""
    grants = sorted(grants)
    worst = 0
    for i, (start, _) in enumerate(grants):
        total = 0
        for when, cost in grants[i:]:
            if when >= start + window_us:
                break
            total += cost
        worst = max(worst, total)
    return worst


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:  # noqa: F811
    conn = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield conn
    await conn.aclose()


@pytest.fixture
async def make(redis_url: str) -> AsyncIterator[Callable[..., RedisRateLimiter]]:  # noqa: F811
    """Limiters on a unique key of the shared server, closed at the end."""
    made: list[RedisRateLimiter] = []

    def factory(max_requests: int, window_seconds: float, **kwargs: Any) -> RedisRateLimiter:
        kwargs.setdefault("url", redis_url)
        kwargs.setdefault("key", f"test:{uuid.uuid4().hex}")
        limiter = RedisRateLimiter(max_requests, window_seconds, **kwargs)
        made.append(limiter)
        return limiter

    yield factory
    for limiter in made:
        await limiter.aclose()


@pytest.fixture
def events() -> Iterator[list[Event]]:
    seen: list[Event] = []
    add_hook(seen.append)
    yield seen
    remove_hook(seen.append)


async def wait_until(condition: Callable[[], Any], within: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not await condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


# --- the seed, weights, FIFO -----------------------------------------------------


async def test_seed_style_sequential_acquires(client: aioredis.Redis,
                                              caplog: pytest.LogCaptureFixture) -> None:
    # A user-provided client, which the limiter must not close.
    limiter = RedisRateLimiter(3, 0.5, redis=client, key=f"test:{uuid.uuid4().hex}")
    caplog.set_level(logging.INFO, logger="ragobs")
    results = [await limiter._acquire(1, None) for _ in range(5)]
    waited = [w for w, _ in results]
    when = [t for _, t in results]
    assert all(isinstance(t, int) for t in when)
    assert waited[:3] == [0.0, 0.0, 0.0]
    assert waited[3] > 0  # requests 4 and 5 wait for the window, like the seed's Test 1
    window_us = 500_000
    # Each of 4 and 5 came once 1 and 2 had left the window, and not a window later.
    assert window_us <= when[3] - when[0] < 2 * window_us
    assert window_us <= when[4] - when[1] < 2 * window_us
    assert max_in_any_window([(t, 1) for t in when if t is not None], window_us) == 3
    notices = [r.getMessage() for r in caplog.records if "Rate limit reached" in r.getMessage()]
    # 5 waits too unless 2 was granted in the same µs as 1.
    assert len(notices) == 1 + (waited[4] > 0)
    assert notices[0].startswith("Rate limit reached (3 requests/0.5s). Waiting 0.")
    assert await client.ping()  # still open


async def test_weighted_costs_and_too_large(make: Callable[..., RedisRateLimiter],
                                            client: aioredis.Redis, otel: OTelHarness) -> None:
    limiter = make(10, 0.4, telemetry=otel.telemetry)
    w1, t1 = await limiter._acquire(6, None)
    w2, t2 = await limiter._acquire(5, None)  # 6 + 5 > 10: waits for the 6 to expire
    w3, t3 = await limiter._acquire(4, None)  # 5 + 4 fits at once
    assert (w1, w3) == (0.0, 0.0)
    assert w2 > 0
    assert t1 is not None and t2 is not None and t3 is not None
    assert t2 - t1 >= 400_000
    assert t3 >= t2
    assert await client.zcard(limiter.key) == 2
    assert int(await client.get(f"{limiter.key}:sum")) == 9
    with pytest.raises(ValueError, match=r"cost must be an int in \[1, 10\]"):
        await limiter.acquire(11)
    with pytest.raises(ValueError, match="cost"):
        await limiter.acquire(0)
    with pytest.raises(TypeError, match="cost"):
        await limiter.acquire("1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cost"):
        await limiter.try_acquire(11)
    # Only the costs above the capacity count as rejections; cost 0 is a plain error.
    assert otel.value(REJ, ragobs__ratelimit__reason="too_large") == 2  # as the local one
    assert await client.zcard(limiter.key) == 2  # nothing taken by the refusals


async def test_fifo_within_a_process(make: Callable[..., RedisRateLimiter]) -> None:
    limiter = make(4, 0.3)
    assert await limiter.try_acquire(3)
    order: list[str] = []
    times: dict[str, int] = {}

    async def take(label: str, cost: int) -> None:
        _, when = await limiter._acquire(cost, None)
        assert when is not None
        order.append(label)
        times[label] = when

    head = asyncio.create_task(take("big", 3))  # does not fit: 3 + 3 > 4
    await asyncio.sleep(0.05)
    # 1 would fit now, but must not overtake the head.
    tasks = [head, *(asyncio.create_task(take(f"small{i}", 1)) for i in range(3))]
    await asyncio.sleep(0.05)
    assert limiter.waiting == 4
    assert not await limiter.try_acquire(1)  # try_acquire never jumps the line
    await asyncio.gather(*tasks)
    assert order == ["big", "small0", "small1", "small2"]
    assert times["big"] <= times["small0"] <= times["small1"] <= times["small2"]
    assert limiter.waiting == 0


async def test_many_concurrent_acquirers_strict_and_in_order(
        make: Callable[..., RedisRateLimiter], otel: OTelHarness) -> None:
    limit, window_us = 50, 250_000
    limiter = make(limit, window_us / 1e6, telemetry=otel.telemetry)
    results = await asyncio.gather(*(limiter._acquire(1, None) for _ in range(200)))
    when = [t for _, t in results]
    assert all(t is not None for t in when)
    grants = [(t, 1) for t in when if t is not None]
    assert max_in_any_window(grants, window_us) == limit
    assert when == sorted(when)  # granted in arrival order
    assert otel.value(ACQ, ragobs__ratelimit__waited="false") == limit  # the first window
    assert otel.value(ACQ, ragobs__ratelimit__waited="true") == 200 - limit
    assert limiter.waiting == 0


# --- strictness across processes -------------------------------------------------

WORKER = r"""
import asyncio, json, random, sys
import redis.asyncio as aioredis
from ragobs.resilience._redis_ratelimit import RedisRateLimiter

async def main(url, key, limit, window, tasks, each, seed):
    rng = random.Random(seed)
    limiter = RedisRateLimiter(limit, window, url=url, key=key, name="mp")
    go = aioredis.Redis.from_url(url)
    grants = []
    async def hammer():
        for _ in range(each):
            cost = rng.choice((1, 2))
            _, when = await limiter._acquire(cost, None)
            grants.append((when, cost))
    print("ready", flush=True)
    await go.blpop([key + ":go"], timeout=20)
    await asyncio.gather(*(hammer() for _ in range(tasks)))
    await go.aclose()
    await limiter.aclose()
    print(json.dumps(grants), flush=True)

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]),
                 int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])))
"""


async def test_strict_across_processes(redis_url: str,  # noqa: F811
                                       client: aioredis.Redis) -> None:
    limit, window, processes, tasks, each = 10, 0.3, 3, 4, 4
    key = f"test:{uuid.uuid4().hex}"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", WORKER, redis_url, key, str(limit), str(window),
            str(tasks), str(each), str(seed),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=REPO, env=env)
        for seed in range(processes)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 20)
            assert line.strip() == b"ready"
        await client.rpush(f"{key}:go", *range(processes))  # all start together
        outputs = await asyncio.wait_for(
            asyncio.gather(*(proc.communicate() for proc in procs)), 30)
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert [proc.returncode for proc in procs] == [0] * processes, \
        [err.decode()[-2000:] for _, err in outputs]
    per_process = [json.loads(out.decode().strip().splitlines()[-1]) for out, _ in outputs]
    assert [len(g) for g in per_process] == [tasks * each] * processes
    grants = [(int(when), int(cost)) for g in per_process for when, cost in g]
    worst = max_in_any_window(grants, round(window * 1_000_000))
    assert worst <= limit
    assert worst >= limit - 1  # the limiter was really contended (costs are 1 or 2)
    assert await client.zcard(key) <= limit  # memory stays bounded


# --- max_wait and cancellation take nothing --------------------------------------


async def test_max_wait_takes_nothing(make: Callable[..., RedisRateLimiter],
                                      client: aioredis.Redis, otel: OTelHarness) -> None:
    limiter = make(2, 0.5, telemetry=otel.telemetry)
    assert await limiter.try_acquire() and await limiter.try_acquire()
    with pytest.raises(RateLimitTimeout) as info:
        await limiter.acquire(max_wait=0.1)
    assert info.value.timeout == 0.1
    assert await client.zcard(limiter.key) == 2
    assert limiter.waiting == 0
    assert otel.value(REJ, ragobs__ratelimit__reason="timeout") == 1
    with pytest.raises(ValueError, match="max_wait"):
        await limiter.acquire(max_wait=0)


async def test_cancelled_head_takes_nothing_and_delays_nobody(
        make: Callable[..., RedisRateLimiter], client: aioredis.Redis,
        otel: OTelHarness) -> None:
    limiter = make(2, 0.5, telemetry=otel.telemetry)
    _, first = await limiter._acquire(1, None)
    assert first is not None
    head = asyncio.create_task(limiter._acquire(2, None))  # waits for the whole window
    behind = asyncio.create_task(limiter._acquire(1, None))  # would fit, but FIFO
    await asyncio.sleep(0.1)
    assert limiter.waiting == 2 and not behind.done()
    head.cancel()
    with pytest.raises(asyncio.CancelledError):
        await head
    _, when = await asyncio.wait_for(behind, 2)
    assert when is not None
    assert when - first < 500_000  # served at once, not after the window
    assert await client.zcard(limiter.key) == 2
    assert int(await client.get(f"{limiter.key}:sum")) == 2
    assert limiter.waiting == 0
    assert otel.value(REJ, ragobs__ratelimit__reason="cancelled") == 1


@pytest.mark.parametrize("how", ["cancel", "max_wait"])
async def test_grant_made_while_leaving_is_given_back(
        how: str, make: Callable[..., RedisRateLimiter], client: aioredis.Redis,
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[list[str], list[tuple[str, int]], tuple[int, int, int]]] = []
    real_call = RedisRateLimiter._call

    async def spy(self: RedisRateLimiter, voids: Any, requests: Any, **kw: Any) -> Any:
        reply = await real_call(self, voids, requests, **kw)
        calls.append((list(voids), list(requests), reply))
        return reply

    monkeypatch.setattr(RedisRateLimiter, "_call", spy)
    limiter = make(5, 0.5)
    await limiter.acquire()  # loads the script before Redis is paused
    await client.execute_command("CLIENT", "PAUSE", "300", "WRITE")  # holds scripts back
    task = asyncio.create_task(limiter.acquire(2, max_wait=0.1 if how == "max_wait" else None))
    await asyncio.sleep(0.1)
    if how == "cancel":
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    else:
        with pytest.raises(RateLimitTimeout):
            await task
    assert limiter.waiting == 0
    # The paused call grants once Redis resumes; the limiter then gives it back.
    await wait_until(lambda: _driver_idle(limiter))
    granted = [req[0][0] for _, req, reply in calls if req and req[0][1] == 2 and reply[1]]
    assert len(granted) == 1
    assert any(granted[0] in voids for voids, _, _ in calls)
    assert await client.zcard(limiter.key) == 1  # only the first acquire's grant
    assert int(await client.get(f"{limiter.key}:sum")) == 1


async def _driver_idle(limiter: RedisRateLimiter) -> bool:
    return limiter._driver is None and not limiter._voids


# --- the other forms, and reporting ----------------------------------------------


async def test_try_acquire_has_capacity_context_and_decorators(
        make: Callable[..., RedisRateLimiter], client: aioredis.Redis,
        otel: OTelHarness) -> None:
    limiter = make(3, 0.3, telemetry=otel.telemetry)
    assert await limiter.has_capacity(3)
    assert await client.zcard(limiter.key) == 0  # has_capacity takes nothing
    assert await limiter.try_acquire(2)
    assert not await limiter.has_capacity(2)
    assert not await limiter.try_acquire(2)
    assert otel.value(REJ, ragobs__ratelimit__reason="no_capacity") == 1
    async with limiter as entered:
        assert entered is limiter
    assert await client.zcard(limiter.key) == 2
    with pytest.raises(ValueError, match="cost"):
        await limiter.has_capacity(4)

    @limiter
    async def call(x: int) -> int:
        return x * 2

    @limiter
    async def stream(n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i

    assert await call(21) == 42  # waits for the window: 3 already taken
    assert [i async for i in stream(3)] == [0, 1, 2]
    assert otel.value(ACQ) == 4
    assert otel.value(ACQ, ragobs__ratelimit__waited="true") >= 1
    with pytest.raises(TypeError, match="coroutine"):
        limiter(lambda: None)


async def test_reports_like_the_local_limiter(make: Callable[..., RedisRateLimiter],
                                              otel: OTelHarness) -> None:
    limiter = make(1, 0.3, name="shared", telemetry=otel.telemetry)
    tracer = otel.telemetry.tracer
    with tracer.start_as_current_span("first"):
        assert await limiter.acquire() == 0.0
    with tracer.start_as_current_span("second"):
        waited = await limiter.acquire()
    assert waited > 0
    assert otel.value(ACQ, ragobs__name="shared", ragobs__ratelimit__waited="false") == 1
    assert otel.value(ACQ, ragobs__name="shared", ragobs__ratelimit__waited="true") == 1
    assert otel.count(semconv.RATELIMIT_WAIT.name, ragobs__name="shared") == 1
    spans = {s.name: s for s in otel.spans()}
    assert [e.name for e in spans["first"].events] == []
    (event,) = spans["second"].events
    assert event.name == semconv.EVENT_RATELIMIT_WAIT
    assert event.attributes is not None
    assert event.attributes["ragobs.name"] == "shared"
    assert 0 < float(event.attributes["ratelimit.wait_s"]) <= 0.3  # type: ignore[arg-type]


async def test_keys_expire_and_stay_bounded(make: Callable[..., RedisRateLimiter],
                                            client: aioredis.Redis) -> None:
    limiter = make(3, 0.2)
    for _ in range(6):
        await limiter.acquire()
        assert await client.zcard(limiter.key) <= 3
    assert 0 < await client.pttl(limiter.key) <= 200
    assert 0 < await client.pttl(f"{limiter.key}:sum") <= 200
    await asyncio.sleep(0.3)
    assert await client.exists(limiter.key, f"{limiter.key}:sum") == 0


# --- Redis unreachable -------------------------------------------------------------


async def test_fail_open_on_a_closed_port(otel: OTelHarness, events: list[Event]) -> None:
    limiter = RedisRateLimiter(1, 0.5, url=f"redis://127.0.0.1:{free_port()}/0",
                               on_unavailable="open", retry_backend_after=5,
                               telemetry=otel.telemetry, name="down")
    try:
        assert await limiter.acquire() == 0.0
        assert await limiter.acquire() == 0.0  # no limit while Redis is away
        assert await limiter.try_acquire()
        assert await limiter.has_capacity()
    finally:
        await limiter.aclose()
    assert otel.value(BACKEND, ragobs__name="down", ragobs__ratelimit__backend_mode="open") == 3
    assert otel.value(BACKEND, ragobs__ratelimit__backend_mode="closed") == 0
    assert otel.value(ACQ, ragobs__name="down") == 3
    backend = [e for e in events if e.kind == "ratelimit.backend_error"]
    assert len(backend) == 3
    assert backend[0].attributes[semconv.RATELIMIT_BACKEND_MODE] == "open"
    assert isinstance(backend[0].error, Exception)


async def test_fail_closed_on_a_closed_port(otel: OTelHarness, events: list[Event]) -> None:
    limiter = RedisRateLimiter(1, 0.5, url=f"redis://127.0.0.1:{free_port()}/0",
                               telemetry=otel.telemetry, name="down")
    assert limiter.on_unavailable == "closed"  # the documented default
    try:
        with pytest.raises(RateLimiterUnavailable, match="failing closed") as info:
            await limiter.acquire()
        assert isinstance(info.value, ConnectionError)
        assert info.value.__cause__ is not None
        with pytest.raises(RateLimiterUnavailable):
            await limiter.try_acquire()
        assert not await limiter.has_capacity()
    finally:
        await limiter.aclose()
    assert otel.value(BACKEND, ragobs__name="down",
                      ragobs__ratelimit__backend_mode="closed") == 2
    assert otel.value(REJ, ragobs__ratelimit__reason="backend_unavailable") == 2
    assert otel.value(ACQ) == 0
    assert [e.kind for e in events].count("ratelimit.backend_error") == 2


async def test_outage_mid_wait_then_recovery(otel: OTelHarness) -> None:
    with RedisServer() as server:
        limiter = RedisRateLimiter(2, 0.3, url=server.url, telemetry=otel.telemetry,
                                   retry_backend_after=0.1, backend_timeout=0.5)
        try:
            await limiter.acquire()
            await limiter.acquire()
            waiting = asyncio.create_task(limiter.acquire())  # polls again in ~0.3 s
            await asyncio.sleep(0.1)
            assert limiter.waiting == 1
            server.pause()
            with pytest.raises(RateLimiterUnavailable):
                await asyncio.wait_for(waiting, 3)
            assert limiter.waiting == 0
            with pytest.raises(RateLimiterUnavailable):
                await limiter.acquire()
            server.restart()
            await asyncio.sleep(0.15)  # past retry_backend_after
            assert await limiter.acquire() == 0.0
            assert await limiter.try_acquire()
            assert not await limiter.try_acquire()  # limiting again
            check = aioredis.Redis.from_url(server.url)
            try:
                assert await check.zcard(limiter.key) == 2
            finally:
                await check.aclose()
        finally:
            await limiter.aclose()
    assert otel.value(BACKEND, ragobs__ratelimit__backend_mode="closed") == 2
    assert otel.value(REJ, ragobs__ratelimit__reason="backend_unavailable") == 2
    assert otel.value(ACQ) == 4


# --- arguments -----------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"max_requests": 0}, ValueError, "max_requests"),
    ({"max_requests": 1.5}, TypeError, "max_requests"),
    ({"window_seconds": 0}, ValueError, "window_seconds"),
    ({"window_seconds": -1}, ValueError, "window_seconds"),
    ({"on_unavailable": "maybe"}, ValueError, "on_unavailable"),
    ({"backend_timeout": 0}, ValueError, "backend_timeout"),
    ({"retry_backend_after": -1}, ValueError, "retry_backend_after"),
    ({"key": ""}, ValueError, "key"),
    ({"name": ""}, ValueError, "name"),
    ({"url": None}, ValueError, "redis= .* or url="),
    ({"redis": "redis://x"}, ValueError, "exactly one"),
    ({"url": ""}, ValueError, "url"),
    ({"clock": object()}, TypeError, "clock"),
])
def test_bad_arguments_name_the_argument(kwargs: dict[str, Any], error: type[Exception],
                                         match: str) -> None:
    args: dict[str, Any] = {"max_requests": 3, "window_seconds": 1.0,
                            "url": "redis://127.0.0.1:1/0", **kwargs}
    with pytest.raises(error, match=match):
        RedisRateLimiter(**args)


def test_a_sync_client_is_refused() -> None:
    import redis

    with pytest.raises(TypeError, match=r"redis must be a redis\.asyncio\.Redis"):
        RedisRateLimiter(3, 1.0, redis=redis.Redis())  # type: ignore[arg-type]


# --- regressions found in review --------------------------------------------------


async def test_has_capacity_never_inflates_the_shared_sum(
        make: Callable[..., RedisRateLimiter], client: aioredis.Redis) -> None:
    limiter = make(10, 0.4)
    assert await limiter.try_acquire()
    await asyncio.sleep(0.2)
    assert await limiter.try_acquire()
    await asyncio.sleep(0.25)  # the first grant expired, the second is held
    assert await limiter.has_capacity(8)  # the peek expires one and rewrites the sum
    assert await client.zcard(limiter.key) == 1
    assert int(await client.get(f"{limiter.key}:sum")) == 1
    # Nine more fit beside the one held: the peek took nothing.
    assert [await limiter.try_acquire() for _ in range(10)] == [True] * 9 + [False]


async def test_a_script_run_twice_counts_its_grants_once(
        make: Callable[..., RedisRateLimiter], client: aioredis.Redis) -> None:
    """The client retries after a lost reply: the same members come again."""
    limiter = make(5, 5.0)
    pairs = [("2:a:1", 2), ("1:a:2", 1)]
    assert (await limiter._call((), pairs))[1] == 2
    assert (await limiter._call((), pairs))[1] == 2  # the re-run grants them, once
    assert await client.zcard(limiter.key) == 2
    assert int(await client.get(f"{limiter.key}:sum")) == 3
    assert [await limiter.try_acquire() for _ in range(3)] == [True, True, False]


async def test_a_recounted_sum_expires_with_its_grants(
        make: Callable[..., RedisRateLimiter], client: aioredis.Redis) -> None:
    limiter = make(5, 0.3)
    assert await limiter.try_acquire()
    await client.delete(f"{limiter.key}:sum")  # evicted, say
    assert await limiter.has_capacity()
    assert int(await client.get(f"{limiter.key}:sum")) == 1
    assert 0 < await client.pttl(f"{limiter.key}:sum") <= 300
    await asyncio.sleep(0.35)
    assert await client.exists(limiter.key, f"{limiter.key}:sum") == 0


def test_a_second_event_loop_gets_a_working_limiter(redis_url: str) -> None:  # noqa: F811
    limiter = RedisRateLimiter(2, 0.3, url=redis_url, key=f"test:{uuid.uuid4().hex}")

    async def burst() -> list[float]:
        try:
            return [round(await limiter.acquire(), 1) for _ in range(3)]
        finally:
            await limiter.aclose()

    for _ in range(3):  # three asyncio.run calls, one limiter
        waits = asyncio.run(burst())
        assert waits[:2] == [0.0, 0.0] and waits[2] >= 0.1
        time.sleep(0.35)  # the window empties before the next loop starts


async def test_a_users_client_from_another_loop_is_a_clear_error(
        redis_url: str) -> None:  # noqa: F811
    conn = aioredis.Redis.from_url(redis_url)
    limiter = RedisRateLimiter(2, 1.0, redis=conn, key=f"test:{uuid.uuid4().hex}")
    assert await limiter.try_acquire()

    def elsewhere() -> None:
        async def use() -> None:
            await limiter.acquire()
        asyncio.run(use())

    with pytest.raises(RuntimeError, match=r"second event loop.*pass url="):
        await asyncio.to_thread(elsewhere)
    await conn.aclose()


async def test_waiters_that_leave_behind_a_blocked_head_do_not_pile_up(
        make: Callable[..., RedisRateLimiter]) -> None:
    limiter = make(1, 30.0)
    await limiter.acquire()
    head = asyncio.create_task(limiter.acquire())  # waits ~30 s for capacity
    await asyncio.sleep(0.05)
    results = await asyncio.gather(*(limiter.acquire(max_wait=0.02) for _ in range(2000)),
                                   return_exceptions=True)
    assert all(isinstance(r, RateLimitTimeout) for r in results)
    assert limiter.waiting == 1
    assert len(limiter._line) <= 2 * 64 + 2  # pruned, not 2001
    head.cancel()
    await asyncio.gather(head, return_exceptions=True)
