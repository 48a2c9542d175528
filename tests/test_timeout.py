"""timeout / with_timeout / stream_timeout: each deadline fires with the right kind and
elapsed time, the source is closed, and outside cancellation stays CancelledError."""

from __future__ import annotations

import asyncio
import inspect
import pickle
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from ragobs._events import Event, add_hook, remove_hook
from ragobs.clock import Cancellable, ManualClock
from ragobs.errors import RagobsError, StreamTimeout
from ragobs.resilience._timeout import stream_timeout, timeout, with_timeout


async def drive(clock: ManualClock, aw: Awaitable[Any], seconds: float) -> asyncio.Task[Any]:
    task = asyncio.ensure_future(aw)
    await clock.advance(seconds)
    return task


class Source:
    """An async iterator producing ``(delay, chunk)`` on a clock; records aclose()."""

    def __init__(self, clock: ManualClock, steps: list[tuple[float, str]]) -> None:
        self.clock = clock
        self.steps = list(steps)
        self.closed_at: float | None = None
        self.cancelled = False

    def __aiter__(self) -> Source:
        return self

    async def __anext__(self) -> str:
        if not self.steps:
            raise StopAsyncIteration
        delay, chunk = self.steps.pop(0)
        try:
            await self.clock.sleep(delay)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        return chunk

    async def aclose(self) -> None:
        self.closed_at = self.clock.now()


async def collect(stream: AsyncIterator[str], out: list[str],
                  hold: Callable[[], Awaitable[None]] | None = None) -> None:
    async for chunk in stream:
        out.append(chunk)
        if hold is not None:
            await hold()


# --- the error -------------------------------------------------------------------


def test_stream_timeout_is_a_timeout_error_and_a_ragobs_error() -> None:
    err = StreamTimeout("idle", 5, 5.25)
    assert isinstance(err, TimeoutError) and isinstance(err, RagobsError)
    assert (err.kind, err.limit, err.elapsed) == ("idle", 5.0, 5.25)
    assert str(err) == "idle timeout: no next chunk after 5.250 s (limit 5 s)"
    assert str(StreamTimeout("first_token", 2, 2)) == \
        "first_token timeout: no first chunk after 2.000 s (limit 2 s)"
    assert str(StreamTimeout("total", 30, 30)) == \
        "total timeout: not finished after 30.000 s (limit 30 s)"
    copy = pickle.loads(pickle.dumps(err))
    assert (type(copy), copy.kind, copy.limit, copy.elapsed, str(copy)) == \
        (StreamTimeout, "idle", 5.0, 5.25, str(err))


@pytest.mark.parametrize(("args", "text"), [
    (("slow", 1, 1), "kind must be one of total, first_token, idle"),
    (("idle", -1, 1), "limit must be a finite number >= 0"),
    (("idle", 1, float("nan")), "elapsed must be a finite number >= 0"),
])
def test_stream_timeout_checks_its_fields(args: tuple[Any, ...], text: str) -> None:
    with pytest.raises(ValueError, match=text):
        StreamTimeout(*args)


# --- coroutines ------------------------------------------------------------------


async def test_with_timeout_fires_at_total_and_cancels_the_work(otel: Any) -> None:
    clock = ManualClock()
    cleaned_up_at: list[float] = []

    async def work() -> str:
        try:
            await clock.sleep(10)
            return "done"
        finally:
            cleaned_up_at.append(clock.now())

    task = await drive(clock, with_timeout(work(), total=2, clock=clock,
                                           telemetry=otel.telemetry), 1.9)
    assert not task.done()
    await clock.advance(0.1)
    with pytest.raises(StreamTimeout) as info:
        task.result()
    assert (info.value.kind, info.value.limit, info.value.elapsed) == ("total", 2.0, 2.0)
    assert isinstance(info.value.__cause__, asyncio.CancelledError)
    assert cleaned_up_at == [2.0]
    assert otel.value("ragobs.timeouts", ragobs__timeout__kind="total",
                      ragobs__name="test_with_timeout_fires_at_total_and_cancels_the_work."
                                   "<locals>.work") == 1


async def test_timeout_decorator_passes_results_and_leaves_no_timer() -> None:
    clock = ManualClock()

    @timeout(total=5, clock=clock)
    async def quick(x: int) -> int:
        """Doubles."""
        await clock.sleep(1)
        return 2 * x

    task = await drive(clock, quick(21), 1)
    assert task.result() == 42
    assert clock.sleepers == 0
    assert quick.__name__ == "quick" and quick.__doc__ == "Doubles."
    assert list(inspect.signature(quick).parameters) == ["x"]
    await clock.advance(10)  # the cancelled timer must not cancel anything later
    assert not asyncio.current_task().cancelling()  # type: ignore[union-attr]


async def test_timeout_decorator_raises_stream_timeout() -> None:
    clock = ManualClock()

    @timeout(total=3, clock=clock)
    async def slow() -> None:
        await clock.sleep(60)

    task = await drive(clock, slow(), 5)
    with pytest.raises(StreamTimeout, match="total timeout"):
        task.result()


async def test_outside_cancellation_of_a_timed_call_stays_cancelled_error(otel: Any) -> None:
    clock = ManualClock()
    task = await drive(clock, with_timeout(clock.sleep(10), total=5, clock=clock,
                                           telemetry=otel.telemetry), 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await clock.advance(10)
    assert otel.value("ragobs.timeouts") == 0


async def test_with_timeout_work_swallowing_the_cancel_returns_normally() -> None:
    clock = ManualClock()

    async def stubborn() -> str:
        try:
            await clock.sleep(10)
        except asyncio.CancelledError:
            return "finished anyway"
        return "on time"

    task = await drive(clock, with_timeout(stubborn(), total=1, clock=clock), 2)
    assert task.result() == "finished anyway"  # as asyncio.timeout: nothing to convert


# --- streams: each deadline ----------------------------------------------------


async def test_first_token_deadline(otel: Any) -> None:
    clock = ManualClock()
    src = Source(clock, [(1, ""), (5, "late")])  # an empty chunk is not the first token
    out: list[str] = []
    task = await drive(clock, collect(stream_timeout(src, first_token=2, total=10, clock=clock,
                                                     name="llm", telemetry=otel.telemetry),
                                      out), 3)
    with pytest.raises(StreamTimeout) as info:
        task.result()
    assert (info.value.kind, info.value.limit, info.value.elapsed) == ("first_token", 2.0, 2.0)
    assert out == [""]
    assert src.cancelled and src.closed_at == 2.0
    assert otel.value("ragobs.timeouts", ragobs__name="llm",
                      ragobs__timeout__kind="first_token") == 1


async def test_idle_deadline_measures_the_wait_for_the_next_chunk(otel: Any) -> None:
    clock = ManualClock()
    src = Source(clock, [(0.5, "a"), (0.5, "b"), (2.5, "c"), (10, "never")])
    out: list[str] = []
    task = await drive(clock, collect(stream_timeout(src, idle=3, clock=clock,
                                                     telemetry=otel.telemetry), out), 20)
    with pytest.raises(StreamTimeout) as info:
        task.result()
    # "c" arrived at 3.5, after a 2.5 s gap (< 3); the next wait began at 3.5
    assert (info.value.kind, info.value.limit, info.value.elapsed) == ("idle", 3.0, 3.0)
    assert out == ["a", "b", "c"]
    assert src.closed_at == 6.5
    assert otel.value("ragobs.timeouts", ragobs__timeout__kind="idle") == 1


async def test_idle_does_not_count_time_the_consumer_holds_a_chunk() -> None:
    clock = ManualClock()
    src = Source(clock, [(0.1, "a"), (0.1, "b"), (0.1, "c")])
    out: list[str] = []

    async def slow_consumer() -> None:
        await clock.sleep(10)

    task = await drive(clock, collect(stream_timeout(src, idle=1, clock=clock), out,
                                      slow_consumer), 100)
    task.result()
    assert out == ["a", "b", "c"]


async def test_idle_alone_waits_any_time_for_the_first_chunk() -> None:
    clock = ManualClock()
    src = Source(clock, [(50, "a"), (0.5, "b"), (5, "c")])
    out: list[str] = []
    task = await drive(clock, collect(stream_timeout(src, idle=1, clock=clock), out), 100)
    with pytest.raises(StreamTimeout) as info:
        task.result()
    assert info.value.kind == "idle"
    assert out == ["a", "b"]
    assert src.closed_at == 51.5


async def test_total_deadline_bounds_the_whole_stream(otel: Any) -> None:
    clock = ManualClock()
    src = Source(clock, [(1, str(i)) for i in range(100)])
    out: list[str] = []
    task = await drive(clock, collect(stream_timeout(src, total=3.5, idle=2, clock=clock,
                                                     telemetry=otel.telemetry), out), 10)
    with pytest.raises(StreamTimeout) as info:
        task.result()
    assert (info.value.kind, info.value.limit, info.value.elapsed) == ("total", 3.5, 3.5)
    assert out == ["0", "1", "2"]
    assert src.closed_at == 3.5
    assert otel.value("ragobs.timeouts", ragobs__timeout__kind="total") == 1
    assert otel.value("ragobs.timeouts", ragobs__timeout__kind="idle") == 0


async def test_total_expired_while_the_consumer_held_a_chunk() -> None:
    clock = ManualClock()
    src = Source(clock, [(0, "a"), (0, "b")])
    out: list[str] = []

    async def hold() -> None:
        await clock.sleep(5)

    task = await drive(clock, collect(stream_timeout(src, total=2, clock=clock), out, hold), 10)
    with pytest.raises(StreamTimeout) as info:
        task.result()
    assert (info.value.kind, info.value.elapsed) == ("total", 5.0)
    assert out == ["a"]
    assert src.closed_at == 5.0


async def test_equal_deadlines_report_the_more_specific_kind() -> None:
    clock = ManualClock()
    src = Source(clock, [(10, "a")])
    task = await drive(clock, collect(stream_timeout(src, total=2, first_token=2, clock=clock),
                                      []), 5)
    with pytest.raises(StreamTimeout) as info:
        task.result()
    assert info.value.kind == "first_token"


async def test_a_steady_stream_reuses_one_timer() -> None:
    armed: list[float] = []

    class CountingClock(ManualClock):
        def call_at(self, when: float, callback: Callable[[], object]) -> Cancellable:
            armed.append(when)
            return super().call_at(when, callback)

    clock = CountingClock()
    src = Source(clock, [(0.4, c) for c in "abcdefgh"])
    out: list[str] = []
    task = await drive(clock, collect(stream_timeout(src, first_token=1, idle=1, total=60,
                                                     clock=clock), out), 5)
    task.result()
    assert out == list("abcdefgh")
    # Armed for the first token (1.0); each firing finds the deadline moved on and
    # re-arms once for it, instead of one timer per chunk.
    assert armed == pytest.approx([1.0, 1.8, 2.6, 3.4])  # for 9 pulls
    assert clock.sleepers == 0
    assert src.closed_at is None  # exhausted, not closed early


async def test_an_earlier_deadline_replaces_the_timer() -> None:
    clock = ManualClock()
    src = Source(clock, [(0.1, "a"), (60, "b")])
    task = await drive(clock, collect(stream_timeout(src, first_token=30, idle=1, clock=clock),
                                      []), 5)
    with pytest.raises(StreamTimeout) as info:
        task.result()
    assert (info.value.kind, info.value.elapsed) == ("idle", 1.0)
    assert clock.now() == 5.0 and src.closed_at == 1.1


async def test_the_source_async_generator_is_closed_on_timeout() -> None:
    clock = ManualClock()
    finalised: list[float] = []

    async def gen() -> AsyncIterator[str]:
        try:
            yield "a"
            await clock.sleep(30)
            yield "b"
        finally:
            finalised.append(clock.now())

    out: list[str] = []
    task = await drive(clock, collect(stream_timeout(gen(), idle=4, clock=clock), out), 10)
    with pytest.raises(StreamTimeout):
        task.result()
    assert out == ["a"] and finalised == [4.0]


async def test_closing_the_wrapper_early_closes_the_source_and_its_timer() -> None:
    clock = ManualClock()
    src = Source(clock, [(0, "a"), (0, "b")])
    stream = stream_timeout(src, first_token=10, idle=1, clock=clock)
    async for _ in stream:
        assert clock.sleepers == 1
        break
    await stream.aclose()
    assert src.closed_at == 0.0
    assert clock.sleepers == 0


# --- streams: cancellation -----------------------------------------------------


async def test_outside_cancellation_of_a_timed_stream_stays_cancelled_error(otel: Any) -> None:
    clock = ManualClock()
    src = Source(clock, [(100, "a")])
    task = await drive(clock, collect(stream_timeout(src, first_token=10, clock=clock,
                                                     telemetry=otel.telemetry), []), 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert src.closed_at == 1.0
    await clock.advance(20)
    assert otel.value("ragobs.timeouts") == 0


async def test_cancellation_arriving_with_the_deadline_stays_cancelled_error() -> None:
    fire: list[Callable[[], object]] = []

    class Handle:
        def cancel(self) -> None:
            pass

    class TrapClock(ManualClock):
        """Keeps the deadline timers for the test to fire by hand."""

        def call_at(self, when: float, callback: Callable[[], object]) -> Cancellable:
            fire.append(callback)
            return Handle()

    clock = TrapClock()
    for aw in (lambda: collect(stream_timeout(Source(clock, [(100, "a")]), idle=5,
                                              first_token=5, clock=clock), []),
               lambda: with_timeout(clock.sleep(100), total=5, clock=clock)):
        fire.clear()
        task = await drive(clock, aw(), 10)
        assert not task.done()
        fire[-1]()  # the deadline fires...
        task.cancel()  # ...and the task is cancelled from outside in the same step
        with pytest.raises(asyncio.CancelledError):
            await task
        # alone, the same deadline is a timeout
        fire.clear()
        task = await drive(clock, aw(), 10)
        fire[-1]()
        with pytest.raises(StreamTimeout):
            await task


async def test_timeout_events_on_the_span_and_to_hooks(otel: Any) -> None:
    clock = ManualClock()
    events: list[Event] = []
    add_hook(events.append)
    try:
        with otel.tracer_provider.get_tracer("t").start_as_current_span("req"):
            task = await drive(clock, collect(stream_timeout(
                Source(clock, [(9, "a")]), first_token=1.5, name="gen", clock=clock,
                telemetry=otel.telemetry), []), 2)
            with pytest.raises(StreamTimeout):
                task.result()
    finally:
        remove_hook(events.append)
    (span,) = otel.spans()
    (event,) = span.events
    assert event.name == "timeout"
    assert dict(event.attributes) == {
        "ragobs.name": "gen", "ragobs.timeout.kind": "first_token", "timeout.limit_s": 1.5,
        "timeout.elapsed_s": 1.5, "error.type": "StreamTimeout"}
    (hooked,) = events
    assert hooked.kind == "timeout" and isinstance(hooked.error, StreamTimeout)


# --- decorator forms -----------------------------------------------------------


async def test_stream_timeout_and_timeout_decorate_async_generator_functions() -> None:
    clock = ManualClock()

    @stream_timeout(first_token=1, clock=clock)
    async def slow_start(n: int) -> AsyncIterator[int]:
        """Numbers."""
        await clock.sleep(2)
        yield n

    @timeout(total=1, clock=clock)
    async def endless() -> AsyncIterator[int]:
        while True:
            await clock.sleep(0.3)
            yield 1

    assert slow_start.__name__ == "slow_start" and slow_start.__doc__ == "Numbers."
    for gen, kind in ((slow_start(1), "first_token"), (endless(), "total")):
        task = await drive(clock, collect(gen, []), 5)  # type: ignore[arg-type]
        with pytest.raises(StreamTimeout) as info:
            task.result()
        assert info.value.kind == kind


# --- arguments -------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "error", "text"), [
    ({"total": 0}, ValueError, r"total must be a number > 0"),
    ({"total": -1}, ValueError, r"total must be a number > 0"),
    ({"first_token": float("nan")}, ValueError, r"first_token must be a number > 0"),
    ({"idle": float("inf")}, ValueError, r"idle must be a number > 0"),
    ({"idle": "5"}, TypeError, r"idle must be a number > 0"),
    ({"total": True}, TypeError, r"total must be a number > 0"),
    ({}, ValueError, "at least one of total, first_token, idle"),
    ({"idle": 1, "name": ""}, ValueError, "name must be a non-empty str"),
    ({"idle": 1, "clock": 3}, TypeError, "clock must be a ragobs.clock.Clock"),
])
def test_bad_stream_timeout_arguments(kwargs: dict[str, Any], error: type[Exception],
                                      text: str) -> None:
    with pytest.raises(error, match=text):
        stream_timeout(**kwargs)


@pytest.mark.parametrize(("total", "error"), [(0, ValueError), (-2, ValueError),
                                              (None, ValueError), ("3", TypeError)])
async def test_bad_total_for_coroutines(total: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match="total must be a number > 0") as caught:
        timeout(total=total)
    if total is not None:  # None is refused: the message must not offer it
        assert "or None" not in str(caught.value)
    coro = asyncio.sleep(0)
    with pytest.raises(error, match="total must be a number > 0"):
        await with_timeout(coro, total=total)
    assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED  # no "never awaited"


async def test_wrong_things_to_wrap() -> None:
    def sync() -> int:
        return 1

    async def agen() -> AsyncIterator[int]:
        yield 1

    with pytest.raises(TypeError, match="deadlines need async code"):
        timeout(total=1)(sync)
    with pytest.raises(TypeError, match="decorates coroutine functions"):
        timeout(total=1)(123)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="decorates async generator functions"):
        stream_timeout(idle=1)(sync)
    with pytest.raises(TypeError, match="set its own timeout"):
        stream_timeout([1, 2], idle=1)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="stream must be an async iterable"):
        stream_timeout(123, idle=1)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="takes an async iterable"):
        stream_timeout(agen, idle=1)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="aw must be awaitable"):
        await with_timeout(3, total=1)  # type: ignore[arg-type]


# --- real time -------------------------------------------------------------------


@pytest.mark.realtime
async def test_real_clock_total_deadline() -> None:
    t0 = time.monotonic()
    with pytest.raises(StreamTimeout) as info:
        await with_timeout(asyncio.sleep(5), total=0.05)
    assert 0.04 <= time.monotonic() - t0 < 1.0
    assert info.value.kind == "total" and 0.04 <= info.value.elapsed < 1.0


@pytest.mark.realtime
async def test_real_clock_idle_deadline() -> None:
    async def stalls() -> AsyncIterator[str]:
        yield "a"
        await asyncio.sleep(0.01)
        yield "b"
        await asyncio.sleep(5)
        yield "c"

    out: list[str] = []
    t0 = time.monotonic()
    with pytest.raises(StreamTimeout) as info:
        async for chunk in stream_timeout(stalls(), idle=0.05):
            out.append(chunk)
    assert out == ["a", "b"] and info.value.kind == "idle"
    assert time.monotonic() - t0 < 1.0
