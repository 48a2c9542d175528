"""The host sidecar's merge, fed by real OpenTelemetry SDKs over OTLP/HTTP.

Each producer is an independent ``MeterProvider`` (a worker process, as far as
the host can tell) whose ``PeriodicExportingMetricReader`` pushes to the
receiver on loopback, with ragobs's :class:`Telemetry` recording real streams
through ``observe_stream``. An ``InMemoryMetricReader`` on the same provider
gives the ground truth the host's totals must equal.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.resource.v1.resource_pb2 import Resource as PbResource
from opentelemetry.sdk.metrics import (
    Counter,
    Histogram,
    MeterProvider,
    ObservableCounter,
    ObservableGauge,
    ObservableUpDownCounter,
    UpDownCounter,
)
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    HistogramDataPoint,
    InMemoryMetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from ragobs import semconv
from ragobs._exposition import render
from ragobs._history import History, InProcessSource
from ragobs._host import (
    HistogramValue,
    HostCollector,
    HostLimits,
    HostMetrics,
    HostReporter,
    add_otlp_routes,
    histogram_quantile,
    host_resilience,
    host_summary,
)
from ragobs._host.history import HostHistorySource
from ragobs._report import as_json
from ragobs._runtime import Runtime, setup
from ragobs._stages import stage
from ragobs._stream import observe_stream
from ragobs._telemetry import Telemetry
from ragobs.clock import ManualClock
from tests.support import free_port

DELTA = AggregationTemporality.DELTA
CUMULATIVE = AggregationTemporality.CUMULATIVE
INSTRUMENT_CLASSES = (Counter, UpDownCounter, Histogram, ObservableCounter,
                      ObservableUpDownCounter, ObservableGauge)
ALL_DELTA = dict.fromkeys(INSTRUMENT_CLASSES, DELTA)
ALL_CUMULATIVE = dict.fromkeys(INSTRUMENT_CLASSES, CUMULATIVE)
RAGOBS_NAMES = frozenset(spec.name for spec in semconv.ALL_INSTRUMENTS)


# --- a host receiver on loopback, and producers pushing to it ----------------------

@dataclass
class Host:
    metrics: HostMetrics
    url: str
    clock: ManualClock

    def registry(self) -> CollectorRegistry:
        registry = CollectorRegistry()
        registry.register(HostCollector(self.metrics))
        return registry


@pytest.fixture
async def host() -> AsyncIterator[Host]:
    clock = ManualClock(1_000.0)
    metrics = HostMetrics(stale_after=15.0, clock=clock)
    app = web.Application()
    add_otlp_routes(app, metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield Host(metrics, f"http://127.0.0.1:{port}/v1/metrics", clock)
    finally:
        await runner.cleanup()


class Producer:
    """One worker: its own MeterProvider pushing by OTLP, plus the ground truth."""

    def __init__(self, url: str, service: str = "svc", instance: str | None = None,
                 temporality: dict[type, AggregationTemporality] | None = None) -> None:
        self.memory = InMemoryMetricReader()
        exporter = OTLPMetricExporter(endpoint=url, preferred_temporality=(
            ALL_DELTA if temporality is None else temporality))
        self.resource = Resource.create({"service.name": service,
                                         "service.instance.id": instance or uuid.uuid4().hex})
        self.provider = MeterProvider(resource=self.resource, metric_readers=[
            PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000),
            self.memory,
        ])
        self.telemetry = Telemetry(meter_provider=self.provider)

    async def push(self) -> None:
        assert await asyncio.to_thread(self.provider.force_flush)

    async def stop(self) -> None:
        await asyncio.to_thread(self.provider.shutdown)

    def truth(self) -> dict[tuple[Any, ...], Any]:
        """Every ragobs point of the in-memory (cumulative) reader, by series."""
        data = self.memory.get_metrics_data()
        service = self.resource.attributes["service.name"]
        found: dict[tuple[Any, ...], Any] = {}
        assert data is not None
        for rm in data.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    for point in metric.data.data_points:
                        key = (metric.name, service, frozenset(point.attributes.items()))
                        if isinstance(point, HistogramDataPoint):
                            found[key] = (point.count, point.sum, tuple(point.bucket_counts))
                        else:
                            found[key] = point.value
        return found


def chunks(n: int = 3, fail: BaseException | None = None) -> Iterator[str]:
    for i in range(n):
        if fail is not None and i == 1:
            raise fail
        yield f"tok{i} "


def traffic(telemetry: Telemetry, *, ok: int = 0, error: int = 0, timeout: int = 0,
            cancelled: int = 0, model: str = "m1") -> None:
    """Real streams through observe_stream, ending the way asked."""
    def run(fail: BaseException | None) -> None:
        try:
            for _ in observe_stream(chunks(4, fail), telemetry=telemetry, provider="p",
                                    model=model):
                pass
        except (ConnectionResetError, TimeoutError):
            pass

    for _ in range(ok):
        run(None)
    for _ in range(error):
        run(ConnectionResetError("reset"))
    for _ in range(timeout):
        run(TimeoutError("slow"))
    for _ in range(cancelled):
        stream = observe_stream(chunks(4), telemetry=telemetry, provider="p", model=model)
        next(stream)
        stream.close()


def merged(truths: list[dict[tuple[Any, ...], Any]]) -> dict[tuple[Any, ...], Any]:
    """The producers' ground truths added up series by series."""
    total: dict[tuple[Any, ...], Any] = {}
    for truth in truths:
        for key, value in truth.items():
            held = total.get(key)
            if held is None:
                total[key] = value
            elif isinstance(value, tuple):
                total[key] = (held[0] + value[0], held[1] + value[1],
                              tuple(a + b for a, b in zip(held[2], value[2], strict=True)))
            else:
                total[key] = held + value
    return total


def host_view(metrics: HostMetrics) -> dict[tuple[Any, ...], Any]:
    """The host's series in the shape of :meth:`Producer.truth`."""
    found: dict[tuple[Any, ...], Any] = {}
    for metric in metrics.snapshot().metrics:
        for series in metric.series:
            key = (metric.name, series.service, frozenset(series.attributes.items()))
            value = series.value
            found[key] = ((value.count, value.sum, value.counts)
                          if isinstance(value, HistogramValue) else value)
    return found


def assert_same(host_series: dict[tuple[Any, ...], Any],
                truth: dict[tuple[Any, ...], Any]) -> None:
    assert set(host_series) == set(truth)
    for key, expected in truth.items():
        got = host_series[key]
        if isinstance(expected, tuple):
            assert got[0] == expected[0] and got[2] == expected[2], key
            assert math.isclose(got[1], expected[1], rel_tol=1e-9, abs_tol=1e-12), key
        else:
            assert got == expected, key


def requests_by_outcome(metrics: HostMetrics) -> dict[str, int]:
    totals: dict[str, int] = {}
    for metric in metrics.snapshot().find(semconv.REQUESTS.name):
        for series in metric.series:
            outcome = str(series.attributes[semconv.OUTCOME])
            assert isinstance(series.value, int)
            totals[outcome] = totals.get(outcome, 0) + series.value
    return totals


def in_flight(metrics: HostMetrics) -> float:
    return sum(s.value for m in metrics.snapshot().find(semconv.REQUESTS_ACTIVE.name)
               for s in m.series if not isinstance(s.value, HistogramValue))


# --- producers pushing DELTA -------------------------------------------------------

async def test_three_delta_producers_add_up_exactly(host: Host) -> None:
    producers = [Producer(host.url, service="svc-a" if i < 2 else "svc-b") for i in range(3)]
    try:
        for i, producer in enumerate(producers):
            traffic(producer.telemetry, ok=3 + i, error=1, timeout=1, cancelled=i)
            await producer.push()
        for i, producer in enumerate(producers):  # a second interval: deltas add up
            traffic(producer.telemetry, ok=2, error=i, model="m2")
            with stage("retrieve", telemetry=producer.telemetry):
                pass
            await producer.push()

        assert requests_by_outcome(host.metrics) == {
            "ok": (3 + 4 + 5) + 6, "error": 3 + (0 + 1 + 2), "timeout": 3, "cancelled": 3}
        assert in_flight(host.metrics) == 0
        ragobs_only = {k: v for k, v in host_view(host.metrics).items() if k[0] in RAGOBS_NAMES}
        assert_same(ragobs_only, merged([p.truth() for p in producers]))
        assert host.metrics.producers == 3

        summary = host_summary(host.metrics)
        assert (summary.total_requests, summary.successful, summary.failed,
                summary.cancelled, summary.timeouts, summary.in_flight) == (30, 18, 9, 3, 3, 0)
        truth = merged([p.truth() for p in producers])
        ok_durations = [v for k, v in truth.items()
                        if k[0] == semconv.OPERATION_DURATION.name
                        and (semconv.OUTCOME, "ok") in k[2]]
        count = sum(v[0] for v in ok_durations)
        assert count == 18
        assert summary.avg_latency_seconds is not None
        assert math.isclose(summary.avg_latency_seconds, sum(v[1] for v in ok_durations) / count)
        assert summary.avg_tokens == 4.0
        assert summary.latency_seconds.p50 is not None
        assert 0 < summary.latency_seconds.p50 <= semconv.DURATION_BUCKETS[0]
        resilience = host_resilience(host.metrics)
        assert resilience is not None and resilience.timeouts == 0

        report = as_json(HostReporter(host.metrics, service="ragobs-host").report())
        assert report["total_requests"] == 30 and report["service"] == "ragobs-host"
    finally:
        for producer in producers:
            await producer.stop()


async def test_a_restarted_producer_does_not_reset_the_host_totals(host: Host) -> None:
    first = Producer(host.url, instance="worker-1")
    traffic(first.telemetry, ok=5, error=2)
    await first.push()
    await first.stop()
    registry = host.registry()
    ok_series = {"error_type": "", "gen_ai_operation_name": "chat", "gen_ai_provider_name": "p",
                 "gen_ai_request_model": "m1", "ragobs_outcome": "ok", "service_name": "svc"}
    assert registry.get_sample_value("ragobs_requests_total", ok_series) == 5

    # The same worker again (same resource), its SDK counting from zero.
    second = Producer(host.url, instance="worker-1")
    try:
        traffic(second.telemetry, ok=3)
        await second.push()
        assert requests_by_outcome(host.metrics) == {"ok": 8, "error": 2}
        ok_latency = [s.value for m in host.metrics.snapshot().find(
                      semconv.OPERATION_DURATION.name) for s in m.series
                      if s.attributes.get(semconv.OUTCOME) == "ok"]
        assert [v.count for v in ok_latency if isinstance(v, HistogramValue)] == [8]
        assert registry.get_sample_value("ragobs_requests_total", ok_series) == 8
        await host.clock.advance(60)  # long after both went quiet: counts stay
        assert requests_by_outcome(host.metrics) == {"ok": 8, "error": 2}
        assert host.metrics.producers == 0
    finally:
        await second.stop()


async def test_a_stale_producers_in_flight_requests_expire(host: Host) -> None:
    dying = Producer(host.url, instance="dies-mid-request")
    alive = Producer(host.url, instance="keeps-pushing")
    stream = observe_stream(chunks(4), telemetry=dying.telemetry, provider="p", model="m1")
    try:
        traffic(dying.telemetry, ok=2)
        next(stream)  # one request in flight when the worker stops pushing
        await dying.push()
        traffic(alive.telemetry, ok=1)
        await alive.push()
        assert in_flight(host.metrics) == 1
        assert host_summary(host.metrics).in_flight == 1

        await host.clock.advance(10)
        await alive.push()
        assert in_flight(host.metrics) == 1  # not stale yet
        await host.clock.advance(10)  # 20 s since the dying worker's last push
        await alive.push()
        assert in_flight(host.metrics) == 0
        assert host_summary(host.metrics).in_flight == 0
        assert host.metrics.producers == 1
        assert requests_by_outcome(host.metrics) == {"ok": 3}  # its counts stay
        assert host.registry().get_sample_value("ragobs_host_producers") == 1
    finally:
        stream.close()
        await dying.stop()
        await alive.stop()


async def test_a_paused_producer_comes_back_without_drift(host: Host) -> None:
    """A worker silent past stale_after (stopped, swapped out) pushes again:
    its in-flight requests count again and finishing them does not go below zero."""
    paused = Producer(host.url, instance="paused")
    stream = observe_stream(chunks(4), telemetry=paused.telemetry, provider="p", model="m1")
    try:
        next(stream)
        await paused.push()
        assert in_flight(host.metrics) == 1
        await host.clock.advance(20)
        assert in_flight(host.metrics) == 0  # taken for dead
        await paused.push()  # it was not: its delta of 0 lands on its parked net
        assert in_flight(host.metrics) == 1
        await host.clock.advance(20)
        assert in_flight(host.metrics) == 0
        for _ in stream:  # finishes while taken for dead, then pushes its -1
            pass
        await paused.push()
        assert in_flight(host.metrics) == 0
        assert requests_by_outcome(host.metrics) == {"ok": 1}
    finally:
        stream.close()
        await paused.stop()


# --- producers pushing CUMULATIVE (an SDK's default) -------------------------------

async def test_cumulative_producers_are_not_counted_twice(host: Host) -> None:
    a = Producer(host.url, instance="a", temporality=ALL_CUMULATIVE)
    b = Producer(host.url, instance="b", temporality=ALL_CUMULATIVE)
    restarted: Producer | None = None
    try:
        for _ in range(3):  # three pushes of running totals
            traffic(a.telemetry, ok=2)
            traffic(b.telemetry, ok=1, error=1)
            await a.push()
            await b.push()
        assert requests_by_outcome(host.metrics) == {"ok": 9, "error": 3}
        ragobs_only = {k: v for k, v in host_view(host.metrics).items() if k[0] in RAGOBS_NAMES}
        assert_same(ragobs_only, merged([a.truth(), b.truth()]))

        await a.stop()  # a restarts: a new stream (start time), counting from zero
        restarted = Producer(host.url, instance="a", temporality=ALL_CUMULATIVE)
        traffic(restarted.telemetry, ok=1)
        await restarted.push()
        assert requests_by_outcome(host.metrics) == {"ok": 10, "error": 3}
        await host.clock.advance(16)  # the old stream goes stale: folded, not lost
        await restarted.push()
        await b.push()
        assert requests_by_outcome(host.metrics) == {"ok": 10, "error": 3}
    finally:
        await b.stop()
        if restarted is not None:
            await restarted.stop()


# --- /metrics is the in-process /metrics ------------------------------------------------

async def flush(runtime: Runtime) -> None:
    """Push a runtime's metrics now (the periodic reader's export, forced).

    ``MeterProvider.force_flush()`` also makes the Prometheus reader collect,
    and the exporter's collector then renders that queued collection and the
    next scrape's into one body, each series twice; a scrape right after
    drains it, as Prometheus's regular scrapes would.
    """
    assert runtime.meter_provider is not None
    assert await asyncio.to_thread(runtime.meter_provider.force_flush)
    render(runtime.registry, None)


def families(body: str) -> dict[str, Any]:
    """ragobs's families of an OpenMetrics body: (type, help, unit, {sample: value})."""
    wanted = {spec.prometheus_name.removesuffix("_total") for spec in semconv.ALL_INSTRUMENTS}
    found: dict[str, Any] = {}
    for family in text_string_to_metric_families(body):
        if family.name in wanted:
            samples = {(s.name, frozenset(s.labels.items())): s.value for s in family.samples}
            found[family.name] = (family.type, family.documentation, family.unit, samples)
    return found


async def test_host_metrics_equal_the_in_process_metrics(
        host: Host, monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers set up by ragobs.setup() push to the host; the host's /metrics
    equals the sum of their own /metrics: names, types, HELP, units, labels, values."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", host.url)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "delta")
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "3600000")
    runtimes = []
    for i, service in enumerate(("svc-a", "svc-a", "svc-b")):
        monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", f"service.instance.id=worker-{i}")
        runtimes.append(setup(service_name=service, serve=False, set_global=False,
                              registry=CollectorRegistry()))
    try:
        for i, runtime in enumerate(runtimes):
            traffic(runtime.telemetry, ok=2 + i, error=1, timeout=i, cancelled=1)
            with stage("retrieve", telemetry=runtime.telemetry):
                pass
            for model in ("m1", "m2"):  # two export intervals
                traffic(runtime.telemetry, ok=1, model=model)
                await flush(runtime)

        accept = "application/openmetrics-text; version=1.0.0"
        got = families(render(host.registry(), accept)[0].decode())
        expected: dict[str, Any] = {}
        for runtime in runtimes:
            for name, (kind, doc, unit, samples) in families(
                    render(runtime.registry, accept)[0].decode()).items():
                held = expected.setdefault(name, (kind, doc, unit, {}))
                assert held[:3] == (kind, doc, unit)
                for key, value in samples.items():
                    held[3][key] = held[3].get(key, 0) + value
        assert len(expected) >= 7
        assert got.keys() == expected.keys()
        for name, (kind, doc, unit, samples) in expected.items():
            assert got[name][:3] == (kind, doc, unit), name
            assert set(got[name][3]) == set(samples), (
                name, sorted(str(k) for k in set(got[name][3]) ^ set(samples))[:4])
            for key, value in samples.items():
                assert math.isclose(got[name][3][key], value, rel_tol=1e-9, abs_tol=1e-12), key

        # /api/summary: the host's figures are the workers' summaries put together.
        parts = [runtime.telemetry.summary.snapshot() for runtime in runtimes]
        host_figures = host_summary(host.metrics)
        for field in ("total_requests", "successful", "failed", "cancelled", "timeouts",
                      "in_flight"):
            assert getattr(host_figures, field) == sum(getattr(p, field) for p in parts), field
        ok = sum(p.successful for p in parts)
        for field in ("avg_latency_seconds", "avg_ttft_seconds", "avg_tokens",
                      "avg_tokens_per_second"):  # every ok stream here has all four
            expected_mean = sum(getattr(p, field) * p.successful for p in parts) / ok
            assert math.isclose(getattr(host_figures, field), expected_mean, rel_tol=1e-9), field
        assert host_figures.success_rate == pytest.approx(ok / host_figures.total_requests)
        for field in ("avg_inference_calls", "avg_tool_calls"):  # per turn, ok turns
            expected_mean = sum(getattr(p, field) * p.successful for p in parts) / ok
            assert math.isclose(getattr(host_figures, field), expected_mean, rel_tol=1e-9), field
        assert host_figures.avg_inference_calls == 1.0  # lone streams: turns of one call
        phases = {name for p in parts for name in p.ttft_breakdown}
        assert phases and host_figures.ttft_breakdown.keys() == phases
        for name in phases:  # every ok turn here has a TTFT: weights are the ok counts
            expected_mean = sum(p.ttft_breakdown.get(name, 0.0) * p.successful
                                for p in parts) / ok
            assert math.isclose(host_figures.ttft_breakdown[name], expected_mean,
                                rel_tol=1e-9), name
        local_calls: dict[Any, list[float]] = {}
        for runtime in runtimes:
            for row in runtime.telemetry.calls.snapshot():
                held = local_calls.setdefault((row.provider, row.model), [0, 0, 0, 0])
                for i, v in enumerate((row.calls, row.failed, row.input_tokens,
                                       row.output_tokens)):
                    held[i] += v
        assert {(r.provider, r.model): [r.calls, r.failed, r.input_tokens, r.output_tokens]
                for r in host_figures.calls} == local_calls
        bounds = semconv.DURATION_BUCKETS
        for q in ("p50", "p95", "p99"):  # estimated from buckets: within the true one's
            true = max(getattr(p.latency_seconds, q) for p in parts)
            estimate = getattr(host_figures.latency_seconds, q)
            assert estimate <= bounds[next(i for i, b in enumerate(bounds) if true <= b)]

        # /api/history: the host's samples are the workers' samples put together.
        local = [InProcessSource(r.telemetry.summary, r.telemetry).sample() for r in runtimes]
        sample = HostHistorySource(host.metrics).sample()
        assert sample.requests == {o: sum(x.requests[o] for x in local) for o in sample.requests}
        assert sample.in_flight == sum(x.in_flight for x in local) == 0
        assert sample.output_tokens == sum(x.output_tokens for x in local)
        assert sample.rate_count == sum(x.rate_count for x in local)
        assert math.isclose(sample.rate_sum, sum(x.rate_sum for x in local), rel_tol=1e-9)
        by_model: dict[Any, int] = {}
        stages: dict[str, tuple[int, float]] = {}
        for x in local:
            for key, n in x.by_model.items():
                by_model[key] = by_model.get(key, 0) + n
            for name, (runs, seconds) in x.stages.items():
                held = stages.get(name, (0, 0.0))
                stages[name] = (held[0] + runs, held[1] + seconds)
        assert sample.by_model == by_model
        assert sample.stages.keys() == stages.keys()
        for name, (runs, seconds) in stages.items():
            assert sample.stages[name][0] == runs
            assert math.isclose(sample.stages[name][1], seconds, rel_tol=1e-9)
        assert sample.latency.count == sum(x.latency.count for x in local)
        assert sample.ttft.count == sum(x.ttft.count for x in local)
        history = History(HostHistorySource(host.metrics), clock=host.clock)
        assert history.sample()
        await host.clock.advance(10)
        assert history.sample()  # two samples subtract: one point
        assert len(history.points) == 1
    finally:
        for runtime in runtimes:
            await asyncio.to_thread(runtime.shutdown)


async def test_any_sdks_genai_metrics_feed_the_summary(host: Host) -> None:
    """An agent that is not ragobs (its own scope, GenAI semconv names only)."""
    foreign = Producer(host.url, service="node-agent")
    try:
        meter = foreign.provider.get_meter("my.genai.instrumentation")
        duration = meter.create_histogram(semconv.OPERATION_DURATION.name, unit="s",
                                          description="GenAI operation duration.")
        for seconds in (0.5, 1.5, 3.0):
            duration.record(seconds, {semconv.REQUEST_MODEL: "gpt"})
        duration.record(2.0, {semconv.REQUEST_MODEL: "gpt", semconv.ERROR_TYPE: "500"})
        await foreign.push()
        summary = host_summary(host.metrics)
        assert (summary.total_requests, summary.successful, summary.failed) == (4, 3, 1)
        assert summary.avg_latency_seconds == pytest.approx(5.0 / 3)
        assert host_resilience(host.metrics) is None
        body = render(host.registry(), None)[0].decode()
        assert 'otel_scope_name="my.genai.instrumentation"' in body
        assert 'service_name="node-agent"' in body
    finally:
        await foreign.stop()


# --- merge rules, fed hand-built OTLP messages ---------------------------------------

def _kv(attrs: dict[str, str]) -> list[KeyValue]:
    return [KeyValue(key=k, value=AnyValue(string_value=v)) for k, v in attrs.items()]


def export(metric: metrics_pb2.Metric, instance: str = "w1",
           scope: str = "test") -> ExportMetricsServiceRequest:
    return ExportMetricsServiceRequest(resource_metrics=[metrics_pb2.ResourceMetrics(
        resource=PbResource(attributes=_kv({"service.name": "svc",
                                            "service.instance.id": instance})),
        scope_metrics=[metrics_pb2.ScopeMetrics(scope=InstrumentationScope(name=scope),
                                                metrics=[metric])],
    )])


def histogram(bounds: list[float], counts: list[int], temporality: int = 1,
              total: float = 1.0) -> metrics_pb2.Metric:
    return metrics_pb2.Metric(name="h", unit="s", histogram=metrics_pb2.Histogram(
        aggregation_temporality=temporality, data_points=[metrics_pb2.HistogramDataPoint(
            attributes=_kv({"k": "v"}), count=sum(counts), sum=total,
            bucket_counts=counts, explicit_bounds=bounds)]))


def gauge(value: float) -> metrics_pb2.Metric:
    return metrics_pb2.Metric(name="g", gauge=metrics_pb2.Gauge(
        data_points=[metrics_pb2.NumberDataPoint(as_double=value)]))


def test_histograms_with_other_bounds_are_rejected_not_merged() -> None:
    metrics = HostMetrics()
    assert metrics.ingest(export(histogram([1.0, 2.0], [1, 1, 0]))).accepted == 1
    result = metrics.ingest(export(histogram([1.0, 5.0], [0, 2, 0])))
    assert (result.accepted, result.rejected) == (0, 1)
    assert "bucket_mismatch" in result.message
    assert metrics.ingest(export(histogram([1.0, 2.0], [0, 1, 1]))).accepted == 1
    snapshot = metrics.snapshot()
    (series,) = snapshot.find("h")[0].series
    assert isinstance(series.value, HistogramValue)
    assert series.value.counts == (1, 2, 1) and series.value.count == 4
    assert snapshot.dropped["bucket_mismatch"] == 1
    assert metrics.ingest(export(histogram([1.0, 2.0], [1, 1]))).rejected == 1  # malformed
    assert metrics.snapshot().dropped["invalid_point"] == 1


def test_exponential_histograms_and_summaries_are_counted_not_merged() -> None:
    metrics = HostMetrics()
    expo = metrics_pb2.Metric(name="e", exponential_histogram=metrics_pb2.ExponentialHistogram(
        aggregation_temporality=1, data_points=[metrics_pb2.ExponentialHistogramDataPoint(
            count=1)] * 2))
    summary = metrics_pb2.Metric(name="s", summary=metrics_pb2.Summary(
        data_points=[metrics_pb2.SummaryDataPoint(count=1)]))
    assert metrics.ingest(export(expo)).rejected == 2
    assert metrics.ingest(export(summary)).rejected == 1
    snapshot = metrics.snapshot()
    assert snapshot.metrics == ()
    assert snapshot.dropped["exponential_histogram"] == 2
    assert snapshot.dropped["unsupported_type"] == 1


def test_gauges_sum_the_last_value_of_each_live_producer() -> None:
    clock = ManualClock()
    metrics = HostMetrics(stale_after=10, clock=clock)
    metrics.ingest(export(gauge(3.0), instance="a"))
    metrics.ingest(export(gauge(5.0), instance="a"))  # last value, not added
    metrics.ingest(export(gauge(2.0), instance="b"))
    assert metrics.snapshot().find("g")[0].series[0].value == 7.0
    clock.sleep_sync(6)
    metrics.ingest(export(gauge(1.0), instance="b"))
    clock.sleep_sync(6)  # a is stale
    assert metrics.snapshot().find("g")[0].series[0].value == 1.0
    clock.sleep_sync(20)  # nobody holds the gauge: the series goes
    assert metrics.snapshot().find("g") == []


def test_a_metric_changing_kind_is_dropped() -> None:
    metrics = HostMetrics()
    metrics.ingest(export(gauge(1.0)))
    clash = metrics_pb2.Metric(name="g", sum=metrics_pb2.Sum(
        aggregation_temporality=1, is_monotonic=True,
        data_points=[metrics_pb2.NumberDataPoint(as_int=1)]))
    assert metrics.ingest(export(clash)).rejected == 1
    assert metrics.snapshot().dropped["type_conflict"] == 1


def test_producers_beyond_the_limit_are_dropped_until_others_go_stale() -> None:
    clock = ManualClock()
    metrics = HostMetrics(stale_after=4, clock=clock, limits=HostLimits(max_producers=2))
    assert metrics.ingest(export(gauge(1.0), instance="a")).accepted == 1
    assert metrics.ingest(export(gauge(1.0), instance="b")).accepted == 1
    assert metrics.ingest(export(gauge(1.0), instance="c")).rejected == 1
    clock.sleep_sync(5)
    assert metrics.ingest(export(gauge(1.0), instance="c")).accepted == 1
    assert metrics.snapshot().dropped["producer_limit"] == 1


@pytest.mark.parametrize(("q", "expected"), [
    (0.5, 1.5), (0.25, 1.0), (0.75, 2.0), (1.0, 2.0), (0.9, 2.0),
])
def test_histogram_quantile_interpolates_like_prometheus(q: float, expected: float) -> None:
    # buckets le=1: 1, le=2: 2, +Inf: 1 (cumulative 1, 3, 4), as histogram_quantile reads them
    assert histogram_quantile(q, [1.0, 2.0], [1, 2, 1]) == pytest.approx(expected)


def test_histogram_quantile_edges() -> None:
    assert histogram_quantile(0.5, [1.0], [0, 0]) is None
    assert histogram_quantile(0.5, [], [3]) is None
    assert histogram_quantile(0.5, [1.0, 2.0], [4, 0, 0]) == 0.5  # first bucket from 0
    assert histogram_quantile(0.99, [1.0, 2.0], [0, 0, 5]) == 2.0  # +Inf: largest bound
    with pytest.raises(ValueError, match="one more"):
        histogram_quantile(0.5, [1.0], [1])
