"""The GenAI semantic conventions as they stand: client buckets, one time per
output chunk, over the real SDK clients where a row is about them."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import ragobs
import ragobs._gaps
from ragobs import semconv
from tests.conftest import OTelHarness
from tests.provider_server import ProviderServer, Reply
from tests.test_clients import anthropic_args, anthropic_client, chat_args, openai_client

TTFT = semconv.TIME_TO_FIRST_CHUNK.name
TPOC = semconv.TIME_PER_OUTPUT_CHUNK.name
#: Gaps between chunks, seconds: under the first bound, on bounds (a value equal
#: to a bound is in that bound's bucket), between bounds, past the last bound.
GAPS = (0.004, 0.01, 0.012, 0.012, 0.02, 0.3, 2.0, 0.04, 95.0, 0.0005)


def only_point(otel: OTelHarness, name: str) -> Any:
    (point,) = otel.points(name)
    return point


def reference_histogram(values: list[float]) -> Any:
    """The point a record per value gives, with the same instrument and buckets."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    histogram = provider.get_meter("reference").create_histogram(
        TPOC, unit="s", explicit_bucket_boundaries_advisory=list(semconv.DURATION_BUCKETS))
    for value in values:
        histogram.record(value, {"k": "v"})
    data = reader.get_metrics_data()
    assert data is not None
    (point,) = data.resource_metrics[0].scope_metrics[0].metrics[0].data.data_points
    provider.shutdown()
    return point


def test_time_per_output_chunk_is_the_histogram_a_record_per_chunk_gives(
        otel: OTelHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    recorded: list[float] = []
    for _ in range(3):  # the first stream creates the series, the others add to it
        obs = ragobs.observe(model="m", telemetry=otel.telemetry)
        obs.start(start_time=1000.0)
        t = 1000.5
        obs.first_token(at=t)
        for gap in GAPS:
            before, t = t, t + gap
            monkeypatch.setattr(ragobs._gaps, "_perf", lambda t=t: t)  # the chunk arrives at t
            obs.tokens(1)
            recorded.append(t - before)  # the gap as the stream computes it
        obs.finish(end_time=t)
    got = only_point(otel, TPOC)
    want = reference_histogram(recorded)
    assert got.count == want.count == 3 * len(GAPS)
    assert list(got.bucket_counts) == list(want.bucket_counts)
    assert got.sum == pytest.approx(want.sum, rel=1e-12)
    assert (got.min, got.max) == pytest.approx((want.min, want.max), rel=1e-9)


def test_a_thirty_second_first_chunk_lands_in_a_finite_bucket(otel: OTelHarness) -> None:
    obs = ragobs.observe(model="o3", telemetry=otel.telemetry)
    obs.start(start_time=0.0)
    obs.first_token(at=30.0)
    obs.tokens(1)
    obs.finish(end_time=31.0)
    point = only_point(otel, TTFT)
    assert tuple(point.explicit_bounds) == semconv.DURATION_BUCKETS  # 0.01 .. 81.92 s
    assert point.bucket_counts[-1] == 0  # not +Inf
    assert point.bucket_counts[list(point.explicit_bounds).index(40.96)] == 1


async def test_an_sdk_stream_records_one_gap_per_chunk_after_the_first(
        provider_server: ProviderServer, otel: OTelHarness) -> None:
    pieces = tuple(f"t{i} " for i in range(12))
    provider_server.script(Reply(pieces=pieces, chunk_delay=0.025))
    client = ragobs.instrument_client(openai_client(provider_server), telemetry=otel.telemetry)
    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "q"}], stream=True)
    async for _ in stream:
        pass
    point = only_point(otel, TPOC)
    assert point.count == len(pieces) - 1
    assert point.min > 0.015 and point.max < 0.08  # the network adds jitter, either way
    # 0.025 s gaps: every one in the (0.02, 0.04] bucket.
    assert point.bucket_counts[list(point.explicit_bounds).index(0.04)] >= len(pieces) - 2
    assert point.sum == pytest.approx((len(pieces) - 1) * 0.025, abs=0.06)


# -- reasoning output, choices, cache writes: over the real SDK clients ---------------

TTFA = semconv.TIME_TO_FIRST_ANSWER_CHUNK.name
THINK_DELAY, ANSWER_DELAY = 0.05, 0.25


def only_span(otel: OTelHarness) -> Any:
    (span,) = otel.spans()
    return span


async def test_anthropic_thinking_is_output_and_the_answer_is_timed_apart(
        provider_server: ProviderServer, otel: OTelHarness) -> None:
    provider_server.script(Reply(thinking=("Let me think", " about it."),
                                 first_content_delay=THINK_DELAY, answer_delay=ANSWER_DELAY,
                                 cache_write_tokens=120, cached_tokens=30, input_tokens=10))
    client = ragobs.instrument_client(anthropic_client(provider_server), telemetry=otel.telemetry)
    text, thinking = "", ""
    async for event in await client.messages.create(**anthropic_args()):
        if event.type == "content_block_delta":
            text += getattr(event.delta, "text", "") or ""
            thinking += getattr(event.delta, "thinking", "") or ""
    assert (thinking, text) == ("Let me think about it.", "Hello world!")
    ttft, ttfa = otel.total(TTFT), otel.total(TTFA)
    assert THINK_DELAY <= ttft < THINK_DELAY + 0.05  # the first thinking delta
    assert THINK_DELAY + ANSWER_DELAY <= ttfa < THINK_DELAY + ANSWER_DELAY + 0.08
    attrs = only_span(otel).attributes or {}
    assert attrs[semconv.RESPONSE_TIME_TO_FIRST_CHUNK] == pytest.approx(ttft)
    assert attrs[semconv.RESPONSE_TIME_TO_FIRST_ANSWER_CHUNK] == pytest.approx(ttfa)
    # Cache writes under the conventions' new name; input includes both cache counts.
    assert attrs["gen_ai.usage.cache_write.input_tokens"] == 120
    assert "gen_ai.usage.cache_creation.input_tokens" not in attrs
    assert attrs[semconv.USAGE_CACHE_READ_INPUT_TOKENS] == 30
    assert attrs[semconv.USAGE_INPUT_TOKENS] == 160
    # ragobs_usage_tokens_total: the cache-hit ratio is cache_read over the input tokens.
    usage = semconv.USAGE_TOKENS.name
    assert otel.value(usage, ragobs__token__type="cache_read") == 30
    assert otel.value(usage, ragobs__token__type="cache_write") == 120


async def test_openai_compatible_reasoning_content_is_output(
        provider_server: ProviderServer, otel: OTelHarness) -> None:
    provider_server.script(Reply(thinking=("hmm", "..."), first_content_delay=THINK_DELAY,
                                 answer_delay=ANSWER_DELAY))
    client = ragobs.instrument_client(openai_client(provider_server), telemetry=otel.telemetry)
    text = ""
    async for chunk in await client.chat.completions.create(**chat_args()):
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
    assert text == "Hello world!"
    assert THINK_DELAY <= otel.total(TTFT) < THINK_DELAY + 0.05
    assert THINK_DELAY + ANSWER_DELAY <= otel.total(TTFA) < THINK_DELAY + ANSWER_DELAY + 0.08
    # Every output chunk after the first is one gap: 1 reasoning + 3 answer pieces.
    assert otel.count(TPOC) == 4


async def test_without_reasoning_the_answer_is_the_first_chunk(
        provider_server: ProviderServer, otel: OTelHarness) -> None:
    provider_server.script(Reply(first_content_delay=THINK_DELAY))
    client = ragobs.instrument_client(openai_client(provider_server), telemetry=otel.telemetry)
    async for _ in await client.chat.completions.create(**chat_args()):
        pass
    assert otel.total(TTFA) == otel.total(TTFT)


async def test_every_choice_keeps_its_finish_reason(
        provider_server: ProviderServer, otel: OTelHarness) -> None:
    provider_server.script(Reply(choices=3, choice_finish_reasons=("stop", "length", "stop")))
    client = ragobs.instrument_client(openai_client(provider_server), telemetry=otel.telemetry)
    texts = ["", "", ""]
    async for chunk in await client.chat.completions.create(**chat_args(n=3)):
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    assert texts == ["Hello world!"] * 3
    attrs = only_span(otel).attributes or {}
    assert attrs[semconv.RESPONSE_FINISH_REASONS] == ("stop", "length", "stop")
    # ragobs_finish_reasons_total: one per choice, the share cut off by length readable.
    reasons = semconv.FINISH_REASONS.name
    assert otel.value(reasons, ragobs__finish_reason="stop") == 2
    assert otel.value(reasons, ragobs__finish_reason="length") == 1
