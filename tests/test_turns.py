"""Agents, not only streams: a turn (one question answered) and its LLM calls.

The README's agent, as written, over the real ``openai`` client and the local
provider server: a routing call, a retrieval, the streamed answer. Every figure
is checked against what the server sent and what the consumer received.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from opentelemetry.trace import SpanKind

import ragobs
from ragobs import semconv
from ragobs._report import Reporter, as_json
from tests.conftest import OTelHarness
from tests.provider_server import ProviderServer, Reply
from tests.test_clients import openai_client

REQUESTS = semconv.REQUESTS.name
CALL_DURATION = semconv.OPERATION_DURATION.name
CALL_TTFT = semconv.TIME_TO_FIRST_CHUNK.name
CALL_USAGE = semconv.TOKEN_USAGE.name
TURN_TTFT = semconv.TURN_TIME_TO_FIRST_CHUNK.name
TURN_USAGE = semconv.TURN_TOKEN_USAGE.name
TURN_CALLS = semconv.TURN_INFERENCE_CALLS.name
TURN_TOOLS = semconv.TURN_TOOL_CALLS.name
PHASES = semconv.TURN_TTFT_PHASES.name

ROUTER, ANSWERER = "gpt-4o-mini", "gpt-4o"
ROUTE_DELAY, ANSWER_DELAY, RETRIEVE_DELAY = 0.05, 0.15, 0.08


def messages(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def readme_agent(client: Any, telemetry: Any, **options: Any) -> Any:
    """The README's "Instrument your agent" example."""

    @ragobs.instrument_stream(telemetry=telemetry, **options)
    async def answer(question: str) -> AsyncIterator[Any]:
        async with ragobs.stage("route", telemetry=telemetry):
            route = ""
            async for chunk in await client.chat.completions.create(
                    model=ROUTER, messages=messages(question), stream=True):
                route += chunk.choices[0].delta.content or ""
        async with ragobs.retrieval("python_docs", top_k=3, telemetry=telemetry) as found:
            await asyncio.sleep(RETRIEVE_DELAY)
            found.documents(3)
        async for chunk in await client.chat.completions.create(
                model=ANSWERER, messages=messages(question), stream=True):
            yield chunk

    return answer


def script_turns(server: ProviderServer, n: int) -> None:
    for _ in range(n):
        server.script(Reply(model=ROUTER, first_content_delay=ROUTE_DELAY, pieces=("docs",),
                            input_tokens=30, output_tokens=2),
                      Reply(model=ANSWERER, first_content_delay=ANSWER_DELAY,
                            input_tokens=400, output_tokens=50))


async def ask(agent: Any, question: str) -> float:
    """Read one answer as a user would; the time to the first content they saw."""
    t0 = time.perf_counter()
    first = None
    async for chunk in agent(question):
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - t0
    assert first is not None
    return first


async def test_five_questions_are_five_turns_and_ten_calls(
        provider_server: ProviderServer, otel: OTelHarness) -> None:
    client = ragobs.instrument_client(openai_client(provider_server), telemetry=otel.telemetry)
    agent = readme_agent(client, otel.telemetry)
    script_turns(provider_server, 5)
    seen = [await ask(agent, f"question {i}") for i in range(5)]

    # Turns: what the users experienced.
    assert otel.value(REQUESTS) == 5
    assert otel.value(REQUESTS, ragobs__outcome="ok") == 5
    assert otel.count(TURN_TTFT) == 5
    assert otel.total(TURN_TTFT) == pytest.approx(sum(seen), abs=5 * 0.02)
    assert otel.total(TURN_TTFT) / 5 > ROUTE_DELAY + RETRIEVE_DELAY + ANSWER_DELAY
    # Tokens per turn: the provider's usage summed over both calls.
    assert otel.total(TURN_USAGE, gen_ai__token__type="output") == 5 * (2 + 50)
    assert otel.total(TURN_USAGE, gen_ai__token__type="input") == 5 * (30 + 400)
    assert otel.total(TURN_CALLS) == 10 and otel.count(TURN_CALLS) == 5
    assert otel.total(TURN_TOOLS) == 0

    # Calls: what the provider did, per model.
    assert otel.count(CALL_DURATION) == 10
    for model, delay in ((ROUTER, ROUTE_DELAY), (ANSWERER, ANSWER_DELAY)):
        assert otel.count(CALL_DURATION, gen_ai__request__model=model,
                          ragobs__outcome="ok") == 5
        call_ttft = otel.total(CALL_TTFT, gen_ai__request__model=model) / 5
        assert delay <= call_ttft < delay + 0.05
    assert otel.total(CALL_USAGE, gen_ai__token__type="output") == 5 * (2 + 50)

    # The seed's summary counts turns; the calls stand beside it.
    summary = as_json(Reporter.of(otel.telemetry).report())
    assert summary["total_requests"] == 5 and summary["successful"] == 5
    assert summary["avg_ttft_seconds"] == pytest.approx(sum(seen) / 5, abs=0.02)
    assert summary["avg_tokens"] == 52 and summary["avg_input_tokens"] == 430
    assert summary["avg_inference_calls"] == 2
    calls = {row["model"]: row for row in summary["calls"]}  # type: ignore[attr-defined]
    assert calls[ROUTER]["calls"] == 5 and calls[ANSWERER]["calls"] == 5
    assert calls[ANSWERER]["output_tokens"] == 250

    # Where the TTFT went: route, retrieve, the answer's LLM request, and the rest.
    breakdown = summary["ttft_breakdown"]
    assert isinstance(breakdown, dict)
    assert set(breakdown) == {"route", "retrieve", "llm", "other"}
    assert sum(breakdown.values()) == pytest.approx(summary["avg_ttft_seconds"], rel=1e-6)
    assert breakdown["route"] >= ROUTE_DELAY and breakdown["retrieve"] >= RETRIEVE_DELAY
    assert ANSWER_DELAY <= breakdown["llm"] < ANSWER_DELAY + 0.05
    assert breakdown["other"] < 0.02
    assert otel.value(PHASES, ragobs__phase="retrieve") == pytest.approx(
        5 * breakdown["retrieve"])


async def test_traces_nest_the_calls_stages_and_retrieval_under_the_agents_turn(
        provider_server: ProviderServer, otel: OTelHarness) -> None:
    client = ragobs.instrument_client(openai_client(provider_server), telemetry=otel.telemetry)
    agent = readme_agent(client, otel.telemetry, agent="rag-agent")
    script_turns(provider_server, 1)
    await ask(agent, "q")
    spans = {s.name: s for s in otel.spans()}
    turn = spans["invoke_agent rag-agent"]
    assert turn.kind is SpanKind.INTERNAL
    attrs = turn.attributes or {}
    assert attrs[semconv.OPERATION_NAME] == "invoke_agent"
    assert attrs[semconv.AGENT_NAME] == "rag-agent"
    assert attrs[semconv.INFERENCE_CALLS] == 2
    assert attrs[semconv.RETRIEVALS] == 1
    assert attrs[semconv.USAGE_OUTPUT_TOKENS] == 52
    assert attrs[semconv.USAGE_INPUT_TOKENS] == 430
    trace_id = turn.context.trace_id
    for name, kind in ((f"chat {ROUTER}", SpanKind.CLIENT), (f"chat {ANSWERER}", SpanKind.CLIENT),
                       ("retrieval python_docs", SpanKind.CLIENT), ("route", SpanKind.INTERNAL)):
        assert spans[name].context.trace_id == trace_id, name
        assert spans[name].kind is kind, name
    retrieval = spans["retrieval python_docs"].attributes or {}
    assert retrieval[semconv.OPERATION_NAME] == "retrieval"
    assert retrieval[semconv.RETRIEVAL_TOP_K] == 3
    assert retrieval[semconv.RETRIEVAL_DOCUMENTS] == 3
    assert spans["route"].parent.span_id == turn.context.span_id  # type: ignore[union-attr]
    assert spans[f"chat {ROUTER}"].parent.span_id == spans["route"].context.span_id  # type: ignore[union-attr]
    assert spans[f"chat {ANSWERER}"].parent.span_id == turn.context.span_id  # type: ignore[union-attr]
    # An agent's turn is never an LLM call itself: two calls, both the provider's.
    assert otel.count(CALL_DURATION) == 2
    assert otel.value(REQUESTS, gen_ai__agent__name="rag-agent", ragobs__outcome="ok") == 1


async def test_a_recovered_call_failure_is_a_failed_call_and_an_answered_turn(
        provider_server: ProviderServer, otel: OTelHarness) -> None:
    client = ragobs.instrument_client(openai_client(provider_server, max_retries=0),
                                      telemetry=otel.telemetry)

    @ragobs.instrument_stream(agent="recovering", telemetry=otel.telemetry)
    async def agent(question: str) -> AsyncIterator[Any]:
        async for chunk in ragobs.retry_stream(
                lambda: client.chat.completions.create(model=ANSWERER,
                                                       messages=messages(question), stream=True),
                attempts=3, initial=0.01, jitter=0.0, telemetry=otel.telemetry):
            yield chunk

    provider_server.script(Reply(status=500), Reply(model=ANSWERER))
    await ask(agent, "q")
    assert otel.value(REQUESTS, ragobs__outcome="ok") == 1
    assert otel.value(REQUESTS) == 1
    assert otel.count(CALL_DURATION, ragobs__outcome="error") == 1
    assert otel.count(CALL_DURATION, ragobs__outcome="ok") == 1
    turn = next(s for s in otel.spans() if s.name == "invoke_agent recovering")
    assert (turn.attributes or {})[semconv.FAILED_CALLS] == 1
    summary = as_json(Reporter.of(otel.telemetry).report())
    assert summary["successful"] == 1 and summary["failed"] == 0
    assert summary["calls"][0]["calls"] == 2 and summary["calls"][0]["failed"] == 1  # type: ignore[index]


async def test_calls_made_concurrently_and_after_the_first_chunk_belong_to_the_turn(
        provider_server: ProviderServer, otel: OTelHarness) -> None:
    client = ragobs.instrument_client(openai_client(provider_server), telemetry=otel.telemetry)

    async def complete(model: str) -> str:
        text = ""
        async for chunk in await client.chat.completions.create(
                model=model, messages=messages("q"), stream=True):
            text += chunk.choices[0].delta.content or ""
        return text

    @ragobs.instrument_stream(telemetry=otel.telemetry)
    async def agent(question: str) -> AsyncIterator[str]:
        a, b = await asyncio.gather(complete("m-a"), complete("m-b"))   # concurrent calls
        yield a
        c = await complete("m-c")                       # after the turn's first chunk
        async with ragobs.tool("calculator", telemetry=otel.telemetry):
            await asyncio.sleep(0.01)
        yield b + c

    chunks = [c async for c in agent("q")]
    assert len(chunks) == 2
    assert otel.value(REQUESTS) == 1
    assert otel.count(CALL_DURATION) == 3
    assert otel.total(TURN_CALLS) == 3 and otel.total(TURN_TOOLS) == 1
    assert otel.total(TURN_USAGE, gen_ai__token__type="output") == 60


async def test_a_lone_stream_is_a_turn_of_one_call_with_the_same_figures(
        provider_server: ProviderServer, otel: OTelHarness) -> None:
    client = ragobs.instrument_client(openai_client(provider_server), telemetry=otel.telemetry)
    provider_server.script(Reply(first_content_delay=0.1))
    async for _chunk in await client.chat.completions.create(
            model=ANSWERER, messages=messages("q"), stream=True):
        pass
    assert otel.value(REQUESTS) == 1 and otel.count(CALL_DURATION) == 1
    assert otel.total(TURN_TTFT) == pytest.approx(otel.total(CALL_TTFT))
    assert otel.total(TURN_USAGE, gen_ai__token__type="output") == 20
    assert otel.total(TURN_CALLS) == 1
    # A lone stream waited on its LLM: all its TTFT is the llm phase.
    assert otel.value(PHASES, ragobs__phase="llm") == pytest.approx(otel.total(TURN_TTFT))
    assert otel.value(PHASES, ragobs__phase="other") == 0


async def test_a_stream_held_open_by_the_consumer_does_not_adopt_its_other_requests(
        provider_server: ProviderServer, otel: OTelHarness) -> None:
    client = ragobs.instrument_client(openai_client(provider_server), telemetry=otel.telemetry)

    async def words() -> AsyncIterator[str]:
        for word in ("a", "b", "c"):
            yield word

    held = ragobs.observe_stream(words(), telemetry=otel.telemetry)
    await held.__anext__()                              # a turn, open, not running
    async for _chunk in await client.chat.completions.create(
            model=ANSWERER, messages=messages("q"), stream=True):
        pass
    async for _word in held:
        pass
    assert otel.value(REQUESTS) == 2                    # two turns, neither inside the other
    assert otel.total(TURN_CALLS) == 2


async def test_an_observe_block_is_a_turn_with_a_limiter_wait_in_its_breakdown(
        provider_server: ProviderServer, otel: OTelHarness) -> None:
    client = ragobs.instrument_client(openai_client(provider_server), telemetry=otel.telemetry)
    limiter = ragobs.RateLimiter(max_requests=1, window_seconds=0.2, telemetry=otel.telemetry)
    await limiter.acquire()
    async with ragobs.observe(agent="by-hand", telemetry=otel.telemetry) as turn:
        await limiter.acquire()                         # waits ~0.2 s
        async for chunk in await client.chat.completions.create(
                model=ANSWERER, messages=messages("q"), stream=True):
            turn.chunk(chunk)
    assert otel.value(REQUESTS, gen_ai__agent__name="by-hand") == 1
    assert otel.count(CALL_DURATION) == 1
    waited = otel.value(PHASES, ragobs__phase="ratelimit")
    assert 0.1 < waited <= 0.25
    assert otel.value(PHASES) == pytest.approx(otel.total(TURN_TTFT))


def test_sync_agents_nest_their_calls_too(threaded_provider_server: Any,
                                          otel: OTelHarness) -> None:
    client = ragobs.instrument_client(openai_client(threaded_provider_server, sync=True),
                                      telemetry=otel.telemetry)

    @ragobs.instrument_stream(agent="sync-agent", telemetry=otel.telemetry)
    def agent(question: str) -> Iterator[Any]:
        with ragobs.tool("lookup", telemetry=otel.telemetry):
            pass
        for _chunk in client.chat.completions.create(model=ROUTER, messages=messages(question),
                                                     stream=True):
            pass
        yield from client.chat.completions.create(model=ANSWERER, messages=messages(question),
                                                  stream=True)

    for _ in range(2):
        for _chunk in agent("q"):
            pass
    assert otel.value(REQUESTS) == 2
    assert otel.count(CALL_DURATION) == 4
    assert otel.total(TURN_TOOLS) == 2
    assert otel.total(TURN_USAGE, gen_ai__token__type="output") == 80
