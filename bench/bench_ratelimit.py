"""Uncontended ``acquire()`` against aiolimiter, in ratios measured in one run.

    python -m bench.bench_ratelimit

Both limiters have a capacity the loop never reaches, so every acquire takes
the no-wait path: ours (strict sliding window, and token bucket, each counting
the acquisition in ``ragobs.ratelimit.acquisitions``) against aiolimiter's
``AsyncLimiter`` (a leaky bucket, not strict, unreported). Target: no slower.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiolimiter import AsyncLimiter

from bench._harness import line, paired, production_like
from ragobs.resilience import RateLimiter

ACQUIRES = 100_000
CAPACITY = 10**9


def per_acquire(make: Callable[[], Any], n: int = ACQUIRES) -> Callable[[], float]:
    async def run() -> float:
        limiter = make()
        acquire: Callable[[], Awaitable[Any]] = limiter.acquire
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for _ in range(n):
            await acquire()
        return (loop.time() - t0) / n

    return lambda: asyncio.run(run())


def per_async_with(make: Callable[[], Any], n: int = ACQUIRES) -> Callable[[], float]:
    async def run() -> float:
        limiter = make()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for _ in range(n):
            async with limiter:
                pass
        return (loop.time() - t0) / n

    return lambda: asyncio.run(run())


def main() -> dict[str, float]:
    telemetry, _, _ = production_like()

    def theirs() -> AsyncLimiter:
        return AsyncLimiter(CAPACITY, 60)

    def sliding() -> RateLimiter:
        return RateLimiter(CAPACITY, 60, telemetry=telemetry)

    def bucket() -> RateLimiter:
        return RateLimiter(CAPACITY, 60, strategy="token_bucket", telemetry=telemetry)

    sw_cost, sw_base, sw_ratio = paired(per_acquire(sliding), per_acquire(theirs))
    tb_cost, tb_base, tb_ratio = paired(per_acquire(bucket), per_acquire(theirs))
    cm_cost, cm_base, cm_ratio = paired(per_async_with(sliding), per_async_with(theirs))
    target = "<= 1.00x"
    print(line("acquire() sliding window (strict)", sw_cost, sw_base, "aiolimiter",
               target=target, ratio=sw_ratio))
    print(line("acquire() token bucket", tb_cost, tb_base, "aiolimiter",
               target=target, ratio=tb_ratio))
    print(line("async with, sliding window", cm_cost, cm_base, "aiolimiter",
               target=target, ratio=cm_ratio))
    return {
        "sliding_acquire_ns": sw_cost * 1e9,
        "aiolimiter_acquire_ns": sw_base * 1e9,
        "sliding_vs_aiolimiter": sw_ratio,
        "token_bucket_acquire_ns": tb_cost * 1e9,
        "token_bucket_vs_aiolimiter": tb_ratio,
        "async_with_ns": cm_cost * 1e9,
        "async_with_vs_aiolimiter": cm_ratio,
    }


if __name__ == "__main__":
    main()
