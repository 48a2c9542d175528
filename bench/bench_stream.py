"""Instrumented streams: per-token and per-request overhead, in ratios.

    python -m bench.bench_stream

The instrumented side and its baseline share one SDK, built exactly as
``ragobs.setup()`` builds it (the common case: sampled spans, the Prometheus
reader, ragobs' own exemplar table). Two more lines break the per-request
figure down: the same SDK calls without any ragobs code (the floor for any
instrumentation that makes them), and an application's own providers, where
the SDK's reservoir takes the exemplars.
"""

from __future__ import annotations

import asyncio
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry

from bench._harness import bare, line, paired, production_like, source
from ragobs import semconv
from ragobs._runtime import setup
from ragobs._stream import observe_stream
from ragobs._telemetry import Telemetry

TOKENS = 200_000
REQUESTS = 3_000
ATTRS = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
         "gen_ai.request.model": "gpt-4o", "ragobs.outcome": "ok"}
SPAN_ATTRS = {k: v for k, v in ATTRS.items() if k != semconv.OUTCOME}
TOKEN_ATTRS = {**ATTRS, semconv.TOKEN_TYPE: "output"}


def run_async(coro_fn: Any) -> float:
    result: float = asyncio.run(coro_fn())
    return result


def main() -> dict[str, float]:
    runtime = setup(serve=False, set_global=False, registry=CollectorRegistry())
    telemetry = runtime.telemetry
    assert runtime.tracer_provider is not None
    tracer = runtime.tracer_provider.get_tracer("bench")
    hist = [telemetry.operation_duration, telemetry.time_to_first_chunk,
            telemetry.token_usage, telemetry.output_token_rate]
    app_telemetry, _, _ = production_like()  # an application's own providers

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

    def per_request_observed(tel: Telemetry) -> Any:
        async def run() -> float:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            for _ in range(REQUESTS):
                async for _ in observe_stream(source(3), model="gpt-4o", provider="openai",
                                              telemetry=tel):
                    pass
            return (loop.time() - t0) / REQUESTS

        return run

    async def per_request_sdk_calls() -> float:
        """The SDK calls the instrumentation makes, and nothing else."""
        loop = asyncio.get_running_loop()
        no_exemplar = Context()
        t0 = loop.time()
        for _ in range(REQUESTS):
            span = tracer.start_span("chat gpt-4o", kind=SpanKind.CLIENT, attributes=SPAN_ATTRS)
            otel_context.detach(otel_context.attach(trace.set_span_in_context(span)))
            first = True
            async for _ in bare(source(3)):
                if first:
                    span.add_event(semconv.EVENT_FIRST_CHUNK)
                    first = False
            telemetry.operation_duration.record(1.0, ATTRS, context=no_exemplar)
            telemetry.token_usage.record(3, TOKEN_ATTRS, context=no_exemplar)
            telemetry.time_to_first_chunk.record(1.0, ATTRS, context=no_exemplar)
            telemetry.output_token_rate.record(1.0, ATTRS, context=no_exemplar)
            telemetry.time_per_output_chunk.record(1.0, ATTRS, context=no_exemplar)
            span.set_attributes({semconv.USAGE_OUTPUT_TOKENS: 3, semconv.OUTCOME: "ok",
                                 semconv.RESPONSE_TIME_TO_FIRST_CHUNK: 1.0})
            span.end()
        return (loop.time() - t0) / REQUESTS

    def base() -> float:
        return run_async(per_request_bare)

    token_obs, token_bare, token_ratio = paired(lambda: run_async(per_token_observed),
                                                lambda: run_async(per_token_bare))
    req_obs, req_bare, req_ratio = paired(
        lambda: run_async(per_request_observed(telemetry)), base)
    sdk_obs, sdk_bare, sdk_ratio = paired(lambda: run_async(per_request_sdk_calls), base)
    app_obs, app_bare, app_ratio = paired(
        lambda: run_async(per_request_observed(app_telemetry)), base)
    runtime.shutdown()
    print(line("stream per token (observe_stream)", token_obs, token_bare,
               "bare passthrough", target="<= 1.30x", ratio=token_ratio))
    print(line("stream per request (whole instrumentation)", req_obs, req_bare,
               "span + 4 histograms", target="<= 1.20x", ratio=req_ratio))
    print(line("  same SDK calls, no ragobs code (floor)", sdk_obs, sdk_bare,
               "span + 4 histograms", target="floor, info", ratio=sdk_ratio))
    print(line("  on app's own providers (SDK exemplars)", app_obs, app_bare,
               "span + 4 histograms", target="info", ratio=app_ratio))
    return {
        "per_token_ns": token_obs * 1e9, "per_token_bare_ns": token_bare * 1e9,
        "per_token_ratio": token_ratio,
        "per_request_us": req_obs * 1e6, "per_request_bare_us": req_bare * 1e6,
        "per_request_ratio": req_ratio,
        "per_request_sdk_calls_ratio": sdk_ratio,
        "per_request_app_providers_ratio": app_ratio,
    }


if __name__ == "__main__":
    main()
