"""What each call and each answer cost, over the real SDK clients.

The reference is genai-prices' own answer for the usage the server sent
(``extract_usage`` on the same usage JSON, then ``calc_price``), so a cost
ragobs records equals the library's to the last digit it gives.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from genai_prices import extract_usage

import ragobs
from ragobs import semconv
from ragobs._host.report import host_summary
from ragobs._report import Reporter, as_json
from ragobs._telemetry import Telemetry
from tests.conftest import OTelHarness
from tests.provider_server import ProviderServer, Reply
from tests.test_clients import anthropic_args, anthropic_client, chat_args, openai_client
from tests.test_host_merge import Host, Producer, host  # noqa: F401 (fixture)

COST = semconv.OPERATION_COST.name
SPEND = semconv.SPEND.name
UNPRICED = semconv.UNPRICED_CALLS.name
SNAPSHOT = "gpt-4o-mini-2024-07-18"


def library_price(model: str, provider: str, usage: dict[str, Any],
                  flavor: str = "chat") -> float:
    extracted = extract_usage({"model": model, "usage": usage}, provider_id=provider,
                              api_flavor=flavor)
    return float(extracted.calc_price().total_price)


def chat_usage(reply: Reply) -> dict[str, Any]:
    """The usage object the server sends for ``reply`` (Chat Completions)."""
    return {"prompt_tokens": reply.input_tokens, "completion_tokens": reply.output_tokens,
            "total_tokens": reply.input_tokens + reply.output_tokens,
            "prompt_tokens_details": {"cached_tokens": reply.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": reply.reasoning_tokens}}


def only_span(otel: OTelHarness) -> Any:
    (span,) = otel.spans()
    return span.attributes or {}


def summary(telemetry: Telemetry) -> dict[str, Any]:
    return as_json(Reporter.of(telemetry).report())  # type: ignore[return-value]


async def drain(stream: Any) -> None:
    async for _ in stream:
        pass


@pytest.mark.parametrize("model", [SNAPSHOT, "o3-mini-2025-01-31"])
async def test_an_openai_call_costs_what_genai_prices_says(
        provider_server: ProviderServer, otel: OTelHarness, model: str) -> None:
    reply = Reply(model=model, input_tokens=1200, cached_tokens=1024, output_tokens=300,
                  reasoning_tokens=180)
    provider_server.script(reply)
    client = ragobs.instrument_client(openai_client(provider_server), telemetry=otel.telemetry)
    await drain(await client.chat.completions.create(**chat_args(model=model)))
    want = library_price(model, "openai", chat_usage(reply))
    assert want > 0
    attrs = only_span(otel)
    assert attrs[semconv.USAGE_COST_AMOUNT] == pytest.approx(want, rel=1e-12)
    assert attrs[semconv.USAGE_COST_CURRENCY] == "USD"
    assert attrs[semconv.USAGE_COST_SOURCE] == "local"
    assert otel.value(SPEND, gen_ai__request__model=model) == pytest.approx(want, rel=1e-12)
    assert otel.count(COST) == 1 and otel.total(COST) == pytest.approx(want, rel=1e-12)
    report = summary(otel.telemetry)
    assert report["spend_usd"] == pytest.approx(want, rel=1e-12)
    assert report["avg_cost_usd"] == pytest.approx(want, rel=1e-12)
    assert report["calls"][0]["cost_usd"] == pytest.approx(want, rel=1e-12)
    assert report["unpriced_calls"] == 0


async def test_anthropic_cache_reads_and_writes_are_priced_at_their_rates(
        provider_server: ProviderServer, otel: OTelHarness) -> None:
    reply = Reply(input_tokens=10, cached_tokens=3000, cache_write_tokens=1500,
                  output_tokens=200, thinking=("hm",))
    provider_server.script(reply)
    client = ragobs.instrument_client(anthropic_client(provider_server), telemetry=otel.telemetry)
    await drain(await client.messages.create(**anthropic_args()))
    want = library_price("claude-sonnet-4-5-20250929", "anthropic", {
        "input_tokens": 10, "cache_read_input_tokens": 3000,
        "cache_creation_input_tokens": 1500, "output_tokens": 200}, flavor="default")
    attrs = only_span(otel)
    assert attrs[semconv.USAGE_COST_AMOUNT] == pytest.approx(want, rel=1e-12)
    # Not the full input rate on cached tokens: pricing all 4510 as input costs more.
    full = library_price("claude-sonnet-4-5-20250929", "anthropic", {
        "input_tokens": 4510, "output_tokens": 200}, flavor="default")
    assert want < full


async def test_a_cost_the_response_reports_is_taken_as_it_is(
        provider_server: ProviderServer, otel: OTelHarness) -> None:
    provider_server.script(Reply(model="openrouter/auto", cost=0.0123))
    client = ragobs.instrument_client(openai_client(provider_server), telemetry=otel.telemetry)
    await drain(await client.chat.completions.create(**chat_args(model="openrouter/auto")))
    attrs = only_span(otel)
    assert attrs[semconv.USAGE_COST_AMOUNT] == 0.0123
    assert attrs[semconv.USAGE_COST_SOURCE] == "provider"
    assert otel.value(UNPRICED) == 0


async def test_a_model_nobody_prices_has_no_cost_and_is_counted(
        provider_server: ProviderServer, otel: OTelHarness) -> None:
    provider_server.script(Reply(model="acme-private-7b"))
    client = ragobs.instrument_client(openai_client(provider_server), telemetry=otel.telemetry)
    await drain(await client.chat.completions.create(**chat_args(model="acme-private-7b")))
    attrs = only_span(otel)
    assert semconv.USAGE_COST_AMOUNT not in attrs
    assert otel.value(UNPRICED, gen_ai__request__model="acme-private-7b") == 1
    assert otel.value(SPEND) == 0 and otel.count(COST) == 0
    report = summary(otel.telemetry)
    assert report["unpriced_calls"] == 1 and report["spend_usd"] == 0
    assert report["avg_cost_usd"] is None
    assert report["calls"][0]["unpriced"] == 1


async def test_your_prices_come_first(provider_server: ProviderServer,
                                      otel: OTelHarness) -> None:
    tel = Telemetry(tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider,
                    prices={"acme-private-7b": ragobs.Price(input=2.0, output=6.0,
                                                            cache_read=0.5)})
    provider_server.script(Reply(model="acme-private-7b", input_tokens=1000,
                                 cached_tokens=400, output_tokens=100))
    client = ragobs.instrument_client(openai_client(provider_server), telemetry=tel)
    await drain(await client.chat.completions.create(**chat_args(model="acme-private-7b")))
    want = (600 * 2.0 + 400 * 0.5 + 100 * 6.0) / 1e6
    assert only_span(otel)[semconv.USAGE_COST_AMOUNT] == pytest.approx(want)


async def test_an_answer_costs_the_sum_of_its_calls(provider_server: ProviderServer,
                                                    otel: OTelHarness) -> None:
    client = ragobs.instrument_client(openai_client(provider_server), telemetry=otel.telemetry)
    router, answerer = (Reply(model=SNAPSHOT, input_tokens=50, output_tokens=3),
                        Reply(model="gpt-4o-2024-08-06", input_tokens=900, output_tokens=250))
    provider_server.script(router, answerer)

    @ragobs.instrument_stream(agent="priced", telemetry=otel.telemetry)
    async def agent() -> AsyncIterator[Any]:
        await drain(await client.chat.completions.create(**chat_args(model="gpt-4o-mini")))
        async for chunk in await client.chat.completions.create(**chat_args(model="gpt-4o")):
            yield chunk

    await drain(agent())
    want = (library_price(SNAPSHOT, "openai", chat_usage(router))
            + library_price("gpt-4o-2024-08-06", "openai", chat_usage(answerer)))
    turn = next(s for s in otel.spans() if s.name == "invoke_agent priced").attributes or {}
    assert turn[semconv.TURN_COST_AMOUNT] == pytest.approx(want, rel=1e-12)
    assert semconv.USAGE_COST_AMOUNT not in turn  # on inference spans only: never twice
    report = summary(otel.telemetry)
    assert report["avg_cost_usd"] == pytest.approx(want, rel=1e-12)
    assert report["spend_usd"] == pytest.approx(want, rel=1e-12)


def test_prices_refuse_what_they_cannot_use() -> None:
    with pytest.raises(ValueError, match="input must be a number >= 0"):
        ragobs.Price(input=-1, output=1)
    with pytest.raises(ValueError, match="cache_read must be a number >= 0"):
        ragobs.Price(input=1, output=1, cache_read="cheap")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="prices must map model names"):
        ragobs.Pricing({"m": 1.0})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="prices must be a dict"):
        Telemetry(prices=[1])  # type: ignore[arg-type]


async def test_the_host_sidecar_adds_up_what_its_workers_spent(host: Host) -> None:  # noqa: F811
    """Three workers push by OTLP; the host's spend, calls table and cost per
    answer equal the workers' own, put together."""
    producers = [Producer(host.url, instance=f"w{i}") for i in range(3)]
    try:
        for i, producer in enumerate(producers):
            for _ in range(i + 1):
                with ragobs.observe(model="gpt-4o-mini", provider="openai",
                                    telemetry=producer.telemetry) as obs:
                    obs.note_response(model=SNAPSHOT)
                    obs.tokens(5)
                    obs.set_usage(input_tokens=800 + 100 * i, output_tokens=120)
            with ragobs.observe(model="acme-private-7b", provider="openai",
                                telemetry=producer.telemetry) as obs:
                obs.tokens(3)
                obs.set_usage(input_tokens=10, output_tokens=3)
            await producer.push()
        figures = host_summary(host.metrics)
        parts = [p.telemetry.summary.snapshot(p.telemetry.calls.snapshot()) for p in producers]
        want = sum(p.spend_usd for p in parts)
        assert want > 0
        assert figures.spend_usd == pytest.approx(want, rel=1e-9)
        assert figures.unpriced_calls == 3
        rows = {r.model: r for r in figures.calls}
        assert rows["gpt-4o-mini"].cost_usd == pytest.approx(want, rel=1e-9)
        assert rows["acme-private-7b"].unpriced == 3
        priced = [p.avg_cost_usd * n for p, n in zip(parts, (1, 2, 3), strict=True)
                  if p.avg_cost_usd is not None]
        assert figures.avg_cost_usd == pytest.approx(sum(priced) / 6, rel=1e-9)
    finally:
        for producer in producers:
            await producer.stop()
