"""The per-chunk histogram (time per output chunk): what one value per chunk costs.

    python -m bench.bench_chunk_gaps

Each observed stream times every output chunk after the first into its own
bucket array and adds the array to the histogram once, when it ends. Measured
in the same run, alternately, at answers of 100, 1,000 and 10,000 one-token
chunks: the plain pass-through (``bare``), ragobs with the per-chunk timing
switched off (``ChunkGaps.tick`` a no-op: what ragobs costs without it), and
ragobs as shipped. The figure to read is the extra per chunk.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import time

from prometheus_client import CollectorRegistry

from bench._harness import bare, source
from ragobs._gaps import ChunkGaps
from ragobs._runtime import setup
from ragobs._stream import observe_stream

SIZES = (100, 1_000, 10_000)
ROUNDS = 9
BLOCK_CHUNKS = 100_000


def main() -> dict[str, float]:
    runtime = setup(serve=False, set_global=False, registry=CollectorRegistry())
    tel = runtime.telemetry
    tick = ChunkGaps.tick

    def no_tick(self: ChunkGaps) -> None:
        """The per-chunk timing switched off."""

    async def observed(n: int) -> None:
        async for _ in observe_stream(source(n), telemetry=tel, model="m"):
            pass

    async def plain(n: int) -> None:
        async for _ in bare(source(n)):
            pass

    loop = asyncio.new_event_loop()
    figures: dict[str, float] = {}
    print(f"{'answer':<16}{'bare':>12}{'ragobs, no per-chunk':>24}{'ragobs':>12}"
          f"{'per-chunk extra':>18}{'ratio to no per-chunk':>24}")
    try:
        for n in SIZES:
            streams = max(1, BLOCK_CHUNKS // n)

            def timed(fn: object, n: int = n, streams: int = streams) -> float:
                t0 = time.perf_counter()
                for _ in range(streams):
                    loop.run_until_complete(fn(n))  # type: ignore[operator]
                return (time.perf_counter() - t0) / streams

            gc.collect()
            rows: list[tuple[float, float, float]] = []
            for _ in range(ROUNDS):
                base = timed(plain)
                ChunkGaps.tick = no_tick  # type: ignore[method-assign]
                try:
                    without = timed(observed)
                finally:
                    ChunkGaps.tick = tick  # type: ignore[method-assign]
                rows.append((base, without, timed(observed)))
            base, without, shipped = (statistics.median(col) for col in zip(*rows, strict=True))
            ratio = statistics.median(s / w for _, w, s in rows)
            extra_ns = (shipped - without) / max(n - 1, 1) * 1e9
            print(f"{n:>6,} chunks  {base * 1e6:>9.0f} µs{without * 1e6:>21.0f} µs"
                  f"{shipped * 1e6:>9.0f} µs{extra_ns:>13.0f} ns/chunk{ratio:>20.2f}x")
            figures[f"per_chunk_extra_ns_{n}"] = extra_ns
            figures[f"ratio_to_no_per_chunk_{n}"] = ratio
            figures[f"ratio_to_bare_{n}"] = shipped / base
    finally:
        loop.close()
        runtime.shutdown()
    return figures


if __name__ == "__main__":
    main()
