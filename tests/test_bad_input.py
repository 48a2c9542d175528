"""Bad input gets a clear error naming the argument and range, and never
breaks the exactly-once accounting of the requests around it."""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

import ragobs
from ragobs import ManualClock, RateLimiter, StreamingMetrics, Telemetry
from ragobs._runtime import Runtime
from ragobs._stream import instrument_stream, observe, observe_stream
from tests.conftest import OTelHarness


async def _chunks(n: int) -> AsyncIterator[str]:
    for i in range(n):
        yield f"t{i}"


@pytest.mark.parametrize("garbage", ["1", math.nan, -5, 1.5, None, True])
async def test_a_count_tokens_that_returns_garbage_ends_its_own_stream_only(
        otel: OTelHarness, garbage: object) -> None:
    def count(chunk: str) -> Any:
        return garbage

    with pytest.raises((TypeError, ValueError), match="count_tokens must return an int >= 0"):
        async for _ in observe_stream(_chunks(3), count_tokens=count, telemetry=otel.telemetry):
            pass
    # The next stream, on the same telemetry, is unaffected.
    async for _ in observe_stream(_chunks(3), telemetry=otel.telemetry):
        pass
    assert otel.value("ragobs.requests", ragobs__outcome="error") == 1
    assert otel.value("ragobs.requests", ragobs__outcome="ok") == 1
    assert otel.value("ragobs.requests.active") == 0
    assert len([s for s in otel.spans() if s.end_time is not None]) == 2
    summary = otel.telemetry.summary.snapshot()
    assert summary.avg_tokens == 3
    json.dumps(summary.as_dict(), allow_nan=False)  # the summary stays valid JSON


async def test_a_count_tokens_that_raises_is_the_streams_error(otel: OTelHarness) -> None:
    def count(chunk: str) -> int:
        raise RuntimeError("tokenizer broke")

    with pytest.raises(RuntimeError, match="tokenizer broke"):
        async for _ in observe_stream(_chunks(2), count_tokens=count, telemetry=otel.telemetry):
            pass
    assert otel.value("ragobs.requests", error__type="RuntimeError") == 1
    assert otel.value("ragobs.requests.active") == 0


@pytest.mark.parametrize(("call", "error", "text"), [
    (lambda: ragobs.setup(serve=False, set_global=False, capture_content="maybe"),
     ValueError, "capture_content must be a bool or one of true/false"),
    (lambda: ragobs.setup(serve=False, set_global=False, service_name=""),
     ValueError, "service_name must be a non-empty str or None, got ''"),
    (lambda: ragobs.setup(serve=False, set_global=False, service_name=123),
     ValueError, "service_name must be a non-empty str or None, got 123"),
    (lambda: ragobs.setup(set_global=False, host=""),
     ValueError, "host must be a non-empty str"),
    (lambda: ragobs.setup(set_global=False, host=123),
     ValueError, "host must be a non-empty str"),
    (lambda: ragobs.setup(serve=False, set_global=False, registry="x"),
     TypeError, "registry must be a prometheus_client CollectorRegistry"),
    (lambda: ragobs.setup(serve=False, set_global=False, max_series=0),
     ValueError, "max_series must be an int in 1..100000"),
    (lambda: RateLimiter(1, window_seconds=1e-300),
     ValueError, r"window_seconds must be a number in \[1e-06, 3.1536e\+07\]"),
    (lambda: ManualClock(math.nan), ValueError, "start must be a finite number"),
    (lambda: asyncio.run(ManualClock().advance(math.nan)),
     ValueError, "seconds must be a finite number >= 0"),
    (lambda: observe_stream(["a"], telemetry="x"),
     TypeError, "telemetry must be a ragobs Telemetry or None"),
    (lambda: observe(telemetry="x"), TypeError, "telemetry must be a ragobs Telemetry"),
    (lambda: Telemetry(tracer_provider="x"),
     TypeError, "tracer_provider must be an OpenTelemetry TracerProvider or None"),
    (lambda: Telemetry(capture_content="false"),
     TypeError, "capture_content must be a bool"),
    (lambda: StreamingMetrics(keep_sessions=10**100),
     ValueError, r"keep_sessions must be an int in 0\.\.10000000"),
    (lambda: instrument_stream(telemetry="x"), TypeError, "telemetry must be a ragobs"),
    (lambda: instrument_stream(count_tokens=5), TypeError, "count_tokens must be a callable"),
])
def test_bad_arguments_are_refused_when_given(call: Callable[[], object], error: type,
                                              text: str) -> None:
    with pytest.raises(error, match=text):
        call()


def test_capture_content_reads_strings_as_environment_variables_give_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for value, expected in (("false", False), ("0", False), ("TRUE", True), ("on", True)):
        runtime = ragobs.setup(serve=False, set_global=False, registry=CollectorRegistry(),
                               capture_content=value)
        assert runtime.telemetry.capture_content is expected
        runtime.shutdown()
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true")
    runtime = ragobs.setup(serve=False, set_global=False, registry=CollectorRegistry())
    assert runtime.telemetry.capture_content is True
    runtime.shutdown()


# --- the sidecar under junk and probes ------------------------------------------------


@pytest.fixture
async def sidecar() -> AsyncIterator[tuple[Runtime, str]]:
    runtime = ragobs.setup(serve=False, set_global=False, registry=CollectorRegistry())
    side = await runtime.start_server("127.0.0.1", 0)
    try:
        yield runtime, side.url
    finally:
        await runtime.stop_server()
        runtime.shutdown()


async def test_junk_requests_log_one_debug_line_each(
        sidecar: tuple[Runtime, str], caplog: pytest.LogCaptureFixture) -> None:
    _, url = sidecar
    port = int(url.rsplit(":", 1)[1])
    caplog.set_level(logging.DEBUG)
    junk = [b"GARBAGE\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n", b"\x16\x03\x01\x02\x00\x01\x00",
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n"]
    for payload in junk * 4:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(payload)
        await writer.drain()
        await reader.read(4096)
        writer.close()
    await asyncio.sleep(0.05)
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not loud, [r.getMessage() for r in loud]
    assert not [r for r in caplog.records if r.exc_info]
    quiet = [r for r in caplog.records if r.name == "ragobs.sidecar"]
    assert 1 <= len(quiet) <= len(junk) * 4
    async with aiohttp.ClientSession() as session, session.get(f"{url}/healthz") as resp:
        assert resp.status == 200  # still serving


async def test_readyz_does_not_collect(sidecar: tuple[Runtime, str]) -> None:
    runtime, url = sidecar
    collected = 0

    class Counting:
        def collect(self) -> list[object]:
            nonlocal collected
            collected += 1
            return []

    runtime.registry.register(Counting())  # type: ignore[arg-type]
    async with aiohttp.ClientSession() as session:
        for _ in range(5):
            async with session.get(f"{url}/readyz") as resp:
                assert resp.status == 200
        assert collected == 0
        async with session.get(f"{url}/metrics") as resp:
            assert resp.status == 200
        assert collected == 1
