"""ragobs beside the official OpenTelemetry OpenAI instrumentation in one process.

``opentelemetry-instrumentation-openai-v2`` records the same GenAI semconv
instrument names (``gen_ai.client.operation.duration``,
``gen_ai.client.token.usage``) under its own scope. ``/metrics`` must stay a
valid exposition (one HELP / TYPE per name) and every ragobs figure, the
dashboard's queries and the rules must count each ragobs stream once: they read
ragobs's series by ``ragobs_outcome``, and other agents' series only in services
without ragobs turns (a guard), as the host sidecar's calls table does.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

import ragobs
from ragobs import semconv
from ragobs._exposition import render
from ragobs._host.report import host_summary
from ragobs._runtime import Runtime
from tests.provider_server import ProviderServer, Reply
from tests.support import require_binary
from tests.test_host_merge import Host, Producer, host  # noqa: F401 (fixture)

ROOT = Path(__file__).resolve().parent.parent
STREAMS = 5


@pytest.fixture
def runtime() -> Iterator[Runtime]:
    rt = ragobs.setup(service_name="neighbours", serve=False, set_global=False,
                      registry=CollectorRegistry())
    instrumentor = OpenAIInstrumentor()
    instrumentor.instrument(meter_provider=rt.meter_provider,
                            tracer_provider=rt.tracer_provider)
    try:
        yield rt
    finally:
        instrumentor.uninstrument()
        rt.shutdown()


async def _serve_streams(server: ProviderServer, rt: Runtime) -> None:
    server.script(*[Reply(output_tokens=10 + i) for i in range(STREAMS)])
    client = ragobs.instrument_client(
        openai.AsyncOpenAI(base_url=server.openai_url, api_key="test"),
        telemetry=rt.telemetry)
    for _ in range(STREAMS):
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True)
        async for _chunk in stream:
            pass


async def test_metrics_stay_valid_and_count_each_stream_once(
        provider_server: ProviderServer, runtime: Runtime) -> None:
    await _serve_streams(provider_server, runtime)
    body, _ = render(runtime.registry, None)
    text = body.decode()

    promtool = require_binary("promtool")
    check = subprocess.run([promtool, "check", "metrics"], input=text, text=True,
                           capture_output=True)
    problems = [line for line in (check.stdout + check.stderr).splitlines()
                if "error" in line.lower() or "duplicate" in line.lower()]
    assert check.returncode == 0 and not problems, check.stdout + check.stderr
    assert text.count("# TYPE gen_ai_client_operation_duration_seconds ") == 1

    families = {f.name: f for f in text_string_to_metric_families(text)}
    duration = families["gen_ai_client_operation_duration_seconds"]
    counts = [s for s in duration.samples if s.name.endswith("_count")]
    # Both instrumentations recorded every stream ...
    foreign = [s for s in counts if s.labels.get("otel_scope_name") not in (None, "ragobs")]
    assert sum(s.value for s in foreign) == STREAMS
    # ... and ragobs's series are told apart by ragobs_outcome, which the
    # dashboard and the rules select on.
    ours = [s for s in counts if "ragobs_outcome" in s.labels]
    assert sum(s.value for s in ours) == STREAMS
    assert not any("ragobs_outcome" in s.labels for s in foreign)
    usage = families["gen_ai_client_token_usage"]
    ours_out = sum(s.value for s in usage.samples if s.name.endswith("_sum")
                   and s.labels.get("ragobs_outcome") == "ok"
                   and s.labels.get("gen_ai_token_type") == "output")
    assert ours_out == sum(10 + i for i in range(STREAMS))
    summary = runtime.telemetry.summary.snapshot()
    assert summary.total_requests == STREAMS


def _selectors(expr: str) -> list[str]:
    return re.findall(r"(gen_ai_client_[a-z_]+?)(?:_bucket|_sum|_count)?\{([^}]*)\}", expr)


def test_every_shared_name_query_selects_ragobs_series_only() -> None:
    """The dashboard and the rules read gen_ai_* series only with a
    ragobs_outcome matcher, so a neighbour's series never add in."""
    dashboard = json.loads((ROOT / "dashboards" / "ragobs.json").read_text())
    exprs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str):
                exprs.append(node["expr"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(dashboard)
    rules = (ROOT / "deploy" / "prometheus" / "rules" / "ragobs.rules.yml").read_text()
    exprs.extend(re.findall(r"gen_ai_client_[^\n]*", rules))
    found = [(name, matchers) for expr in exprs for name, matchers in _selectors(expr)]
    assert found, "no gen_ai_* selector found: the check would prove nothing"
    for name, matchers in found:
        assert "ragobs_outcome" in matchers, f"{name}{{{matchers}}} mixes in other scopes"


async def test_the_host_counts_each_call_once_beside_a_neighbour(host: Host) -> None:  # noqa: F811
    """A ragobs worker whose process also runs another GenAI instrumentation
    pushes both to the host sidecar: the host's calls table is ragobs's alone."""
    producer = Producer(host.url, instance="w-neighbour")
    neighbour = producer.provider.get_meter("opentelemetry.instrumentation.openai_v2")
    duration = neighbour.create_histogram(semconv.OPERATION_DURATION.name, unit="s")
    try:
        for model in ("gpt-4o", "gpt-4o", "gpt-4o-mini"):
            with ragobs.observe(model=model, provider="openai",
                                telemetry=producer.telemetry) as obs:
                obs.tokens(2)
            duration.record(0.5, {semconv.OPERATION_NAME: "chat",
                                  semconv.PROVIDER_NAME: "openai",
                                  semconv.REQUEST_MODEL: model})
        await producer.push()
        host_rows = {(r.model, r.calls) for r in host_summary(host.metrics).calls}
        assert host_rows == {(r.model, r.calls) for r in producer.telemetry.calls.snapshot()}
        assert host_rows == {("gpt-4o", 2), ("gpt-4o-mini", 1)}
    finally:
        await producer.stop()
