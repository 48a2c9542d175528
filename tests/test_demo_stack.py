"""The demo's production stack: every protective action happens and is counted."""

from __future__ import annotations

import io

from prometheus_client import CollectorRegistry

from ragobs import semconv
from ragobs._runtime import setup
from ragobs.demo.agent import DemoConfig
from ragobs.demo.runner import RunOptions, run_demo
from ragobs.demo.stack import Protection
from ragobs.resilience._report import resilience_counts


async def test_stack_shows_waits_retries_timeouts_and_fallbacks() -> None:
    runtime = setup(serve=False, set_global=False, registry=CollectorRegistry())
    out = io.StringIO()
    requests = 60
    try:
        answered = await run_demo(
            runtime,
            DemoConfig(failure_rate=0.3, slow_rate=0.3, time_scale=0.02),
            RunOptions(requests=requests, concurrency=8, summary_every=30),
            protection=Protection(rate_limit=6, rate_window=2.0, first_token_timeout=1.0),
            seed=11,
            out=out,
        )
    finally:
        runtime.shutdown()
    assert answered == requests
    summary = runtime.telemetry.summary.snapshot()
    counts = resilience_counts(runtime.telemetry)
    assert summary.total_requests == requests
    assert summary.successful + summary.failed == requests  # nothing lost, nothing twice
    assert summary.in_flight == 0
    assert counts["ratelimit_waits"] > 0
    assert counts["retries"] > 0
    assert counts["timeouts_first_token"] > 0
    # Each failed request, and only those, was answered with the fallback message.
    assert counts["fallbacks"] == summary.failed > 0
    # Every attempt took a rate-limit slot: one per request plus one per retry.
    assert counts["ratelimit_acquisitions"] == requests + counts["retries"]
    assert runtime.telemetry.counter(semconv.REQUESTS).total() == requests
    text = out.getvalue()
    # At 30 and 60 requests; the one at 60 is also the final one, printed once.
    assert text.count("STREAMING METRICS DASHBOARD") == 2
    assert "Rate-limit waits: " in text and "Fallbacks served: " in text
