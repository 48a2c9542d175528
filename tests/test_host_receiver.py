"""The host sidecar's OTLP/HTTP receiver against bad payloads, over real HTTP.

Every test ends with a good push from a real OpenTelemetry SDK: whatever came
before, the receiver is still serving and still merging.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import time
import tracemalloc
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest
from aiohttp import web
from google.protobuf import json_format
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.resource.v1.resource_pb2 import Resource as PbResource
from opentelemetry.sdk.metrics import (
    Counter,
    Histogram,
    MeterProvider,
    ObservableCounter,
    ObservableUpDownCounter,
    UpDownCounter,
)
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry

from ragobs import semconv
from ragobs._exposition import render
from ragobs._host import HostCollector, HostMetrics, ReceiverLimits, add_otlp_routes
from ragobs._host.receiver import inflate_gzip
from ragobs._stream import observe_stream
from ragobs._telemetry import Telemetry
from tests.support import free_port

PROTOBUF = {"Content-Type": "application/x-protobuf"}
#: the labels of export_request()'s series (a scope other than ragobs's is labelled)
SCOPE = {"otel_scope_name": "test", "service_name": "svc"}
MiB = 1024 * 1024


@dataclass
class Receiver:
    metrics: HostMetrics
    url: str
    port: int

    def sample(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        registry = CollectorRegistry()
        registry.register(HostCollector(self.metrics))
        return registry.get_sample_value(name, labels or {})

    def rejected(self, reason: str) -> float | None:
        return self.sample("ragobs_host_rejected_requests_total", {"reason": reason})

    def dropped(self, reason: str) -> float | None:
        return self.sample("ragobs_host_dropped_points_total", {"reason": reason})


async def serve(limits: ReceiverLimits | None = None, **runner_args: object
                ) -> tuple[Receiver, web.AppRunner]:
    metrics = HostMetrics()
    app = web.Application()
    add_otlp_routes(app, metrics, limits=limits)
    runner = web.AppRunner(app, **runner_args)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return Receiver(metrics, f"http://127.0.0.1:{port}/v1/metrics", port), runner


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    found, runner = await serve()
    try:
        yield found
    finally:
        await runner.cleanup()


async def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    async with aiohttp.ClientSession(auto_decompress=False) as session, session.post(
            url, data=body, headers=headers) as response:
        return response.status, await response.read()


def export_request(n_points: int = 1, name: str = "flood", value_prefix: str = "v",
                   service: str = "svc") -> ExportMetricsServiceRequest:
    """A delta counter with ``n_points`` distinct label values."""
    points = [metrics_pb2.NumberDataPoint(
        attributes=[KeyValue(key="user", value=AnyValue(string_value=f"{value_prefix}{i}"))],
        as_int=1) for i in range(n_points)]
    metric = metrics_pb2.Metric(name=name, unit="1", sum=metrics_pb2.Sum(
        aggregation_temporality=metrics_pb2.AGGREGATION_TEMPORALITY_DELTA,
        is_monotonic=True, data_points=points))
    return ExportMetricsServiceRequest(resource_metrics=[metrics_pb2.ResourceMetrics(
        resource=PbResource(attributes=[
            KeyValue(key="service.name", value=AnyValue(string_value=service))]),
        scope_metrics=[metrics_pb2.ScopeMetrics(scope=InstrumentationScope(name="test"),
                                                metrics=[metric])])])


async def good_push(receiver: Receiver) -> None:
    """A real SDK worker pushes three streams; the host must have merged them."""
    before = requests_ok(receiver.metrics)
    provider = MeterProvider(
        resource=Resource.create({"service.name": "svc", "service.instance.id": "good"}),
        metric_readers=[PeriodicExportingMetricReader(OTLPMetricExporter(
            endpoint=receiver.url, preferred_temporality=dict.fromkeys(
                (Counter, UpDownCounter, Histogram, ObservableCounter, ObservableUpDownCounter),
                AggregationTemporality.DELTA)), export_interval_millis=3_600_000)])
    telemetry = Telemetry(meter_provider=provider)
    for _ in range(3):
        for _ in observe_stream(iter(["a", "b"]), telemetry=telemetry, model="m"):
            pass
    try:
        assert await asyncio.to_thread(provider.force_flush)
    finally:
        await asyncio.to_thread(provider.shutdown)
    assert requests_ok(receiver.metrics) == before + 3


def requests_ok(metrics: HostMetrics) -> int:
    return sum(int(s.value) for m in metrics.snapshot().find(semconv.REQUESTS.name)
               for s in m.series if s.attributes.get(semconv.OUTCOME) == "ok")


async def raw_request(port: int, head: str, body_parts: list[bytes] | None = None,
                      *, stream_until_answer: int = 0) -> tuple[int, int, float]:
    """Send a request by hand: (status, body bytes sent, seconds to the answer).

    ``stream_until_answer`` keeps writing that many bytes in 64 KiB chunks
    (chunked encoding) unless the server answers first.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sent = 0
    started = time.monotonic()
    try:
        writer.write(head.encode())
        for part in body_parts or []:
            writer.write(part)
            sent += len(part)
        await writer.drain()
        status_line = asyncio.ensure_future(reader.readline())
        chunk = b"\0" * (64 * 1024)
        frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
        while sent < stream_until_answer and not status_line.done():
            try:
                writer.write(frame)
                await asyncio.wait_for(writer.drain(), 0.5)
            except (ConnectionError, TimeoutError):
                break
            sent += len(chunk)
            await asyncio.sleep(0)
        line = await asyncio.wait_for(status_line, 5)
        elapsed = time.monotonic() - started
        return int(line.split()[1]), sent, elapsed
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


# --- refused requests -------------------------------------------------------------

async def test_a_truncated_protobuf_is_400(receiver: Receiver) -> None:
    body = export_request(5).SerializeToString()
    status, text = await post(receiver.url, body[:-7], PROTOBUF)
    assert status == 400, text
    assert receiver.rejected("malformed") == 1
    status, _ = await post(receiver.url, b"\xff" * 100, PROTOBUF)  # not protobuf at all
    assert status == 400
    await good_push(receiver)


async def test_a_wrong_content_type_or_encoding_is_415(receiver: Receiver) -> None:
    body = export_request().SerializeToString()
    status, _ = await post(receiver.url, body, {"Content-Type": "text/plain"})
    assert status == 415
    status, _ = await post(receiver.url, body, {**PROTOBUF, "Content-Encoding": "deflate"})
    assert status == 415  # OTLP's only compression is gzip
    assert receiver.rejected("unsupported_media_type") == 1
    assert receiver.rejected("unsupported_encoding") == 1
    await good_push(receiver)


async def test_a_declared_50mb_body_is_413_before_any_of_it_is_read(
        receiver: Receiver) -> None:
    head = (f"POST /v1/metrics HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
            f"Content-Length: {50 * MiB}\r\n\r\n")
    status, _, elapsed = await raw_request(receiver.port, head, [b"\0" * 1024])
    assert status == 413
    assert elapsed < 2  # answered without waiting for the 50 MB
    assert receiver.rejected("too_large") == 1
    await good_push(receiver)


async def test_an_undeclared_50mb_stream_is_cut_at_the_limit(receiver: Receiver) -> None:
    head = ("POST /v1/metrics HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
            "Transfer-Encoding: chunked\r\n\r\n")
    status, sent, elapsed = await raw_request(receiver.port, head,
                                              stream_until_answer=50 * MiB)
    assert status == 413
    assert sent < 50 * MiB / 2  # the server answered long before the end
    assert elapsed < 5
    await good_push(receiver)


async def test_a_gzip_bomb_is_refused_without_inflating_it(receiver: Receiver) -> None:
    bomb = gzip.compress(b"\0" * (64 * MiB), compresslevel=9)  # ~64 KiB on the wire
    assert len(bomb) < 200_000
    status, _ = await post(receiver.url, bomb, {**PROTOBUF, "Content-Encoding": "gzip"})
    assert status == 413
    status, _ = await post(receiver.url, b"\x1f\x8b garbage", {**PROTOBUF,
                                                              "Content-Encoding": "gzip"})
    assert status == 400
    # A legitimate gzip export is inflated and merged.
    body = gzip.compress(export_request(3, name="zipped").SerializeToString())
    status, _ = await post(receiver.url, body, {**PROTOBUF, "Content-Encoding": "gzip"})
    assert status == 200
    assert receiver.sample("zipped_total", {**SCOPE, "user": "v1"}) == 1
    await good_push(receiver)


async def test_without_aiohttp_inflating_the_receiver_bounds_gzip_itself() -> None:
    found, runner = await serve(auto_decompress=False)
    try:
        bomb = gzip.compress(b"\0" * (64 * MiB), compresslevel=9)
        status, _ = await post(found.url, bomb, {**PROTOBUF, "Content-Encoding": "gzip"})
        assert status == 413
        body = gzip.compress(export_request(2, name="zipped").SerializeToString())
        status, _ = await post(found.url, body, {**PROTOBUF, "Content-Encoding": "gzip"})
        assert status == 200
        assert found.sample("zipped_total", {**SCOPE, "user": "v0"}) == 1
        await good_push(found)
    finally:
        await runner.cleanup()


def test_inflating_stops_at_the_limit_in_bounded_memory() -> None:
    bomb = zlib.compressobj(9, zlib.DEFLATED, 31)
    data = b"".join([*(bomb.compress(b"\0" * MiB) for _ in range(128)), bomb.flush()])
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="inflates past"):
            inflate_gzip(data, 4 * MiB)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * MiB  # the 128 MiB were never held
    assert inflate_gzip(gzip.compress(b"abc"), 3) == b"abc"
    with pytest.raises(ValueError, match="trailing"):
        inflate_gzip(gzip.compress(b"abc")[:-3], 10)


async def test_a_flood_of_label_values_is_capped_and_counted(receiver: Receiver) -> None:
    body = export_request(10_000).SerializeToString()
    status, answer = await post(receiver.url, body, PROTOBUF)
    assert status == 200
    response = ExportMetricsServiceResponse.FromString(answer)
    assert response.partial_success.rejected_data_points == 8_000
    assert "series_limit" in response.partial_success.error_message
    assert receiver.dropped("series_limit") == 8_000
    assert receiver.sample("ragobs_host_series") == 2_000
    # More new values from another push: still capped, still counted.
    body = export_request(1_000, value_prefix="w").SerializeToString()
    status, _ = await post(receiver.url, body, PROTOBUF)
    assert status == 200
    assert receiver.dropped("series_limit") == 9_000
    await good_push(receiver)


async def test_json_exports_are_accepted(receiver: Receiver) -> None:
    body = json_format.MessageToJson(export_request(2, name="jsoned")).encode()
    status, answer = await post(receiver.url, body, {"Content-Type": "application/json"})
    assert status == 200 and answer.strip().startswith(b"{")
    assert receiver.sample("jsoned_total", {**SCOPE, "user": "v0"}) == 1
    status, _ = await post(receiver.url, b"{not json", {"Content-Type": "application/json"})
    assert status == 400
    await good_push(receiver)


async def test_traces_are_not_this_sidecars_job(receiver: Receiver) -> None:
    status, text = await post(receiver.url.replace("metrics", "traces"), b"", PROTOBUF)
    assert status == 404 and b"metrics only" in text
    assert receiver.rejected("signal_not_supported") == 1


async def test_too_many_concurrent_exports_get_a_retryable_503() -> None:
    found, runner = await serve(ReceiverLimits(max_concurrent=1))
    _, writer = await asyncio.open_connection("127.0.0.1", found.port)
    try:
        # A slow client holds the only slot: headers and half its body sent.
        writer.write(b"POST /v1/metrics HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/x-protobuf\r\nContent-Length: 100\r\n\r\n"
                     + b"\0" * 50)
        await writer.drain()
        for _ in range(100):
            status, _ = await post(found.url, b"", PROTOBUF)
            if status == 503:
                break
            await asyncio.sleep(0.01)
        assert status == 503
        assert (found.rejected("busy") or 0) >= 1
    finally:
        writer.close()
    for _ in range(100):  # the slot frees once the slow client is gone
        status, _ = await post(found.url, b"", PROTOBUF)
        if status == 200:
            break
        await asyncio.sleep(0.01)
    assert status == 200
    try:
        await good_push(found)
    finally:
        await runner.cleanup()


async def test_a_body_that_never_arrives_is_408() -> None:
    found, runner = await serve(ReceiverLimits(read_timeout=0.2))
    try:
        head = ("POST /v1/metrics HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf"
                "\r\nContent-Length: 100\r\n\r\n")
        status, _, elapsed = await raw_request(found.port, head, [b"\0" * 10])
        assert status == 408 and elapsed < 2
        assert found.rejected("timeout") == 1
        await good_push(found)
    finally:
        await runner.cleanup()


async def test_the_metrics_endpoint_renders_the_merged_flood(receiver: Receiver) -> None:
    await post(receiver.url, export_request(3_000).SerializeToString(), PROTOBUF)
    registry = CollectorRegistry()
    registry.register(HostCollector(receiver.metrics))
    body = render(registry, None)[0].decode()
    assert body.count("flood_total{") == 2_000
    assert 'ragobs_host_dropped_points_total{reason="series_limit"} 1000.0' in body
