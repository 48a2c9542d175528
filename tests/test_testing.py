"""ragobs.testing: what users' own tests get."""

from __future__ import annotations

import pytest

import ragobs
from ragobs.testing import ManualClock, recording_telemetry


async def test_a_recording_telemetry_shows_spans_and_points() -> None:
    rec = recording_telemetry()
    try:
        async def agent() -> object:
            yield "a"
            yield "b"

        async for _ in ragobs.observe_stream(agent(), model="m", telemetry=rec.telemetry):
            pass
        (span,) = rec.spans()
        assert span.name == "chat m"
        assert (span.attributes or {})["ragobs.outcome"] == "ok"
        assert sum(p.value for p in rec.points("ragobs.requests")) == 1
        assert sum(p.sum for p in rec.points("gen_ai.client.token.usage")) == 2
    finally:
        rec.shutdown()


async def test_manual_clock_drives_a_retry_without_sleeping() -> None:
    clock = ManualClock()
    rec = recording_telemetry()
    calls = 0

    @ragobs.retry(attempts=2, initial=5.0, jitter=0.0, clock=clock, telemetry=rec.telemetry)
    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionResetError
        return "ok"

    import asyncio

    task = asyncio.ensure_future(flaky())
    await clock.advance(5.0)
    assert await task == "ok"
    assert clock.now() == 5.0
    rec.shutdown()


def test_options_reach_the_telemetry() -> None:
    rec = recording_telemetry(capture_content=True)
    assert rec.telemetry.capture_content is True
    with pytest.raises(TypeError, match="capture_content must be a bool"):
        recording_telemetry(capture_content="yes")
    rec.shutdown()
