"""LangChain and LangGraph agents in one line: ``instrument_langchain``.

Real ``langchain-core``, ``langchain-openai`` and ``langgraph`` over HTTP against
the local provider server: an LCEL chain that routes with one model, retrieves
from an in-memory retriever of its own and streams the answer with another,
and a LangGraph agent that calls a tool before it answers. Every figure is
checked against what the server sent and what the consumer received.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from operator import itemgetter
from typing import Any

import pytest
from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.messages import AIMessageChunk
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import Runnable, RunnablePassthrough
from langchain_core.tools import tool as lc_tool
from langchain_openai import ChatOpenAI
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition
from opentelemetry.trace import SpanKind

import ragobs
from ragobs import semconv
from ragobs._report import Reporter, as_json
from ragobs.langchain import RagobsCallbackHandler, answer_text, instrument_langchain
from tests.conftest import OTelHarness
from tests.provider_server import ProviderServer, Reply, ThreadedProviderServer
from tests.test_turns import (
    ANSWERER,
    CALL_DURATION,
    CALL_TTFT,
    CALL_USAGE,
    REQUESTS,
    ROUTER,
    TURN_CALLS,
    TURN_TOOLS,
    TURN_TTFT,
    TURN_USAGE,
)

#: The models the server says answered (gen_ai.response.model).
ROUTER_SNAPSHOT, ANSWERER_SNAPSHOT = "gpt-4o-mini-2024-07-18", "gpt-4o-2024-08-06"
ROUTE_DELAY, ANSWER_DELAY, RETRIEVE_DELAY = 0.05, 0.12, 0.06
DOCS = (
    Document(page_content="Decorators wrap a function in another.", metadata={"id": 1}),
    Document(page_content="A virtual environment isolates packages.", metadata={"id": 2}),
    Document(page_content="Decorators run when the function is defined.", metadata={"id": 3}),
    Document(page_content="The GIL lets one thread run bytecode at a time.", metadata={"id": 4}),
)


class DocsRetriever(BaseRetriever):
    """Keyword search over in-memory documents, taking ``delay`` seconds."""

    docs: tuple[Document, ...] = DOCS
    delay: float = RETRIEVE_DELAY

    def _get_relevant_documents(self, query: str, *, run_manager: Any) -> list[Document]:
        time.sleep(self.delay)
        return self._match(query)

    async def _aget_relevant_documents(
            self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun,
    ) -> list[Document]:
        await asyncio.sleep(self.delay)
        return self._match(query)

    def _match(self, query: str) -> list[Document]:
        words = {w.strip("?.,").lower() for w in query.split() if len(w) > 3}
        return [d for d in self.docs if words & set(d.page_content.lower().split())]


def chat(server: ProviderServer | ThreadedProviderServer, model: str, **options: Any) -> ChatOpenAI:
    return ChatOpenAI(model=model, base_url=server.openai_url, api_key="test",  # type: ignore[arg-type]
                      stream_usage=True, max_retries=0, **options)


def rag_chain(server: ProviderServer | ThreadedProviderServer, *,
              router: Runnable[Any, Any] | None = None,
              answerer: ChatOpenAI | None = None) -> Runnable[Any, Any]:
    """Route with one model, retrieve, stream the answer with another."""
    route = (ChatPromptTemplate.from_template("Which docs answer: {question}")
             | (router or chat(server, ROUTER)) | StrOutputParser())
    answer = ChatPromptTemplate.from_template("Answer {question} from {docs} ({route})")
    return (RunnablePassthrough.assign(route=route)
            | RunnablePassthrough.assign(docs=itemgetter("question") | DocsRetriever())
            | answer | (answerer or chat(server, ANSWERER)) | StrOutputParser())


def script_turns(server: ProviderServer | ThreadedProviderServer, n: int) -> None:
    for _ in range(n):
        server.script(Reply(model=ROUTER_SNAPSHOT, first_content_delay=ROUTE_DELAY,
                            pieces=("python",), input_tokens=30, output_tokens=2),
                      Reply(model=ANSWERER_SNAPSHOT, first_content_delay=ANSWER_DELAY,
                            input_tokens=400, output_tokens=50))


async def read(stream: AsyncIterator[Any]) -> tuple[float, list[Any]]:
    """Consume as a user would: (time to the first answer text, the chunks)."""
    t0 = time.perf_counter()
    first = None
    chunks = []
    async for chunk in stream:
        if first is None and answer_text(chunk):
            first = time.perf_counter() - t0
        chunks.append(chunk)
    assert first is not None
    return first, chunks


def summary(otel: OTelHarness) -> dict[str, Any]:
    return as_json(Reporter.of(otel.telemetry).report())  # type: ignore[return-value]


def span_named(otel: OTelHarness, name: str) -> Any:
    found = [s for s in otel.spans() if s.name == name]
    assert len(found) == 1, (name, [s.name for s in otel.spans()])
    return found[0]


async def test_an_lcel_chain_is_turns_of_calls_and_retrievals(
        provider_server: ProviderServer, otel: OTelHarness) -> None:
    chain = instrument_langchain(rag_chain(provider_server), agent="docs-rag",
                                 telemetry=otel.telemetry)
    script_turns(provider_server, 3)
    seen = []
    for question in ("How do decorators work?", "What does the GIL do?", "Why a virtual env?"):
        first, chunks = await read(chain.astream({"question": question}))
        assert "".join(chunks) == "Hello world!"
        seen.append(first)
    assert len(provider_server.requests) == 6

    # Turns: what the users experienced, from the question to the first text they got.
    assert otel.value(REQUESTS, gen_ai__agent__name="docs-rag", ragobs__outcome="ok") == 3
    assert otel.value(REQUESTS) == 3
    assert otel.count(TURN_TTFT) == 3
    assert otel.total(TURN_TTFT) == pytest.approx(sum(seen), abs=3 * 0.02)
    assert otel.total(TURN_TTFT) / 3 > ROUTE_DELAY + RETRIEVE_DELAY + ANSWER_DELAY
    assert otel.total(TURN_USAGE, gen_ai__token__type="output") == 3 * (2 + 50)
    assert otel.total(TURN_USAGE, gen_ai__token__type="input") == 3 * (30 + 400)
    assert otel.total(TURN_CALLS) == 6 and otel.count(TURN_CALLS) == 3

    # Calls: per model, the provider's TTFT and usage, each counted once.
    assert otel.count(CALL_DURATION) == 6
    for model, delay in ((ROUTER, ROUTE_DELAY), (ANSWERER, ANSWER_DELAY)):
        assert otel.count(CALL_DURATION, gen_ai__request__model=model,
                          gen_ai__provider__name="openai", ragobs__outcome="ok") == 3
        assert delay <= otel.total(CALL_TTFT, gen_ai__request__model=model) / 3 < delay + 0.05
    assert otel.total(CALL_USAGE, gen_ai__token__type="output") == 3 * (2 + 50)

    report = summary(otel)
    assert report["total_requests"] == 3 and report["avg_inference_calls"] == 2
    assert report["avg_tokens"] == 52 and report["avg_input_tokens"] == 430
    assert {row["model"]: row["calls"] for row in report["calls"]} == {ROUTER: 3, ANSWERER: 3}
    breakdown = report["ttft_breakdown"]
    assert set(breakdown) == {"llm", "retrieve", "other"}
    assert sum(breakdown.values()) == pytest.approx(report["avg_ttft_seconds"], rel=1e-6)
    assert RETRIEVE_DELAY <= breakdown["retrieve"] < RETRIEVE_DELAY + 0.03
    assert ROUTE_DELAY + ANSWER_DELAY <= breakdown["llm"] < ROUTE_DELAY + ANSWER_DELAY + 0.08


async def test_the_chains_trace_follows_the_agent_conventions(
        provider_server: ProviderServer, otel: OTelHarness) -> None:
    chain = instrument_langchain(rag_chain(provider_server), agent="docs-rag",
                                 telemetry=otel.telemetry)
    script_turns(provider_server, 1)
    await read(chain.astream({"question": "How do decorators work?"}))
    turn = span_named(otel, "invoke_agent docs-rag")
    assert turn.kind is SpanKind.INTERNAL
    attrs = turn.attributes or {}
    assert attrs[semconv.INFERENCE_CALLS] == 2 and attrs[semconv.RETRIEVALS] == 1
    assert attrs[semconv.USAGE_OUTPUT_TOKENS] == 52 and attrs[semconv.USAGE_INPUT_TOKENS] == 430
    for name in (f"chat {ROUTER}", f"chat {ANSWERER}", "retrieval DocsRetriever"):
        child = span_named(otel, name)
        assert child.kind is SpanKind.CLIENT, name
        assert child.parent.span_id == turn.context.span_id, name
    answer = span_named(otel, f"chat {ANSWERER}").attributes or {}
    assert answer[semconv.RESPONSE_MODEL] == ANSWERER_SNAPSHOT  # what the server said
    assert answer[semconv.RESPONSE_FINISH_REASONS] == ("stop",)
    assert answer[semconv.USAGE_INPUT_TOKENS] == 400
    first = [e for e in span_named(otel, f"chat {ANSWERER}").events
             if e.name == semconv.EVENT_FIRST_CHUNK]
    assert len(first) == 1
    retrieval = span_named(otel, "retrieval DocsRetriever").attributes or {}
    assert retrieval[semconv.OPERATION_NAME] == "retrieval"
    assert retrieval[semconv.RETRIEVAL_DOCUMENTS] == 2  # the two about decorators


async def test_an_instrumented_client_under_the_chain_counts_each_call_once(
        provider_server: ProviderServer, otel: OTelHarness) -> None:
    router, answerer = chat(provider_server, ROUTER), chat(provider_server, ANSWERER)
    for llm in (router, answerer):
        ragobs.instrument_client(llm.root_async_client, telemetry=otel.telemetry)
    chain = instrument_langchain(rag_chain(provider_server, router=router, answerer=answerer),
                                 agent="docs-rag", telemetry=otel.telemetry)
    script_turns(provider_server, 2)
    for _ in range(2):
        await read(chain.astream({"question": "How do decorators work?"}))
    assert otel.value(REQUESTS) == 2
    assert otel.count(CALL_DURATION) == 4
    assert otel.total(TURN_CALLS) == 4
    assert otel.total(TURN_USAGE, gen_ai__token__type="output") == 2 * 52
    calls = [s for s in otel.spans() if s.name.startswith("chat ")]
    assert len(calls) == 4
    turns = {s.context.span_id for s in otel.spans() if s.name == "invoke_agent docs-rag"}
    assert {s.parent.span_id for s in calls} == turns
    # The SDK's stream is the call: measured at the wire, usage from the provider.
    for span in calls:
        assert (span.attributes or {})[semconv.USAGE_SOURCE] == "provider"


async def test_a_recovered_fallback_is_a_failed_call_and_an_answered_turn(
        provider_server: ProviderServer, otel: OTelHarness) -> None:
    router = chat(provider_server, "gpt-4.1-nano").with_fallbacks([chat(provider_server, ROUTER)])
    chain = instrument_langchain(rag_chain(provider_server, router=router), agent="docs-rag",
                                 telemetry=otel.telemetry)
    provider_server.script(Reply(status=503))
    script_turns(provider_server, 1)
    await read(chain.astream({"question": "How do decorators work?"}))
    assert otel.value(REQUESTS, ragobs__outcome="ok") == 1 and otel.value(REQUESTS) == 1
    assert otel.count(CALL_DURATION, gen_ai__request__model="gpt-4.1-nano",
                      ragobs__outcome="error") == 1
    assert otel.count(CALL_DURATION, ragobs__outcome="ok") == 2
    failed = span_named(otel, "chat gpt-4.1-nano").attributes or {}
    assert failed[semconv.ERROR_TYPE] == "503"
    turn = span_named(otel, "invoke_agent docs-rag").attributes or {}
    assert turn[semconv.FAILED_CALLS] == 1 and turn[semconv.INFERENCE_CALLS] == 3
    report = summary(otel)
    assert report["successful"] == 1 and report["failed"] == 0
    rows = {row["model"]: row for row in report["calls"]}
    assert rows["gpt-4.1-nano"]["failed"] == 1 and rows["gpt-4.1-nano"]["calls"] == 1


async def test_astream_events_and_invoke_are_turns_too(
        provider_server: ProviderServer, otel: OTelHarness) -> None:
    chain = instrument_langchain(rag_chain(provider_server), agent="docs-rag",
                                 telemetry=otel.telemetry)
    script_turns(provider_server, 2)
    t0 = time.perf_counter()
    first = None
    async for event in chain.astream_events({"question": "decorators?"}, version="v2"):
        if (first is None and event["event"] == "on_chain_stream" and not event["parent_ids"]
                and event["data"]["chunk"]):
            first = time.perf_counter() - t0
    assert first is not None
    assert otel.count(TURN_TTFT) == 1
    assert otel.total(TURN_TTFT) == pytest.approx(first, abs=0.02)
    assert await chain.ainvoke({"question": "decorators?"}) == "Hello world!"
    assert otel.value(REQUESTS, ragobs__outcome="ok") == 2
    assert otel.count(TURN_TTFT) == 1  # invoke gives the user nothing before the end
    assert otel.total(TURN_CALLS) == 4 and otel.count(CALL_DURATION) == 4
    assert otel.total(TURN_USAGE, gen_ai__token__type="output") == 2 * 52


async def test_the_handler_alone_joins_the_turn_the_caller_observes(
        provider_server: ProviderServer, otel: OTelHarness) -> None:
    handler = RagobsCallbackHandler(telemetry=otel.telemetry)
    chain = rag_chain(provider_server)
    script_turns(provider_server, 1)
    stream = ragobs.observe_stream(
        chain.astream({"question": "decorators?"}, config={"callbacks": [handler]}),
        agent="mine", telemetry=otel.telemetry)
    async for _ in stream:
        pass
    assert otel.value(REQUESTS) == 1 and otel.total(TURN_CALLS) == 2
    turn = span_named(otel, "invoke_agent mine")
    assert span_named(otel, f"chat {ANSWERER}").parent.span_id == turn.context.span_id
    # Outside any observed turn, each top-level run is a turn of its own.
    script_turns(provider_server, 1)
    await chain.ainvoke({"question": "decorators?"}, config={"callbacks": [handler]})
    assert otel.value(REQUESTS) == 2 and otel.total(TURN_CALLS) == 4
    assert otel.value(REQUESTS, gen_ai__agent__name="RunnableSequence") == 1


# -- LangGraph: an agent that calls a tool before it answers ------------------------

@lc_tool
def lookup_docs(query: str) -> str:
    """Look up the Python documentation."""
    time.sleep(0.03)
    return "Decorators wrap functions."


def tool_agent(server: ProviderServer) -> Any:
    llm = chat(server, ANSWERER).bind_tools([lookup_docs])

    async def agent(state: MessagesState) -> dict[str, Any]:
        return {"messages": [await llm.ainvoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("agent", agent)
    graph.add_node("tools", ToolNode([lookup_docs]))
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", tools_condition)
    graph.add_edge("tools", "agent")
    graph.add_edge("agent", END)
    return graph.compile()


def script_tool_turn(server: ProviderServer) -> None:
    server.script(Reply(model=ANSWERER, tool_call=True, pieces=('{"query": ', '"decorators"}'),
                        first_content_delay=ROUTE_DELAY, input_tokens=80, output_tokens=12,
                        finish_reason="tool_calls"),
                  Reply(model=ANSWERER, first_content_delay=ANSWER_DELAY, input_tokens=120,
                        output_tokens=30))


@pytest.mark.parametrize("mode", ["messages", "values"])
async def test_a_langgraph_agent_calls_a_tool_then_answers(
        provider_server: ProviderServer, otel: OTelHarness, mode: str) -> None:
    agent = instrument_langchain(tool_agent(provider_server), agent="docs-agent",
                                 telemetry=otel.telemetry)
    script_tool_turn(provider_server)
    first, chunks = await read(agent.astream(
        {"messages": [("user", "How do decorators work?")]}, stream_mode=mode))
    assert len(provider_server.requests) == 2
    # The second request carried the tool's result.
    sent = provider_server.requests[1].body["messages"]
    assert sent[-1]["role"] == "tool" and sent[-1]["content"] == "Decorators wrap functions."

    assert otel.value(REQUESTS, gen_ai__agent__name="docs-agent", ragobs__outcome="ok") == 1
    assert otel.total(TURN_CALLS) == 2 and otel.total(TURN_TOOLS) == 1
    assert otel.total(TURN_USAGE, gen_ai__token__type="input") == 200
    assert otel.total(TURN_USAGE, gen_ai__token__type="output") == 42
    assert otel.total(TURN_TTFT) == pytest.approx(first, abs=0.02)
    # The user's first text comes after the tool call and the answer's first chunk.
    assert first > ROUTE_DELAY + 0.03 + ANSWER_DELAY
    if mode == "messages":  # the calls stream: their TTFT is the provider's
        assert ANSWER_DELAY <= otel.total(CALL_TTFT) - ROUTE_DELAY < ANSWER_DELAY + 0.06
        assert isinstance(chunks[-1][0], AIMessageChunk)
    turn = span_named(otel, "invoke_agent docs-agent")
    tool_span = span_named(otel, "execute_tool lookup_docs")
    assert tool_span.parent.span_id == turn.context.span_id
    tool_attrs = tool_span.attributes or {}
    assert tool_attrs[semconv.TOOL_NAME] == "lookup_docs"
    request_id = provider_server.requests[0].request_id
    assert tool_attrs[semconv.TOOL_CALL_ID].startswith("call_"), (tool_attrs, request_id)
    assert (turn.attributes or {})[semconv.TOOL_CALLS] == 1
    report = summary(otel)
    assert report["avg_tool_calls"] == 1 and report["avg_inference_calls"] == 2
    assert "tool" in report["ttft_breakdown"]


def test_answer_text_reads_the_shapes_langchain_and_langgraph_stream() -> None:
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

    assert answer_text("a") and not answer_text("")
    assert answer_text(AIMessageChunk(content="hi"))
    assert not answer_text(AIMessageChunk(content="", tool_call_chunks=[
        {"name": "f", "args": "{}", "id": "c", "index": 0}]))
    assert not answer_text(HumanMessage(content="question"))
    assert answer_text((AIMessageChunk(content="x"), {"langgraph_node": "agent"}))
    assert not answer_text({"messages": [HumanMessage(content="q")]})  # values: the echo
    assert not answer_text({"messages": [HumanMessage(content="q"), ToolMessage(
        content="r", tool_call_id="c")]})
    assert answer_text({"messages": [HumanMessage(content="q"), AIMessage(content="a")]})
    assert answer_text({"agent": {"messages": [AIMessage(content="a")]}})  # updates
    assert not answer_text({"question": "q"})  # an input passed through
    assert answer_text({"answer": "a"}) and answer_text(("updates", {"answer": "a"}))
    assert answer_text(AIMessageChunk(content=[{"type": "text", "text": "a"}]))


def test_instrument_langchain_refuses_what_it_cannot_observe(otel: OTelHarness) -> None:
    with pytest.raises(TypeError, match="runnable must be a LangChain Runnable"):
        instrument_langchain(object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="is_output must be a callable"):
        instrument_langchain(StrOutputParser(), is_output=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="agent must be a non-empty str or None"):
        RagobsCallbackHandler(agent="")
    with pytest.raises(TypeError, match="telemetry must be a ragobs Telemetry"):
        RagobsCallbackHandler(telemetry="t")  # type: ignore[arg-type]


async def test_concurrent_turns_keep_their_own_calls(
        provider_server: ProviderServer, otel: OTelHarness) -> None:
    chain = instrument_langchain(rag_chain(provider_server), agent="docs-rag",
                                 telemetry=otel.telemetry)
    script_turns(provider_server, 4)
    await asyncio.gather(*(read(chain.astream({"question": f"decorators {i}?"}))
                           for i in range(4)))
    assert otel.value(REQUESTS, ragobs__outcome="ok") == 4
    assert otel.count(CALL_DURATION) == 8
    turns = [s for s in otel.spans() if s.name == "invoke_agent docs-rag"]
    assert [(s.attributes or {})[semconv.INFERENCE_CALLS] for s in turns] == [2, 2, 2, 2]
    for turn in turns:
        children = [s for s in otel.spans()
                    if s.parent is not None and s.parent.span_id == turn.context.span_id]
        assert sorted(s.name for s in children) == sorted(
            [f"chat {ROUTER}", f"chat {ANSWERER}", "retrieval DocsRetriever"])
    assert not ragobs.langchain._ObservedRunnable._handler(chain)._runs  # type: ignore[arg-type]


def test_a_sync_chain_streams_as_turns(threaded_provider_server: ThreadedProviderServer,
                                       otel: OTelHarness) -> None:
    chain = instrument_langchain(rag_chain(threaded_provider_server), agent="docs-rag",
                                 telemetry=otel.telemetry)
    script_turns(threaded_provider_server, 1)
    t0 = time.perf_counter()
    first = None
    text = ""
    for chunk in chain.stream({"question": "How do decorators work?"}):
        if first is None and chunk:
            first = time.perf_counter() - t0
        text += chunk
    assert text == "Hello world!" and first is not None
    assert otel.value(REQUESTS, ragobs__outcome="ok") == 1
    assert otel.total(TURN_TTFT) == pytest.approx(first, abs=0.02)
    assert otel.total(TURN_CALLS) == 2 and otel.count(CALL_DURATION) == 2
    assert otel.total(TURN_USAGE, gen_ai__token__type="output") == 52
    turn = span_named(otel, "invoke_agent docs-rag")
    assert span_named(otel, "retrieval DocsRetriever").parent.span_id == turn.context.span_id
