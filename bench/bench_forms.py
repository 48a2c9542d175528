"""The three forms at the lengths answers have, per token, and per request at 1 and 20 tokens.

    python -m bench.bench_forms

Per token: whole streams of 100, 1,000 and 10,000 ``str`` tokens (fixed
per-stream cost included, short streams many to a block) through
``observe_stream``, ``@instrument_stream`` and a hand-written ``observe()``
loop calling ``obs.tokens(1)`` per chunk, each against a bare
``async for ... yield`` passthrough of the same source. Per request: 1- and
20-token streams through ``observe_stream`` against the OpenTelemetry SDK's
own span plus five histogram records (the semconv figures ragobs records)
around the same bare stream, on the same providers (those ``setup()``
builds). Blocks interleaved, median ratio of the rounds, min-max printed.

The ``traces sampled at 10 %`` line is the same ``observe_stream`` with
the sampler production often runs (every stream still counted in every
metric). The two ``floor`` lines are what no exact instrumentation on this SDK can
go under: the span filled as ragobs fills it, around a loop that counts
chunks (or calls an empty method per chunk, as the hand-written form must),
with no metric recorded at all.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import statistics
import time
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable

from opentelemetry.context import Context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind
from opentelemetry.util.types import AttributeValue
from prometheus_client import CollectorRegistry

from bench._harness import bare, source
from ragobs import instrument_stream, observe, observe_stream
from ragobs._runtime import setup
from ragobs._telemetry import Telemetry

SIZES = (100, 1_000, 10_000)
BLOCK_TOKENS = 100_000
REQUEST_SIZES = (1, 20)
REQUESTS = 2_000
ROUNDS = 9
ATTRS = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "m", "ragobs.outcome": "ok"}


async def _counting(stream: AsyncIterable[str]) -> AsyncGenerator[str, None]:
    """A passthrough that counts as exactly as ragobs does (truthy chunks)."""
    n = 0
    async for chunk in stream:
        if chunk:
            n += 1
        yield chunk


def _rounds(loop: asyncio.AbstractEventLoop, fn: Callable[[], Awaitable[float]],
            base: Callable[[], Awaitable[float]]) -> tuple[float, float, list[float]]:
    gc.collect()
    costs, bases, ratios = [], [], []
    for _ in range(ROUNDS):
        b = loop.run_until_complete(base())
        c = loop.run_until_complete(fn())
        costs.append(c)
        bases.append(b)
        ratios.append(c / b)
    return statistics.median(costs), statistics.median(bases), ratios


def _print(name: str, cost: float, base: float, ratios: list[float], target: str) -> None:
    print(f"{name:<74} {cost * 1e9:>8.0f} ns vs {base * 1e9:>7.0f} ns   ratio "
          f"{statistics.median(ratios):5.2f}x  (min-max {min(ratios):.2f}-{max(ratios):.2f}x, "
          f"target {target})")


def main() -> dict[str, float]:
    runtime = setup(serve=False, set_global=False, registry=CollectorRegistry())
    tel: Telemetry = runtime.telemetry
    assert runtime.tracer_provider is not None
    tracer = runtime.tracer_provider.get_tracer("bench")
    figures: dict[str, float] = {}

    @instrument_stream(model="m", telemetry=tel)
    async def decorated(n: int) -> AsyncGenerator[str, None]:
        async for chunk in source(n):
            yield chunk

    async def undecorated(n: int) -> AsyncGenerator[str, None]:
        async for chunk in source(n):
            yield chunk

    def timed(streams: int, n: int, one: Callable[[int], Awaitable[None]], *,
              per_request: bool = False) -> Callable[[], Awaitable[float]]:
        async def run() -> float:
            t0 = time.perf_counter()
            for _ in range(streams):
                await one(n)
            return (time.perf_counter() - t0) / (streams if per_request else streams * n)

        return run

    async def bare_one(n: int) -> None:
        async for _ in bare(source(n)):
            pass

    async def wrapped_one(n: int) -> None:
        async for _ in observe_stream(source(n), model="m", telemetry=tel):
            pass

    # The production lever: traces sampled at 10 % (what
    # OTEL_TRACES_SAMPLER=parentbased_traceidratio, OTEL_TRACES_SAMPLER_ARG=0.1
    # gives setup()); metrics still count every stream.
    sampled = Telemetry(tracer_provider=TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.1))),
                        meter_provider=runtime.meter_provider, exemplars=tel.exemplars)

    async def sampled_one(n: int) -> None:
        async for _ in observe_stream(source(n), model="m", telemetry=sampled):
            pass

    async def decorated_one(n: int) -> None:
        async for _ in decorated(n):
            pass

    async def undecorated_one(n: int) -> None:  # the same generator layers, undecorated
        async for _ in bare(undecorated(n)):
            pass

    async def by_hand_one(n: int) -> None:
        async with observe(model="m", telemetry=tel) as obs:
            async for _ in bare(source(n)):
                obs.tokens(1)

    start_attrs: dict[str, AttributeValue] = {**ATTRS, "gen_ai.request.stream": True}
    end_attrs: dict[str, AttributeValue] = {"ragobs.outcome": "ok", "gen_ai.usage.output_tokens": 1,
                 "ragobs.usage.source": "counted", "gen_ai.response.time_to_first_chunk": 0.1}

    class _Noop:
        def tokens(self, n: int = 1) -> None:
            pass

    async def floor(n: int, *, by_hand: bool) -> None:
        """The floor of any exact instrumentation on this SDK: the span filled
        as ragobs fills it (start attributes, first-chunk event, end
        attributes) around a loop that counts the chunks (``by_hand``: calls
        an empty method per chunk, as the hand-written form must), and no
        metric at all."""
        span = tracer.start_span("chat m", kind=SpanKind.CLIENT, attributes=start_attrs)
        span.add_event("gen_ai.first_chunk")
        if by_hand:
            obs = _Noop()
            async for _ in bare(source(n)):
                obs.tokens(1)
        else:
            async for _ in _counting(source(n)):
                pass
        span.set_attributes(end_attrs)
        span.end()

    floor_one = functools.partial(floor, by_hand=False)
    floor_by_hand_one = functools.partial(floor, by_hand=True)

    no_exemplar = Context()
    hists = [tel.operation_duration, tel.time_to_first_chunk, tel.token_usage,
             tel.output_token_rate, tel.time_per_output_chunk]

    async def sdk_one(n: int) -> None:
        span = tracer.start_span("chat m", kind=SpanKind.CLIENT, attributes=ATTRS)
        async for _ in bare(source(n)):
            pass
        for hist in hists:
            hist.record(1.0, ATTRS, context=no_exemplar)
        span.end()

    loop = asyncio.new_event_loop()
    forms: list[tuple[str, Callable[[int], Awaitable[None]], Callable[[int], Awaitable[None]]]]
    forms = [("observe_stream", wrapped_one, bare_one),
             ("@instrument_stream", decorated_one, undecorated_one),
             ("observe() + obs.tokens(1)", by_hand_one, bare_one),
             ("observe_stream, traces sampled at 10 %", sampled_one, bare_one),
             ("floor: SDK span + counting, no metric", floor_one, bare_one),
             ("floor: SDK span + empty call per chunk", floor_by_hand_one, bare_one)]
    try:
        for n in SIZES:
            streams = max(1, BLOCK_TOKENS // n)
            for name, one, baseline in forms:
                cost, base, ratios = _rounds(loop, timed(streams, n, one),
                                             timed(streams, n, baseline))
                target = "<= 1.15x" if n >= 10_000 else "<= 1.3x"
                _print(f"per token, {n:,}-token streams, {name}", cost, base, ratios,
                       "-" if name.startswith("floor") else target)
                figures[f"per_token_{n}_{name}"] = statistics.median(ratios)
        for n in REQUEST_SIZES:
            cost, base, ratios = _rounds(loop, timed(REQUESTS, n, wrapped_one, per_request=True),
                                         timed(REQUESTS, n, sdk_one, per_request=True))
            _print(f"per request, {n}-token streams, vs span + 5 SDK records", cost, base,
                   ratios, "<= 1.1x")
            figures[f"per_request_{n}"] = statistics.median(ratios)
        cost, base, ratios = _rounds(loop, timed(REQUESTS, 20, floor_one, per_request=True),
                                     timed(REQUESTS, 20, sdk_one, per_request=True))
        _print("per request, 20-token streams, floor (span + counting) vs the same", cost, base,
               ratios, "-")
        figures["per_request_20_floor"] = statistics.median(ratios)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
        runtime.shutdown()
    return figures


if __name__ == "__main__":
    main()
