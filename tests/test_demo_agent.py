"""The demo's agent: N questions are N turns of more than N LLM calls, counted exactly.

Each demo turn makes a routing call, a retrieval, a tool call on "how do I"
questions and the streamed answer call, through the stack's per-call rate
limiter, retry and first-token deadline. For both providers (in-process, and
the real openai client over HTTP against the demo's wire server) the turns on
``/metrics`` and in ``/api/summary`` equal the requests sent, and the calls on
``/metrics``, in the ``/api/summary`` calls table and in the traces equal the
LLM requests the provider received; a call that failed and was retried is a
failed call of a turn that succeeded.
"""

from __future__ import annotations

import contextlib
import io
from collections import defaultdict
from typing import Any

import aiohttp
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from ragobs import semconv
from ragobs._runtime import setup
from ragobs.demo.agent import QUESTIONS, TOOL, TOP_K, OpenAIRAGAgent, wants_example
from ragobs.demo.openai_wire import RESPONSE_MODELS, OpenAIWireServer
from ragobs.demo.provider import DemoConfig, Sent, SimulatedProvider
from ragobs.demo.runner import RunOptions, dashboard, run_demo
from ragobs.demo.stack import AGENT, PROVIDER, Protection
from ragobs.resilience._report import resilience_counts

N = 40
SEED = 5
FAILED = ("error", "timeout")
#: Deadlines on the turn too long to pass: every turn reaches its answer call,
#: so the calls add up exactly (see the module docstring).
PROTECTION = Protection(rate_limit=12, rate_window=2.0, first_token_timeout=1.0,
                        idle_timeout=60.0, total_timeout=60.0)
CONFIGS = {
    "simulated": DemoConfig(failure_rate=0.25, slow_rate=0.2, slow_call_rate=0.25,
                            time_scale=0.05),
    # Room for the SDK's per-request cost within the first-token deadline.
    "openai": DemoConfig(failure_rate=0.25, slow_rate=0.2, slow_call_rate=0.25,
                         time_scale=0.2),
}
MODELS = {"simulated": ("sim-router-1", "sim-rag-1"),
          "openai": (OpenAIRAGAgent.router_model, OpenAIRAGAgent.model)}


def samples(text: str, name: str) -> list[Any]:
    return [s for family in text_string_to_metric_families(text) for s in family.samples
            if s.name == name]


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


async def get(url: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        assert resp.status == 200
        return await resp.text()


@pytest.mark.parametrize("provider", ["simulated", "openai"])
async def test_n_questions_are_n_turns_of_more_than_n_calls_counted_exactly(
        provider: str) -> None:
    config = CONFIGS[provider]
    router, answerer = MODELS[provider]
    runtime = setup(serve=False, set_global=False, registry=CollectorRegistry())
    assert runtime.tracer_provider is not None
    exporter = InMemorySpanExporter()
    runtime.tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    sidecar = await runtime.start_server("127.0.0.1", 0)
    out = io.StringIO()
    sent: list[Sent]
    try:
        async with contextlib.AsyncExitStack() as stack:
            wire, llm = None, None
            if provider == "openai":
                wire = await stack.enter_async_context(OpenAIWireServer(config, seed=SEED))
                sent = wire.sent
            else:
                llm = SimulatedProvider(config, seed=SEED)
                sent = llm.sent
            answered = await run_demo(
                runtime, config, RunOptions(requests=N, concurrency=6, summary_every=0),
                protection=PROTECTION, seed=SEED, out=out, provider=provider, wire=wire,
                llm=llm)
        metrics = await get(f"{sidecar.url}/metrics")
        summary = await aiohttp_json(f"{sidecar.url}/api/summary")
        text = dashboard(runtime)
    finally:
        await runtime.stop_server()
        runtime.shutdown()
    counts = resilience_counts(runtime.telemetry)
    assert answered == N
    # Nothing cut a turn short from outside: every turn made its routing and answer calls.
    assert counts["timeouts_total"] == counts["timeouts_idle"] == 0

    # Turns: /metrics, /api/summary and the requests sent agree.
    turns_on_metrics = sum(s.value for s in samples(metrics, "ragobs_requests_total"))
    assert turns_on_metrics == summary["total_requests"] == N
    for sample in samples(metrics, "ragobs_requests_total"):
        assert sample.labels["gen_ai_operation_name"] == "invoke_agent"
        assert sample.labels["gen_ai_agent_name"] == AGENT
        assert sample.labels["gen_ai_request_model"] == answerer
    assert summary["successful"] + summary["failed"] == N and summary["in_flight"] == 0

    # Calls: /metrics, the calls table, the limiter and the provider agree, and outnumber turns.
    duration = samples(metrics, "gen_ai_client_operation_duration_seconds_count")
    calls = sum(s.value for s in duration)
    table = {row["model"]: row for row in summary["calls"]}
    assert set(table) == {router, answerer}
    assert calls == sum(row["calls"] for row in table.values()) == len(sent) > N
    assert calls == counts["ratelimit_acquisitions"]
    assert calls == 2 * N + counts["retries"]  # one routing and one answer call a turn, + retries
    for model in (router, answerer):
        assert table[model]["calls"] == sum(1 for s in sent if s.model == model) >= N
        assert table[model]["provider"] == ("openai" if provider == "openai" else PROVIDER)
        assert f"{table[model]['provider']} {model}: {table[model]['calls']}, " \
               f"{table[model]['failed']}, " in text
    # Failed calls: each failure the provider sent, and each attempt whose first token
    # was too late; the metrics and the table agree.
    failed_calls = sum(s.value for s in duration if s.labels["ragobs_outcome"] in FAILED)
    assert failed_calls == sum(row["failed"] for row in table.values())
    assert failed_calls == sum(1 for s in sent if s.failure) + counts["timeouts_first_token"]
    assert counts["timeouts_first_token"] > 0 and counts["retries"] > 0
    assert summary["avg_inference_calls"] > 2  # retried calls count (successful turns)

    # The traces: one invoke_agent span a turn, its calls, retrieval and tool inside it.
    spans = exporter.get_finished_spans()
    turns = [s for s in spans if s.name == f"invoke_agent {AGENT}"]
    assert len(turns) == N
    by_trace: dict[int, list[ReadableSpan]] = defaultdict(list)
    for span in spans:
        by_trace[span.context.trace_id].append(span)
    ok_turns = [t for t in turns if attrs(t)[semconv.OUTCOME] == "ok"]
    assert len(ok_turns) == summary["successful"]
    recovered = 0
    for turn in turns:
        assert turn.kind is SpanKind.INTERNAL
        family = by_trace[turn.context.trace_id]
        chats = [s for s in family if s.name.startswith("chat ")]
        failed = [s for s in chats if attrs(s)[semconv.OUTCOME] in FAILED]
        assert attrs(turn)[semconv.INFERENCE_CALLS] == len(chats) >= 2
        assert attrs(turn)[semconv.FAILED_CALLS] == len(failed)
        assert attrs(turn)[semconv.RETRIEVALS] == 1
        recovered += attrs(turn)[semconv.OUTCOME] == "ok" and bool(failed)
        by_id = {s.context.span_id: s for s in family}
        for chat in chats:
            assert chat.kind is SpanKind.CLIENT
            parent = by_id[chat.parent.span_id]  # type: ignore[union-attr]
            if chat.name == f"chat {router}":  # inside the route stage, inside the turn
                assert parent.name == "route"
                assert parent.parent.span_id == turn.context.span_id  # type: ignore[union-attr]
            else:
                assert chat.name == f"chat {answerer}" and parent is turn
        (found,) = [s for s in family if s.name.startswith("retrieval ")]
        assert found.parent.span_id == turn.context.span_id  # type: ignore[union-attr]
        assert attrs(found)[semconv.RETRIEVAL_TOP_K] == TOP_K
        assert 2 <= attrs(found)[semconv.RETRIEVAL_DOCUMENTS] <= TOP_K
    # A call that failed and was retried leaves a failed call in a turn that succeeded.
    assert recovered > 0
    assert failed_calls > summary["failed"]
    assert sum(attrs(t)[semconv.INFERENCE_CALLS] for t in turns) == calls
    assert summary["avg_inference_calls"] == pytest.approx(
        sum(attrs(t)[semconv.INFERENCE_CALLS] for t in ok_turns) / len(ok_turns), rel=1e-9)
    # The tool: called by each "how do I" question, and by no other.
    tools = [s for s in spans if s.name == f"execute_tool {TOOL}"]
    asked = [QUESTIONS[n % len(QUESTIONS)] for n in range(1, N + 1)]
    assert len(tools) == sum(map(wants_example, asked)) > 0
    assert sum(attrs(t)[semconv.TOOL_CALLS] for t in turns) == len(tools)

    # Tokens: a turn's are its calls' (the provider's usage with openai).
    for turn in ok_turns:
        chats = [s for s in by_trace[turn.context.trace_id] if s.name.startswith("chat ")]
        assert attrs(turn)[semconv.USAGE_OUTPUT_TOKENS] == sum(
            attrs(s).get(semconv.USAGE_OUTPUT_TOKENS, 0) for s in chats)
    assert round(summary["avg_tokens"] * summary["successful"]) == sum(
        attrs(t)[semconv.USAGE_OUTPUT_TOKENS] for t in ok_turns)
    if provider == "openai":
        by_response = {s.response_id: s for s in sent}
        for chat in (s for s in spans if s.name.startswith("chat ")):
            a = attrs(chat)
            if a[semconv.OUTCOME] != "ok":
                continue
            stream = by_response[a[semconv.RESPONSE_ID]]
            assert stream.done and stream.failure is None
            assert a[semconv.USAGE_OUTPUT_TOKENS] == stream.completion_tokens
            assert a[semconv.USAGE_INPUT_TOKENS] == stream.prompt_tokens
            assert a[semconv.RESPONSE_MODEL] == RESPONSE_MODELS[a[semconv.REQUEST_MODEL]]
        for model in (router, answerer):
            assert table[model]["output_tokens"] == sum(
                s.completion_tokens or 0 for s in sent if s.model == model)


async def aiohttp_json(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        assert resp.status == 200
        data: dict[str, Any] = await resp.json()
        return data
