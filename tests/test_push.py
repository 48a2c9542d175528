"""A worker pushes its metrics to the host sidecar: delta temporality, and
nothing lost while the sidecar is away (within the queue), drops counted.

The receiver here is a plain OTLP/HTTP endpoint that decodes what arrives
with the official protobuf package and adds up the deltas.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality
from prometheus_client import CollectorRegistry

import ragobs
from ragobs._push import BufferedExporter
from ragobs._runtime import Runtime
from tests.support import free_port


class DeltaReceiver:
    """Adds up the delta sums of ``ragobs.requests`` it receives."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.requests = 0.0
        self.dropped = 0.0
        self.pushes = 0
        self.temporalities: set[int] = set()
        self._runner: web.AppRunner | None = None

    async def _metrics(self, request: web.Request) -> web.Response:
        message = ExportMetricsServiceRequest()
        message.ParseFromString(await request.read())
        self.pushes += 1
        for rm in message.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if metric.HasField("sum"):
                        self.temporalities.add(metric.sum.aggregation_temporality)
                        total = sum(p.as_int or p.as_double for p in metric.sum.data_points)
                        if metric.name == "ragobs.requests":
                            self.requests += total
                        elif metric.name == "ragobs.push.dropped":
                            self.dropped += total
        return web.Response(status=200, content_type="application/x-protobuf")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/metrics", self._metrics)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


@pytest.fixture
async def receiver() -> AsyncIterator[DeltaReceiver]:
    found = DeltaReceiver(free_port())
    await found.start()
    try:
        yield found
    finally:
        await found.stop()


def _worker(url: str, interval: float = 0.1) -> Runtime:
    return ragobs.setup(serve=True, set_global=False, registry=CollectorRegistry(),
                        sidecar_url=url, push_interval=interval)


async def _serve(runtime: Runtime, n: int) -> None:
    for _ in range(n):
        for _chunk in ragobs.observe_stream(["a", "b"], telemetry=runtime.telemetry):
            await asyncio.sleep(0)


async def _until(condition: object, limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition never became true"
        await asyncio.sleep(0.02)


async def test_a_worker_pushes_deltas_and_serves_nothing(receiver: DeltaReceiver) -> None:
    runtime = _worker(f"http://127.0.0.1:{receiver.port}")
    try:
        assert runtime.sidecar is None and runtime.pushing_to is not None
        await _serve(runtime, 10)
        await _until(lambda: receiver.requests == 10)
        await _serve(runtime, 5)
        await _until(lambda: receiver.requests == 15)
    finally:
        runtime.shutdown()
    assert receiver.temporalities == {AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA}
    assert receiver.requests == 15  # deltas: nothing counted twice


async def test_batches_wait_while_the_sidecar_is_away_and_arrive_when_it_returns() -> None:
    port = free_port()
    runtime = _worker(f"http://127.0.0.1:{port}")
    try:
        await _serve(runtime, 7)
        await asyncio.sleep(0.5)  # several pushes fail: nobody listens
        late = DeltaReceiver(port)
        await late.start()
        try:
            await _serve(runtime, 3)
            await _until(lambda: late.requests == 10)
        finally:
            await late.stop()
    finally:
        runtime.shutdown()


def test_past_its_bound_the_queue_drops_the_oldest_and_counts_it() -> None:
    from opentelemetry.sdk.metrics.export import (
        MetricExporter,
        MetricExportResult,
        MetricsData,
    )

    class Down(MetricExporter):
        def export(self, metrics_data: MetricsData, timeout_millis: float = 0,
                   **kwargs: object) -> MetricExportResult:
            return MetricExportResult.FAILURE

        def force_flush(self, timeout_millis: float = 0) -> bool:
            return True

        def shutdown(self, timeout_millis: float = 0, **kwargs: object) -> None:
            pass

    exporter = BufferedExporter(Down(), max_pending=3)
    batch = MetricsData(resource_metrics=[])
    for _ in range(5):
        exporter.export(batch)
    assert exporter.pending == 3
    assert exporter.dropped.value == 2
    with pytest.raises(ValueError, match=r"max_pending must be an int in 1\.\.100000"):
        BufferedExporter(Down(), max_pending=0)


def test_a_bad_sidecar_url_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="sidecar_url must be an http:// URL"):
        ragobs.setup(serve=False, set_global=False, sidecar_url="localhost:9464")
    monkeypatch.setenv("RAGOBS_SIDECAR_URL", "nonsense")
    with pytest.raises(ValueError, match="RAGOBS_SIDECAR_URL must be an http:// URL"):
        ragobs.setup(serve=False, set_global=False)
    with pytest.raises(ValueError, match=r"push_interval must be a number of seconds"):
        ragobs.setup(serve=False, set_global=False, sidecar_url="http://127.0.0.1:1",
                     push_interval=0)
