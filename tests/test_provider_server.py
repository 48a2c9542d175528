"""The provider look-alike against the real SDKs: formats, usage, errors, cuts, timings."""

from __future__ import annotations

import json
import time
from typing import Any

import aiohttp
import anthropic
import httpx2
import openai
import pytest
from anthropic.types import RawMessageStreamEvent
from langchain_core.messages import AIMessageChunk
from langchain_openai import ChatOpenAI
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import (
    Response,
    ResponseCompletedEvent,
    ResponseContentPartAddedEvent,
    ResponseContentPartDoneEvent,
    ResponseCreatedEvent,
    ResponseInProgressEvent,
    ResponseOutputItemAddedEvent,
    ResponseOutputItemDoneEvent,
    ResponseStreamEvent,
    ResponseTextDeltaEvent,
    ResponseTextDoneEvent,
)
from pydantic import TypeAdapter

from tests.provider_server import (  # noqa: F401 (fixtures)
    ANTHROPIC_MODEL,
    OPENAI_MODEL,
    ProviderServer,
    Reply,
    ThreadedProviderServer,
    provider_server,
    threaded_provider_server,
)

pytestmark = pytest.mark.realtime

MESSAGES: list[Any] = [{"role": "user", "content": "hi"}]
PIECES = ("Hel", "lo", ", wor", "ld")


@pytest.fixture
def server(provider_server: ProviderServer) -> ProviderServer:  # noqa: F811
    """The module's ``provider_server`` fixture, as other test modules import it."""
    return provider_server


@pytest.fixture
def threaded(threaded_provider_server: ThreadedProviderServer) -> ThreadedProviderServer:  # noqa: F811
    return threaded_provider_server


def _openai(server: ProviderServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.openai_url, api_key="test", max_retries=0)


def _anthropic(server: ProviderServer) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=server.anthropic_url, api_key="test",
                                    max_retries=0)


async def _raw(url: str, body: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    """POST ``body`` with a plain HTTP client: status, headers, the body's bytes."""
    async with aiohttp.ClientSession() as session, session.post(url, json=body) as resp:
        return resp.status, {k.lower(): v for k, v in resp.headers.items()}, await resp.read()


def _sse(raw: bytes) -> list[tuple[str | None, str]]:
    """(event name, data) of each SSE event; comment lines dropped."""
    out: list[tuple[str | None, str]] = []
    for block in raw.decode().split("\n\n"):
        lines = [line for line in block.split("\n") if line and not line.startswith(":")]
        if not lines:
            continue
        event = next((ln[7:] for ln in lines if ln.startswith("event: ")), None)
        data = "\n".join(ln[6:] for ln in lines if ln.startswith("data: "))
        out.append((event, data))
    return out


# -- OpenAI Chat Completions ---------------------------------------------------------


async def test_chat_stream_with_usage(server: ProviderServer) -> None:
    reply = Reply(pieces=PIECES, keepalive=True, input_tokens=11, output_tokens=29,
                  reasoning_tokens=5, cached_tokens=3)
    server.script(reply)
    stream = await _openai(server).chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True,
        stream_options={"include_usage": True})
    chunks = [chunk async for chunk in stream]
    assert all(isinstance(c, ChatCompletionChunk) for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello, world"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert all(c.usage is None for c in chunks[:-1])
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) \
        == (11, 29, 40)
    assert last.usage.completion_tokens_details is not None
    assert last.usage.completion_tokens_details.reasoning_tokens == 5
    assert last.usage.prompt_tokens_details is not None
    assert last.usage.prompt_tokens_details.cached_tokens == 3
    assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].id.startswith("chatcmpl-")
    assert {c.model for c in chunks} == {OPENAI_MODEL}
    [seen] = server.requests
    assert seen.api == "chat" and seen.stream and seen.completed and seen.deltas_sent == 4
    assert seen.body["stream_options"] == {"include_usage": True}
    assert seen.headers["authorization"] == "Bearer test"
    assert seen.t_received <= seen.t_headers_sent <= seen.t_first_content_sent  # type: ignore[operator]
    assert seen.t_first_content_sent <= seen.t_last_sent  # type: ignore[operator]
    assert seen.t_disconnect is None and stream.response.headers["x-request-id"] == seen.request_id


async def test_chat_stream_without_usage(server: ProviderServer) -> None:
    server.script(Reply(pieces=PIECES))
    stream = await _openai(server).chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True)
    chunks = [chunk async for chunk in stream]
    assert all(c.usage is None and len(c.choices) == 1 for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello, world"
    assert "stream_options" not in server.requests[0].body  # the SDK adds none


async def test_chat_wire_format(server: ProviderServer) -> None:
    server.script(Reply(pieces=("a", "b"), keepalive=True))
    status, headers, raw = await _raw(
        f"{server.openai_url}/chat/completions",
        {"model": "m", "messages": MESSAGES, "stream": True,
         "stream_options": {"include_usage": True}})
    assert status == 200
    assert headers["content-type"] == "text/event-stream; charset=utf-8"
    assert headers["x-request-id"].startswith("req_") and "openai-processing-ms" in headers
    assert b"\n\n: keepalive\n\n" in raw and raw.endswith(b"\n\ndata: [DONE]\n\n")
    events = _sse(raw)
    assert all(name is None for name, _ in events) and events[-1][1] == "[DONE]"
    objs = [json.loads(data) for _, data in events[:-1]]
    for obj in objs:
        ChatCompletionChunk.model_validate(obj, strict=True)
        assert obj["object"] == "chat.completion.chunk" and "usage" in obj
    assert objs[0]["choices"][0] == {
        "index": 0, "delta": {"role": "assistant", "content": "", "refusal": None},
        "logprobs": None, "finish_reason": None}
    assert [o["choices"][0]["delta"] for o in objs[1:3]] == [{"content": "a"}, {"content": "b"}]
    assert objs[3]["choices"][0]["delta"] == {} and objs[3]["choices"][0]["finish_reason"] == "stop"
    assert objs[4]["choices"] == [] and objs[4]["usage"]["completion_tokens_details"] == {
        "reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0}


async def test_chat_tool_call_and_refusal(server: ProviderServer) -> None:
    client = _openai(server)
    server.script(Reply(tool_call=True, pieces=('{"city":', ' "Paris"}')),
                  Reply(refusal=True, pieces=("I can't", " help.")))
    tools: Any = [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]
    stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True,
                                                  tools=tools)
    chunks = [c async for c in stream]
    first = chunks[0].choices[0].delta.tool_calls
    assert first is not None and first[0].function is not None
    assert first[0].function.name == "lookup" and (first[0].id or "").startswith("call_")
    args = "".join((c.choices[0].delta.tool_calls or [])[0].function.arguments or ""  # type: ignore[union-attr]
                   for c in chunks[1:-1])
    assert json.loads(args) == {"city": "Paris"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].delta.refusal or "" for c in chunks) == "I can't help."
    assert all(c.choices[0].delta.content is None for c in chunks)


async def test_non_stream_replies(server: ProviderServer) -> None:
    server.script(Reply(pieces=PIECES), Reply(pieces=PIECES), Reply(pieces=PIECES))
    chat = await _openai(server).chat.completions.create(model="m", messages=MESSAGES)
    assert isinstance(chat, ChatCompletion) and chat.choices[0].message.content == "Hello, world"
    assert chat.usage is not None and chat.usage.completion_tokens == 20
    resp = await _openai(server).responses.create(model="m", input="hi")
    assert isinstance(resp, Response) and resp.output_text == "Hello, world"
    assert resp.usage is not None and resp.usage.output_tokens == 20
    msg = await _anthropic(server).messages.create(model="c", max_tokens=9,
                                                   messages=MESSAGES)
    assert msg.content[0].type == "text" and msg.content[0].text == "Hello, world"
    assert msg.model == ANTHROPIC_MODEL and msg.stop_reason == "end_turn"
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (17, 20)
    assert [s.stream for s in server.requests] == [False] * 3
    assert all(s.completed for s in server.requests)


# -- OpenAI Responses ----------------------------------------------------------------


async def test_responses_stream(server: ProviderServer) -> None:
    server.script(Reply(pieces=PIECES, keepalive=True, reasoning_tokens=4, cached_tokens=2))
    stream = await _openai(server).responses.create(model="gpt-4o-mini", input="hi",
                                                    stream=True)
    events = [event async for event in stream]
    assert [type(e) for e in events] == [
        ResponseCreatedEvent, ResponseInProgressEvent, ResponseOutputItemAddedEvent,
        ResponseContentPartAddedEvent, *[ResponseTextDeltaEvent] * 4, ResponseTextDoneEvent,
        ResponseContentPartDoneEvent, ResponseOutputItemDoneEvent, ResponseCompletedEvent]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if isinstance(e, ResponseTextDeltaEvent)) \
        == "Hello, world"
    done = events[-1]
    assert isinstance(done, ResponseCompletedEvent)
    assert done.response.status == "completed" and done.response.id.startswith("resp_")
    assert done.response.output_text == "Hello, world" and done.response.model == OPENAI_MODEL
    usage = done.response.usage
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (17, 20, 37)
    assert usage.output_tokens_details.reasoning_tokens == 4
    assert usage.input_tokens_details.cached_tokens == 2


async def test_responses_wire_format(server: ProviderServer) -> None:
    server.script(Reply(pieces=("a", "b")), Reply(tool_call=True, pieces=("{}",)))
    adapter: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
    for expect in ("response.output_text.delta", "response.function_call_arguments.delta"):
        _, headers, raw = await _raw(f"{server.openai_url}/responses",
                                     {"model": "m", "input": "hi", "stream": True})
        assert headers["content-type"] == "text/event-stream; charset=utf-8"
        events = _sse(raw)
        for name, data in events:
            obj = json.loads(data)
            assert name == obj["type"]
            adapter.validate_python(obj, strict=True)  # every field the SDK requires
        assert expect in [name for name, _ in events]
        assert events[-1][0] == "response.completed"


# -- Anthropic Messages --------------------------------------------------------------


async def test_anthropic_stream(server: ProviderServer) -> None:
    server.script(Reply(pieces=PIECES, keepalive=True, input_tokens=9,
                        output_tokens=31, cached_tokens=4))
    stream = await _anthropic(server).messages.create(
        model="claude-test", max_tokens=50, messages=MESSAGES, stream=True)
    events = [event async for event in stream]
    assert [e.type for e in events] == [
        "message_start", "content_block_start", *["content_block_delta"] * 4,
        "content_block_stop", "message_delta", "message_stop"]
    text = "".join(e.delta.text for e in events
                   if e.type == "content_block_delta" and e.delta.type == "text_delta")
    assert text == "Hello, world"
    start, delta = events[0], events[-2]
    assert start.type == "message_start" and delta.type == "message_delta"
    assert start.message.model == ANTHROPIC_MODEL and start.message.id.startswith("msg_")
    assert start.message.usage.input_tokens == 9 and start.message.usage.output_tokens == 1
    assert start.message.usage.cache_read_input_tokens == 4
    assert delta.usage.output_tokens == 31 and delta.delta.stop_reason == "end_turn"
    seen = server.requests[0]
    assert stream.response.headers["request-id"] == seen.request_id and seen.completed


async def test_anthropic_wire_format(server: ProviderServer) -> None:
    server.script(Reply(pieces=("a",), keepalive=True, finish_reason="length"))
    _, headers, raw = await _raw(f"{server.anthropic_url}/v1/messages",
                                 {"model": "c", "max_tokens": 5, "messages": MESSAGES,
                                  "stream": True})
    assert headers["content-type"] == "text/event-stream; charset=utf-8"
    assert headers["request-id"].startswith("req_")
    events = _sse(raw)
    adapter: TypeAdapter[Any] = TypeAdapter(RawMessageStreamEvent)
    names = [name for name, _ in events]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names.count("ping") == 3  # the usual one, one before the delta, one after
    for name, data in events:
        assert name == json.loads(data)["type"]
        if name != "ping":
            adapter.validate_python(json.loads(data), strict=True)
    assert json.loads(events[-2][1])["delta"]["stop_reason"] == "max_tokens"


# -- sync client, LangChain ----------------------------------------------------------


def test_sync_openai_client(threaded: ThreadedProviderServer) -> None:
    threaded.script(Reply(pieces=PIECES, keepalive=True))
    client = openai.OpenAI(base_url=threaded.openai_url, api_key="test", max_retries=0)
    with client.chat.completions.create(model="m", messages=MESSAGES, stream=True,
                                        stream_options={"include_usage": True}) as stream:
        chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) \
        == "Hello, world"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 20
    seen = threaded.wait_done(threaded.requests[0])
    assert seen.completed and seen.headers["x-stainless-async"] == "false"


async def test_langchain_astream(server: ProviderServer) -> None:
    server.script(Reply(pieces=PIECES, keepalive=True, input_tokens=5, output_tokens=8))
    llm = ChatOpenAI(model="gpt-4o-mini", base_url=server.openai_url,
                     api_key="test", stream_usage=True, max_retries=0)  # type: ignore[arg-type]
    chunks = [chunk async for chunk in llm.astream("hi")]
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    assert "".join(str(c.content) for c in chunks) == "Hello, world"
    usage = [c.usage_metadata for c in chunks if c.usage_metadata]
    assert len(usage) == 1
    assert (usage[0]["input_tokens"], usage[0]["output_tokens"]) == (5, 8)
    assert server.requests[0].body["stream_options"] == {"include_usage": True}


# -- errors, cuts, disconnects, delays -----------------------------------------------


async def test_rate_limit_errors(server: ProviderServer) -> None:
    server.script(Reply(status=429, headers={"retry-after": "3"}),
                  Reply(status=429, headers={"retry-after": "3"}))
    with pytest.raises(openai.RateLimitError) as oerr:
        await _openai(server).chat.completions.create(model="m", messages=MESSAGES,
                                                      stream=True)
    assert oerr.value.status_code == 429 and oerr.value.response.headers["retry-after"] == "3"
    assert oerr.value.code == "rate_limit_exceeded"
    assert oerr.value.response.headers["content-type"] == "application/json"
    with pytest.raises(anthropic.RateLimitError) as aerr:
        await _anthropic(server).messages.create(model="c", max_tokens=5,
                                                 messages=MESSAGES, stream=True)
    assert aerr.value.status_code == 429 and aerr.value.response.headers["retry-after"] == "3"
    body: Any = aerr.value.body
    assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
    assert body["request_id"] == server.requests[1].request_id
    assert aerr.value.request_id == server.requests[1].request_id


async def test_retry_after_ms_then_success(server: ProviderServer) -> None:
    server.script(Reply(status=503, headers={"retry-after-ms": "20"}))
    client = openai.AsyncOpenAI(base_url=server.openai_url, api_key="test", max_retries=1)
    stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
    assert "".join([c.choices[0].delta.content or "" async for c in stream]) == "Hello world!"
    first, second = server.requests
    assert (first.reply.status, second.reply.status) == (503, 200)
    assert second.headers["x-stainless-retry-count"] == "1"
    assert second.t_received - first.t_last_sent >= 0.015  # type: ignore[operator]


async def test_cut_after_breaks_the_stream(server: ProviderServer) -> None:
    server.script(Reply(pieces=PIECES, cut_after=1), Reply(pieces=PIECES, cut_after=1))
    stream = await _openai(server).chat.completions.create(
        model="m", messages=MESSAGES, stream=True, stream_options={"include_usage": True})
    texts: list[str] = []
    with pytest.raises(openai.APIConnectionError) as err:
        async for chunk in stream:
            texts.append(chunk.choices[0].delta.content or "")
    assert texts == ["", "Hel"] and isinstance(err.value.__cause__, httpx2.RemoteProtocolError)
    astream = await _anthropic(server).messages.create(
        model="c", max_tokens=5, messages=MESSAGES, stream=True)
    kinds: list[str] = []
    # anthropic 2.x lets the transport error through unwrapped
    with pytest.raises((anthropic.APIConnectionError, httpx2.RemoteProtocolError)):
        async for event in astream:
            kinds.append(event.type)
    assert kinds == ["message_start", "content_block_start", "content_block_delta"]
    for seen in server.requests:
        assert seen.aborted and not seen.completed and seen.deltas_sent == 1
        assert seen.t_disconnect is None


async def test_close_is_seen_as_disconnect(server: ProviderServer) -> None:
    server.script(Reply(pieces=PIECES, chunk_delay=0.05))
    stream = await _openai(server).chat.completions.create(
        model="m", messages=MESSAGES, stream=True)
    async for chunk in stream:
        if chunk.choices[0].delta.content:
            break
    t_close = time.perf_counter()
    await stream.close()
    [seen] = server.requests
    t_gone = await server.wait_disconnect(seen)
    assert 0 <= t_gone - t_close < 0.1
    assert seen.deltas_sent == 1 and not seen.completed


async def test_delays_and_ttft(server: ProviderServer) -> None:
    server.script(Reply(header_delay=0.3),
                  Reply(first_content_delay=0.1, keepalive=True))
    client = _openai(server)
    t0 = time.perf_counter()
    stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
    assert time.perf_counter() - t0 >= 0.3
    _ = [c async for c in stream]
    stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
    async for chunk in stream:
        if chunk.choices[0].delta.content:
            t_first = time.perf_counter()
            break
    await stream.close()
    slow_headers, slow_content = server.requests
    assert slow_headers.t_headers_sent - slow_headers.t_received >= 0.3  # type: ignore[operator]
    assert slow_content.t_first_content_sent is not None
    assert slow_content.t_first_content_sent - slow_content.t_headers_sent >= 0.1  # type: ignore[operator]
    assert 0 <= t_first - slow_content.t_first_content_sent < 0.05


async def test_unknown_path_is_a_404(server: ProviderServer) -> None:
    server.script(Reply(pieces=("kept",)))
    with pytest.raises(openai.NotFoundError):
        await _openai(server).embeddings.create(model="m", input="x")
    stream = await _openai(server).chat.completions.create(
        model="m", messages=MESSAGES, stream=True)
    assert "".join([c.choices[0].delta.content or "" async for c in stream]) == "kept"
