"""fallback / fallback_stream: friendly answers for failed requests, isolated per
request, reported with the error; cancellation and early close never swallowed."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from ragobs._events import Event, add_hook, remove_hook
from ragobs.resilience._fallback import DEFAULT_FALLBACK_MESSAGE, fallback, fallback_stream

MESSAGE = "I encountered an error. Please try rephrasing your question."


class ProviderError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"provider returned {status}")
        self.status = status


def test_default_message_is_the_seed_text() -> None:
    assert DEFAULT_FALLBACK_MESSAGE == MESSAGE


async def test_coroutine_failure_returns_the_message_and_success_passes(otel: Any) -> None:
    @fallback(telemetry=otel.telemetry)
    async def answer(q: str) -> str:
        """Answers."""
        if q == "bad":
            raise ValueError("boom")
        return f"answer to {q}"

    assert await answer("good") == "answer to good"
    assert await answer("bad") == MESSAGE
    assert answer.__name__ == "answer" and answer.__doc__ == "Answers."
    assert list(inspect.signature(answer).parameters) == ["q"]
    assert otel.value("ragobs.fallbacks", error__type="ValueError") == 1


async def test_bare_decorator() -> None:
    @fallback
    async def broken() -> str:
        raise RuntimeError

    assert await broken() == MESSAGE


async def test_200_concurrent_requests_a_third_failing_are_isolated(otel: Any) -> None:
    @fallback(name="agent", telemetry=otel.telemetry)
    async def answer(i: int) -> str:
        for _ in range(i % 7):  # interleave the requests
            await asyncio.sleep(0)
        if i % 3 == 0:
            raise ProviderError(503) if i % 2 else ConnectionResetError(f"reset {i}")
        return f"answer {i}"

    @fallback(name="agent-stream", telemetry=otel.telemetry)
    async def stream(i: int) -> AsyncIterator[str]:
        for j in range(3):
            await asyncio.sleep(0)
            if i % 3 == 0 and j == i % 2:
                raise ProviderError(429) if i % 2 else TimeoutError()
            yield f"{i}.{j} "

    async def consume(i: int) -> str:
        return "".join([c async for c in stream(i)])

    results = await asyncio.gather(*(answer(i) for i in range(200)))
    texts = await asyncio.gather(*(consume(i) for i in range(200)))
    for i, (result, text) in enumerate(zip(results, texts, strict=True)):
        if i % 3 == 0:
            assert result == MESSAGE
            # partial output (one chunk when i is odd) is kept, the message appended
            assert text == ("" if i % 2 == 0 else f"{i}.0 ") + MESSAGE
        else:
            assert result == f"answer {i}"
            assert text == f"{i}.0 {i}.1 {i}.2 "
    failing = [i for i in range(200) if i % 3 == 0]
    odd = sum(1 for i in failing if i % 2)
    assert otel.value("ragobs.fallbacks", ragobs__name="agent", error__type="503") == odd
    assert otel.value("ragobs.fallbacks", ragobs__name="agent",
                      error__type="ConnectionResetError") == len(failing) - odd
    assert otel.value("ragobs.fallbacks", ragobs__name="agent-stream", error__type="429") == odd
    assert otel.value("ragobs.fallbacks", ragobs__name="agent-stream",
                      error__type="TimeoutError") == len(failing) - odd
    assert otel.value("ragobs.fallbacks") == 2 * len(failing) == 134


async def test_stream_fallback_is_the_last_chunk(otel: Any) -> None:
    events: list[Event] = []

    async def fails_after(n: int) -> AsyncIterator[str]:
        for i in range(n):
            yield f"t{i}"
        raise ProviderError(500)

    add_hook(events.append)
    try:
        before = [c async for c in fallback_stream(fails_after(0), telemetry=otel.telemetry)]
        partial = [c async for c in fallback_stream(fails_after(2), telemetry=otel.telemetry)]
    finally:
        remove_hook(events.append)
    assert before == [MESSAGE]
    assert partial == ["t0", "t1", MESSAGE]
    assert [e.attributes["fallback.partial"] for e in events] == [False, True]
    assert all(isinstance(e.error, ProviderError) for e in events)
    assert otel.value("ragobs.fallbacks", error__type="500") == 2


async def test_fallback_is_reported_on_the_span_and_logged_with_the_trace_id(
        otel: Any, caplog: pytest.LogCaptureFixture) -> None:
    @fallback(name="chat", telemetry=otel.telemetry)
    async def chat() -> str:
        raise ProviderError(502)

    caplog.set_level(logging.INFO, logger="ragobs")
    with otel.tracer_provider.get_tracer("t").start_as_current_span("req") as span:
        trace_id = format(span.get_span_context().trace_id, "032x")
        assert await chat() == MESSAGE
    (finished,) = otel.spans()
    (event,) = finished.events
    assert event.name == "fallback"
    assert event.attributes["ragobs.name"] == "chat"
    assert event.attributes["error.type"] == "502"  # the HTTP status, as on the metrics
    (record,) = [r for r in caplog.records if r.name == "ragobs"]
    assert record.levelno == logging.ERROR
    assert record.trace_id == trace_id  # type: ignore[attr-defined]
    assert f"trace_id={trace_id}" in record.getMessage()
    assert "ProviderError: provider returned 502" in record.getMessage()


async def test_message_may_be_a_callable_of_the_exception() -> None:
    @fallback(message=lambda exc: f"sorry ({type(exc).__name__})")
    async def fails() -> str:
        raise KeyError("k")

    @fallback(message=lambda exc: 1 / 0)
    async def fails_twice() -> str:
        raise KeyError("k")

    assert await fails() == "sorry (KeyError)"
    assert await fails_twice() == MESSAGE  # a broken message callable falls back too


async def test_on_restricts_what_is_recovered() -> None:
    @fallback(on=(ConnectionError, TimeoutError))
    async def call(exc: Exception) -> str:
        raise exc

    @fallback(on=lambda e: getattr(e, "status", 0) >= 500)
    async def stream(exc: Exception) -> AsyncIterator[str]:
        yield "x"
        raise exc

    assert await call(TimeoutError()) == MESSAGE
    with pytest.raises(ValueError, match="not ours"):
        await call(ValueError("not ours"))
    assert [c async for c in stream(ProviderError(503))] == ["x", MESSAGE]
    with pytest.raises(ProviderError):
        async for _ in stream(ProviderError(404)):
            pass


async def test_cancellation_is_never_swallowed(otel: Any) -> None:
    started = asyncio.Event()

    @fallback(telemetry=otel.telemetry)
    async def waits() -> str:
        started.set()
        await asyncio.sleep(60)
        return "never"

    @fallback(telemetry=otel.telemetry)
    async def stream() -> AsyncIterator[str]:
        yield "a"
        started.set()
        await asyncio.sleep(60)
        yield "b"

    async def consume() -> list[str]:
        return [c async for c in stream()]

    for make in (waits, consume):
        started.clear()
        task = asyncio.ensure_future(make())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    @fallback(telemetry=otel.telemetry)
    async def interrupted() -> str:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        await interrupted()
    assert otel.value("ragobs.fallbacks") == 0


async def test_closing_the_stream_early_closes_the_source_without_fallback(otel: Any) -> None:
    closed = False

    async def source() -> AsyncIterator[str]:
        nonlocal closed
        try:
            for i in range(10):
                yield str(i)
        finally:
            closed = True

    stream = fallback_stream(source(), telemetry=otel.telemetry)
    async for _ in stream:
        break
    await stream.aclose()
    assert closed
    assert otel.value("ragobs.fallbacks") == 0


@pytest.mark.parametrize(("kwargs", "error", "text"), [
    ({"message": 3}, TypeError, "message must be a str or a callable"),
    ({"message": None}, TypeError, "message must be a str or a callable"),
    ({"on": "ValueError"}, TypeError, "on must be an exception type"),
    ({"level": logging.INFO}, ValueError, "level must be logging.WARNING"),
    ({"name": 5}, ValueError, "name must be a non-empty str"),
    ({"telemetry": object()}, TypeError, "telemetry must be a ragobs.Telemetry"),
])
def test_bad_arguments(kwargs: dict[str, Any], error: type[Exception], text: str) -> None:
    with pytest.raises(error, match=text):
        fallback(**kwargs)


def test_wrong_things_to_wrap() -> None:
    with pytest.raises(TypeError, match="functions and generator functions"):
        fallback(123)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="stream must be an async iterable"):
        fallback_stream(["a"])  # type: ignore[arg-type]


def test_sync_function_and_generator_recover(otel: Any) -> None:
    @fallback(telemetry=otel.telemetry, message="sorry")
    def answer() -> str:
        raise ConnectionResetError("down")

    @fallback(telemetry=otel.telemetry, message="sorry")
    def words() -> Iterator[str]:
        yield "a"
        raise ConnectionResetError("cut")

    assert answer() == "sorry"
    assert list(words()) == ["a", "sorry"]
    assert otel.value("ragobs.fallbacks", error__type="ConnectionResetError") == 2
