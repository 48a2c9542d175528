"""The sidecar over real HTTP: /metrics (checked by promtool), health, summary."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncGenerator, AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from ragobs._exposition import render
from ragobs._runtime import Runtime, setup
from ragobs._server import resolve_address
from ragobs._stages import stage
from ragobs._stream import observe_stream
from tests.support import free_port, require_binary


async def traffic(runtime: Runtime, n_ok: int = 6, n_err: int = 2) -> None:
    async def answer(fail: bool) -> AsyncGenerator[str, None]:
        async with stage("retrieve", source="python_docs", telemetry=runtime.telemetry):
            await asyncio.sleep(0.001)
        for i in range(5):
            if fail and i == 2:
                raise ConnectionResetError("reset")
            await asyncio.sleep(0.001)
            yield f"tok{i} "

    async def one(fail: bool) -> None:
        try:
            async for _ in observe_stream(answer(fail), provider="simulated", model="sim-1",
                                          telemetry=runtime.telemetry):
                pass
        except ConnectionResetError:
            pass

    await asyncio.gather(*(one(i < n_err) for i in range(n_ok + n_err)))


@pytest.fixture
async def served() -> AsyncIterator[tuple[Runtime, str]]:
    runtime = setup(service_name="test-svc", serve=False, set_global=False,
                    registry=CollectorRegistry())
    sidecar = await runtime.start_server("127.0.0.1", 0)
    yield runtime, sidecar.url
    await runtime.stop_server()
    runtime.shutdown()


async def get(url: str, **headers: str) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as resp:
        return resp.status, resp.headers["Content-Type"], await resp.text()


async def test_metrics_endpoint_passes_promtool(served: tuple[Runtime, str]) -> None:
    promtool = require_binary("promtool")
    runtime, url = served
    await traffic(runtime)
    status, content_type, body = await get(f"{url}/metrics")
    assert status == 200
    assert content_type.startswith("text/plain")
    for name in (
        "gen_ai_client_operation_duration_seconds_bucket",
        "gen_ai_client_operation_time_to_first_chunk_seconds_count",
        "gen_ai_client_operation_time_per_output_chunk_seconds_sum",
        "gen_ai_client_token_usage_count",
        "ragobs_stream_output_tokens_per_second_bucket",
        'ragobs_requests_total{error_type="ConnectionResetError"',
        "ragobs_errors_total",
        "ragobs_requests_active",
        'ragobs_stage_duration_seconds_count{gen_ai_data_source_id="python_docs"',
    ):
        assert name in body, name
    assert 'service_name="test-svc"' in body
    assert 'ragobs_outcome="ok"' in body
    # No prompt or answer text ever reaches the metrics.
    assert "tok0" not in body
    check = subprocess.run([promtool, "check", "metrics"], input=body, text=True,
                           capture_output=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.strip() == "" and check.stderr.strip() == "", check.stdout + check.stderr


async def test_openmetrics_carries_exemplars_with_trace_ids(served: tuple[Runtime, str]) -> None:
    runtime, url = served
    await traffic(runtime, n_ok=2, n_err=0)
    status, content_type, body = await get(
        f"{url}/metrics", Accept="application/openmetrics-text; version=1.0.0")
    assert status == 200
    assert content_type.startswith("application/openmetrics-text")
    exemplar_lines = [line for line in body.splitlines()
                      if line.startswith("gen_ai_client_operation_duration_seconds_bucket")
                      and "# {" in line]
    assert exemplar_lines
    assert 'trace_id="' in exemplar_lines[0] and 'span_id="' in exemplar_lines[0]
    assert body.rstrip().endswith("# EOF")


def exemplars_by_family(body: str) -> dict[str, list[tuple[float, float, str, str, float]]]:
    """(previous le, le, trace id, span id, value) of every bucket exemplar, by family."""
    found: dict[str, list[tuple[float, float, str, str, float]]] = {}
    for family in text_string_to_metric_families(body):
        lower: dict[tuple[tuple[str, str], ...], float] = {}
        for sample in family.samples:
            if not sample.name.endswith("_bucket"):
                continue
            series = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "le"))
            upper = float(sample.labels["le"])
            if sample.exemplar is not None:
                ex = sample.exemplar
                found.setdefault(family.name, []).append(
                    (lower.get(series, float("-inf")), upper, ex.labels["trace_id"],
                     ex.labels["span_id"], ex.value))
            lower[series] = upper
    return found


async def test_openmetrics_exemplars_name_the_stream_and_stage_spans(
        served: tuple[Runtime, str]) -> None:
    runtime, url = served
    assert runtime.telemetry.exemplars is not None  # setup() keeps its own
    assert runtime.tracer_provider is not None
    spans = InMemorySpanExporter()
    runtime.tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    await traffic(runtime, n_ok=3, n_err=1)
    ids: dict[str, set[tuple[str, str]]] = {}
    for span in spans.get_finished_spans():
        assert span.context is not None
        ids.setdefault(span.name, set()).add(
            (format(span.context.trace_id, "032x"), format(span.context.span_id, "016x")))
    assert len(ids["chat sim-1"]) == 4 and len(ids["retrieve python_docs"]) == 4

    accept = "application/openmetrics-text; version=1.0.0"
    found = exemplars_by_family((await get(f"{url}/metrics", Accept=accept))[2])
    for family, span_name in (("gen_ai_client_operation_duration_seconds", "chat sim-1"),
                              ("gen_ai_client_operation_time_to_first_chunk_seconds",
                               "chat sim-1"),
                              ("ragobs_stage_duration_seconds", "retrieve python_docs")):
        assert found.get(family), family
        for lower, upper, trace_id, span_id, value in found[family]:
            assert (trace_id, span_id) in ids[span_name], family
            assert lower < value <= upper, (family, lower, value, upper)
    for family in ("gen_ai_client_token_usage", "ragobs_stream_output_tokens_per_second"):
        assert family not in found

    # ragobs' own exemplars stay until replaced, so a second scraper sees them too.
    again = exemplars_by_family((await get(f"{url}/metrics", Accept=accept))[2])
    assert again["gen_ai_client_operation_duration_seconds"] == \
        found["gen_ai_client_operation_duration_seconds"]


async def test_health_and_summary(served: tuple[Runtime, str]) -> None:
    runtime, url = served
    assert (await get(f"{url}/healthz"))[0] == 200
    assert (await get(f"{url}/readyz"))[0] == 200
    await traffic(runtime, n_ok=6, n_err=2)
    async with aiohttp.ClientSession() as session, session.get(f"{url}/api/summary") as resp:
        assert resp.status == 200
        data = await resp.json()
    expected = runtime.telemetry.summary.snapshot()
    assert data["total_requests"] == 8 == expected.total_requests
    assert data["successful"] == 6 and data["failed"] == 2
    assert data["success_rate"] == pytest.approx(0.75)
    assert data["avg_tokens"] == pytest.approx(5.0)
    assert data["avg_latency_seconds"] == pytest.approx(expected.avg_latency_seconds)
    assert set(data["ttft_seconds"]) == {"p50", "p95", "p99"}
    assert data["service"] == "test-svc"
    assert data["in_flight"] == 0


def test_threaded_sidecar_for_synchronous_programs() -> None:
    port = free_port()
    runtime = setup(serve=True, host="127.0.0.1", port=port, set_global=False,
                    registry=CollectorRegistry())
    try:
        assert runtime.sidecar is not None and runtime.sidecar.port == port
        list(observe_stream(iter(["a", "b"]), telemetry=runtime.telemetry))
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            body = resp.read().decode()
        assert 'ragobs_requests_total{gen_ai_operation_name="chat"' in body
    finally:
        runtime.shutdown()
    with pytest.raises(OSError):
        import urllib.request

        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)


def test_address_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAGOBS_HOST", raising=False)
    monkeypatch.delenv("RAGOBS_PORT", raising=False)
    assert resolve_address() == ("127.0.0.1", 9464)
    monkeypatch.setenv("OTEL_EXPORTER_PROMETHEUS_PORT", "9999")
    assert resolve_address() == ("127.0.0.1", 9999)
    monkeypatch.setenv("RAGOBS_HOST", "0.0.0.0")
    monkeypatch.setenv("RAGOBS_PORT", "9100")
    assert resolve_address() == ("0.0.0.0", 9100)
    assert resolve_address("::1", 1234) == ("::1", 1234)
    monkeypatch.setenv("RAGOBS_PORT", "http")
    with pytest.raises(ValueError, match=r"RAGOBS_PORT must be an int in 0\.\.65535"):
        resolve_address()
    with pytest.raises(ValueError, match=r"port must be an int in 0\.\.65535"):
        resolve_address("127.0.0.1", 70000)


async def test_port_in_use_is_a_clear_error(served: tuple[Runtime, str]) -> None:
    runtime, url = served
    port = int(url.rsplit(":", 1)[1])
    with pytest.raises(OSError, match=f"cannot bind 127.0.0.1:{port}"):
        await runtime.app_sidecar("127.0.0.1", port).start()


@pytest.fixture
async def otlp_collector() -> AsyncIterator[tuple[str, dict[str, int]]]:
    """A real OTLP/HTTP endpoint on loopback counting the exports it receives."""
    import opentelemetry.exporter.otlp.proto.http  # noqa: F401 - [dev] installs [otlp]

    received: dict[str, int] = {"/v1/traces": 0, "/v1/metrics": 0}

    async def collect(request: web.Request) -> web.Response:
        await request.read()
        received[request.path] += 1
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/v1/traces", collect)
    app.router.add_post("/v1/metrics", collect)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}", received
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(("env", "traces", "metrics"), [
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "{url}"}, True, True),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "{url}", "OTEL_METRICS_EXPORTER": "none"}, True, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "{url}", "OTEL_TRACES_EXPORTER": "none"}, False, True),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "{url}/v1/traces"}, True, False),
])
async def test_otlp_export_follows_the_otel_variables(
        monkeypatch: pytest.MonkeyPatch, otlp_collector: tuple[str, dict[str, int]],
        env: dict[str, str], traces: bool, metrics: bool) -> None:
    url, received = otlp_collector
    for key, value in env.items():
        monkeypatch.setenv(key, value.format(url=url))
    runtime = setup(serve=False, set_global=False, registry=CollectorRegistry())
    await traffic(runtime, n_ok=2, n_err=0)
    await asyncio.get_running_loop().run_in_executor(None, runtime.shutdown)
    assert (received["/v1/traces"] >= 1) is traces
    assert (received["/v1/metrics"] >= 1) is metrics


async def test_with_an_otlp_reader_the_sdk_keeps_the_exemplars(
        monkeypatch: pytest.MonkeyPatch, otlp_collector: tuple[str, dict[str, int]]) -> None:
    """OTLP carries the SDK's exemplars, so setup() then leaves them to the SDK."""
    url, received = otlp_collector
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", url)
    registry = CollectorRegistry()
    runtime = setup(serve=False, set_global=False, registry=registry)
    try:
        assert runtime.telemetry.exemplars is None
        await traffic(runtime, n_ok=2, n_err=0)
        body = render(registry, "application/openmetrics-text; version=1.0.0")[0].decode()
        found = exemplars_by_family(body)
        for family in ("gen_ai_client_operation_duration_seconds",
                       "gen_ai_client_operation_time_to_first_chunk_seconds"):
            assert found.get(family), family
            for lower, upper, trace_id, _, value in found[family]:
                assert len(trace_id) == 32 and int(trace_id, 16) != 0
                assert lower < value <= upper
    finally:
        await asyncio.get_running_loop().run_in_executor(None, runtime.shutdown)
    assert received["/v1/metrics"] >= 1


async def test_a_flush_between_scrapes_does_not_print_series_twice() -> None:
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    runtime = setup(serve=False, set_global=False, registry=CollectorRegistry())
    try:
        await traffic(runtime, n_ok=2, n_err=1)
        assert runtime.meter_provider is not None
        runtime.meter_provider.force_flush()  # queues one more collection in the reader
        body, _ = render(runtime.registry, "application/openmetrics-text")
        families = list(text_string_to_metric_families(body.decode()))  # rejects duplicates
        requests = next(f for f in families if f.name == "ragobs_requests")
        assert sum(s.value for s in requests.samples if s.name.endswith("_total")) == 3
    finally:
        runtime.shutdown()


async def test_concurrent_scrapes_each_get_every_series() -> None:
    from concurrent.futures import ThreadPoolExecutor

    runtime = setup(serve=False, set_global=False, registry=CollectorRegistry())
    try:
        await traffic(runtime, n_ok=3, n_err=1)
        with ThreadPoolExecutor(8) as pool:
            bodies = list(pool.map(lambda _: render(runtime.registry, None)[0], range(64)))
        totals = {body.count(b"ragobs_requests_total{") for body in bodies}
        assert len(totals) == 1 and totals.pop() > 0  # none empty, none partial
    finally:
        runtime.shutdown()
