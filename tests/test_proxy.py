"""``ragobs proxy`` with the real SDKs and plain HTTP, against the local provider server.

Each test runs a real proxy (aiohttp on 127.0.0.1, with its admin surface)
in front of :class:`tests.provider_server.ProviderServer`, and drives it with
``openai.AsyncOpenAI`` / ``anthropic.AsyncAnthropic`` pointed at the proxy, or
with a plain HTTP client that sees the raw bytes. The truth each figure is
checked against is what the upstream sent (every byte it wrote is recorded)
and what the clients received; the figures are read from the proxy's own
``/metrics`` and ``/api/summary``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
from aiohttp import web
from multidict import CIMultiDict
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

import ragobs
from ragobs import semconv
from ragobs._runtime import Runtime
from ragobs.clock import ManualClock
from ragobs.proxy import (
    CallerLimits,
    ProxyConfig,
    Retries,
    RunningProxy,
    Upstream,
    start_proxy,
)
from ragobs.proxy._command import config_from
from ragobs.proxy._failures import stream_error
from ragobs.proxy._routing import Api, Router
from ragobs.proxy._sse import EventParser
from ragobs.proxy._streaming import Outbox
from tests import provider_server as wire
from tests.provider_server import ANTHROPIC_MODEL, ProviderServer, Reply, Seen
from tests.redisserver import redis_server, redis_url  # noqa: F401 (fixtures)

MESSAGES: Any = [{"role": "user", "content": "hi"}]
#: Retries fast enough for tests (the schedule itself is ragobs.retry's, tested there).
FAST = Retries(attempts=3, initial=0.01, max_delay=0.05, jitter=0.0)


# --- the harness ---------------------------------------------------------------------


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> dict[int, bytearray]:
    """Every byte the provider server writes in a stream, by ``id(seen)``."""
    record: dict[int, bytearray] = {}
    original = wire._Exchange.send

    async def send(self: Any, data: bytes) -> None:
        await original(self, data)
        record.setdefault(id(self.seen), bytearray()).extend(data)

    monkeypatch.setattr(wire._Exchange, "send", send)
    return record


@dataclass
class Env:
    server: ProviderServer
    proxy: RunningProxy
    runtime: Runtime
    spans: InMemorySpanExporter
    http: aiohttp.ClientSession
    sent: dict[int, bytearray] = field(default_factory=dict)
    clients: list[Any] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.proxy.url

    def openai(self, prefix: str = "", **options: Any) -> openai.AsyncOpenAI:
        options.setdefault("max_retries", 0)
        client = openai.AsyncOpenAI(base_url=f"{self.url}{prefix}/v1", api_key="sk-test-key",
                                    **options)
        self.clients.append(client)
        return client

    def anthropic(self, prefix: str = "", **options: Any) -> anthropic.AsyncAnthropic:
        options.setdefault("max_retries", 0)
        client = anthropic.AsyncAnthropic(base_url=f"{self.url}{prefix}", api_key="sk-ant-test",
                                          **options)
        self.clients.append(client)
        return client

    async def settled(self, calls: int) -> None:
        """Wait until ``calls`` calls are recorded (a client may finish reading a
        moment before the proxy is through with the call)."""
        for _ in range(200):
            if await self.value("ragobs_requests_total") >= calls:
                return
            await asyncio.sleep(0.005)
        raise AssertionError(f"{calls} calls never recorded")

    async def metrics(self) -> str:
        assert self.proxy.admin_url is not None
        async with self.http.get(f"{self.proxy.admin_url}/metrics") as response:
            return await response.text()

    async def summary(self) -> dict[str, Any]:
        assert self.proxy.admin_url is not None
        async with self.http.get(f"{self.proxy.admin_url}/api/summary") as response:
            found: dict[str, Any] = await response.json()
            return found

    async def value(self, sample: str, **labels: str) -> float:
        """Sum of the samples named ``sample`` whose labels include ``labels``."""
        return sample_sum(await self.metrics(), sample, **labels)

    def upstream_bytes(self, seen: Seen) -> bytes:
        return bytes(self.sent.get(id(seen), b""))


def sample_sum(text: str, sample: str, **labels: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


@pytest.fixture
async def make_env(sent: dict[int, bytearray]) -> AsyncIterator[Any]:
    """Starts a provider server and a proxy before it (config options as keywords)."""
    made: list[Env] = []

    async def make(*, named: bool = False, **options: Any) -> Env:
        server = ProviderServer()
        await server.start()
        runtime = ragobs.setup(service_name="proxy-test", serve=False, set_global=False,
                               registry=CollectorRegistry())
        spans = InMemorySpanExporter()
        assert runtime.tracer_provider is not None
        runtime.tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
        upstreams = ((Upstream(server.base_url, name="openai"),
                      Upstream(server.base_url, name="anthropic")) if named
                     else (Upstream(server.base_url),))
        options.setdefault("retries", FAST)
        proxy = await start_proxy(ProxyConfig(upstreams=upstreams, **options), port=0,
                                  admin_port=0, runtime=runtime)
        env = Env(server, proxy, runtime, spans, aiohttp.ClientSession(), sent)
        made.append(env)
        return env

    yield make
    for env in made:
        for client in env.clients:
            await client.close()
        await env.http.close()
        await env.proxy.stop()
        env.runtime.shutdown()
        await env.server.stop()


@pytest.fixture
async def env(make_env: Any) -> Env:
    made: Env = await make_env()
    return made


@dataclass
class Raw:
    """What a plain HTTP client received, read by read, with arrival times."""

    status: int
    headers: CIMultiDict[str]
    reads: list[tuple[float, bytes]]
    error: BaseException | None = None

    @property
    def body(self) -> bytes:
        return b"".join(data for _, data in self.reads)

    def first(self, marker: bytes) -> float:
        """When the bytes containing ``marker`` arrived."""
        seen = b""
        for t, data in self.reads:
            seen += data
            if marker in seen:
                return t
        raise AssertionError(f"{marker!r} never arrived")


async def post(env: Env, path: str, body: dict[str, Any], **headers: str) -> Raw:
    raw = Raw(0, CIMultiDict(), [])
    async with env.http.post(f"{env.url}{path}", json=body,
                             headers={"Authorization": "Bearer sk-test-key", **headers}
                             ) as response:
        raw.status = response.status
        raw.headers = CIMultiDict(response.headers)
        try:
            async for data in response.content.iter_any():
                raw.reads.append((time.perf_counter(), data))
        except aiohttp.ClientPayloadError as exc:
            raw.error = exc
    return raw


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True, **extra}


def messages(**extra: Any) -> dict[str, Any]:
    return {"model": "claude-test", "max_tokens": 64, "messages": MESSAGES, "stream": True,
            **extra}


def events_of(body: bytes) -> list[bytes]:
    """The SSE events of a body (blank-line separated blocks)."""
    return [block for block in body.split(b"\n\n") if block]


# --- transparent streams ---------------------------------------------------------------


async def test_chat_stream_is_the_upstreams_bytes_without_the_usage_chunk_it_asked_for(
        env: Env) -> None:
    env.server.script(Reply(keepalive=True))
    raw = await post(env, "/v1/chat/completions", chat())
    seen = env.server.requests[-1]
    assert raw.status == 200 and raw.error is None
    assert seen.body["stream_options"] == {"include_usage": True}
    upstream = env.upstream_bytes(seen)
    usage = [e for e in events_of(upstream) if b'"choices":[]' in e]
    assert len(usage) == 1 and b'"usage":{' in usage[0]
    assert raw.body == upstream.replace(usage[0] + b"\n\n", b"")
    assert b": keepalive\n\n" in raw.body
    assert raw.body.endswith(b"data: [DONE]\n\n")


async def test_a_client_that_asked_for_usage_gets_every_byte(env: Env) -> None:
    raw = await post(env, "/v1/chat/completions",
                     chat(stream_options={"include_usage": True}))
    seen = env.server.requests[-1]
    assert raw.body == env.upstream_bytes(seen)
    assert b'"choices":[],' in raw.body


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/messages", messages()),
    ("/v1/responses", {"model": "gpt-4o", "input": "hi", "stream": True}),
])
async def test_anthropic_and_responses_streams_are_the_upstreams_bytes(
        env: Env, path: str, body: dict[str, Any]) -> None:
    env.server.script(Reply(keepalive=True, thinking=("hmm",) if "messages" in path else ()))
    raw = await post(env, path, body)
    seen = env.server.requests[-1]
    assert raw.status == 200 and raw.error is None
    assert "stream_options" not in seen.body
    assert raw.body == env.upstream_bytes(seen)


async def test_headers_pass_and_stop_intermediaries_from_buffering(env: Env) -> None:
    raw = await post(env, "/v1/chat/completions", chat(), **{"User-Agent": "agent/1.0"})
    seen = env.server.requests[-1]
    assert raw.headers["X-Accel-Buffering"] == "no"
    assert raw.headers["Cache-Control"] == "no-cache"
    assert raw.headers["x-request-id"] == seen.request_id
    assert raw.headers["openai-organization"] == "user-test"
    assert raw.headers["Content-Type"].startswith("text/event-stream")
    # The client's headers reached the upstream; the proxy's HTTP client added none.
    assert seen.headers["authorization"] == "Bearer sk-test-key"
    assert seen.headers["user-agent"] == "agent/1.0"
    assert seen.headers["accept-encoding"] == "identity"  # the proxy reads the answer


async def test_first_content_reaches_the_client_as_the_upstream_writes_it(env: Env) -> None:
    env.server.script(Reply(first_content_delay=0.15, chunk_delay=0.3,
                            pieces=("Alpha", "Beta", "Gamma")))
    sent_when_seen: list[int] = []
    seen_holder: list[Seen] = []
    raw = Raw(0, CIMultiDict(), [])
    async with env.http.post(f"{env.url}/v1/chat/completions", json=chat()) as response:
        raw.status = response.status
        async for data in response.content.iter_any():
            raw.reads.append((time.perf_counter(), data))
            if b"Alpha" in data:
                seen_holder.append(env.server.requests[-1])
                sent_when_seen.append(seen_holder[0].deltas_sent)
    seen = seen_holder[0]
    assert seen.t_first_content_sent is not None
    lag = raw.first(b"Alpha") - seen.t_first_content_sent
    assert 0 <= lag < 0.02, lag
    assert sent_when_seen == [1]  # the rest was still on its way upstream
    assert raw.first(b"Beta") - raw.first(b"Alpha") > 0.25
    # The role chunk was held back to the first content, then sent with it.
    assert raw.first(b'"role":"assistant"') == raw.first(b"Alpha")


async def test_a_line_longer_than_the_limit_is_passed_through_unread(make_env: Any) -> None:
    env = await make_env(max_line=600)
    env.server.script(Reply(pieces=("x" * 2000, "short")))
    raw = await post(env, "/v1/chat/completions", chat(stream_options={"include_usage": True}))
    assert raw.body == env.upstream_bytes(env.server.requests[-1])
    # The long content event was not read: the first content counted is "short".
    assert await env.value("gen_ai_client_operation_time_to_first_chunk_seconds_count") == 1
    assert await env.value("gen_ai_client_token_usage_sum", gen_ai_token_type="output") == 20


# --- measured as in the library ----------------------------------------------------------


async def test_figures_on_metrics_are_what_the_clients_received(env: Env) -> None:
    client = env.openai()
    claude = env.anthropic()
    replies = [
        Reply(input_tokens=11, output_tokens=5, cached_tokens=3),
        Reply(input_tokens=13, output_tokens=7, tool_call=True, pieces=('{"a"', ":1}")),
        Reply(input_tokens=17, output_tokens=9, thinking=("let", " me"), reasoning_tokens=4),
        Reply(input_tokens=19, output_tokens=3, cache_write_tokens=2, finish_reason="length"),
        Reply(input_tokens=23, output_tokens=8),
    ]
    env.server.script(*replies)
    got_in = got_out = 0
    texts: list[str] = []
    for _ in range(3):
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True,
            stream_options={"include_usage": True})
        text = ""
        async for chunk in stream:
            if chunk.usage is not None:
                got_in += chunk.usage.prompt_tokens
                got_out += chunk.usage.completion_tokens
            if chunk.choices and chunk.choices[0].delta.content:
                text += chunk.choices[0].delta.content
        texts.append(text)
    events = await claude.messages.create(model="claude-test", max_tokens=64,
                                          messages=MESSAGES, stream=True)
    async for event in events:
        if event.type == "message_start":
            u = event.message.usage
            got_in += u.input_tokens + (u.cache_read_input_tokens or 0) + (
                u.cache_creation_input_tokens or 0)
        elif event.type == "message_delta":
            got_out += event.usage.output_tokens
    response = await client.responses.create(model="gpt-4o", input="hi", stream=True)
    async for item in response:
        if item.type == "response.completed":
            assert item.response.usage is not None
            got_in += item.response.usage.input_tokens
            got_out += item.response.usage.output_tokens
    metrics = await env.metrics()
    assert sample_sum(metrics, "ragobs_requests_total", ragobs_outcome="ok") == 5
    assert sample_sum(metrics, "gen_ai_client_token_usage_sum",
                      gen_ai_token_type="input") == got_in == 11 + 13 + 17 + 21 + 23
    assert sample_sum(metrics, "gen_ai_client_token_usage_sum",
                      gen_ai_token_type="output") == got_out == 5 + 7 + 9 + 3 + 8
    assert sample_sum(metrics, "gen_ai_client_operation_time_to_first_chunk_seconds_count") == 5
    assert sample_sum(metrics, "ragobs_finish_reasons_total",
                      ragobs_finish_reason="max_tokens") == 1
    assert sample_sum(metrics, "ragobs_finish_reasons_total",
                      ragobs_finish_reason="tool_calls") == 1
    assert sample_sum(metrics, "ragobs_usage_tokens_total", ragobs_token_type="reasoning") == 4
    assert sample_sum(metrics, "ragobs_usage_tokens_total", ragobs_token_type="cache_read") == 3
    assert sample_sum(metrics, "ragobs_usage_tokens_total",
                      ragobs_token_type="cache_write") == 2
    assert sample_sum(metrics, "ragobs_requests_total", gen_ai_provider_name="anthropic") == 1
    assert sample_sum(metrics, "ragobs_proxy_overhead_seconds_count") == 5
    summary = await env.summary()
    assert summary["total_requests"] == 5 and summary["successful"] == 5
    rows = {(r["provider"], r["model"]): r for r in summary["calls"]}
    assert rows[("openai", "gpt-4o-mini")]["calls"] == 3
    assert rows[("anthropic", "claude-test")]["output_tokens"] == 3
    assert texts[0] == "Hello world!"


async def test_ttft_is_taken_at_the_first_content_not_the_role_chunk(env: Env) -> None:
    env.server.script(Reply(first_content_delay=0.3))
    t0 = time.perf_counter()
    raw = await post(env, "/v1/chat/completions", chat())
    client_ttft = raw.first(b'"content":"Hello"') - t0
    metrics = await env.metrics()
    ttft = sample_sum(metrics, "gen_ai_client_operation_time_to_first_chunk_seconds_sum")
    assert 0.3 <= ttft <= client_ttft + 0.005
    assert client_ttft - ttft < 0.03


async def test_a_proxied_call_looks_like_an_instrumented_one(env: Env,
                                                             provider_server: ProviderServer
                                                             ) -> None:
    """The same answer, through the proxy and through instrument_client: the same
    series (names and labels) and the same counts."""
    reply = Reply(input_tokens=31, output_tokens=12, finish_reason="length")
    env.server.script(reply)
    stream = await env.openai().chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True)
    async for _ in stream:
        pass
    proxied = await env.metrics()

    runtime = ragobs.setup(service_name="proxy-test", serve=False, set_global=False,
                           registry=CollectorRegistry())
    try:
        provider_server.script(reply)
        async with openai.AsyncOpenAI(base_url=provider_server.openai_url,
                                      api_key="k") as client:
            ragobs.instrument_client(client, telemetry=runtime.telemetry)
            stream = await client.chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, stream=True)
            async for _ in stream:
                pass
        from ragobs._exposition import render
        direct = render(runtime.registry, None)[0].decode()
    finally:
        runtime.shutdown()

    def series(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        out = {}
        for family in text_string_to_metric_families(text):
            if not family.name.startswith(("gen_ai_", "ragobs_requests", "ragobs_turn",
                                           "ragobs_finish", "ragobs_stream", "ragobs_errors")):
                continue
            for s in family.samples:
                if s.name.endswith(("_sum", "_created", "seconds_total")) or "le" in s.labels:
                    continue  # times differ; counts and token figures do not
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    assert series(proxied) == series(direct)


async def test_the_proxy_span_continues_the_clients_trace(env: Env) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    parent = "00f067aa0ba902b7"
    await post(env, "/v1/chat/completions", chat(),
               traceparent=f"00-{trace_id}-{parent}-01")
    seen = env.server.requests[-1]
    spans = [s for s in env.spans.get_finished_spans()
             if s.attributes and semconv.OUTCOME in s.attributes]
    assert len(spans) == 1
    span = spans[0]
    assert format(span.context.trace_id, "032x") == trace_id
    assert span.parent is not None and format(span.parent.span_id, "016x") == parent
    assert span.name == "chat gpt-4o-mini"
    assert span.attributes["gen_ai.usage.output_tokens"] == 20
    assert span.attributes["ragobs.proxy.upstream"] == "default"
    # The upstream request is the proxy span's child.
    _, upstream_trace, upstream_parent, _ = seen.headers["traceparent"].split("-")
    assert upstream_trace == trace_id
    assert upstream_parent == format(span.context.span_id, "016x")


async def test_non_streamed_calls_pass_whole_and_are_measured_without_ttft(env: Env) -> None:
    client = env.openai()
    claude = env.anthropic()
    env.server.script(Reply(input_tokens=5, output_tokens=6), Reply(input_tokens=7,
                                                                     output_tokens=8),
                      Reply(input_tokens=9, output_tokens=10))
    completion = await client.chat.completions.create(model="gpt-4o-mini",
                                                      messages=MESSAGES)
    message = await claude.messages.create(model="claude-test", max_tokens=9,
                                           messages=MESSAGES)
    answer = await client.responses.create(model="gpt-4o", input="hi")
    assert completion.choices[0].message.content == "Hello world!"
    assert message.content[0].text == "Hello world!"
    assert answer.output_text == "Hello world!"
    metrics = await env.metrics()
    assert sample_sum(metrics, "ragobs_requests_total", ragobs_outcome="ok") == 3
    assert sample_sum(metrics, "gen_ai_client_token_usage_sum",
                      gen_ai_token_type="input") == 5 + 7 + 9
    assert sample_sum(metrics, "gen_ai_client_token_usage_sum",
                      gen_ai_token_type="output") == 6 + 8 + 10
    assert sample_sum(metrics, "gen_ai_client_operation_time_to_first_chunk_seconds_count") == 0
    for reason in ("stop", "end_turn", "completed"):  # chat, Messages, Responses
        assert sample_sum(metrics, "ragobs_finish_reasons_total",
                          ragobs_finish_reason=reason) == 1


# --- usage without breaking clients -------------------------------------------------------


async def test_an_upstream_refusing_stream_options_is_asked_once(env: Env) -> None:
    refusal = Reply(status=400, error_body={"error": {
        "message": "Unrecognized request argument supplied: stream_options",
        "type": "invalid_request_error", "param": "stream_options", "code": None}})
    env.server.script(refusal)
    client = env.openai()
    for _ in range(2):
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text == "Hello world!"
    first, again, later = env.server.requests
    assert first.body["stream_options"] == {"include_usage": True}
    assert "stream_options" not in again.body and "stream_options" not in later.body
    metrics = await env.metrics()
    assert sample_sum(metrics, "ragobs_requests_total", ragobs_outcome="ok") == 2
    assert sample_sum(metrics, "ragobs_retry_attempts_total") == 0
    # No usage from the upstream: the output is the chunks counted.
    assert sample_sum(metrics, "gen_ai_client_token_usage_sum", gen_ai_token_type="output") == 6


async def test_a_clients_own_stream_options_are_kept(env: Env) -> None:
    await post(env, "/v1/chat/completions", chat(stream_options={"include_obfuscation": False}))
    seen = env.server.requests[-1]
    assert seen.body["stream_options"] == {"include_obfuscation": False, "include_usage": True}
    assert await env.value("gen_ai_client_token_usage_sum", gen_ai_token_type="output") == 20


# --- the commit point -----------------------------------------------------------------------


async def test_a_429_before_content_is_retried_after_its_retry_after(env: Env) -> None:
    env.server.script(Reply(status=429, headers={"retry-after-ms": "120"}), Reply())
    client = env.openai()
    stream = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES,
                                                  stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "Hello world!"
    first, second = env.server.requests
    assert second.t_received - first.t_received >= 0.12
    metrics = await env.metrics()
    assert sample_sum(metrics, "ragobs_retry_attempts_total", ragobs_name="proxy.default",
                      error_type="429") == 1
    assert sample_sum(metrics, "ragobs_requests_total", ragobs_outcome="ok") == 1
    assert sample_sum(metrics, "ragobs_requests_total") == 1


async def test_a_cut_before_content_is_retried_and_no_text_repeats(env: Env) -> None:
    env.server.script(Reply(cut_after=0), Reply(pieces=("one", " two")))
    raw = await post(env, "/v1/messages", messages())
    assert raw.status == 200 and raw.error is None
    assert raw.body.count(b"one") == 1 and raw.body.count(b"event: message_start") == 1
    assert raw.body == env.upstream_bytes(env.server.requests[1])
    assert await env.value("ragobs_retry_attempts_total",
                           error_type="ClientPayloadError") == 1


async def test_a_failure_that_is_not_retried_is_the_upstreams_own_answer(env: Env) -> None:
    env.server.script(Reply(status=400))
    direct = ProviderServer()
    await direct.start()
    try:
        direct.script(Reply(status=400))
        async with env.http.post(f"{direct.openai_url}/chat/completions", json=chat()) as r:
            expected = (r.status, await r.read(), r.headers["openai-organization"])
    finally:
        await direct.stop()
    raw = await post(env, "/v1/chat/completions", chat())
    assert (raw.status, raw.body, raw.headers["openai-organization"]) == expected
    with pytest.raises(openai.BadRequestError) as caught:
        env.server.script(Reply(status=400))
        await env.openai().chat.completions.create(model="gpt-4o-mini", messages=MESSAGES,
                                                   stream=True)
    assert caught.value.status_code == 400
    assert await env.value("ragobs_requests_total", ragobs_outcome="error",
                           error_type="400") == 2
    assert await env.value("ragobs_retry_attempts_total") == 0


async def test_retries_used_up_answer_the_last_failure_cleanly(env: Env) -> None:
    env.server.script(*[Reply(status=529)] * 3)
    with pytest.raises(anthropic.APIStatusError) as caught:
        await env.anthropic().messages.create(model="claude-test", max_tokens=9,
                                              messages=MESSAGES, stream=True)
    assert caught.value.status_code == 529
    assert caught.value.body["error"]["type"] == "overloaded_error"
    assert len(env.server.requests) == 3
    metrics = await env.metrics()
    assert sample_sum(metrics, "ragobs_retry_attempts_total", error_type="529") == 2
    assert sample_sum(metrics, "ragobs_retry_exhausted_total", ragobs_retry_reason="attempts") == 1
    assert sample_sum(metrics, "ragobs_requests_total", ragobs_outcome="error") == 1


async def test_a_retry_after_above_the_cap_is_answered_at_once(env: Env) -> None:
    env.server.script(Reply(status=429, headers={"retry-after": "600"}))
    raw = await post(env, "/v1/chat/completions", chat())
    assert raw.status == 429 and raw.headers["retry-after"] == "600"
    assert len(env.server.requests) == 1
    assert await env.value("ragobs_retry_exhausted_total",
                           ragobs_retry_reason="retry_after") == 1


async def test_an_unreachable_upstream_is_a_clean_502_in_the_apis_format(make_env: Any) -> None:
    env = await make_env(retries=Retries(attempts=2, initial=0.01, jitter=0.0))
    await env.server.stop()  # nothing listens there any more
    raw = await post(env, "/v1/messages", messages())
    assert raw.status == 502
    body = json.loads(raw.body)
    assert body["type"] == "error" and body["error"]["type"] == "api_error"
    assert "upstream 'default' failed" in body["error"]["message"]
    assert await env.value("ragobs_retry_attempts_total") == 1
    assert await env.value("ragobs_requests_total", ragobs_outcome="error") == 1


async def test_a_cut_after_content_is_never_retried_nor_dressed_as_a_200_error(
        env: Env) -> None:
    env.server.script(Reply(cut_after=2, chunk_delay=0.01))
    client = env.openai()
    pieces: list[str] = []
    stream = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES,
                                                  stream=True)
    with pytest.raises(openai.APIError):
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
    assert pieces == ["Hello", " world"]
    assert len(env.server.requests) == 1
    metrics = await env.metrics()
    assert sample_sum(metrics, "ragobs_proxy_interrupted_total") == 1
    assert sample_sum(metrics, "ragobs_requests_total", ragobs_outcome="error",
                      error_type="StreamInterrupted") == 1
    assert sample_sum(metrics, "ragobs_retry_exhausted_total",
                      ragobs_retry_reason="output_started") == 1
    raw_env_body = env.upstream_bytes(env.server.requests[0])
    assert b"error" not in raw_env_body


async def test_the_raw_stream_of_a_cut_ends_without_its_final_chunk(env: Env) -> None:
    env.server.script(Reply(cut_after=1))
    raw = await post(env, "/v1/messages", messages())
    assert raw.status == 200
    assert isinstance(raw.error, aiohttp.ClientPayloadError)
    assert raw.body == env.upstream_bytes(env.server.requests[0])
    assert b"error" not in raw.body


async def test_holding_ends_after_max_hold_without_content(make_env: Any) -> None:
    env = await make_env(max_hold=0.1)
    env.server.script(Reply(first_content_delay=0.4))
    t0 = time.perf_counter()
    async with env.http.post(f"{env.url}/v1/chat/completions", json=chat()) as response:
        t_headers = time.perf_counter() - t0
        body = await response.read()
    assert 0.1 <= t_headers < 0.3
    assert b"Hello" in body
    assert await env.value("gen_ai_client_operation_time_to_first_chunk_seconds_count") == 1


# --- a client that goes away -----------------------------------------------------------------


async def test_a_client_that_disconnects_mid_stream_closes_the_upstream(env: Env) -> None:
    env.server.script(Reply(chunk_delay=0.5, pieces=("first", "second", "third")))
    response = await env.http.post(f"{env.url}/v1/chat/completions", json=chat())
    async for data in response.content.iter_any():
        if b"first" in data:
            break
    seen = env.server.requests[-1]
    t_close = time.perf_counter()
    response.close()
    t_gone = await env.server.wait_disconnect(seen, timeout=1.0)
    assert t_gone - t_close < 0.05
    assert seen.deltas_sent == 1
    await asyncio.sleep(0.02)
    assert await env.value("ragobs_requests_total", ragobs_outcome="cancelled") == 1


async def test_a_client_that_leaves_before_content_closes_the_upstream(env: Env) -> None:
    env.server.script(Reply(first_content_delay=2.0))
    task = asyncio.ensure_future(env.http.post(f"{env.url}/v1/chat/completions", json=chat()))
    await asyncio.sleep(0.1)  # the request is upstream, the proxy holds its opening
    assert env.server.requests and not task.done()
    t_close = time.perf_counter()
    task.cancel()
    t_gone = await env.server.wait_disconnect(env.server.requests[-1], timeout=1.0)
    assert t_gone - t_close < 0.05
    await asyncio.sleep(0.02)
    assert await env.value("ragobs_requests_total", ragobs_outcome="cancelled") == 1


# --- limits per caller --------------------------------------------------------------------


async def test_requests_per_key_are_limited_with_the_usual_headers(
        make_env: Any, caplog: pytest.LogCaptureFixture) -> None:
    clock = ManualClock()
    env = await make_env(limits=CallerLimits(requests=2, window=10.0), clock=clock)
    caplog.set_level(logging.DEBUG)
    for _ in range(2):
        assert (await post(env, "/v1/chat/completions", chat())).status == 200
    await clock.advance(4.0)
    refused = await post(env, "/v1/chat/completions", chat())
    assert refused.status == 429
    assert refused.headers["retry-after"] == "6"
    assert refused.headers["retry-after-ms"] == "6000"
    assert refused.headers["x-ratelimit-limit-requests"] == "2"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.headers["x-ratelimit-reset-requests"] == "6s"
    assert json.loads(refused.body)["error"]["code"] == "rate_limit_exceeded"
    assert len(env.server.requests) == 2  # never forwarded
    # Another key has its own window.
    other = await post(env, "/v1/chat/completions", chat(), Authorization="Bearer sk-other")
    assert other.status == 200
    await clock.advance(6.0)
    for _ in range(2):
        assert (await post(env, "/v1/chat/completions", chat())).status == 200
    # The SDK sees a RateLimitError.
    with pytest.raises(openai.RateLimitError):
        await env.openai().chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    metrics = await env.metrics()
    assert sample_sum(metrics, "ragobs_proxy_limited_total", ragobs_proxy_limit="requests") == 2
    assert "sk-test-key" not in metrics and "sk-other" not in metrics
    assert "sk-test-key" not in caplog.text and "sk-other" not in caplog.text
    spans = env.spans.get_finished_spans()
    assert all("sk-test-key" not in str(dict(s.attributes or {})) for s in spans)


async def test_tokens_per_key_are_charged_from_the_providers_usage(make_env: Any) -> None:
    clock = ManualClock()
    env = await make_env(limits=CallerLimits(tokens=50, window=10.0), clock=clock)
    env.server.script(Reply(input_tokens=17, output_tokens=20),
                      Reply(input_tokens=17, output_tokens=20))
    claude = env.anthropic()
    for n in (1, 2):  # 37 fit; 37 more are charged once the first leave the window
        stream = await claude.messages.create(model="claude-test", max_tokens=9,
                                              messages=MESSAGES, stream=True)
        async for _ in stream:
            pass
        await env.settled(n)
    anthropic_key = {"Authorization": "", "x-api-key": "sk-ant-test"}  # the SDK's caller
    refused = await post(env, "/v1/messages", messages(), **anthropic_key)
    assert refused.status == 429
    body = json.loads(refused.body)
    assert body["error"]["type"] == "rate_limit_error"
    assert refused.headers["x-ratelimit-limit-tokens"] == "50"
    assert refused.headers["x-ratelimit-remaining-tokens"] == "0"
    assert refused.headers["retry-after"] == "10"
    await clock.advance(10.0)  # the first charge leaves; the queued one is paid
    await asyncio.sleep(0)
    refused_again = await post(env, "/v1/messages", messages(), **anthropic_key)
    assert refused_again.status == 200  # 37 in the window, room for more
    assert await env.value("ragobs_proxy_limited_total", ragobs_proxy_limit="tokens") == 1
    other = await post(env, "/v1/messages", messages())  # another key: its own window
    assert other.status == 200


# --- routing and paths the proxy does not read ---------------------------------------------


async def test_named_upstreams_are_reached_by_their_prefix(make_env: Any) -> None:
    env = await make_env(named=True)
    stream = await env.openai("/openai").chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True)
    async for _ in stream:
        pass
    message = await env.anthropic("/anthropic").messages.create(
        model="claude-test", max_tokens=9, messages=MESSAGES)
    assert message.model == ANTHROPIC_MODEL
    assert [s.path for s in env.server.requests] == ["/v1/chat/completions", "/v1/messages"]
    metrics = await env.metrics()
    assert sample_sum(metrics, "ragobs_proxy_overhead_seconds_count",
                      ragobs_proxy_upstream="openai") == 1
    assert sample_sum(metrics, "ragobs_proxy_overhead_seconds_count",
                      ragobs_proxy_upstream="anthropic") == 1
    async with env.http.get(f"{env.url}/v1/models") as response:
        assert response.status == 404
        assert "/openai/" in (await response.json())["error"]["message"]


async def test_other_paths_pass_through_untouched(env: Env) -> None:
    direct = await env.http.get(f"{env.server.base_url}/v1/models?limit=2",
                                headers={"X-Custom": "1"})
    expected = (direct.status, await direct.read())
    direct.close()
    async with env.http.get(f"{env.url}/v1/models?limit=2", headers={"X-Custom": "1"}) as r:
        assert (r.status, await r.read())[0] == expected[0]
    seen = env.server.requests[-1]
    assert seen.path == "/v1/models" and seen.query == {"limit": "2"}
    assert seen.headers["x-custom"] == "1"
    async with env.http.put(f"{env.url}/v1/files/abc", data=b"\x00raw bytes") as r:
        assert r.status == 404
    assert env.server.requests[-1].method == "PUT"
    assert await env.value("ragobs_requests_total") == 0  # nothing read, nothing measured


async def test_a_body_that_is_not_json_is_passed_to_the_upstream_as_it_is(env: Env) -> None:
    async with env.http.post(f"{env.url}/v1/chat/completions", data=b"not json",
                             headers={"Content-Type": "application/json"}) as r:
        assert r.status == 200  # the provider stand-in answers anything
    assert env.server.requests[-1].body is None
    assert await env.value("ragobs_requests_total") == 0


# --- the parts, alone ----------------------------------------------------------------------


def test_events_are_the_same_however_the_bytes_are_split() -> None:
    blocks = [b": keepalive\n\n", b'data: {"a":1}\n\n',
              b'event: x\r\ndata: {"b":\r\ndata: 2}\r\n\r\n', b"data: [DONE]\n\n"]
    body = b"".join(blocks)
    whole = EventParser().feed(body)
    ends = [sum(len(b) for b in blocks[:i + 1]) for i in range(len(blocks))]
    assert whole == list(zip(ends, [None, b'{"a":1}', b'{"b":\n2}', b"[DONE]"], strict=True))
    for size in range(1, 9):
        parser = EventParser()
        events = []
        for i in range(0, len(body), size):
            events += parser.feed(body[i:i + size])
        assert events == whole


def test_the_parser_keeps_at_most_a_line_of_the_limit() -> None:
    parser = EventParser(max_line=64)
    long = b"data: " + b"x" * 500 + b"\n\n"
    events = []
    for i in range(0, len(long), 50):
        events += parser.feed(long[i:i + 50])
        assert len(parser._line) <= 64
    assert events == [(len(long), None)]
    assert parser.feed(b'data: {"ok":1}\n\n') == [(len(long) + 16, b'{"ok":1}')]


def test_the_outbox_cuts_whole_events_only() -> None:
    box = Outbox()
    box.add(b"aaaa|bbbb|cc")
    box.cut(5, 10)
    assert box.take(10) == b"aaaa|"
    box.add(b"cc|")
    assert box.take(box.end) == b"cccc|"
    box.cut(0, 3)  # already written: not cut
    assert box.mark == 15


def test_routes() -> None:
    router = Router((Upstream("https://api.openai.com"),
                     Upstream("https://example.com/api/", name="openrouter"),
                     Upstream("https://api.anthropic.com", name="anthropic")))
    route = router.route("POST", "/v1/chat/completions?x=1")
    assert route is not None
    assert (route.url, route.api, route.provider) == (
        "https://api.openai.com/v1/chat/completions?x=1", Api.CHAT, "openai")
    route = router.route("POST", "/openrouter/v1/responses")
    assert route is not None and route.url == "https://example.com/api/v1/responses"
    assert route.upstream.label == "openrouter"
    route = router.route("POST", "/anthropic/v1/messages")
    assert route is not None and (route.api, route.provider) == (Api.MESSAGES, "anthropic")
    route = router.route("POST", "/openai/deployments/gpt/chat/completions?api-version=1")
    assert route is not None and route.provider == semconv.PROVIDER_AZURE_OPENAI
    route = router.route("GET", "/anthropic/v1/models")
    assert route is not None and route.api is None


def test_in_stream_error_events_stand_for_their_status() -> None:
    overloaded = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    found = stream_error(overloaded, b"{}")
    assert found is not None and found.status == 529
    assert ragobs.resilience.is_retryable(found)
    failed = {"type": "response.failed", "response": {"error": {"code": "server_error"}}}
    found = stream_error(failed, b"{}")
    assert found is not None and found.status == 500
    assert stream_error({"error": {"message": "boom"}}, b"{}") is not None
    assert stream_error({"type": "content_block_delta"}, b"{}") is None
    assert stream_error({"choices": [], "error": None}, b"{}") is None
    assert stream_error({"error": None, "id": "x"}, b"{}") is None


def test_settings_name_what_is_wrong() -> None:
    with pytest.raises(ValueError, match=r"url must be an http:// or https:// base URL"):
        Upstream("ftp://x")
    with pytest.raises(ValueError, match=r"name must be None .* got 'v1'"):
        Upstream("http://x", name="v1")
    with pytest.raises(ValueError, match="at most one default"):
        ProxyConfig(upstreams=(Upstream("http://a"), Upstream("http://b")))
    with pytest.raises(ValueError, match=r"attempts must be an int >= 1, got 0"):
        Retries(attempts=0)
    with pytest.raises(ValueError, match=r"requests must be an int >= 1 or None, got 0"):
        CallerLimits(requests=0)
    assert Upstream.parse("openai=https://api.openai.com") == Upstream(
        "https://api.openai.com", name="openai")
    assert Upstream.parse("https://x.test/a=b").name is None


def test_the_command_line_makes_the_config() -> None:
    import argparse

    from ragobs.cli import _add_server_args
    from ragobs.proxy._command import add_proxy_parser

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    proxy = add_proxy_parser(sub)
    _add_server_args(proxy, log_default="warning", log_help="logs")
    args = parser.parse_args(["proxy", "--upstream", "openai=https://api.openai.com",
                              "--upstream", "https://api.anthropic.com", "--retries", "0",
                              "--limit-requests", "5", "--listen", "0.0.0.0:9000"])
    config = config_from(args)
    assert [u.label for u in config.upstreams] == ["openai", "default"]
    assert config.retries.attempts == 1
    assert config.limits.requests == 5
    assert args.listen == ("0.0.0.0", 9000)


def test_instruments_are_declared_once_with_their_prometheus_names() -> None:
    proxy_specs = [s for s in semconv.ALL_INSTRUMENTS if s.name.startswith("ragobs.proxy.")]
    assert len(proxy_specs) == 3
    for spec in proxy_specs:
        assert spec.name.startswith("ragobs.proxy.")
        assert re.fullmatch(r"ragobs_proxy_[a-z_]+", spec.prometheus_name)


# --- what the provider server does not play ---------------------------------------------


class ErrorEventUpstream:
    """An Anthropic-like upstream whose streams open with ``200`` and
    ``message_start``, then fail with an ``overloaded_error`` event before any
    content, ``failures`` times; then answer. The provider server cannot."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.requests = 0
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "request-id": f"req_{self.requests}"})
        await response.prepare(request)
        start = {"type": "message_start", "message": {
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
            "content": [], "stop_reason": None, "usage": {"input_tokens": 3,
                                                           "output_tokens": 1}}}
        await response.write(b"event: message_start\ndata: " + json.dumps(start).encode()
                             + b"\n\n")
        if self.requests <= self.failures:
            error = {"type": "error", "error": {"type": "overloaded_error",
                                                "message": "Overloaded"}}
            await response.write(b"event: error\ndata: " + json.dumps(error).encode() + b"\n\n")
            await response.write_eof()
            return response
        for event in ({"type": "content_block_start", "index": 0,
                       "content_block": {"type": "text", "text": ""}},
                      {"type": "content_block_delta", "index": 0,
                       "delta": {"type": "text_delta", "text": "fine"}},
                      {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                       "usage": {"output_tokens": 2}},
                      {"type": "message_stop"}):
            await response.write(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n"
                                 .encode())
        await response.write_eof()
        return response

    async def __aenter__(self) -> ErrorEventUpstream:
        app = web.Application()
        app.router.add_post("/v1/messages", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


async def serve_proxy(upstream: str, **options: Any) -> tuple[RunningProxy, Runtime]:
    runtime = ragobs.setup(service_name="proxy-test", serve=False, set_global=False,
                           registry=CollectorRegistry())
    options.setdefault("retries", FAST)
    proxy = await start_proxy(ProxyConfig(upstreams=(Upstream(upstream),), **options),
                              port=0, admin_port=0, runtime=runtime)
    return proxy, runtime


async def test_an_error_event_before_content_is_retried_not_sent_as_a_200(
        make_env: Any) -> None:
    async with ErrorEventUpstream(failures=1) as upstream, aiohttp.ClientSession() as http:
        proxy, runtime = await serve_proxy(upstream.url)
        try:
            async with http.post(f"{proxy.url}/v1/messages", json=messages()) as r:
                status, body = r.status, await r.read()
            assert status == 200
            assert body.count(b"event: message_start") == 1 and b"overloaded" not in body
            assert body.endswith(b'data: {"type": "message_stop"}\n\n')
            assert upstream.requests == 2
            upstream.failures, upstream.requests = 10, 0
            async with http.post(f"{proxy.url}/v1/messages", json=messages()) as r:
                status, body = r.status, await r.read()
                request_id = r.headers["request-id"]
            assert status == 529  # a clean HTTP error, carrying the upstream's event
            assert json.loads(body)["error"]["type"] == "overloaded_error"
            assert request_id == "req_3"
            assert upstream.requests == 3
            assert proxy.admin_url is not None
            async with http.get(f"{proxy.admin_url}/metrics") as r:
                metrics = await r.text()
        finally:
            await proxy.stop()
            runtime.shutdown()
    assert sample_sum(metrics, "ragobs_requests_total", ragobs_outcome="ok") == 1
    assert sample_sum(metrics, "ragobs_requests_total", ragobs_outcome="error",
                      error_type="529") == 1
    assert sample_sum(metrics, "ragobs_retry_attempts_total", error_type="529") == 3


async def test_holding_ends_past_max_hold_bytes(make_env: Any) -> None:
    env = await make_env(max_hold_bytes=100)
    env.server.script(Reply(first_content_delay=0.4))
    t0 = time.perf_counter()
    async with env.http.post(f"{env.url}/v1/messages", json=messages()) as response:
        t_headers = time.perf_counter() - t0
        body = await response.read()
    assert t_headers < 0.3  # message_start alone is over 100 bytes: committed at once
    assert body == env.upstream_bytes(env.server.requests[-1])


@pytest.mark.needs_redis
async def test_replicas_share_the_limits_through_redis(redis_url: str) -> None:  # noqa: F811
    limits = CallerLimits(requests=3, window=60.0, redis_url=redis_url)
    async with ProviderServer() as server, aiohttp.ClientSession() as http:
        first, first_runtime = await serve_proxy(server.base_url, limits=limits)
        second, second_runtime = await serve_proxy(server.base_url, limits=limits)
        key = f"sk-{time.time_ns()}"  # a fresh caller: the server outlives one test
        try:
            statuses = []
            for proxy in (first, second, first, second):
                async with http.post(f"{proxy.url}/v1/chat/completions", json=chat(),
                                     headers={"Authorization": f"Bearer {key}"}) as r:
                    await r.read()
                    statuses.append(r.status)
                    headers = r.headers
            assert statuses == [200, 200, 200, 429]
            assert headers["x-ratelimit-limit-requests"] == "3"
            assert headers["x-ratelimit-remaining-requests"] == "0"
            assert headers["retry-after"] == "60"  # the window: an upper bound with Redis
            import redis.asyncio as aioredis
            client = aioredis.from_url(redis_url)
            try:
                keys = [k.decode() for k in await client.keys("ragobs:proxy:*")]
            finally:
                await client.aclose()
            assert keys and all(key not in k for k in keys)  # only a digest of it
        finally:
            for proxy, runtime in ((first, first_runtime), (second, second_runtime)):
                await proxy.stop()
                runtime.shutdown()
