"""The real OpenAI, Anthropic and LangChain clients, over HTTP, through every form.

Each test talks to :class:`tests.provider_server.ProviderServer`, which speaks
the providers' streaming wire formats (role chunk, usage chunk, keepalives,
errors with their headers). Nothing in the SDKs is mocked. The truth each
figure is checked against is what the server sent and when the consumer saw it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anthropic
import openai
import pytest
from opentelemetry.sdk.trace import ReadableSpan

import ragobs
from ragobs import semconv
from ragobs._stream import instrument_stream, observe, observe_stream
from ragobs.clock import ManualClock
from ragobs.errors import StreamTimeout
from tests.conftest import OTelHarness
from tests.provider_server import (
    ANTHROPIC_MODEL,
    OPENAI_MODEL,
    ProviderServer,
    Reply,
    ThreadedProviderServer,
)
from tests.support import free_port

DURATION = semconv.OPERATION_DURATION.name
TTFT = semconv.TIME_TO_FIRST_CHUNK.name
USAGE = semconv.TOKEN_USAGE.name
REQUESTS = semconv.REQUESTS.name
ACTIVE = semconv.REQUESTS_ACTIVE.name
RETRIES = semconv.RETRY_ATTEMPTS.name
EXHAUSTED = semconv.RETRY_EXHAUSTED.name
TIMEOUTS = semconv.TIMEOUTS.name

#: How close TTFT must be to the moment the first content reached the consumer.
TTFT_TOLERANCE = 0.05
#: The role chunk arrives at once, the first content this much later.
CONTENT_DELAY = 0.4
SLOW = Reply(first_content_delay=CONTENT_DELAY, keepalive=True)


def openai_client(server: ProviderServer | ThreadedProviderServer, *, sync: bool = False,
                  **options: Any) -> Any:
    cls = openai.OpenAI if sync else openai.AsyncOpenAI
    return cls(base_url=server.openai_url, api_key="test", **options)


def anthropic_client(server: ProviderServer, **options: Any) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=server.anthropic_url, api_key="test", **options)


def chat_args(**extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
            "stream": True, **extra}


def anthropic_args() -> dict[str, Any]:
    return {"model": "claude-test", "max_tokens": 64, "stream": True,
            "messages": [{"role": "user", "content": "hi"}]}


class Consumer:
    """Reads a stream as a user would, noting when the first content arrived."""

    def __init__(self, has_content: Callable[[Any], bool]) -> None:
        self.has_content = has_content
        self.t_start = time.perf_counter()
        self.t_content: float | None = None
        self.chunks: list[Any] = []

    def see(self, chunk: Any) -> None:
        if self.t_content is None and self.has_content(chunk):
            self.t_content = time.perf_counter()
        self.chunks.append(chunk)

    async def read(self, stream: Any) -> Consumer:
        async for chunk in stream:
            self.see(chunk)
        return self

    @property
    def ttft(self) -> float:
        assert self.t_content is not None, "no content reached the consumer"
        return self.t_content - self.t_start


def chat_content(chunk: Any) -> bool:
    return bool(chunk.choices and chunk.choices[0].delta.content)


def event_content(chunk: Any) -> bool:
    return chunk.type in ("content_block_delta", "response.output_text.delta")


def only_span(otel: OTelHarness) -> ReadableSpan:
    spans = [s for s in otel.spans() if s.attributes and semconv.OUTCOME in s.attributes]
    assert len(spans) == 1, [s.name for s in otel.spans()]
    return spans[0]


def assert_figures(otel: OTelHarness, consumer: Consumer, *, output: int = 20,
                   input_: int = 17, outcome: str = "ok") -> ReadableSpan:
    """Tokens equal the provider's usage; TTFT is the first content's arrival."""
    assert otel.value(REQUESTS, ragobs__outcome=outcome) == 1
    assert otel.total(USAGE, gen_ai__token__type="output") == output
    assert otel.total(USAGE, gen_ai__token__type="input") == input_
    assert otel.value(ACTIVE) == 0
    span = only_span(otel)
    attrs = span.attributes or {}
    assert attrs[semconv.USAGE_OUTPUT_TOKENS] == output
    assert attrs[semconv.USAGE_INPUT_TOKENS] == input_
    assert attrs[semconv.USAGE_SOURCE] == "provider"
    assert attrs[semconv.REQUEST_STREAM] is True
    ttft = attrs[semconv.RESPONSE_TIME_TO_FIRST_CHUNK]
    assert isinstance(ttft, float)
    assert abs(ttft - consumer.ttft) < TTFT_TOLERANCE, (ttft, consumer.ttft)
    assert otel.total(TTFT) == pytest.approx(ttft)
    return span


# --- OpenAI Chat Completions, every form ---------------------------------------------


async def test_instrumented_openai_client_records_provider_usage_and_true_ttft(
        provider_server: ProviderServer, otel: OTelHarness) -> None:
    provider_server.script(SLOW)
    client = ragobs.instrument_client(openai_client(provider_server), telemetry=otel.telemetry)
    consumer = Consumer(chat_content)
    stream = await client.chat.completions.create(**chat_args())
    await consumer.read(stream)
    span = assert_figures(otel, consumer)
    attrs = span.attributes or {}
    assert consumer.ttft >= CONTENT_DELAY  # the role chunk at ~0 s was not taken as the first
    assert attrs[semconv.RESPONSE_MODEL] == OPENAI_MODEL
    assert str(attrs[semconv.RESPONSE_ID]).startswith("chatcmpl-")
    assert attrs[semconv.RESPONSE_FINISH_REASONS] == ("stop",)
    assert span.name == "chat gpt-4o-mini"
    # ragobs asked for usage in the stream.
    assert provider_server.requests[0].body["stream_options"] == {"include_usage": True}


async def test_observe_stream_over_an_awaited_openai_stream(
        provider_server: ProviderServer, otel: OTelHarness) -> None:
    provider_server.script(SLOW)
    client = openai_client(provider_server)
    consumer = Consumer(chat_content)
    stream = await client.chat.completions.create(
        **chat_args(stream_options={"include_usage": True}))
    await consumer.read(observe_stream(stream, model="gpt-4o-mini", telemetry=otel.telemetry))
    # Timing starts at the first read here: the request was issued before.
    consumer_ttft_from_read = consumer.ttft
    assert consumer_ttft_from_read >= CONTENT_DELAY - TTFT_TOLERANCE
    assert otel.total(USAGE, gen_ai__token__type="output") == 20
    assert otel.total(USAGE, gen_ai__token__type="input") == 17


async def test_observe_stream_of_the_unawaited_call_measures_the_request_phase(
        provider_server: ProviderServer, otel: OTelHarness) -> None:
    provider_server.script(Reply(header_delay=0.3, first_content_delay=0.2))
    client = openai_client(provider_server)
    consumer = Consumer(chat_content)
    await consumer.read(observe_stream(
        client.chat.completions.create(**chat_args(stream_options={"include_usage": True})),
        model="gpt-4o-mini", telemetry=otel.telemetry))
    assert_figures(otel, consumer)
    assert consumer.ttft >= 0.5
    assert otel.total(DURATION) >= 0.5  # the 0.3 s wait for headers is inside


async def test_observe_stream_of_a_factory(provider_server: ProviderServer,
                                           otel: OTelHarness) -> None:
    provider_server.script(Reply(header_delay=0.2))
    client = openai_client(provider_server)
    consumer = Consumer(chat_content)
    await consumer.read(observe_stream(
        lambda: client.chat.completions.create(
            **chat_args(stream_options={"include_usage": True})),
        telemetry=otel.telemetry))
    assert_figures(otel, consumer)
    assert consumer.ttft >= 0.2


async def test_instrument_stream_decorator_over_yielded_openai_chunks(
        provider_server: ProviderServer, otel: OTelHarness) -> None:
    provider_server.script(SLOW)
    client = openai_client(provider_server)

    @instrument_stream(model="gpt-4o-mini", telemetry=otel.telemetry)
    async def answer() -> AsyncIterator[Any]:
        stream = await client.chat.completions.create(
            **chat_args(stream_options={"include_usage": True}))
        async for chunk in stream:
            yield chunk

    consumer = Consumer(chat_content)
    await consumer.read(answer())
    assert_figures(otel, consumer)


async def test_observe_by_hand_with_chunk_reads_usage_and_makes_its_span_current(
        provider_server: ProviderServer, otel: OTelHarness) -> None:
    provider_server.script(SLOW)
    client = openai_client(provider_server)
    consumer = Consumer(chat_content)
    async with observe(model="gpt-4o-mini", telemetry=otel.telemetry) as obs:
        async with ragobs.stage("retrieve", telemetry=otel.telemetry):
            pass
        stream = await client.chat.completions.create(
            **chat_args(stream_options={"include_usage": True}))
        async for chunk in stream:
            consumer.see(chunk)
            obs.chunk(chunk)
    span = assert_figures(otel, consumer)
    stage_span = next(s for s in otel.spans() if s.name == "retrieve")
    assert stage_span.parent is not None
    assert stage_span.parent.span_id == span.context.span_id
    assert stage_span.context.trace_id == span.context.trace_id


async def test_refusal_and_tool_call_deltas_are_output(provider_server: ProviderServer,
                                                       otel: OTelHarness) -> None:
    client = ragobs.instrument_client(openai_client(provider_server), telemetry=otel.telemetry)
    provider_server.script(Reply(refusal=True, first_content_delay=0.2),
                           Reply(tool_call=True, pieces=('{"q":', ' "x"}'),
                                 first_content_delay=0.2, reasoning_tokens=5, cached_tokens=3))
    for _ in range(2):
        stream = await client.chat.completions.create(**chat_args())
        async for _chunk in stream:
            pass
    spans = [s for s in otel.spans() if s.attributes and semconv.OUTCOME in s.attributes]
    refusal, tool = (span.attributes or {} for span in spans)
    # The refusal starts after the role chunk; a tool call with its name, which
    # the model generated, in the first chunk.
    assert refusal[semconv.RESPONSE_TIME_TO_FIRST_CHUNK] >= 0.2  # type: ignore[operator]
    assert tool[semconv.RESPONSE_TIME_TO_FIRST_CHUNK] < 0.2  # type: ignore[operator]
    assert refusal[semconv.USAGE_OUTPUT_TOKENS] == tool[semconv.USAGE_OUTPUT_TOKENS] == 20
    assert tool[semconv.RESPONSE_FINISH_REASONS] == ("tool_calls",)
    assert tool[semconv.USAGE_REASONING_OUTPUT_TOKENS] == 5
    assert tool[semconv.USAGE_CACHE_READ_INPUT_TOKENS] == 3


async def test_without_provider_usage_tokens_are_counted_content_chunks(
        provider_server: ProviderServer, otel: OTelHarness) -> None:
    client = ragobs.instrument_client(openai_client(provider_server), include_usage=False,
                                      telemetry=otel.telemetry)
    stream = await client.chat.completions.create(**chat_args())
    async for _chunk in stream:
        pass
    assert "stream_options" not in provider_server.requests[0].body
    assert otel.total(USAGE, gen_ai__token__type="output") == 3  # "Hello", " world", "!"
    assert otel.count(USAGE, gen_ai__token__type="input") == 0
    assert (only_span(otel).attributes or {})[semconv.USAGE_SOURCE] == "counted"


async def test_mid_stream_cut_is_an_error_with_no_token_figure(
        provider_server: ProviderServer, otel: OTelHarness) -> None:
    provider_server.script(Reply(cut_after=1))
    client = ragobs.instrument_client(openai_client(provider_server, max_retries=0),
                                      telemetry=otel.telemetry)
    stream = await client.chat.completions.create(**chat_args())
    with pytest.raises(openai.APIConnectionError):
        async for _chunk in stream:
            pass
    assert otel.value(REQUESTS, ragobs__outcome="error", error__type="APIConnectionError") == 1
    assert otel.count(USAGE) == 0  # failed, and the provider reported no usage
    assert otel.value(ACTIVE) == 0


# --- closing is closing ------------------------------------------------------------


@pytest.mark.parametrize("form", ["instrumented", "observe_stream", "deferred", "timeout",
                                  "retry", "fallback"])
async def test_break_then_aclose_closes_the_providers_response(
        provider_server: ProviderServer, otel: OTelHarness, form: str) -> None:
    provider_server.script(Reply(pieces=tuple(f"t{i} " for i in range(200)), chunk_delay=0.01))
    raw = openai_client(provider_server)
    tel = otel.telemetry
    if form == "instrumented":
        client = ragobs.instrument_client(openai_client(provider_server), telemetry=tel)
        wrapper: Any = await client.chat.completions.create(**chat_args())
    elif form == "observe_stream":
        wrapper = observe_stream(await raw.chat.completions.create(**chat_args()), telemetry=tel)
    elif form == "deferred":
        wrapper = observe_stream(raw.chat.completions.create(**chat_args()), telemetry=tel)
    elif form == "timeout":
        wrapper = ragobs.stream_timeout(raw.chat.completions.create(**chat_args()), total=30,
                                        telemetry=tel)
    elif form == "retry":
        wrapper = ragobs.retry_stream(lambda: raw.chat.completions.create(**chat_args()),
                                      telemetry=tel)
    else:
        wrapper = ragobs.fallback_stream(raw.chat.completions.create(**chat_args()),
                                         telemetry=tel)
    seen = 0
    async for chunk in wrapper:
        seen += chat_content(chunk)
        if seen == 3:
            break
    t_close = time.perf_counter()
    await wrapper.aclose()
    request = provider_server.requests[0]
    t_disconnect = await provider_server.wait_disconnect(request, timeout=1.0)
    assert t_disconnect - t_close < 0.1
    assert not request.completed
    if form in ("instrumented", "observe_stream", "deferred"):
        assert otel.value(REQUESTS, ragobs__outcome="cancelled") == 1
        assert otel.value(ACTIVE) == 0


async def test_an_instrumented_stream_dropped_unread_is_closed_and_counted(
        provider_server: ProviderServer, otel: OTelHarness) -> None:
    client = ragobs.instrument_client(openai_client(provider_server), telemetry=otel.telemetry)
    stream = await client.chat.completions.create(**chat_args())
    async with stream:
        pass
    assert otel.value(REQUESTS, ragobs__outcome="cancelled") == 1
    assert otel.value(ACTIVE) == 0


# --- deadlines -----------------------------------------------------------------------


@pytest.mark.parametrize("form", ["instrumented", "deferred"])
async def test_first_token_deadline_ignores_the_role_chunk(
        provider_server: ProviderServer, otel: OTelHarness, form: str) -> None:
    provider_server.script(Reply(first_content_delay=1.5, keepalive=True))
    limit = 0.3
    if form == "instrumented":
        client = ragobs.instrument_client(openai_client(provider_server),
                                          telemetry=otel.telemetry)
        source: Any = await client.chat.completions.create(**chat_args())
        t0 = time.perf_counter()
    else:
        client = openai_client(provider_server)
        t0 = time.perf_counter()
        source = client.chat.completions.create(**chat_args())
    with pytest.raises(StreamTimeout) as caught:
        async for _chunk in ragobs.stream_timeout(source, first_token=limit,
                                                  telemetry=otel.telemetry):
            pass
    elapsed = time.perf_counter() - t0
    assert caught.value.kind == "first_token"
    assert abs(elapsed - limit) < 0.05, elapsed
    assert otel.value(TIMEOUTS, ragobs__timeout__kind="first_token") == 1
    await provider_server.wait_disconnect(provider_server.requests[0])


async def test_first_token_deadline_covers_slow_headers(provider_server: ProviderServer,
                                                        otel: OTelHarness) -> None:
    provider_server.script(Reply(header_delay=1.5))
    client = openai_client(provider_server)
    t0 = time.perf_counter()
    with pytest.raises(StreamTimeout):
        async for _chunk in ragobs.stream_timeout(
                client.chat.completions.create(**chat_args()), first_token=0.3,
                telemetry=otel.telemetry):
            pass
    assert abs(time.perf_counter() - t0 - 0.3) < 0.05


async def test_the_clients_own_read_timeout_is_outcome_timeout(
        provider_server: ProviderServer, otel: OTelHarness) -> None:
    provider_server.script(Reply(first_content_delay=2.0))
    client = ragobs.instrument_client(openai_client(provider_server, timeout=0.3, max_retries=0),
                                      telemetry=otel.telemetry)
    stream = await client.chat.completions.create(**chat_args())
    with pytest.raises(openai.APITimeoutError) as raised:
        async for _chunk in stream:
            pass
    assert otel.value(REQUESTS, ragobs__outcome="timeout") == 1
    assert ragobs.resilience.is_retryable(raised.value)  # the SDK's own, as it raised it


# --- resilience that knows the SDKs --------------------------------------------------


def _no_wait_retry(**options: Any) -> dict[str, Any]:
    return {"initial": 0.01, "jitter": 0.0, "clock": ManualClock(), **options}


async def _drain(stream: Any) -> None:
    async for _chunk in stream:
        pass


async def test_no_hidden_retries_with_a_default_client(provider_server: ProviderServer,
                                                       otel: OTelHarness) -> None:
    # Two 429s: a hidden third request would get the default 200 and show in the count.
    provider_server.script(*[Reply(status=429, headers={"retry-after-ms": "10"})] * 2)
    client = ragobs.instrument_client(openai_client(provider_server), telemetry=otel.telemetry)
    assert client.max_retries == 2  # the SDK's default is left as it is
    clock = ManualClock()
    stream = ragobs.retry_stream(lambda: client.chat.completions.create(**chat_args()),
                                 attempts=2, initial=0.01, jitter=0.0, name="llm",
                                 telemetry=otel.telemetry)
    with pytest.raises(openai.RateLimitError):
        await _drain(stream)
    assert len(provider_server.requests) == 2  # exactly `attempts`
    assert otel.value(RETRIES, ragobs__name="llm", error__type="429") == 1
    assert otel.value(EXHAUSTED, ragobs__retry__reason="attempts") == 1
    assert otel.value(REQUESTS, ragobs__outcome="error", error__type="429") == 2
    del clock
    # Outside a ragobs retry, the SDK keeps its own retries.
    provider_server.requests.clear()
    provider_server.script(Reply(status=429, headers={"retry-after-ms": "10"}), Reply())
    await _drain(await client.chat.completions.create(**chat_args()))
    assert len(provider_server.requests) == 2


@pytest.mark.parametrize(("headers", "reason"), [
    ({"retry-after": "3600"}, "retry_after"),
    ({"retry-after": "Wed, 21 Oct 2099 07:28:00 GMT"}, "retry_after"),
])
async def test_a_retry_after_above_the_cap_gives_up_at_once(
        provider_server: ProviderServer, otel: OTelHarness, headers: dict[str, str],
        reason: str) -> None:
    provider_server.script(Reply(status=429, headers=headers))
    client = openai_client(provider_server, max_retries=0)
    t0 = time.perf_counter()
    with pytest.raises(openai.RateLimitError) as caught:
        await _drain(ragobs.retry_stream(lambda: client.chat.completions.create(**chat_args()),
                                         attempts=3, telemetry=otel.telemetry, name="llm"))
    assert time.perf_counter() - t0 < 1.0
    assert len(provider_server.requests) == 1
    assert otel.value(EXHAUSTED, ragobs__retry__reason=reason) == 1
    assert any("retry_after" in note for note in caught.value.__notes__)


@pytest.mark.parametrize(("header", "status", "requests"), [
    ("false", 503, 1),   # the server says no: not retried although 503 is
    ("true", 400, 2),    # the server says yes: retried although 400 is not
])
async def test_x_should_retry_decides(provider_server: ProviderServer, otel: OTelHarness,
                                      header: str, status: int, requests: int) -> None:
    provider_server.script(*[Reply(status=status, headers={"x-should-retry": header})] * 2)
    client = openai_client(provider_server, max_retries=0)
    with pytest.raises(openai.APIStatusError):
        await _drain(ragobs.retry_stream(lambda: client.chat.completions.create(**chat_args()),
                                         attempts=2, initial=0.01, jitter=0.0,
                                         telemetry=otel.telemetry))
    assert len(provider_server.requests) == requests


async def test_retry_after_ms_is_honoured(provider_server: ProviderServer,
                                          otel: OTelHarness) -> None:
    provider_server.script(Reply(status=429, headers={"retry-after-ms": "250"}), Reply())
    client = openai_client(provider_server, max_retries=0)
    t0 = time.perf_counter()
    await _drain(ragobs.retry_stream(lambda: client.chat.completions.create(**chat_args()),
                                     attempts=2, initial=0.01, jitter=0.0,
                                     telemetry=otel.telemetry))
    assert time.perf_counter() - t0 >= 0.25
    assert len(provider_server.requests) == 2


async def test_a_dead_host_is_retried(otel: OTelHarness) -> None:
    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{free_port()}/v1", api_key="t",
                                max_retries=0)
    with pytest.raises(openai.APIConnectionError):
        await _drain(ragobs.retry_stream(lambda: client.chat.completions.create(**chat_args()),
                                         attempts=3, initial=0.01, jitter=0.0, name="dead",
                                         telemetry=otel.telemetry))
    assert otel.value(RETRIES, ragobs__name="dead", error__type="APIConnectionError") == 2


async def test_a_failure_after_the_role_chunk_is_still_retried(
        provider_server: ProviderServer, otel: OTelHarness) -> None:
    provider_server.script(Reply(cut_after=0), Reply())
    client = openai_client(provider_server, max_retries=0)
    chunks = [c async for c in ragobs.retry_stream(
        lambda: client.chat.completions.create(**chat_args()), attempts=2, initial=0.01,
        jitter=0.0, telemetry=otel.telemetry)]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello world!"  # nothing repeated: the first role chunk was held back
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.role) == 1


# --- Anthropic, the Responses API, LangChain, the sync client ----------------------------


async def test_instrumented_anthropic_client(provider_server: ProviderServer,
                                             otel: OTelHarness) -> None:
    provider_server.script(Reply(first_content_delay=CONTENT_DELAY, keepalive=True,
                                 cached_tokens=4))
    client = ragobs.instrument_client(anthropic_client(provider_server),
                                      telemetry=otel.telemetry)
    consumer = Consumer(event_content)
    await consumer.read(await client.messages.create(**anthropic_args()))
    span = assert_figures(otel, consumer, input_=17 + 4)  # semconv: input includes cached
    attrs = span.attributes or {}
    assert attrs[semconv.RESPONSE_MODEL] == ANTHROPIC_MODEL
    assert attrs[semconv.RESPONSE_FINISH_REASONS] == ("end_turn",)
    assert attrs[semconv.USAGE_CACHE_READ_INPUT_TOKENS] == 4
    assert str(attrs[semconv.RESPONSE_ID]).startswith("msg_")
    assert (attrs[semconv.OPERATION_NAME], attrs[semconv.PROVIDER_NAME]) == ("chat", "anthropic")


async def test_observe_stream_over_anthropic_events(provider_server: ProviderServer,
                                                    otel: OTelHarness) -> None:
    provider_server.script(Reply(first_content_delay=CONTENT_DELAY))
    client = anthropic_client(provider_server)
    consumer = Consumer(event_content)
    await consumer.read(observe_stream(client.messages.create(**anthropic_args()),
                                       provider="anthropic", telemetry=otel.telemetry))
    assert_figures(otel, consumer)


async def test_instrumented_openai_responses_api(provider_server: ProviderServer,
                                                 otel: OTelHarness) -> None:
    provider_server.script(Reply(first_content_delay=CONTENT_DELAY, reasoning_tokens=2))
    client = ragobs.instrument_client(openai_client(provider_server), telemetry=otel.telemetry)
    consumer = Consumer(event_content)
    await consumer.read(await client.responses.create(model="gpt-4o-mini", input="hi",
                                                      stream=True))
    span = assert_figures(otel, consumer)
    attrs = span.attributes or {}
    assert attrs[semconv.RESPONSE_FINISH_REASONS] == ("completed",)
    assert attrs[semconv.USAGE_REASONING_OUTPUT_TOKENS] == 2
    assert str(attrs[semconv.RESPONSE_ID]).startswith("resp_")


async def test_observe_stream_over_langchain_openai(provider_server: ProviderServer,
                                                    otel: OTelHarness) -> None:
    from langchain_openai import ChatOpenAI

    provider_server.script(Reply(first_content_delay=CONTENT_DELAY))
    llm = ChatOpenAI(model="gpt-4o-mini", base_url=provider_server.openai_url,
                     api_key="test", stream_usage=True)  # type: ignore[arg-type]
    consumer = Consumer(lambda chunk: bool(chunk.content))
    await consumer.read(observe_stream(llm.astream("hi"), model="gpt-4o-mini",
                                       telemetry=otel.telemetry))
    span = assert_figures(otel, consumer)
    attrs = span.attributes or {}
    assert attrs[semconv.RESPONSE_FINISH_REASONS] == ("stop",)
    assert attrs[semconv.RESPONSE_MODEL] == OPENAI_MODEL


def test_instrumented_sync_openai_client(threaded_provider_server: ThreadedProviderServer,
                                         otel: OTelHarness) -> None:
    threaded_provider_server.script(Reply(first_content_delay=CONTENT_DELAY, keepalive=True))
    client = ragobs.instrument_client(openai_client(threaded_provider_server, sync=True),
                                      telemetry=otel.telemetry)
    consumer = Consumer(chat_content)
    for chunk in client.chat.completions.create(**chat_args()):
        consumer.see(chunk)
    assert_figures(otel, consumer)


def test_sync_stream_closed_early_closes_the_response(
        threaded_provider_server: ThreadedProviderServer, otel: OTelHarness) -> None:
    threaded_provider_server.script(Reply(pieces=tuple(f"t{i}" for i in range(200)),
                                          chunk_delay=0.01))
    client = ragobs.instrument_client(openai_client(threaded_provider_server, sync=True),
                                      telemetry=otel.telemetry)
    stream = client.chat.completions.create(**chat_args())
    for i, _chunk in enumerate(stream):
        if i == 3:
            break
    t_close = time.perf_counter()
    stream.close()
    request = threaded_provider_server.requests[0]
    assert threaded_provider_server.wait_disconnect(request) - t_close < 0.1
    assert otel.value(REQUESTS, ragobs__outcome="cancelled") == 1


def test_instrument_client_rejects_what_it_does_not_know() -> None:
    with pytest.raises(TypeError, match="client must be an openai or anthropic client"):
        ragobs.instrument_client(object())
    client = openai.AsyncOpenAI(api_key="t")
    with pytest.raises(TypeError, match="sdk_retries must be a bool or None"):
        ragobs.instrument_client(client, sdk_retries="no")  # type: ignore[arg-type]
    assert ragobs.instrument_client(client) is client
    create = client.chat.completions.create
    assert ragobs.instrument_client(client).chat.completions.create is create  # idempotent


@pytest.mark.parametrize("form", ["instrumented", "deferred", "langchain"])
async def test_closing_anthropic_and_langchain_streams_closes_the_response(
        provider_server: ProviderServer, otel: OTelHarness, form: str) -> None:
    provider_server.script(Reply(pieces=tuple(f"t{i} " for i in range(200)), chunk_delay=0.01))
    tel = otel.telemetry
    if form == "instrumented":
        client = ragobs.instrument_client(anthropic_client(provider_server), telemetry=tel)
        wrapper: Any = await client.messages.create(**anthropic_args())
    elif form == "deferred":
        wrapper = observe_stream(anthropic_client(provider_server).messages.create(
            **anthropic_args()), telemetry=tel)
    else:
        from langchain_openai import ChatOpenAI

        llm = ChatOpenAI(model="gpt-4o-mini", base_url=provider_server.openai_url,
                         api_key="test")  # type: ignore[arg-type]
        wrapper = observe_stream(llm.astream("hi"), telemetry=tel)
    seen = 0
    async for _chunk in wrapper:
        seen += 1
        if seen == 6:
            break
    t_close = time.perf_counter()
    await wrapper.aclose()
    request = provider_server.requests[0]
    assert await provider_server.wait_disconnect(request) - t_close < 0.1
    assert otel.value(REQUESTS, ragobs__outcome="cancelled") == 1
