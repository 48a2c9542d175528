"""Seed-compatible StreamingMetrics, the exact aggregates and the quantile sketch."""

from __future__ import annotations

import asyncio
import gc
import io
import math
import random

import pytest

from ragobs import semconv
from ragobs._sketch import QuantileSketch
from ragobs._summary import StreamingMetrics
from ragobs._summary_stats import SummaryStats
from ragobs.semconv import Outcome
from tests.conftest import OTelHarness


@pytest.mark.realtime
async def test_seed_test_2_runs_unchanged(otel: OTelHarness, capsys: pytest.CaptureFixture[str]
                                          ) -> None:
    # The seed's Test 2, with its delays shortened.
    metrics = StreamingMetrics(telemetry=otel.telemetry)
    for i in range(5):
        session = metrics.start_session()
        await asyncio.sleep(0.01)
        metrics.record_first_token(session)
        for _ in range(20 + i):
            session["token_count"] += 1
            await asyncio.sleep(0.0005)
        if i == 3:
            session["error"] = "Simulated error"
        metrics.finish_session(session)
    metrics.display_summary()
    out = capsys.readouterr().out
    lines = [line.strip() for line in out.splitlines()]
    assert "Total Requests: 5" in lines
    assert "Successful: 4 (80.0%)" in lines
    assert "Failed: 1 (20.0%)" in lines
    for label in ("Avg TTFT: ", "Avg Latency: ", "Avg Tokens: ", "Avg Tokens/sec: "):
        assert any(line.startswith(label) for line in lines), label
    assert "Avg Tokens: 21.8" in lines  # (20 + 21 + 22 + 24) / 4 successful = 21.75
    ttft_line = next(line for line in lines if line.startswith("Avg TTFT: "))
    assert 0.01 <= float(ttft_line.removeprefix("Avg TTFT: ").rstrip("s")) < 0.5
    assert len(metrics.sessions) == 5
    assert metrics.sessions[3]["error"] == "Simulated error"
    assert [s["error"] for s in metrics.sessions[-2:]] == [  # seed code slices the list
        metrics.sessions[3]["error"], metrics.sessions[4]["error"]]
    assert all(s["first_token_time"] is not None for s in metrics.sessions)
    # The same sessions reached the OpenTelemetry instruments.
    assert otel.value(semconv.REQUESTS.name, ragobs__outcome="ok") == 4
    assert otel.value(semconv.REQUESTS.name, error__type="SessionError") == 1
    assert otel.total(semconv.TOKEN_USAGE.name, ragobs__outcome="ok") == 87
    assert len(otel.spans()) == 5


def test_session_is_a_seed_dict(otel: OTelHarness) -> None:
    metrics = StreamingMetrics(telemetry=otel.telemetry)
    session = metrics.start_session()
    assert session["first_token_time"] is None
    assert session["token_count"] == 0
    assert session["error"] is None
    metrics.finish_session(session)
    assert session["latency"] >= 0 and session["ttft"] is None
    metrics.finish_session(session)  # finishing twice records once
    assert otel.value(semconv.REQUESTS.name) == 1
    assert len(metrics.sessions) == 1


def test_exception_errors_keep_their_type_and_timeouts(otel: OTelHarness) -> None:
    metrics = StreamingMetrics(telemetry=otel.telemetry)
    for error in (ConnectionError("reset"), TimeoutError("slow")):
        session = metrics.start_session()
        session["error"] = error
        metrics.finish_session(session)
    assert otel.value(semconv.REQUESTS.name, ragobs__outcome="error",
                      error__type="ConnectionError") == 1
    assert otel.value(semconv.REQUESTS.name, ragobs__outcome="timeout") == 1
    summary = metrics.summary()
    assert (summary.failed, summary.timeouts, summary.successful) == (2, 1, 0)
    assert summary.avg_latency_seconds is None


def test_abandoned_session_is_recorded_as_cancelled(otel: OTelHarness) -> None:
    metrics = StreamingMetrics(telemetry=otel.telemetry)
    metrics.start_session()  # dropped at once
    gc.collect()
    assert otel.value(semconv.REQUESTS.name, ragobs__outcome="cancelled") == 1
    assert otel.value(semconv.REQUESTS_ACTIVE.name) == 0
    assert metrics.summary().cancelled == 1


def test_sessions_window_is_bounded_and_aggregates_stay_exact(otel: OTelHarness) -> None:
    metrics = StreamingMetrics(telemetry=otel.telemetry, keep_sessions=10)
    for i in range(250):
        session = metrics.start_session()
        metrics.record_first_token(session)
        session["token_count"] = i
        metrics.finish_session(session)
    assert len(metrics.sessions) == 10
    assert [s["token_count"] for s in metrics.sessions] == list(range(240, 250))
    summary = metrics.summary()
    assert summary.total_requests == 250
    assert summary.avg_tokens == pytest.approx(sum(range(250)) / 250)


def test_bad_arguments_name_themselves(otel: OTelHarness) -> None:
    for bad in (-1, 10**100):
        with pytest.raises(ValueError, match=r"keep_sessions must be an int in 0\.\.10000000"):
            StreamingMetrics(keep_sessions=bad)
    with pytest.raises(ValueError, match="operation must be a non-empty str"):
        StreamingMetrics(operation="")
    metrics = StreamingMetrics(telemetry=otel.telemetry)
    session = metrics.start_session()
    session["token_count"] = -3
    with pytest.raises(ValueError, match=r"session\['token_count'\] must be an int >= 0"):
        metrics.finish_session(session)
    # Rejected, yet recorded once as a failure: never left in flight.
    assert otel.value("ragobs.requests.active") == 0
    assert otel.value("ragobs.requests", ragobs__outcome="error", error__type="ValueError") == 1
    assert len(metrics.sessions) == 1
    session["token_count"] = None
    with pytest.raises(ValueError, match="got None"):
        metrics.finish_session(session)
    assert otel.value("ragobs.requests") == 1  # not twice
    with pytest.raises(TypeError, match="session must come from"):
        metrics.finish_session({"token_count": 0})  # type: ignore[arg-type]


def test_display_summary_with_no_sessions() -> None:
    out = io.StringIO()
    StreamingMetrics().display_summary(file=out)
    text = out.getvalue()
    assert "Total Requests: 0" in text
    assert "Avg TTFT: n/a" in text


def test_summary_stats_counts_and_averages_over_successes() -> None:
    stats = SummaryStats()
    for outcome, latency, ttft, tokens, rate in (
        (Outcome.OK, 1.0, 0.2, 10, 12.5),
        (Outcome.OK, 3.0, 0.4, 30, 37.5),
        (Outcome.ERROR, 9.0, 5.0, 1, None),
        (Outcome.CANCELLED, 0.1, None, 0, None),
    ):
        stats.started()
        stats.record(outcome, latency, ttft, tokens, rate)
    s = stats.snapshot()
    assert (s.total_requests, s.successful, s.failed, s.cancelled) == (4, 2, 1, 1)
    assert s.success_rate == 0.5 and s.failure_rate == 0.25
    assert s.avg_latency_seconds == 2.0
    assert s.avg_ttft_seconds == pytest.approx(0.3)
    assert s.avg_tokens == 20.0
    assert s.avg_tokens_per_second == 25.0
    assert s.in_flight == 0


@pytest.mark.parametrize("seed", range(5))
def test_sketch_quantiles_are_within_one_percent(seed: int) -> None:
    rng = random.Random(seed)
    values = [rng.lognormvariate(-1, 1.5) for _ in range(20_000)] + [0.0] * 50
    sketch = QuantileSketch(0.01)
    for v in values:
        sketch.add(v)
    values.sort()
    for q in (0.0, 0.01, 0.5, 0.9, 0.95, 0.99, 1.0):
        true = values[math.floor(q * (len(values) - 1))]
        got = sketch.quantile(q)
        assert got is not None
        assert abs(got - true) <= 0.01 * true + 1e-12, (q, got, true)
    assert sketch.size < 2_000


def test_sketch_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"relative_accuracy must be in the open range \(0, 1\)"):
        QuantileSketch(0)
    with pytest.raises(ValueError, match=r"q must be in the range \[0, 1\]"):
        QuantileSketch().quantile(1.5)
    assert QuantileSketch().quantile(0.5) is None


def test_a_kept_session_does_not_keep_its_ended_span(otel: OTelHarness) -> None:
    metrics = StreamingMetrics(telemetry=otel.telemetry)
    session = metrics.start_session()
    metrics.record_first_token(session)
    session["token_count"] = 3
    metrics.finish_session(session)
    # The session keeps its figures; its recorder (and with it the span) is let go.
    assert session._obs is None
    assert set(session) == {"start_time", "first_token_time", "token_count", "error",
                            "end_time", "latency", "ttft"}
    metrics.finish_session(session)  # still once
    assert otel.value("ragobs.requests") == 1
