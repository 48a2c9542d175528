"""Instrumented streams: per-token and per-request overhead, in ratios.

    python -m bench.bench_stream
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterable
from typing import Any

from opentelemetry.trace import SpanKind

from bench._harness import line, paired, production_like
from ragobs.stream import observe_stream

TOKENS = 200_000
REQUESTS = 3_000
ATTRS = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
         "gen_ai.request.model": "gpt-4o", "ragobs.outcome": "ok"}


async def source(n: int) -> AsyncGenerator[str, None]:
    for _ in range(n):
        yield "tok"


async def bare(stream: AsyncIterable[str]) -> AsyncGenerator[str, None]:
    async for t in stream:
        yield t


def run_async(coro_fn: Any) -> float:
    return asyncio.run(coro_fn())


def main() -> dict[str, float]:
    telemetry, tracer_provider, _ = production_like()
    tracer = tracer_provider.get_tracer("bench")
    hist = [telemetry.operation_duration, telemetry.time_to_first_chunk,
            telemetry.token_usage, telemetry.output_token_rate]

    async def per_token_bare() -> float:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        async for _ in bare(source(TOKENS)):
            pass
        return (loop.time() - t0) / TOKENS

    async def per_token_observed() -> float:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        async for _ in observe_stream(source(TOKENS), model="gpt-4o", provider="openai",
                                      telemetry=telemetry):
            pass
        return (loop.time() - t0) / TOKENS

    async def per_request_bare() -> float:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for _ in range(REQUESTS):
            span = tracer.start_span("chat gpt-4o", kind=SpanKind.CLIENT, attributes=ATTRS)
            async for _ in bare(source(3)):
                pass
            for h in hist:
                h.record(1.0, ATTRS)
            span.end()
        return (loop.time() - t0) / REQUESTS

    async def per_request_observed() -> float:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for _ in range(REQUESTS):
            async for _ in observe_stream(source(3), model="gpt-4o", provider="openai",
                                          telemetry=telemetry):
                pass
        return (loop.time() - t0) / REQUESTS

    token_obs, token_bare, token_ratio = paired(lambda: run_async(per_token_observed),
                                                lambda: run_async(per_token_bare))
    req_obs, req_bare, req_ratio = paired(lambda: run_async(per_request_observed),
                                          lambda: run_async(per_request_bare))
    print(line("stream per token (observe_stream)", token_obs, token_bare,
               "bare passthrough", target="<= 1.30x", ratio=token_ratio))
    print(line("stream per request (whole instrumentation)", req_obs, req_bare,
               "span + 4 histograms", target="<= 1.20x", ratio=req_ratio))
    return {
        "per_token_ns": token_obs * 1e9, "per_token_bare_ns": token_bare * 1e9,
        "per_token_ratio": token_ratio,
        "per_request_us": req_obs * 1e6, "per_request_bare_us": req_bare * 1e6,
        "per_request_ratio": req_ratio,
    }


if __name__ == "__main__":
    main()
