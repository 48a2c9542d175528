"""The demo's production stack: every protective action happens and is counted."""

from __future__ import annotations

import io

from prometheus_client import CollectorRegistry

from ragobs import semconv
from ragobs._runtime import setup
from ragobs.demo.agent import DemoConfig
from ragobs.demo.provider import SimulatedProvider
from ragobs.demo.runner import RunOptions, run_demo
from ragobs.demo.stack import Protection
from ragobs.resilience._report import resilience_counts


async def test_stack_shows_waits_retries_timeouts_and_fallbacks() -> None:
    runtime = setup(serve=False, set_global=False, registry=CollectorRegistry())
    out = io.StringIO()
    requests = 60
    config = DemoConfig(failure_rate=0.3, slow_rate=0.3, slow_call_rate=0.3, time_scale=0.02)
    llm = SimulatedProvider(config, seed=11)
    try:
        answered = await run_demo(
            runtime, config,
            RunOptions(requests=requests, concurrency=8, summary_every=30),
            protection=Protection(rate_limit=6, rate_window=2.0, first_token_timeout=1.0),
            seed=11,
            out=out,
            llm=llm,
        )
    finally:
        runtime.shutdown()
    assert answered == requests
    tel = runtime.telemetry
    summary = tel.summary.snapshot()
    counts = resilience_counts(tel)
    assert summary.total_requests == requests
    assert summary.successful + summary.failed == requests  # nothing lost, nothing twice
    assert summary.in_flight == 0
    assert counts["ratelimit_waits"] > 0
    assert counts["retries"] > 0
    assert counts["timeouts_first_token"] > 0
    # Each failed turn, and only those, was answered with the fallback message.
    assert counts["fallbacks"] == summary.failed > 0
    assert tel.counter(semconv.REQUESTS).total() == requests
    # Every attempt of every LLM call took a rate-limit slot first and became one
    # observed call, which is one request the provider received; a turn makes
    # several, so the calls outnumber the turns.
    calls = sum(row.calls for row in tel.calls.snapshot())
    assert calls == counts["ratelimit_acquisitions"] == len(llm.sent) > requests
    assert sum(row.failed for row in tel.calls.snapshot()) > summary.failed
    text = out.getvalue()
    # At 30 and 60 requests; the one at 60 is also the final one, printed once.
    assert text.count("STREAMING METRICS DASHBOARD") == 2
    assert "Rate-limit waits: " in text and "Fallbacks served: " in text
    assert "simulated sim-router-1: " in text and "simulated sim-rag-1: " in text
