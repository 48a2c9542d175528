"""retry / retry_stream / RetryBudget: schedule, filters, Retry-After, deadline, budget,
streams, cancellation and reporting. Time is a ManualClock unless marked realtime."""

from __future__ import annotations

import asyncio
import email.utils
import errno
import inspect
import itertools
import logging
import random
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ragobs._classify import retry_after as _retry_after
from ragobs._events import Event, add_hook, remove_hook
from ragobs.clock import ManualClock
from ragobs.errors import StreamTimeout
from ragobs.resilience._retry import RetryBudget, is_retryable, retry, retry_stream
from ragobs.resilience._timeout import stream_timeout


class HTTPError(Exception):
    def __init__(self, status: int, *, retry_after: Any = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        if retry_after is not None:
            self.retry_after = retry_after
        if headers is not None:
            self.headers = headers


class Response:
    def __init__(self, status_code: int, headers: dict[str, str] | None = None) -> None:
        self.status_code = status_code
        self.headers = headers or {}


class APIStatusError(Exception):
    """Shaped like openai / httpx errors: the status lives on ``response``."""

    def __init__(self, status_code: int, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"status {status_code}")
        self.response = Response(status_code, headers)


async def drive(clock: ManualClock, aw: Awaitable[Any], seconds: float = 1000.0) -> Any:
    """Run ``aw`` in a task while moving the clock ``seconds`` forward."""
    task = asyncio.ensure_future(aw)
    await clock.advance(seconds)
    assert task.done(), "still waiting after the clock advanced"
    return task.result()


def failing(clock: ManualClock, errors: list[BaseException], result: Any = "ok"
            ) -> tuple[Callable[[], Awaitable[Any]], list[float]]:
    """A coroutine function raising ``errors`` in turn, then returning ``result``."""
    times: list[float] = []

    async def call() -> Any:
        times.append(clock.now())
        if len(times) <= len(errors):
            raise errors[len(times) - 1]
        return result

    return call, times


# --- schedule ----------------------------------------------------------------


async def test_default_schedule_is_1_2_4_seconds_with_jitter_off(otel: Any) -> None:
    clock = ManualClock()
    fn, times = failing(clock, [ConnectionResetError("reset")] * 10)
    wrapped = retry(jitter=0, clock=clock, telemetry=otel.telemetry)(fn)
    with pytest.raises(ConnectionResetError, match="reset") as info:
        await drive(clock, wrapped())
    assert times == [0.0, 1.0, 3.0, 7.0]  # 4 attempts, waits 1, 2, 4
    assert "not retried (attempts) after 4 attempt(s)" in info.value.__notes__[0]
    assert otel.value("ragobs.retry.attempts", error__type="ConnectionResetError") == 3
    assert otel.count("ragobs.retry.delay") == 3
    assert otel.total("ragobs.retry.delay") == 7.0
    assert otel.value("ragobs.retry.exhausted", ragobs__retry__reason="attempts") == 1


async def test_success_after_failures_returns_the_value() -> None:
    clock = ManualClock()
    fn, times = failing(clock, [TimeoutError(), ConnectionError()], result=42)
    wrapped = retry(attempts=5, jitter=0, clock=clock)(fn)
    assert await drive(clock, wrapped()) == 42
    assert times == [0.0, 1.0, 3.0]


async def test_bare_decorator_uses_the_defaults() -> None:
    calls = 0

    @retry
    async def ok(x: int) -> int:
        nonlocal calls
        calls += 1
        return x * 2

    assert await ok(21) == 42
    assert calls == 1


async def test_max_delay_caps_the_backoff() -> None:
    clock = ManualClock()
    fn, times = failing(clock, [ConnectionError()] * 10)
    wrapped = retry(attempts=5, initial=1, multiplier=10, max_delay=5, jitter=0, clock=clock)(fn)
    with pytest.raises(ConnectionError):
        await drive(clock, wrapped())
    assert [b - a for a, b in itertools.pairwise(times)] == [1.0, 5.0, 5.0, 5.0]


@pytest.mark.parametrize(("u", "factor"), [(0.0, 0.75), (0.5, 1.0), (0.999, 1.2495)])
async def test_jitter_scales_each_wait_within_bounds(u: float, factor: float) -> None:
    clock = ManualClock()
    fn, times = failing(clock, [ConnectionError()] * 10)
    wrapped = retry(jitter=0.25, rng=lambda: u, clock=clock)(fn)
    with pytest.raises(ConnectionError):
        await drive(clock, wrapped())
    waits = [b - a for a, b in itertools.pairwise(times)]
    assert waits == pytest.approx([1 * factor, 2 * factor, 4 * factor])


async def test_jitter_draws_stay_in_range_and_under_max_delay() -> None:
    clock = ManualClock()
    fn, times = failing(clock, [ConnectionError()] * 100)
    rng = random.Random(7)
    wrapped = retry(attempts=30, jitter=1.0, max_delay=8, rng=rng.random, clock=clock)(fn)
    with pytest.raises(ConnectionError):
        await drive(clock, wrapped(), seconds=10_000)
    waits = [b - a for a, b in itertools.pairwise(times)]
    bases = [min(8.0, 2.0 ** i) for i in range(len(waits))]
    assert len(waits) == 29
    assert all(0 <= w <= b * 2 and w <= 8.0 for w, b in zip(waits, bases, strict=True))
    assert len({round(w, 6) for w in waits}) > 20  # actually jittered


# --- what is retried ---------------------------------------------------------


@pytest.mark.parametrize("exc", [
    ConnectionResetError(), ConnectionRefusedError(), BrokenPipeError(), TimeoutError(),
    TimeoutError(), StreamTimeout("idle", 1, 1),
    OSError(errno.ENETUNREACH, "network unreachable"),
    socket.gaierror(socket.EAI_AGAIN, "try again"),
    HTTPError(429), HTTPError(500), HTTPError(503), APIStatusError(502),
    aiohttp.ClientConnectionError("down"), aiohttp.ServerDisconnectedError(),
    aiohttp.ClientResponseError(None, (), status=503),  # type: ignore[arg-type]
])
def test_retryable_by_default(exc: BaseException) -> None:
    assert is_retryable(exc)


@pytest.mark.parametrize("exc", [
    ValueError("bad"), KeyError("k"), HTTPError(400), HTTPError(404), APIStatusError(401),
    OSError(errno.ENOENT, "no such file"), socket.gaierror(socket.EAI_NONAME, "unknown"),
    asyncio.CancelledError(), KeyboardInterrupt(), SystemExit(),
    aiohttp.ClientResponseError(None, (), status=400),  # type: ignore[arg-type]
])
def test_not_retryable_by_default(exc: BaseException) -> None:
    assert not is_retryable(exc)


async def test_non_retryable_error_is_raised_at_once_without_reports(otel: Any) -> None:
    clock = ManualClock()
    fn, times = failing(clock, [ValueError("bad input")])
    events: list[Event] = []
    add_hook(events.append)
    try:
        with pytest.raises(ValueError, match="bad input") as info:
            await drive(clock, retry(clock=clock, telemetry=otel.telemetry)(fn)())
    finally:
        remove_hook(events.append)
    assert times == [0.0]
    assert events == []
    assert not hasattr(info.value, "__notes__")
    assert otel.value("ragobs.retry.exhausted") == 0


@pytest.mark.parametrize("on", [KeyError, (KeyError, IndexError),
                                lambda e: isinstance(e, KeyError)])
async def test_on_replaces_the_default_filter(on: Any) -> None:
    clock = ManualClock()
    fn, times = failing(clock, [KeyError("a"), KeyError("b")], result="done")
    assert await drive(clock, retry(on=on, jitter=0, clock=clock)(fn)()) == "done"
    assert times == [0.0, 1.0, 3.0]
    fn, times = failing(clock, [ConnectionError()])
    with pytest.raises(ConnectionError):
        await drive(clock, retry(on=on, clock=clock)(fn)())
    assert len(times) == 1


async def test_cancelled_error_is_never_retried_even_when_asked() -> None:
    clock = ManualClock()
    fn, times = failing(clock, [asyncio.CancelledError(), KeyboardInterrupt()])
    wrapped = retry(on=BaseException, clock=clock)(fn)
    with pytest.raises(asyncio.CancelledError):
        await wrapped()
    assert len(times) == 1
    with pytest.raises(KeyboardInterrupt):
        await wrapped()
    assert len(times) == 2


async def test_cancelling_during_the_backoff_stops_retrying() -> None:
    clock = ManualClock()
    fn, times = failing(clock, [ConnectionError()] * 10)
    task = asyncio.ensure_future(retry(jitter=0, clock=clock)(fn)())
    await clock.advance(0.5)
    assert times == [0.0] and clock.sleepers == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await clock.advance(100)
    assert times == [0.0]
    assert clock.sleepers == 0


# --- Retry-After ---------------------------------------------------------------


@pytest.mark.parametrize(("exc", "wait"), [
    (HTTPError(429, retry_after=10), 10.0),
    (HTTPError(429, retry_after="7"), 7.0),
    (HTTPError(503, headers={"Retry-After": "12"}), 12.0),
    (HTTPError(503, headers={"retry-after": "3.5"}), 3.5),
    (HTTPError(503, headers={"RETRY-AFTER": "9"}), 9.0),
    (APIStatusError(429, {"retry-after-ms": "2500"}), 2.5),
    (APIStatusError(429, {"Retry-After": "6"}), 6.0),
    (HTTPError(429, retry_after=0.2), 1.0),  # shorter than the backoff: backoff wins
    (HTTPError(429, headers={"Retry-After": "soon"}), 1.0),  # unparseable: ignored
])
async def test_retry_after_is_a_floor_on_the_wait(exc: BaseException, wait: float,
                                                  otel: Any) -> None:
    clock = ManualClock()
    fn, times = failing(clock, [exc], result="ok")
    with otel.tracer_provider.get_tracer("t").start_as_current_span("req"):
        result = await drive(clock, retry(jitter=0, clock=clock, telemetry=otel.telemetry)(fn)())
    assert result == "ok"
    assert times == [0.0, wait]
    (event,) = otel.spans()[0].events
    assert event.attributes["retry.delay_s"] == wait


async def test_aiohttp_response_error_headers_are_read() -> None:
    clock = ManualClock()
    exc = aiohttp.ClientResponseError(None, (), status=429,  # type: ignore[arg-type]
                                      headers={"Retry-After": "20"})  # type: ignore[arg-type]
    fn, times = failing(clock, [exc])
    assert await drive(clock, retry(jitter=0, clock=clock)(fn)()) == "ok"
    assert times == [0.0, 20.0]


def test_retry_after_http_date_is_parsed_against_the_wall_clock() -> None:
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 42, usegmt=True)
    assert _retry_after(HTTPError(503, headers={"Retry-After": date}), lambda: now) == 42.0
    past = email.utils.formatdate(now - 100, usegmt=True)
    assert _retry_after(HTTPError(503, headers={"Retry-After": past}), lambda: now) == 0.0
    assert _retry_after(HTTPError(503, retry_after=-5), lambda: now) is None
    assert _retry_after(ValueError(), lambda: now) is None


async def test_retry_after_http_date_end_to_end() -> None:
    clock = ManualClock()
    date = email.utils.formatdate(time.time() + 30, usegmt=True)
    fn, times = failing(clock, [HTTPError(503, headers={"Retry-After": date})])
    assert await drive(clock, retry(jitter=0, clock=clock)(fn)()) == "ok"
    assert 28.0 <= times[1] <= 30.0  # the date has one-second resolution


# --- deadline --------------------------------------------------------------------


async def test_deadline_gives_up_when_the_next_wait_would_cross_it(otel: Any) -> None:
    clock = ManualClock()
    fn, times = failing(clock, [ConnectionError()] * 20)
    wrapped = retry(attempts=10, deadline=5, jitter=0, clock=clock, telemetry=otel.telemetry)(fn)
    task = asyncio.ensure_future(wrapped())
    await clock.advance(3)
    assert task.done()  # gave up at t=3: waiting 4 s more would end at 7 > 5
    with pytest.raises(ConnectionError) as info:
        task.result()
    assert times == [0.0, 1.0, 3.0]
    assert "(deadline)" in info.value.__notes__[0]
    assert otel.value("ragobs.retry.exhausted", ragobs__retry__reason="deadline") == 1


async def test_deadline_counts_the_time_attempts_take() -> None:
    clock = ManualClock()
    times: list[float] = []

    async def slow() -> None:
        times.append(clock.now())
        await clock.sleep(2)
        raise ConnectionError

    wrapped = retry(attempts=10, deadline=6, jitter=0, clock=clock)(slow)
    with pytest.raises(ConnectionError):
        await drive(clock, wrapped())
    # attempt 1: 0-2, wait 1, attempt 2: 3-5, next wait 2 would end at 7 > 6
    assert times == [0.0, 3.0]
    assert clock.now() == 1000.0


async def test_retry_after_beyond_the_deadline_gives_up_at_once() -> None:
    clock = ManualClock()
    fn, times = failing(clock, [HTTPError(429, retry_after=60)])
    task = asyncio.ensure_future(retry(deadline=30, clock=clock)(fn)())
    await clock.advance(0)
    with pytest.raises(HTTPError):
        task.result()
    assert times == [0.0]


# --- budget ----------------------------------------------------------------------


async def test_budget_limits_retries_under_a_burst_of_failures(otel: Any) -> None:
    clock = ManualClock()
    budget = RetryBudget(ratio=0.2, min_per_second=0, window=10, clock=clock)
    calls = 0

    @retry(attempts=4, jitter=0, budget=budget, clock=clock, telemetry=otel.telemetry)
    async def flaky() -> None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)
        raise HTTPError(503)

    results = await drive(clock, asyncio.gather(*(flaky() for _ in range(100)),
                                                return_exceptions=True), seconds=5)
    assert all(isinstance(r, HTTPError) for r in results)
    assert calls == 120  # 100 first attempts + 20 % of them retried, once
    assert budget.snapshot() == (100, 20)
    assert otel.value("ragobs.retry.attempts", error__type="503") == 20
    assert otel.value("ragobs.retry.exhausted", ragobs__retry__reason="budget") == 100


async def test_budget_floor_allows_retries_when_traffic_is_low() -> None:
    clock = ManualClock()
    budget = RetryBudget(ratio=0.0, min_per_second=0.3, window=10, clock=clock)
    fn, times = failing(clock, [ConnectionError()] * 10)
    with pytest.raises(ConnectionError):
        await drive(clock, retry(attempts=10, jitter=0, initial=0.1, multiplier=1,
                                 budget=budget, clock=clock)(fn)())
    assert len(times) == 4  # the floor: 0.3/s x 10 s = 3 retries


async def test_budget_window_slides() -> None:
    clock = ManualClock()
    budget = RetryBudget(ratio=0.5, min_per_second=0, window=10, clock=clock)
    budget.record_call()
    budget.record_call()
    assert budget.try_retry()
    assert not budget.try_retry()
    await clock.advance(9.9)
    assert not budget.try_retry()
    await clock.advance(0.2)  # the first slot has left the window
    assert budget.snapshot() == (0, 0)
    assert not budget.try_retry()
    budget.record_call()
    budget.record_call()
    assert budget.try_retry()


class StepClock:
    """A clock the test sets by hand (RetryBudget only reads now())."""

    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        raise AssertionError("not used")

    def call_at(self, when: float, callback: Callable[[], object]) -> Any:
        raise AssertionError("not used")


@settings(max_examples=200, deadline=None)
@given(ratio=st.sampled_from([0.0, 0.1, 0.2, 0.5, 1.0]),
       floor=st.sampled_from([0.0, 0.1, 1.0]),
       ops=st.lists(st.tuples(st.floats(0, 3, allow_nan=False), st.booleans()),
                    max_size=300))
def test_budget_grants_exactly_what_its_guarantee_allows(
        ratio: float, floor: float, ops: list[tuple[float, bool]]) -> None:
    clock = StepClock()
    budget = RetryBudget(ratio=ratio, min_per_second=floor, window=10, clock=clock)
    calls: list[int] = []  # slot epochs (window / 10 = 1 s) of each call and retry
    retries: list[int] = []
    for dt, is_retry in ops:
        clock.t += dt
        epoch = int(clock.t // 1.0)
        if not is_retry:
            budget.record_call()
            calls.append(epoch)
            continue
        in_window = sum(1 for e in calls if e > epoch - 10)
        spent = sum(1 for e in retries if e > epoch - 10)
        allowed = spent + 1 <= ratio * in_window + floor * 10 + 1e-9
        assert budget.try_retry() is allowed
        if allowed:
            retries.append(epoch)
        assert budget.snapshot() == (in_window, spent + allowed)


# --- streams ---------------------------------------------------------------------


class Source:
    """An async iterator yielding ``chunks``, raising ``error`` after ``fail_after``
    of them; records whether it was closed."""

    def __init__(self, chunks: list[str], error: BaseException | None = None,
                 fail_after: int | None = None) -> None:
        self.chunks = list(chunks)
        self.error = error
        self.fail_after = fail_after
        self.sent = 0
        self.closed = False

    def __aiter__(self) -> Source:
        return self

    async def __anext__(self) -> str:
        await asyncio.sleep(0)
        if self.error is not None and self.fail_after == self.sent:
            raise self.error
        if self.sent >= len(self.chunks):
            raise StopAsyncIteration
        self.sent += 1
        return self.chunks[self.sent - 1]

    async def aclose(self) -> None:
        self.closed = True


async def test_stream_failing_before_the_first_chunk_is_reopened(otel: Any) -> None:
    clock = ManualClock()
    sources = [Source([], ConnectionError("no route"), fail_after=0),
               Source([], HTTPError(503), fail_after=0),
               Source(["a", "b", "c"])]

    async def consume() -> list[str]:
        it = sources.copy()
        return [c async for c in retry_stream(lambda: it.pop(0), jitter=0, clock=clock,
                                              name="llm", telemetry=otel.telemetry)]

    assert await drive(clock, consume()) == ["a", "b", "c"]
    assert clock.now() == 1000.0
    assert [s.closed for s in sources] == [True, True, False]
    assert otel.value("ragobs.retry.attempts", ragobs__name="llm") == 2


async def test_stream_is_never_restarted_once_a_chunk_was_yielded(otel: Any) -> None:
    clock = ManualClock()
    opened = 0
    error = ConnectionResetError("mid-stream")

    @retry(jitter=0, clock=clock, telemetry=otel.telemetry)
    async def answer(q: str) -> AsyncIterator[str]:
        nonlocal opened
        opened += 1
        yield f"{q}:1"
        yield f"{q}:2"
        raise error

    got: list[str] = []
    events: list[Event] = []
    add_hook(events.append)
    try:
        with otel.tracer_provider.get_tracer("t").start_as_current_span("req"):
            with pytest.raises(ConnectionResetError) as info:
                async for chunk in answer("q"):
                    got.append(chunk)
    finally:
        remove_hook(events.append)
    assert info.value is error
    assert got == ["q:1", "q:2"]  # nothing repeated
    assert opened == 1
    assert [(e.kind, e.attributes["retry.reason"]) for e in events] == [
        ("retry.exhausted", "output_started")]
    (span,) = otel.spans()
    assert [e.name for e in span.events] == ["retry.exhausted"]
    assert otel.value("ragobs.retry.exhausted", ragobs__retry__reason="output_started") == 1
    assert otel.value("ragobs.retry.attempts") == 0


async def test_stream_non_retryable_mid_stream_error_is_not_reported() -> None:
    events: list[Event] = []
    add_hook(events.append)
    try:
        with pytest.raises(ValueError):
            async for _ in retry_stream(lambda: Source(["a"], ValueError(), fail_after=1)):
                pass
    finally:
        remove_hook(events.append)
    assert events == []


async def test_stream_factory_may_be_async() -> None:
    clock = ManualClock()
    attempts = 0

    async def create() -> Source:  # like `await client.chat.completions.create(stream=True)`
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise HTTPError(429, retry_after=3)
        return Source(["x", "y"])

    async def consume() -> list[str]:
        return [c async for c in retry_stream(create, clock=clock)]

    assert await drive(clock, consume()) == ["x", "y"]
    assert attempts == 2


async def test_stream_closing_early_closes_the_source() -> None:
    src = Source(["a", "b", "c"])
    stream = retry_stream(lambda: src)
    async for chunk in stream:
        assert chunk == "a"
        break
    await stream.aclose()
    assert src.closed


async def test_stream_cancelled_while_opening_closes_the_source() -> None:
    clock = ManualClock()
    src = Source(["a"])

    async def stalled() -> str:
        await clock.sleep(100)
        return "a"

    src.__anext__ = stalled  # type: ignore[method-assign]

    async def consume() -> list[str]:
        return [c async for c in retry_stream(lambda: src, clock=clock)]

    task = asyncio.ensure_future(consume())
    await clock.advance(1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert src.closed


async def test_stream_gives_up_after_its_attempts() -> None:
    clock = ManualClock()
    made: list[Source] = []

    def factory() -> Source:
        made.append(Source([], TimeoutError("slow"), fail_after=0))
        return made[-1]

    async def consume() -> list[str]:
        return [c async for c in retry_stream(factory, attempts=3, jitter=0, clock=clock)]

    with pytest.raises(TimeoutError, match="slow"):
        await drive(clock, consume())
    assert len(made) == 3


async def test_stream_first_token_timeout_is_retried() -> None:
    clock = ManualClock()
    attempt = 0

    async def llm() -> AsyncIterator[str]:
        nonlocal attempt
        attempt += 1
        await clock.sleep(10 if attempt == 1 else 0.5)
        yield "hello"

    async def consume() -> list[str]:
        stream = retry_stream(lambda: stream_timeout(llm(), first_token=2, clock=clock),
                              jitter=0, clock=clock)
        return [c async for c in stream]

    assert await drive(clock, consume()) == ["hello"]
    assert attempt == 2


# --- reporting ---------------------------------------------------------------------


async def test_retry_events_on_the_span_in_the_log_and_to_hooks(
        otel: Any, caplog: pytest.LogCaptureFixture) -> None:
    clock = ManualClock()
    fn, _ = failing(clock, [HTTPError(503), HTTPError(503)])
    wrapped = retry(attempts=2, jitter=0, name="provider", clock=clock,
                    telemetry=otel.telemetry)(fn)
    events: list[Event] = []
    add_hook(events.append)
    caplog.set_level(logging.INFO, logger="ragobs")
    try:
        with otel.tracer_provider.get_tracer("t").start_as_current_span("req") as span:
            trace_id = format(span.get_span_context().trace_id, "032x")
            with pytest.raises(HTTPError):
                await drive(clock, wrapped())
    finally:
        remove_hook(events.append)
    (finished,) = otel.spans()
    retry_event, gave_up = finished.events
    assert retry_event.name == "retry"
    assert dict(retry_event.attributes) == {
        "ragobs.name": "provider", "retry.attempt": 2, "retry.delay_s": 1.0,
        "error.type": "503"}
    assert gave_up.name == "retry.exhausted"
    assert gave_up.attributes["retry.reason"] == "attempts"
    assert gave_up.attributes["retry.attempts"] == 2
    assert [e.kind for e in events] == ["retry", "retry.exhausted"]
    assert all(e.trace_id == trace_id and isinstance(e.error, HTTPError) for e in events)
    records = [r for r in caplog.records if r.name == "ragobs"]
    assert len(records) == 2 and all(r.levelno == logging.WARNING for r in records)
    assert all(f"trace_id={trace_id}" in r.getMessage() for r in records)
    assert otel.value("ragobs.retry.attempts", ragobs__name="provider", error__type="503") == 1
    assert otel.value("ragobs.retry.exhausted", ragobs__name="provider", error__type="503",
                      ragobs__retry__reason="attempts") == 1


async def test_default_name_is_the_qualified_name(otel: Any) -> None:
    clock = ManualClock()
    fn, _ = failing(clock, [ConnectionError()])
    await drive(clock, retry(clock=clock, telemetry=otel.telemetry)(fn)())
    assert otel.value("ragobs.retry.attempts", ragobs__name=fn.__qualname__) == 1


def test_decorated_function_keeps_name_doc_and_signature() -> None:
    async def fetch(url: str, *, retries: int = 1) -> bytes:
        """Fetch a URL."""
        return b""

    async def chunks(n: int) -> AsyncIterator[str]:
        """Some chunks."""
        yield "x"

    for fn in (fetch, chunks):
        wrapped = retry(attempts=2)(fn)
        assert wrapped.__name__ == fn.__name__
        assert wrapped.__doc__ == fn.__doc__
        assert inspect.signature(wrapped) == inspect.signature(fn)
    assert inspect.iscoroutinefunction(retry(fetch))


# --- arguments -------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "error", "text"), [
    ({"attempts": 0}, ValueError, "attempts must be an int >= 1"),
    ({"attempts": -3}, ValueError, "attempts must be an int >= 1"),
    ({"attempts": 2.5}, TypeError, "attempts must be an int >= 1"),
    ({"attempts": True}, TypeError, "attempts must be an int >= 1"),
    ({"initial": 0}, ValueError, "initial must be a number > 0"),
    ({"initial": -1}, ValueError, "initial must be a number > 0"),
    ({"initial": float("nan")}, ValueError, "initial must be a number > 0"),
    ({"initial": "1"}, TypeError, "initial must be a number > 0"),
    ({"multiplier": 0.5}, ValueError, "multiplier must be a number >= 1"),
    ({"max_delay": 0}, ValueError, "max_delay must be a number > 0"),
    ({"max_delay": 0.5}, ValueError, r"max_delay must be >= initial \(1\)"),
    ({"jitter": -0.1}, ValueError, r"jitter must be a number in \[0, 1\]"),
    ({"jitter": 1.5}, ValueError, r"jitter must be a number in \[0, 1\]"),
    ({"deadline": 0}, ValueError, "deadline must be a number > 0"),
    ({"deadline": -5}, ValueError, "deadline must be a number > 0"),
    ({"deadline": float("inf")}, ValueError, "deadline must be a number > 0"),
    ({"on": "ConnectionError"}, TypeError, "on must be an exception type"),
    ({"on": (ValueError, 3)}, TypeError, "on must be an exception type"),
    ({"on": ()}, TypeError, "on must be an exception type"),
    ({"on": int}, TypeError, "on must be an exception type"),
    ({"budget": 0.2}, TypeError, "budget must be a RetryBudget"),
    ({"name": ""}, ValueError, "name must be a non-empty str"),
    ({"clock": object()}, TypeError, "clock must be a ragobs.clock.Clock"),
    ({"telemetry": "otel"}, TypeError, "telemetry must be a ragobs.Telemetry"),
    ({"rng": 0.5}, TypeError, "rng must be a callable"),
])
def test_bad_arguments_name_the_argument_and_range(kwargs: dict[str, Any],
                                                   error: type[Exception], text: str) -> None:
    with pytest.raises(error, match=text):
        retry(**kwargs)
    with pytest.raises(error, match=text):
        retry_stream(lambda: Source([]), **kwargs)


@pytest.mark.parametrize(("kwargs", "text"), [
    ({"ratio": -0.1}, "ratio must be a number >= 0"),
    ({"min_per_second": -1}, "min_per_second must be a number >= 0"),
    ({"window": 0}, "window must be a number > 0"),
    ({"ratio": "0.2"}, "ratio must be a number >= 0"),
])
def test_bad_budget_arguments(kwargs: dict[str, Any], text: str) -> None:
    with pytest.raises((TypeError, ValueError), match=text):
        RetryBudget(**kwargs)


def test_retry_rejects_what_it_cannot_wrap() -> None:
    with pytest.raises(TypeError, match="retry decorates functions and generator functions"):
        retry(123)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="factory must be a zero-argument callable"):
        retry_stream([1, 2])  # type: ignore[arg-type]


# --- real time -------------------------------------------------------------------


@pytest.mark.realtime
async def test_real_clock_retry() -> None:
    fn_calls: list[float] = []

    @retry(attempts=3, initial=0.02, jitter=0)
    async def flaky() -> str:
        fn_calls.append(time.monotonic())
        if len(fn_calls) < 3:
            raise ConnectionError
        return "ok"

    t0 = time.monotonic()
    assert await flaky() == "ok"
    elapsed = time.monotonic() - t0
    assert 0.06 <= elapsed < 1.0
    assert fn_calls[1] - fn_calls[0] >= 0.02


# --- synchronous functions and iterators ---------------------------------------------


def test_sync_function_is_retried_on_the_injected_clock(otel: Any) -> None:
    clock = ManualClock()
    calls: list[float] = []

    @retry(attempts=3, initial=1.0, jitter=0.0, clock=clock, telemetry=otel.telemetry,
           name="sync")
    def flaky() -> str:
        calls.append(clock.now())
        if len(calls) < 3:
            raise ConnectionResetError("reset")
        return "ok"

    assert flaky() == "ok"
    assert calls == [0.0, 1.0, 3.0]  # waits of 1 s then 2 s, on the clock
    assert otel.value("ragobs.retry.attempts", ragobs__name="sync") == 2


def test_sync_function_gives_up_with_the_last_error(otel: Any) -> None:
    @retry(attempts=2, initial=0.5, jitter=0.0, clock=ManualClock(), telemetry=otel.telemetry)
    def always() -> None:
        raise ConnectionResetError("down")

    with pytest.raises(ConnectionResetError) as caught:
        always()
    assert "not retried (attempts)" in caught.value.__notes__[0]


def test_sync_generator_is_reopened_only_before_output(otel: Any) -> None:
    opened: list[int] = []

    @retry(attempts=3, initial=0.1, jitter=0.0, clock=ManualClock(), telemetry=otel.telemetry)
    def words() -> Iterator[str]:
        opened.append(1)
        yield ""  # carries no output: held back, so a failure now is still retried
        if len(opened) == 1:
            raise ConnectionResetError("before output")
        yield "a"
        if len(opened) == 2:
            raise ConnectionResetError("after output")

    with pytest.raises(ConnectionResetError, match="after output"):
        assert list(words()) == ["", "a"]
    assert len(opened) == 2
    assert otel.value("ragobs.retry.exhausted", ragobs__retry__reason="output_started") == 1
