"""Resilience wrappers on the success path, in ratios measured in one run.

    python -m bench.bench_retry

* retry on a coroutine that succeeds first time, against the bare call and
  against tenacity's ``@retry`` (``AsyncRetrying``) configured alike;
* retry_stream and stream_timeout (first_token + idle + total) per chunk,
  against a bare pass-through generator, and stream_timeout against the
  hand-written ``asyncio.timeout`` around each pull.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable
from typing import Any

import tenacity

from bench._harness import bare, line, paired, production_like, source
from ragobs.resilience._retry import is_retryable, retry, retry_stream
from ragobs.resilience._timeout import stream_timeout

CALLS = 100_000
TENACITY_CALLS = 10_000
CHUNKS = 100_000
ASYNCIO_CHUNKS = 20_000


async def answer() -> int:
    return 42


async def asyncio_idle(stream: AsyncIterable[str], idle: float) -> AsyncGenerator[str, None]:
    """The hand-written alternative: ``asyncio.timeout`` around every pull."""
    it = stream.__aiter__()
    while True:
        try:
            async with asyncio.timeout(idle):
                chunk = await it.__anext__()
        except StopAsyncIteration:
            return
        yield chunk


def per_call(fn: Callable[[], Awaitable[Any]], n: int) -> Callable[[], float]:
    async def run() -> float:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for _ in range(n):
            await fn()
        return (loop.time() - t0) / n

    return lambda: asyncio.run(run())


def per_chunk(make: Callable[[int], AsyncIterable[str]], n: int = CHUNKS
              ) -> Callable[[], float]:
    async def run() -> float:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        async for _ in make(n):
            pass
        return (loop.time() - t0) / n

    return lambda: asyncio.run(run())


def main() -> dict[str, float]:
    telemetry, _, _ = production_like()
    ours = retry(attempts=4, telemetry=telemetry)(answer)
    theirs = tenacity.retry(
        stop=tenacity.stop_after_attempt(4),
        wait=tenacity.wait_exponential_jitter(initial=1, max=30),
        retry=tenacity.retry_if_exception(is_retryable),
        reraise=True,
    )(answer)

    bare_call = per_call(answer, CALLS)
    retry_cost, bare_cost, vs_bare = paired(per_call(ours, CALLS), bare_call)
    tenacity_cost, _, vs_tenacity = paired(per_call(theirs, TENACITY_CALLS),
                                           per_call(ours, CALLS), rounds=5)
    vs_tenacity = 1.0 / vs_tenacity  # ours relative to tenacity

    def timed(n: int) -> AsyncIterable[str]:
        return stream_timeout(source(n), first_token=30, idle=10, total=600, telemetry=telemetry)

    stream_bare = per_chunk(lambda n: bare(source(n)))
    rs_cost, rs_bare, rs_ratio = paired(
        per_chunk(lambda n: retry_stream(lambda: source(n), telemetry=telemetry)), stream_bare)
    st_cost, st_bare, st_ratio = paired(per_chunk(timed), stream_bare)
    _, asyncio_cost, vs_asyncio = paired(
        per_chunk(timed, ASYNCIO_CHUNKS),
        per_chunk(lambda n: asyncio_idle(source(n), 10), ASYNCIO_CHUNKS))

    print(f"retry success path: {retry_cost * 1e6:.2f} µs/call, {vs_bare:.1f}x bare "
          f"({bare_cost * 1e9:.0f} ns), {vs_tenacity:.3f}x tenacity "
          f"({tenacity_cost * 1e6:.1f} µs)")
    print(line("retry_stream per chunk", rs_cost, rs_bare, "bare passthrough",
               target="<= 1.30x", ratio=rs_ratio))
    print(line("stream_timeout per chunk (3 deadlines)", st_cost, st_bare, "bare passthrough",
               target="small: < 1 timer per chunk", ratio=st_ratio))
    print(f"stream_timeout vs asyncio.timeout around each pull "
          f"({asyncio_cost * 1e9:.0f} ns/chunk): {vs_asyncio:.2f}x")
    return {
        "retry_success_ns": retry_cost * 1e9,
        "bare_call_ns": bare_cost * 1e9,
        "retry_vs_bare": vs_bare,
        "tenacity_success_ns": tenacity_cost * 1e9,
        "retry_vs_tenacity": vs_tenacity,
        "retry_stream_per_chunk_ns": rs_cost * 1e9,
        "retry_stream_vs_bare": rs_ratio,
        "stream_timeout_per_chunk_ns": st_cost * 1e9,
        "stream_timeout_vs_bare": st_ratio,
        "asyncio_timeout_per_chunk_ns": asyncio_cost * 1e9,
        "stream_timeout_vs_asyncio_timeout": vs_asyncio,
    }


if __name__ == "__main__":
    main()
