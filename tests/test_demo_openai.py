"""``ragobs demo --provider openai``: the real openai client over HTTP, counted exactly."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys

import openai
import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from ragobs import semconv
from ragobs._runtime import setup
from ragobs.cli import main
from ragobs.demo.agent import OPENAI_MODEL, OPENAI_ROUTER_MODEL, DemoConfig
from ragobs.demo.openai_wire import RESPONSE_MODELS, OpenAIWireServer, count_tokens
from ragobs.demo.runner import RunOptions, run_demo
from ragobs.demo.stack import Protection
from ragobs.resilience._report import resilience_counts

RAGOBS = [sys.executable, "-m", "ragobs.cli"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def _output_token_sum(registry: CollectorRegistry, outcome: str) -> float:
    """Sum of gen_ai.client.token.usage (output) over streams that ended ``outcome``."""
    return sum(sample.value for family in registry.collect() for sample in family.samples
               if sample.name == "gen_ai_client_token_usage_sum"
               and sample.labels.get("gen_ai_token_type") == "output"
               and sample.labels.get("ragobs_outcome") == outcome)


async def test_every_request_and_token_is_counted_through_the_real_client() -> None:
    registry = CollectorRegistry()
    runtime = setup(serve=False, set_global=False, registry=registry)
    assert runtime.tracer_provider is not None
    exporter = InMemorySpanExporter()
    runtime.tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    # A time scale that leaves room for a loaded machine: at 0.05 the SDK's own
    # per-request cost could eat the first-token deadline.
    config = DemoConfig(failure_rate=0.5, slow_rate=0.1, time_scale=0.2)
    requests = 40
    out = io.StringIO()
    try:
        async with OpenAIWireServer(config, seed=7) as wire:
            await run_demo(runtime, config,
                           RunOptions(requests=requests, concurrency=6, summary_every=0),
                           protection=Protection(rate_limit=12, rate_window=2.0),
                           seed=7, out=out, provider="openai", wire=wire)
        ok_output_tokens = _output_token_sum(registry, "ok")  # before shutdown unregisters
    finally:
        runtime.shutdown()
    tel = runtime.telemetry
    summary = tel.summary.snapshot()
    counts = resilience_counts(tel)

    # Every turn sent was counted once, whatever its outcome.
    assert summary.total_requests == requests
    assert tel.counter(semconv.REQUESTS).total() == requests
    assert summary.successful + summary.failed == requests and summary.in_flight == 0
    spans = exporter.get_finished_spans()
    assert sum(1 for s in spans if s.name == "invoke_agent rag-demo") == requests
    # Every LLM call (each attempt: a routing call and an answer call a turn, and
    # the retries) is one chat span, a request the server received (unless a
    # turn's deadline cancelled it on its way).
    chats = [s for s in spans if s.name.startswith("chat ")]
    assert len(chats) == counts["ratelimit_acquisitions"] > 2 * requests
    assert len(wire.sent) <= len(chats)
    for span in chats:
        attrs = span.attributes or {}
        assert attrs[semconv.PROVIDER_NAME] == "openai"
        assert attrs[semconv.REQUEST_MODEL] in (OPENAI_ROUTER_MODEL, OPENAI_MODEL)
        assert span.name == "chat " + str(attrs[semconv.REQUEST_MODEL])

    # Each successful call is one stream the server sent to the end, and its
    # tokens are that stream's usage chunk, not its count of content chunks.
    sent = {s.response_id: s for s in wire.sent}
    ok = [s.attributes or {} for s in chats if (s.attributes or {})[semconv.OUTCOME] == "ok"]
    streams = [sent[str(attrs[semconv.RESPONSE_ID])] for attrs in ok]
    assert len({s.response_id for s in streams}) == len(ok) > summary.successful
    for attrs, stream in zip(ok, streams, strict=True):
        assert stream.failure is None and stream.done
        assert stream.model == attrs[semconv.REQUEST_MODEL]
        assert attrs[semconv.USAGE_OUTPUT_TOKENS] == stream.completion_tokens
        assert attrs[semconv.USAGE_INPUT_TOKENS] == stream.prompt_tokens
        assert attrs[semconv.USAGE_SOURCE] == "provider"
        assert attrs[semconv.RESPONSE_MODEL] == RESPONSE_MODELS[stream.model]
        assert attrs[semconv.RESPONSE_FINISH_REASONS] == ("stop",)
        ttft = attrs[semconv.RESPONSE_TIME_TO_FIRST_CHUNK]
        assert isinstance(ttft, float) and ttft > 0
    reported = sum(s.completion_tokens or 0 for s in streams)
    assert reported != sum(s.content_chunks for s in streams)
    assert ok_output_tokens == reported
    # A turn's tokens are its calls' usage, summed.
    turns = [s.attributes or {} for s in spans if s.name == "invoke_agent rag-demo"
             and (s.attributes or {})[semconv.OUTCOME] == "ok"]
    turn_tokens = [attrs[semconv.USAGE_OUTPUT_TOKENS] for attrs in turns]
    assert all(isinstance(n, int) for n in turn_tokens)
    assert summary.avg_tokens is not None
    assert round(summary.avg_tokens * summary.successful) == sum(
        n for n in turn_tokens if isinstance(n, int))
    assert summary.avg_ttft_seconds is not None and summary.avg_ttft_seconds > 0

    # The server failed in every way it simulates; the stack retried and fell back.
    assert {s.failure for s in wire.sent} >= {"rate_limited", "unavailable", "reset", "cut"}
    assert counts["retries"] > 0
    assert counts["fallbacks"] == summary.failed > 0
    assert f"openai {openai.__version__}" in out.getvalue()


def test_usage_counts_tokens_not_words() -> None:
    assert count_tokens("a the function predictable") == 1 + 1 + 2 + 3
    assert count_tokens("") == 0


def test_cli_demo_with_the_openai_provider() -> None:
    done = subprocess.run(
        [*RAGOBS, "demo", "--provider", "openai", "--requests", "10", "--time-scale", "0.2",
         "--port", "0"],
        capture_output=True, text=True, timeout=60, env=ENV)
    assert done.returncode == 0, done.stderr
    assert "answers stream through openai" in done.stdout
    assert "STREAMING METRICS DASHBOARD" in done.stdout
    assert re.findall(r"^Total Requests: (\d+)$", done.stdout, re.MULTILINE)[-1] == "10"
    # The turns' calls, per model: every turn routed with one model and answered with another.
    for model in (OPENAI_ROUTER_MODEL, OPENAI_MODEL):
        calls = re.findall(rf"^  openai {model}: (\d+), ", done.stdout, re.MULTILINE)
        assert calls and int(calls[-1]) >= 10, done.stdout
    assert "Traceback" not in done.stderr


def test_without_openai_the_default_demo_runs_and_the_flag_says_what_to_install(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "openai", None)  # import openai now raises ImportError
    assert main(["demo", "--provider", "openai", "--requests", "1"]) == 2
    assert "pip install 'ragobs[openai]'" in capsys.readouterr().err
    blocked = ("import sys; sys.modules['openai'] = None; from ragobs.cli import main; "
               "raise SystemExit(main(sys.argv[1:]))")
    done = subprocess.run(
        [sys.executable, "-c", blocked, "demo", "--requests", "4", "--time-scale", "0.05",
         "--port", "0", "--failure-rate", "0"],
        capture_output=True, text=True, timeout=60, env=ENV)
    assert done.returncode == 0, done.stderr
    assert re.findall(r"^Total Requests: (\d+)$", done.stdout, re.MULTILINE)[-1] == "4"
