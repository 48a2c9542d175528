"""RateLimiter: the seed's behaviour, strictness, FIFO, cancellation, weights, reporting."""

from __future__ import annotations

import asyncio
import bisect
import gc
import logging
import random
import time

import pytest

from ragobs import semconv
from ragobs._events import Event, add_hook, remove_hook
from ragobs.clock import ManualClock
from ragobs.errors import RateLimitTimeout
from ragobs.resilience import RateLimiter
from tests.conftest import OTelHarness


def max_in_any_window(grants: list[tuple[float, int]], window: float) -> int:
    """Largest cost sum over every half-open interval [t, t + window) starting at a grant."""
    grants = sorted(grants)
    times = [t for t, _ in grants]
    prefix = [0]
    for _, cost in grants:
        prefix.append(prefix[-1] + cost)
    worst = 0
    for i, (start, _) in enumerate(grants):
        j = bisect.bisect_left(times, start + window - 1e-9)
        worst = max(worst, prefix[j] - prefix[i])
    return worst


# --- the seed ------------------------------------------------------------------


async def test_seed_test_1_three_per_five_seconds_with_a_manual_clock(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = ManualClock()
    limiter = RateLimiter(max_requests=3, window_seconds=5, clock=clock)
    times: list[float] = []

    async def five_sequential() -> None:
        for _ in range(5):
            await limiter.acquire()
            times.append(clock.now())

    with caplog.at_level(logging.WARNING, logger="ragobs"):
        task = asyncio.create_task(five_sequential())
        await clock.advance(0)
        assert times == [0.0, 0.0, 0.0]
        await clock.advance(5)
        await task
    assert times == [0.0, 0.0, 0.0, 5.0, 5.0]
    notices = [r.getMessage() for r in caplog.records if "Rate limit reached" in r.getMessage()]
    assert notices == ["Rate limit reached (3 requests/5s). Waiting 5.0s..."]  # the seed's
    (record,) = [r for r in caplog.records if r.getMessage() == notices[0]][:1]
    assert record.ragobs_attributes["ratelimit.wait_s"] == 5.0  # details stay structured


@pytest.mark.realtime
async def test_seed_test_1_in_real_time_scaled_down() -> None:
    # The seed's 3 per 5 s, scaled to 3 per 0.3 s so the test stays short.
    limiter = RateLimiter(max_requests=3, window_seconds=0.3)
    start = time.monotonic()
    offsets = []
    for _ in range(5):
        await limiter.acquire()
        offsets.append(time.monotonic() - start)
    assert all(t < 0.05 for t in offsets[:3])
    assert all(0.3 <= t < 0.45 for t in offsets[3:])


def test_seed_constructor_defaults_and_positional_form() -> None:
    assert RateLimiter().max_requests == 10
    assert RateLimiter().window_seconds == 60
    limiter = RateLimiter(3, 5)
    assert (limiter.max_requests, limiter.window_seconds) == (3, 5.0)


# --- strictness ------------------------------------------------------------------


@pytest.mark.parametrize("window", [1.0, 0.7])
async def test_strict_under_1000_concurrent_acquirers(window: float) -> None:
    clock = ManualClock()
    limiter = RateLimiter(max_requests=7, window_seconds=window, clock=clock)
    grants: list[tuple[float, int]] = []

    async def one() -> None:
        await limiter.acquire()
        grants.append((clock.now(), 1))

    tasks = [asyncio.create_task(one()) for _ in range(1000)]
    rng = random.Random(3)
    while not all(t.done() for t in tasks):
        await clock.advance(rng.choice([0.01, 0.05, 0.13, window / 3]))
    assert len(grants) == 1000
    assert max_in_any_window(grants, window) == 7
    # Never idle while anyone waits: 1000 grants need 142 full windows after the first.
    assert max(t for t, _ in grants) <= 1000 // 7 * window + 0.2


async def test_strict_with_random_weights_and_arrivals() -> None:
    clock = ManualClock()
    limiter = RateLimiter(max_requests=50, window_seconds=2, clock=clock)
    rng = random.Random(7)
    grants: list[tuple[float, int]] = []

    async def one(cost: int) -> None:
        await limiter.acquire(cost)
        grants.append((clock.now(), cost))

    tasks = []
    for _ in range(300):
        tasks.append(asyncio.create_task(one(rng.randint(1, 20))))
        await clock.advance(rng.choice([0.0, 0.0, 0.01, 0.1, 0.4]))
    while not all(t.done() for t in tasks):
        await clock.advance(0.05)
    assert len(grants) == 300
    assert max_in_any_window(grants, 2) <= 50


def test_window_checker_finds_a_violation() -> None:
    # The checker itself must be able to fail.
    assert max_in_any_window([(0.0, 1), (0.5, 1), (0.99, 1), (1.0, 1)], 1.0) == 3
    assert max_in_any_window([(0.0, 2), (0.999, 2)], 1.0) == 4


# --- FIFO, cancellation, timeouts -------------------------------------------------


async def test_waiters_are_served_first_come_first_served() -> None:
    clock = ManualClock()
    limiter = RateLimiter(max_requests=2, window_seconds=1, clock=clock)
    order: list[int] = []

    async def one(i: int, cost: int) -> None:
        await limiter.acquire(cost)
        order.append(i)

    tasks = []
    for i, cost in enumerate([1, 1, 2, 1, 1, 2, 1]):
        tasks.append(asyncio.create_task(one(i, cost)))
        await asyncio.sleep(0)
    while not all(t.done() for t in tasks):
        await clock.advance(0.25)
    # Waiter 2 (cost 2) is not overtaken by the cheaper ones behind it.
    assert order == list(range(7))


async def test_try_acquire_does_not_jump_the_queue(otel: OTelHarness) -> None:
    clock = ManualClock()
    limiter = RateLimiter(max_requests=2, window_seconds=1, clock=clock,
                          telemetry=otel.telemetry, name="q")
    assert limiter.try_acquire(2)
    waiter = asyncio.create_task(limiter.acquire(2))
    await clock.advance(0)
    assert limiter.waiting == 1
    await clock.advance(1)  # capacity is back, but it belongs to the waiter
    assert waiter.done()
    assert not limiter.try_acquire()
    assert not limiter.has_capacity()
    assert otel.value(semconv.RATELIMIT_REJECTIONS.name, ragobs__name="q",
                      ragobs__ratelimit__reason="no_capacity") == 1
    await clock.advance(1)
    assert limiter.try_acquire()


async def test_cancelled_waiter_takes_no_slot_and_delays_nobody(otel: OTelHarness) -> None:
    clock = ManualClock()
    limiter = RateLimiter(max_requests=1, window_seconds=10, clock=clock,
                          telemetry=otel.telemetry, name="c")
    await limiter.acquire()
    big = asyncio.create_task(limiter.acquire())  # head of the line
    small = asyncio.create_task(limiter.acquire())
    await clock.advance(1)
    big.cancel()
    await clock.advance(0)
    assert big.cancelled()
    assert limiter.waiting == 1
    await clock.advance(9)  # the first grant expires at t=10
    assert small.done() and small.result() == pytest.approx(10.0)  # queued at t=0
    assert otel.value(semconv.RATELIMIT_REJECTIONS.name, ragobs__name="c",
                      ragobs__ratelimit__reason="cancelled") == 1
    # Exactly two grants were taken: the first and the one for `small`.
    assert otel.value(semconv.RATELIMIT_ACQUISITIONS.name, ragobs__name="c") == 2


async def test_cancelled_after_being_granted_gives_the_slot_back() -> None:
    clock = ManualClock()
    limiter = RateLimiter(max_requests=1, window_seconds=10, clock=clock)
    await limiter.acquire()
    waiter = asyncio.create_task(limiter.acquire())
    await clock.advance(0)
    _grant_then_cancel(clock, limiter, waiter, at=10.0)
    await clock.advance(0)
    assert waiter.cancelled()
    assert limiter.try_acquire()  # the slot the cancelled waiter got is free again


def _grant_then_cancel(clock: ManualClock, limiter: RateLimiter, waiter: asyncio.Task[float],
                       at: float) -> None:
    """The race: the waiter is granted, and its task is cancelled before it resumes."""
    clock._now = at
    limiter._on_timer()  # grants the head of the line, synchronously
    assert limiter.waiting == 0 and not waiter.done()
    waiter.cancel()


async def test_token_bucket_cancelled_after_grant_gives_tokens_back() -> None:
    clock = ManualClock()
    limiter = RateLimiter(max_requests=2, window_seconds=2, clock=clock,
                          strategy="token_bucket")
    await limiter.acquire(2)
    waiter = asyncio.create_task(limiter.acquire(2))
    await clock.advance(0)
    _grant_then_cancel(clock, limiter, waiter, at=2.0)
    await clock.advance(0)
    assert waiter.cancelled()
    assert limiter.try_acquire(2)


async def test_max_wait_times_out_taking_nothing(otel: OTelHarness) -> None:
    clock = ManualClock()
    limiter = RateLimiter(max_requests=1, window_seconds=10, clock=clock,
                          telemetry=otel.telemetry, name="t")
    await limiter.acquire()
    late = asyncio.create_task(limiter.acquire(max_wait=3))
    after = asyncio.create_task(limiter.acquire())
    await clock.advance(3)
    with pytest.raises(RateLimitTimeout, match=r"'t'.*3 s"):
        await late
    assert isinstance(late.exception(), TimeoutError)
    await clock.advance(7)
    assert after.done() and after.result() == pytest.approx(10.0)
    assert otel.value(semconv.RATELIMIT_REJECTIONS.name, ragobs__ratelimit__reason="timeout") == 1


async def test_wait_with_asyncio_wait_for_in_real_time_leaves_no_slot() -> None:
    limiter = RateLimiter(max_requests=1, window_seconds=0.2)
    await limiter.acquire()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(limiter.acquire(), 0.02)
    assert limiter.waiting == 0
    waited = await limiter.acquire()
    assert 0.1 < waited < 0.3


# --- weights, strategies, forms ---------------------------------------------------


async def test_weighted_costs_hold_a_token_budget() -> None:
    clock = ManualClock()
    tpm = RateLimiter(max_requests=1000, window_seconds=60, clock=clock)
    assert await tpm.acquire(600) == 0.0
    assert await tpm.acquire(400) == 0.0
    task = asyncio.create_task(tpm.acquire(1))
    await clock.advance(59.9)
    assert not task.done()
    await clock.advance(0.1)
    assert task.done() and task.result() == pytest.approx(60.0)


def test_cost_larger_than_capacity_is_a_clear_error(otel: OTelHarness) -> None:
    limiter = RateLimiter(max_requests=5, window_seconds=1, telemetry=otel.telemetry, name="w")
    with pytest.raises(ValueError, match=r"cost must be an int in \[1, 5\].*got 6"):
        limiter.try_acquire(6)
    with pytest.raises(ValueError, match="cost"):
        asyncio.run(limiter.acquire(6))
    with pytest.raises(TypeError, match="cost"):
        limiter.try_acquire(1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"cost must be an int in \[1, 5\].*got 0$"):
        limiter.try_acquire(0)  # not "above the capacity", and no rejection counted
    assert otel.value(semconv.RATELIMIT_REJECTIONS.name, ragobs__ratelimit__reason="too_large") == 2


async def test_token_bucket_refills_smoothly_and_bounds_any_interval() -> None:
    clock = ManualClock()
    limiter = RateLimiter(max_requests=10, window_seconds=10, clock=clock, strategy="token_bucket")
    grants: list[tuple[float, int]] = []

    async def one() -> None:
        await limiter.acquire()
        grants.append((clock.now(), 1))

    tasks = [asyncio.create_task(one()) for _ in range(40)]
    while not all(t.done() for t in tasks):
        await clock.advance(0.25)
    times = [t for t, _ in grants]
    assert times[:10] == [0.0] * 10  # the burst
    # Then one per second, smoothly: 1 token / s.
    assert times[10:13] == [1.0, 2.0, 3.0]
    # Documented guarantee: any T seconds grant at most capacity + T * rate.
    for span in (1.0, 5.0, 10.0):
        assert max_in_any_window(grants, span) <= 10 + span * 1.0


async def test_async_with_and_decorators() -> None:
    clock = ManualClock()
    limiter = RateLimiter(max_requests=2, window_seconds=1, clock=clock)

    @limiter
    async def call(x: int) -> int:
        """Doubles."""
        return 2 * x

    @limiter
    async def stream(n: int):  # type: ignore[no-untyped-def]
        for i in range(n):
            yield i

    assert call.__doc__ == "Doubles." and call.__name__ == "call"
    assert await call(4) == 8
    assert [i async for i in stream(3)] == [0, 1, 2]
    blocked = asyncio.create_task(_enter(limiter))
    await clock.advance(0.5)
    assert not blocked.done()
    await clock.advance(0.5)
    assert blocked.done()
    with pytest.raises(TypeError, match="decorates"):
        limiter(lambda: None)  # type: ignore[arg-type]


async def _enter(limiter: RateLimiter) -> None:
    async with limiter as entered:
        assert entered is limiter


# --- reporting ---------------------------------------------------------------


async def test_waits_are_reported_as_span_events_metrics_and_hooks(otel: OTelHarness) -> None:
    clock = ManualClock()
    limiter = RateLimiter(max_requests=1, window_seconds=2, clock=clock,
                          telemetry=otel.telemetry, name="provider")
    seen: list[Event] = []
    add_hook(seen.append)
    try:
        with otel.telemetry.tracer.start_as_current_span("request"):
            await limiter.acquire()
            task = asyncio.create_task(limiter.acquire())
            await clock.advance(2)
            assert await task == pytest.approx(2.0)
    finally:
        remove_hook(seen.append)
    (span,) = otel.spans()
    (event,) = [e for e in span.events if e.name == "ratelimit.wait"]
    assert event.attributes is not None
    assert event.attributes["ratelimit.wait_s"] == pytest.approx(2.0)
    assert event.attributes["ragobs.name"] == "provider"
    assert [e.kind for e in seen] == ["ratelimit.wait"]
    assert seen[0].trace_id == format(span.context.trace_id, "032x")
    name = semconv.RATELIMIT_ACQUISITIONS.name
    assert otel.value(name, ragobs__name="provider", ragobs__ratelimit__waited="false") == 1
    assert otel.value(name, ragobs__name="provider", ragobs__ratelimit__waited="true") == 1
    assert otel.count(semconv.RATELIMIT_WAIT.name, ragobs__name="provider") == 1
    assert otel.total(semconv.RATELIMIT_WAIT.name) == pytest.approx(2.0)


def test_memory_is_bounded_by_the_capacity() -> None:
    clock = ManualClock()
    limiter = RateLimiter(max_requests=5, window_seconds=1, clock=clock)
    for _ in range(10_000):
        limiter.try_acquire()
        clock._now += 0.01
    assert len(limiter._strategy._log) <= 5  # type: ignore[union-attr]


# --- bad arguments ---------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"max_requests": 0}, ValueError, "max_requests must be an int >= 1, got 0"),
    ({"max_requests": -3}, ValueError, "max_requests"),
    ({"max_requests": 2.5}, TypeError, "max_requests must be an int"),
    ({"max_requests": True}, TypeError, "max_requests"),
    ({"window_seconds": 0}, ValueError, r"window_seconds must be a number in \[1e-06, "),
    ({"window_seconds": -1}, ValueError, "window_seconds"),
    ({"window_seconds": float("inf")}, ValueError, "window_seconds"),
    ({"window_seconds": "60"}, TypeError, "window_seconds"),
    ({"strategy": "leaky"}, ValueError, "strategy must be one of sliding_window, token_bucket"),
    ({"name": ""}, ValueError, "name must be a non-empty str"),
    ({"clock": object()}, TypeError, "clock must be"),
    ({"telemetry": object()}, TypeError, "telemetry must be"),
])
def test_bad_arguments_name_the_argument(kwargs: dict[str, object], error: type[Exception],
                                         match: str) -> None:
    with pytest.raises(error, match=match):
        RateLimiter(**kwargs)  # type: ignore[arg-type]


async def test_bad_max_wait_names_the_argument() -> None:
    limiter = RateLimiter(max_requests=1, window_seconds=10, clock=ManualClock())
    with pytest.raises(ValueError, match="max_wait must be a number > 0"):
        await limiter.acquire(max_wait=-1)  # refused even when it would not wait
    await limiter.acquire()
    with pytest.raises(ValueError, match="max_wait must be a number > 0"):
        await limiter.acquire(max_wait=0)
    assert limiter.waiting == 0


async def test_uncontended_counts_survive_the_limiter(otel: OTelHarness) -> None:
    """Lock-free tallies are read at collection and folded in when the limiter goes."""
    name = semconv.RATELIMIT_ACQUISITIONS.name
    limiter = RateLimiter(max_requests=100, window_seconds=1, telemetry=otel.telemetry, name="g")
    for _ in range(30):
        await limiter.acquire()
    assert otel.value(name, ragobs__name="g", ragobs__ratelimit__waited="false") == 30
    table = otel.telemetry.counter(semconv.RATELIMIT_ACQUISITIONS)
    live = len(table._tallies)
    del limiter
    gc.collect()
    assert len(table._tallies) == live - 1  # folded in: no structure grows per limiter
    again = RateLimiter(max_requests=100, window_seconds=1, telemetry=otel.telemetry, name="g")
    assert again.try_acquire()
    assert otel.value(name, ragobs__name="g", ragobs__ratelimit__waited="false") == 31


async def test_waiters_that_leave_behind_a_waiting_head_do_not_pile_up() -> None:
    clock = ManualClock()
    limiter = RateLimiter(max_requests=1, window_seconds=60, clock=clock)
    await limiter.acquire()
    head = asyncio.create_task(limiter.acquire())
    await clock.advance(0)
    for _ in range(10):  # waves of short-lived waiters that all time out
        wave = [asyncio.create_task(limiter.acquire(max_wait=0.5)) for _ in range(200)]
        await clock.advance(0.5)
        assert all(isinstance(t.exception(), RateLimitTimeout) for t in wave)
    assert limiter.waiting == 1
    assert len(limiter._waiters) <= 2 * 64 + 2  # pruned, not 2001
    await clock.advance(60)
    assert head.done() and head.result() == pytest.approx(60.0)  # queued at 0, served at 60
