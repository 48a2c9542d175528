"""The sidecar's history (ragobs._history): exact interval figures on a manual clock."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry

import ragobs
from ragobs import semconv
from ragobs._history import ExplicitBuckets, History, InProcessSource, RawSample
from ragobs._host.history import HostHistorySource
from ragobs._host.merge import HostMetrics
from ragobs._report import Reporter, as_json
from ragobs._server.app import create_app
from ragobs._sketch import QuantileSketch
from ragobs._stages import stage
from ragobs._stream import observe_stream
from ragobs._summary_stats import MAX_STAGES, SketchBuckets, SummaryStats
from ragobs._telemetry import Telemetry
from ragobs.clock import ManualClock
from ragobs.semconv import OTHER, Outcome
from tests.conftest import OTelHarness

T0 = 1_700_000_000.0
OUTCOMES = ("ok", "error", "timeout", "cancelled")


def strict(body: object) -> Any:
    """``body`` through strict JSON both ways: no NaN or infinity survives."""
    def refuse(name: str) -> None:
        raise AssertionError(f"{name} in JSON")

    return json.loads(json.dumps(body, allow_nan=False), parse_constant=refuse)


def sketch_of(values: list[float]) -> QuantileSketch:
    sketch = QuantileSketch()
    for v in values:
        sketch.add(v)
    return sketch


def pcts(values: list[float]) -> dict[str, float | None]:
    """What an interval holding exactly ``values`` must report (the sketch's own answer)."""
    sketch = sketch_of(values)
    return {"p50": sketch.quantile(0.5), "p95": sketch.quantile(0.95),
            "p99": sketch.quantile(0.99)}


def finish(stats: SummaryStats, outcome: Outcome, latency: float = 1.0,
           ttft: float | None = 0.1, *, tokens: int = 0, rate: float | None = None) -> None:
    stats.started()
    stats.record(outcome, latency, ttft, tokens, rate)


def history_of(stats: SummaryStats, telemetry: Telemetry | None = None, *, points: int = 90,
               interval: float = 10.0) -> tuple[History, ManualClock]:
    clock = ManualClock(start=500.0)
    history = History(InProcessSource(stats, telemetry), interval=interval, points=points,
                      clock=clock, wall=lambda: T0)
    return history, clock


async def tick(history: History, clock: ManualClock, seconds: float = 10.0) -> None:
    await clock.advance(seconds)
    assert history.sample_if_due()


# --- points ---------------------------------------------------------------------------------

async def test_interval_rates_and_percentiles_are_exact() -> None:
    stats = SummaryStats()
    # Before the first sample: never part of any interval.
    for _ in range(3):
        finish(stats, Outcome.OK, latency=100.0, ttft=50.0, tokens=999, rate=999.0)
    history, clock = history_of(stats)
    assert history.sample()  # the first sample only starts the first interval
    assert strict(history.as_json())["points"] == []

    latencies1 = [0.8, 1.2, 1.5, 2.0, 3.5, 9.0]
    ttfts1 = [0.1, 0.2, 0.25, 0.3, 0.4, 1.1]
    for lat, ttft in zip(latencies1, ttfts1, strict=True):
        finish(stats, Outcome.OK, lat, ttft, tokens=40, rate=25.0)
    finish(stats, Outcome.OK, 0.5, None, tokens=0, rate=None)  # no first token: no TTFT
    finish(stats, Outcome.ERROR, 4.0, 0.2, tokens=3)
    finish(stats, Outcome.TIMEOUT, 30.0, None)
    finish(stats, Outcome.TIMEOUT, 30.0, None)
    finish(stats, Outcome.CANCELLED, 0.3, 0.1, tokens=2)
    stats.started()  # still running when the interval closes
    stats.started()
    await tick(history, clock)

    latencies2 = [5.0, 6.0, 7.0, 40.0]
    for lat in latencies2:
        finish(stats, Outcome.OK, lat, 2.0, tokens=100, rate=10.0)
    await tick(history, clock, 20.0)  # a late sample: rates over the real 20 s

    body = strict(history.as_json())
    first, second = body["points"]
    assert first == {
        "t": T0 + 10.0,
        "seconds": 10.0,
        "requests_per_second": {"ok": 0.7, "error": 0.1, "timeout": 0.2, "cancelled": 0.1},
        "ttft_seconds": pcts(ttfts1),
        "latency_seconds": pcts([*latencies1, 0.5]),
        "tokens_per_second": 24.0,  # 6 x 40 output tokens of successful requests in 10 s
        "stream_tokens_per_second": 25.0,
        "in_flight": 2,
    }
    assert second["t"] == T0 + 30.0 and second["seconds"] == 20.0
    assert second["requests_per_second"] == {"ok": 0.2, "error": 0.0, "timeout": 0.0,
                                             "cancelled": 0.0}
    # Only this interval's requests: the earlier ones (and the 100 s before sampling) are out.
    assert second["latency_seconds"] == pcts(latencies2)
    assert second["ttft_seconds"] == pcts([2.0] * 4)
    assert second["tokens_per_second"] == 20.0 and second["stream_tokens_per_second"] == 10.0
    # The sketch's answers are within 1 % of the true values at those ranks.
    assert second["latency_seconds"]["p50"] == pytest.approx(6.0, rel=0.01)
    assert second["latency_seconds"]["p99"] == pytest.approx(7.0, rel=0.01)  # rank 0.99 x 3
    assert first["latency_seconds"]["p50"] == pytest.approx(1.5, rel=0.01)
    # And differ from the cumulative ones /api/summary reports.
    assert stats.snapshot().latency_seconds.p50 != second["latency_seconds"]["p50"]
    assert body["interval_seconds"] == 10.0 and body["capacity"] == 90
    assert body["window_seconds"] == 30.0


async def test_empty_intervals_give_nulls_and_zero_rates() -> None:
    stats = SummaryStats()
    history, clock = history_of(stats)
    history.sample()
    stats.started()
    await tick(history, clock)
    stats.record(Outcome.ERROR, 2.0, 0.5, 1, None)  # it failed: no successful figures
    await tick(history, clock)
    text = json.dumps(history.as_json(), allow_nan=False)
    quiet, failed = strict(history.as_json())["points"]
    nulls = {"p50": None, "p95": None, "p99": None}
    for point in (quiet, failed):
        assert point["ttft_seconds"] == point["latency_seconds"] == nulls
        assert point["stream_tokens_per_second"] is None
        assert point["tokens_per_second"] == 0.0
    assert quiet["requests_per_second"] == dict.fromkeys(OUTCOMES, 0.0)
    assert quiet["in_flight"] == 1 and failed["in_flight"] == 0
    assert failed["requests_per_second"]["error"] == 0.1
    assert "NaN" not in text and "Infinity" not in text


async def test_the_ring_is_bounded_and_the_window_follows_it() -> None:
    stats = SummaryStats()
    history, clock = history_of(stats, points=5)
    history.sample()
    for i in range(12):
        stats.record_stage("retrieve", 0.5)
        if i >= 8:  # only the last four intervals fall in the kept window
            stats.record_stage("generate", 2.0)
        await tick(history, clock)
    body = strict(history.as_json())
    assert len(history.points) == 5 and len(body["points"]) == 5
    assert [p["t"] for p in body["points"]] == [T0 + 10.0 * i for i in range(8, 13)]
    assert body["window_seconds"] == 50.0
    assert body["by_stage"] == [
        {"stage": "generate", "count": 4, "avg_seconds": 2.0, "total_seconds": 8.0},
        {"stage": "retrieve", "count": 5, "avg_seconds": 0.5, "total_seconds": 2.5},
    ]
    # The breakdown tables kept are one more than the points, never more.
    assert len(history._tables) == 6


async def test_a_sample_at_the_same_instant_is_dropped() -> None:
    stats = SummaryStats()
    history, clock = history_of(stats)
    assert history.sample()
    etag = history.etag
    finish(stats, Outcome.OK)
    assert not history.sample()  # zero seconds since the last: no interval to divide by
    assert not history.sample_if_due()
    assert history.etag == etag and history.due_in() == 10.0
    await clock.advance(4.0)
    assert history.due_in() == 6.0 and not history.sample_if_due()
    await clock.advance(6.0)
    assert history.sample_if_due() and history.etag != etag
    point = strict(history.as_json())["points"][0]
    assert point["requests_per_second"]["ok"] == 0.1  # the dropped sample lost nothing


async def test_the_sampler_task_runs_on_the_clock() -> None:
    stats = SummaryStats()
    history, clock = history_of(stats)
    task = asyncio.create_task(history.run())
    try:
        await clock.advance(0)
        assert history.due_in() == 10.0 and history.points == []  # first sample taken at once
        for n in (3, 2):
            for _ in range(n):
                finish(stats, Outcome.OK, 1.0, 0.5)
            await clock.advance(10.0)
        points = strict(history.as_json())["points"]
        assert [p["requests_per_second"]["ok"] for p in points] == [0.3, 0.2]
        assert [p["t"] for p in points] == [T0 + 10.0, T0 + 20.0]
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_a_failing_source_does_not_stop_the_sampler() -> None:
    class Flaky:
        def __init__(self) -> None:
            self.calls = 0
            self.stats = SummaryStats()

        def sample(self) -> RawSample:
            self.calls += 1
            if self.calls == 2:
                raise RuntimeError("source unavailable")
            return InProcessSource(self.stats).sample()

    source = Flaky()
    clock = ManualClock()
    history = History(source, clock=clock)
    task = asyncio.create_task(history.run())
    try:
        await clock.advance(0)
        await clock.advance(10.0)  # fails: retried an interval later
        await clock.advance(10.0)
        assert source.calls == 3 and len(history.points) == 1
        assert strict(history.as_json())["points"][0]["seconds"] == 20.0
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


# --- breakdowns -------------------------------------------------------------------------------

async def streams(telemetry: Telemetry, model: str, ok: int = 0, errors: int = 0,
                  cancelled: int = 0) -> None:
    async def source(fail: bool) -> AsyncIterator[str]:
        for i in range(3):
            if fail and i == 1:
                raise ConnectionResetError("reset")
            yield f"chunk {i} "

    async def one(kind: str) -> None:
        stream = observe_stream(source(kind == "error"), provider="sim", model=model,
                                telemetry=telemetry)
        try:
            async for _ in stream:
                if kind == "cancel":
                    break
        except ConnectionResetError:
            pass
        finally:
            await stream.aclose()

    for kind in ["ok"] * ok + ["error"] * errors + ["cancel"] * cancelled:
        await one(kind)


async def test_by_model_counts_calls_and_by_stage_stages(otel: OTelHarness) -> None:
    tel = otel.telemetry
    history, clock = history_of(tel.summary, tel)
    await streams(tel, "before", ok=4)  # before the window: not in it
    history.sample()
    await streams(tel, "gpt-small", ok=3, errors=1)
    await streams(tel, "gpt-large", ok=6, cancelled=2)  # cancelled: calls, not failed
    async with stage("retrieve", telemetry=tel):
        await asyncio.sleep(0)
    with stage("rerank", telemetry=tel):
        pass
    with stage("rerank", telemetry=tel):
        pass
    await tick(history, clock)
    body = strict(history.as_json())
    assert body["by_model"] == [
        {"model": "gpt-large", "calls": 8, "failed": 0, "failure_rate": 0.0},
        {"model": "gpt-small", "calls": 4, "failed": 1, "failure_rate": 0.25},
    ]
    # The rows agree with the calls' histogram the /metrics exposition reads.
    for row in body["by_model"]:
        model = row["model"]
        assert otel.count(semconv.OPERATION_DURATION.name, gen_ai__request__model=model) == (
            row["calls"])
        assert otel.count(semconv.OPERATION_DURATION.name, gen_ai__request__model=model,
                          ragobs__outcome="error") == row["failed"]
    stages = {row["stage"]: row for row in body["by_stage"]}
    assert set(stages) == {"retrieve", "rerank"}
    assert stages["retrieve"]["count"] == 1 and stages["rerank"]["count"] == 2
    totals = tel.summary.totals().stages
    assert stages["rerank"]["total_seconds"] == totals["rerank"][1]
    assert stages["rerank"]["avg_seconds"] == totals["rerank"][1] / 2
    # The stage's histogram counted the same runs.
    assert otel.count(semconv.STAGE_DURATION.name, ragobs__stage="rerank") == 2


async def test_breakdown_rows_are_bounded_by_the_label_caps() -> None:
    tel = Telemetry(max_label_values=3)
    history, clock = history_of(tel.summary, tel)
    history.sample()
    for i in range(10):
        await streams(tel, f"model-{i}", ok=1)
    stats = tel.summary
    for i in range(MAX_STAGES + 20):
        stats.record_stage(f"stage-{i}", 1.0)
    await tick(history, clock)
    body = strict(history.as_json())
    models = {r["model"]: r["calls"] for r in body["by_model"]}
    assert models == {OTHER: 7, "model-0": 1, "model-1": 1, "model-2": 1}
    stages = {r["stage"]: r["count"] for r in body["by_stage"]}
    assert len(stages) == MAX_STAGES + 1 and stages[OTHER] == 20


async def agent_turns(tel: Telemetry, n: int = 3) -> None:
    """``n`` agent turns (no model of their own), each calling a router and an answering
    model; the second also calls a third model that fails and is recovered from."""

    async def source(n: int, fail: bool = False) -> AsyncIterator[str]:
        for i in range(n):
            if fail and i == 1:
                raise ConnectionResetError("reset")
            yield f"chunk {i} "

    async def agent(flaky: bool) -> AsyncIterator[str]:
        async for _ in ragobs.observe_stream(source(1), provider="p1", model="router",
                                             telemetry=tel):
            pass
        if flaky:
            with pytest.raises(ConnectionResetError):
                async for _ in ragobs.observe_stream(source(3, fail=True), provider="p2",
                                                     model="flaky", telemetry=tel):
                    pass
        async for chunk in ragobs.observe_stream(source(3), provider="p1", model="answer",
                                                 telemetry=tel):
            yield chunk

    for i in range(n):
        async for _ in ragobs.observe_stream(agent(i == 1), agent="helper", telemetry=tel):
            pass


async def test_by_model_counts_an_agents_calls_not_its_turns(otel: OTelHarness) -> None:
    tel = otel.telemetry
    history, clock = history_of(tel.summary, tel)
    history.sample()
    await agent_turns(tel)
    await tick(history, clock)
    body = strict(history.as_json())
    assert tel.summary.snapshot().total_requests == 3  # the turns, all answered
    assert body["points"][0]["requests_per_second"]["ok"] == 0.3
    assert body["by_model"] == [
        {"model": "answer", "calls": 3, "failed": 0, "failure_rate": 0.0},
        {"model": "router", "calls": 3, "failed": 0, "failure_rate": 0.0},
        {"model": "flaky", "calls": 1, "failed": 1, "failure_rate": 1.0},
    ]
    assert sum(r["calls"] for r in body["by_model"]) == otel.count(
        semconv.OPERATION_DURATION.name)


async def test_the_hosts_by_model_counts_calls_as_a_process_does() -> None:
    """The host's samples, from the OTLP metrics of the same agent turns, give the same
    rows as the process that made them."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(resource=Resource.create({"service.name": "agents"}),
                             metric_readers=[reader])
    tel = Telemetry(meter_provider=provider)
    clock = ManualClock(start=500.0)
    host = HostMetrics(clock=clock)

    def push() -> None:
        data = reader.get_metrics_data()
        assert data is not None
        host.ingest(encode_metrics(data))

    local = History(InProcessSource(tel.summary, tel), clock=clock, wall=lambda: T0)
    merged = History(HostHistorySource(host), clock=clock, wall=lambda: T0)
    try:
        await agent_turns(tel, 1)  # before the window
        push()
        assert local.sample() and merged.sample()
        await agent_turns(tel, 3)
        push()
        await clock.advance(10.0)
        assert local.sample() and merged.sample()
        assert HostHistorySource(host).sample().by_model == (
            InProcessSource(tel.summary, tel).sample().by_model)
        rows = strict(merged.as_json())["by_model"]
        assert rows == strict(local.as_json())["by_model"] == [
            {"model": "answer", "calls": 3, "failed": 0, "failure_rate": 0.0},
            {"model": "router", "calls": 3, "failed": 0, "failure_rate": 0.0},
            {"model": "flaky", "calls": 1, "failed": 1, "failure_rate": 1.0},
        ]
        assert strict(merged.as_json())["points"][0]["requests_per_second"]["ok"] == 0.3
    finally:
        provider.shutdown()


async def test_one_model_of_two_providers_is_one_row() -> None:
    tel = Telemetry()
    history, clock = history_of(tel.summary, tel)
    history.sample()
    for provider in ("openai", "azure.ai.openai"):
        for _ in observe_stream(iter(["x", "y"]), provider=provider, model="gpt-4o",
                                telemetry=tel):
            pass
    await tick(history, clock)
    assert strict(history.as_json())["by_model"] == [
        {"model": "gpt-4o", "calls": 2, "failed": 0, "failure_rate": 0.0}]


async def test_requests_without_a_model_and_a_bare_summary() -> None:
    tel = Telemetry()
    history, clock = history_of(tel.summary, tel)
    history.sample()

    async def gen() -> AsyncIterator[str]:
        yield "x"

    async for _ in observe_stream(gen(), telemetry=tel):
        pass
    await tick(history, clock)
    assert strict(history.as_json())["by_model"][0]["model"] is None

    bare, clock = history_of(SummaryStats())  # no telemetry: no model rows
    bare.sample()
    await tick(bare, clock)
    assert strict(bare.as_json())["by_model"] == []


# --- another source: histograms with bucket bounds, counts that restart ----------------------

class ScriptedSource:
    """A source as a host sidecar would be: cumulative OTLP-style histograms."""

    BOUNDS = (0.1, 0.5, 1.0, 5.0)

    def __init__(self) -> None:
        self.samples: list[RawSample] = []

    def push(self, requests: Mapping[str, int], latency: list[int], tokens: int,
             by_model: Mapping[tuple[str | None, str], int] | None = None) -> None:
        hist = ExplicitBuckets(self.BOUNDS, latency)
        self.samples.append(RawSample(requests=requests, output_tokens=tokens, ttft=hist,
                                      latency=hist, in_flight=1, by_model=by_model or {}))

    def sample(self) -> RawSample:
        return self.samples.pop(0)


async def test_explicit_bucket_histograms_and_restarts() -> None:
    source = ScriptedSource()
    clock = ManualClock()
    history = History(source, clock=clock, wall=lambda: T0)
    source.push({"ok": 10}, [0, 10, 0, 0, 0], 100, {("m", "calls"): 10})
    source.push({"ok": 30, "error": 2}, [0, 10, 10, 10, 0], 300,
                {("m", "calls"): 34, ("m", "failed"): 2})
    # A worker restarted: the merged counts went down; the new values count from zero.
    source.push({"ok": 5}, [0, 0, 5, 0, 0], 50, {("m", "calls"): 5, ("m", "failed"): 1})
    source.push({"ok": 5}, [0, 0, 5, 0, 0], 50, {("m", "calls"): 5, ("m", "failed"): 1})
    history.sample()
    for _ in range(3):
        await tick(history, clock)
    p1, p2, p3 = strict(history.as_json())["points"]
    # Interval 1: 20 values, 10 in (0.5, 1] and 10 in (1, 5]: interpolated within buckets.
    assert p1["requests_per_second"] == {"ok": 2.0, "error": 0.2, "timeout": 0.0,
                                         "cancelled": 0.0}
    assert p1["latency_seconds"] == {"p50": 1.0, "p95": 4.6, "p99": pytest.approx(4.92)}
    assert p1["tokens_per_second"] == 20.0
    assert p2["requests_per_second"]["ok"] == 0.5 and p2["tokens_per_second"] == 5.0
    assert p2["latency_seconds"]["p50"] == 0.75
    assert p3["latency_seconds"]["p50"] is None and p3["requests_per_second"]["ok"] == 0.0
    # The window starts at the first sample: 34 calls then a restart to 5 (1 failed).
    assert strict(history.as_json())["by_model"] == [
        {"model": "m", "calls": 5, "failed": 1, "failure_rate": 0.2}]


def test_distributions_refuse_what_they_cannot_subtract() -> None:
    log = SketchBuckets.of(sketch_of([1.0]))
    hist = ExplicitBuckets((1.0,), [1, 0])
    with pytest.raises(TypeError):
        log.minus(hist)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        hist.minus(log)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        hist.minus(ExplicitBuckets((2.0,), [1, 0]))
    with pytest.raises(ValueError):
        ExplicitBuckets((1.0, 2.0), [1, 0])
    with pytest.raises(ValueError):
        ExplicitBuckets((2.0, 1.0), [0, 0, 0])
    assert ExplicitBuckets((1.0,), [0, 0]).quantile(0.5) is None
    assert ExplicitBuckets((1.0,), [0, 3]).quantile(0.5) == 1.0  # overflow: the largest bound
    # A sketch copy subtracts to exactly the later values; a shrunken one is a restart.
    sketch = sketch_of([1.0, 2.0])
    before = SketchBuckets.of(sketch)
    sketch.add(0.0)
    sketch.add(8.0)
    diff = SketchBuckets.of(sketch).minus(before)
    assert diff.count == 2 and diff.zeros == 1
    assert diff.quantile(1.0) == sketch_of([0.0, 8.0]).quantile(1.0)
    assert before.minus(SketchBuckets.of(sketch)) == before


@pytest.mark.parametrize("kwargs", [{"interval": 0}, {"interval": float("inf")},
                                    {"interval": True}, {"points": 0}, {"points": 2.5}])
def test_history_arguments_are_checked(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        History(InProcessSource(SummaryStats()), **kwargs)
    with pytest.raises(TypeError):
        History(object())  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        InProcessSource(object())  # type: ignore[arg-type]


# --- GET /api/history -----------------------------------------------------------------------------

async def test_api_history_serves_strict_json_with_an_etag() -> None:
    stats = SummaryStats()
    clock = ManualClock()
    history = History(InProcessSource(stats), clock=clock, wall=lambda: T0)
    reporter = Reporter(stats, service="svc")
    app = create_app(CollectorRegistry(), reporter, history=history)
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/api/history")  # the app's start took the first sample
        assert resp.status == 200 and resp.headers["Cache-Control"] == "no-store"
        assert resp.content_type == "application/json"
        first = strict(json.loads(await resp.text()))
        assert first["points"] == [] and first["interval_seconds"] == 10.0
        etag = resp.headers["ETag"]

        resp = await client.get("/api/history", headers={"If-None-Match": etag})
        assert resp.status == 304 and resp.headers["ETag"] == etag

        finish(stats, Outcome.OK, 2.0, 0.5, tokens=30, rate=15.0)
        await clock.advance(10.0)  # the sampler task takes it
        resp = await client.get("/api/history", headers={"If-None-Match": f'"x", {etag}'})
        assert resp.status == 200 and resp.headers["ETag"] != etag
        (point,) = strict(await resp.json())["points"]
        assert point["t"] == T0 + 10.0 and point["requests_per_second"]["ok"] == 0.1
        assert point["latency_seconds"] == pcts([2.0])

        # /api/summary is what it was: the one report's JSON.
        resp = await client.get("/api/summary")
        summary = await resp.json()
        expected = as_json(reporter.report())
        assert summary.keys() == expected.keys()
        assert summary["total_requests"] == 1

    with pytest.raises(TypeError):
        create_app(CollectorRegistry(), stats, history=object())  # type: ignore[arg-type]


async def test_api_history_samples_on_demand_when_stale() -> None:
    """No sampler task advancing (a stalled loop, or a clock moved by hand): the reader
    gets the sample the interval owes it."""
    stats = SummaryStats()
    clock = ManualClock()
    history = History(InProcessSource(stats), clock=clock)
    app = create_app(CollectorRegistry(), stats, history=history)
    async with TestClient(TestServer(app)) as client:
        finish(stats, Outcome.TIMEOUT)
        clock._now += 10.0  # time passes without waking the sampler
        body = await (await client.get("/api/history")).json()
        assert [p["requests_per_second"]["timeout"] for p in body["points"]] == [0.1]


async def test_api_history_survives_a_failing_source() -> None:
    class Broken:
        def sample(self) -> RawSample:
            raise RuntimeError("no workers")

    stats = SummaryStats()
    app = create_app(CollectorRegistry(), stats, history=History(Broken(), clock=ManualClock()))
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/api/history")
        assert resp.status == 200
        body = strict(await resp.json())
        assert body["points"] == [] and body["by_model"] == [] and body["window_seconds"] == 0.0
        assert (await client.get("/api/summary")).status == 200
