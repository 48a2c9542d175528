"""A turn of two calls: an agent that routes, then answers, nested under one observed turn.

    python -m bench.bench_turn

The agent consumes a first ``n``-chunk ``str`` stream fully (the routing
call, whose output the user never sees), then yields the chunks of a second
``n``-chunk stream (the answer). Forms, per turn, at ``n`` = 100, 1,000 and
3,000 chunks per call:

* baseline: the same agent with no ragobs at all, the same generator layers
  (a bare ``async for ... yield`` passthrough where ragobs puts a wrapper:
  around each call's source and around the agent);
* ragobs: the agent decorated with ``@instrument_stream`` and each call
  wrapped in ``observe_stream``: one turn and its two inference calls.

For comparison, the single-stream figure at the same sizes: ``observe_stream``
over one ``n``-chunk stream against a bare passthrough (as bench_forms).
``where the extra goes`` splits the turn's extra: the turn alone (the
decorated agent with its calls unobserved, against the baseline) and its two
calls (ragobs minus the turn alone), next to two single streams. The
``residual`` lines take the turn's extra time over its baseline, minus
the single-stream extra of the streams it observes: the two calls, and the
turn itself (which passes the answer's ``n`` chunks on, as a single stream
does). What is left is what nesting costs; its slope over ``n`` is its part
per chunk. The five forms of a size run one after another in every round
(blocks of as many chunks), on the real SDK providers (those ``setup()``
builds); medians of the rounds (of per-round ratios and differences), min-max
printed.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
from collections.abc import AsyncGenerator, Awaitable, Callable

from prometheus_client import CollectorRegistry

from bench._harness import bare, source
from ragobs import instrument_stream, observe_stream, semconv
from ragobs._runtime import setup
from ragobs._telemetry import Telemetry
from ragobs.testing import recording_telemetry

SIZES = (100, 1_000, 3_000)
BLOCK_CHUNKS = 20_000
ROUNDS = 61

Agent = Callable[[int], AsyncGenerator[str, None]]


def _nested_agent(tel: Telemetry) -> Agent:
    """The agent as ragobs users write it: a turn, and two calls inside it."""

    @instrument_stream(telemetry=tel)
    async def agent(n: int) -> AsyncGenerator[str, None]:
        async for _ in observe_stream(source(n), telemetry=tel, model="m"):
            pass
        async for chunk in observe_stream(source(n), telemetry=tel, model="m"):
            yield chunk

    return agent


def _turn_only_agent(tel: Telemetry) -> Agent:
    """The turn with its calls unobserved: what the turn's wrapper costs alone."""

    @instrument_stream(telemetry=tel)
    async def agent(n: int) -> AsyncGenerator[str, None]:
        async for _ in bare(source(n)):
            pass
        async for chunk in bare(source(n)):
            yield chunk

    return agent


async def _plain_agent(n: int) -> AsyncGenerator[str, None]:
    """The same agent without ragobs: a passthrough where each wrapper was."""
    async for _ in bare(source(n)):
        pass
    async for chunk in bare(source(n)):
        yield chunk


def _check_nesting() -> None:
    """One turn on in-memory exporters: it must be one turn of two calls."""
    rec = recording_telemetry()
    agent = _nested_agent(rec.telemetry)

    async def one() -> int:
        got = 0
        async for _ in agent(10):
            got += 1
        return got

    try:
        assert asyncio.run(one()) == 10
        points = rec.points(semconv.TURN_INFERENCE_CALLS.name)
        assert len(points) == 1 and points[0].count == 1 and points[0].sum == 2, points
    finally:
        rec.shutdown()


def _rounds(loop: asyncio.AbstractEventLoop,
            blocks: tuple[Callable[[], Awaitable[float]], ...]) -> list[list[float]]:
    """Run ``blocks`` in turn, ``ROUNDS`` times: each one's per-op costs, by round."""
    gc.collect()
    costs: list[list[float]] = [[] for _ in blocks]
    for _ in range(ROUNDS):
        for cost, block in zip(costs, blocks, strict=True):
            cost.append(loop.run_until_complete(block()))
    return costs


def _timed(repeats: int, n: int, one: Callable[[int], Awaitable[None]]
           ) -> Callable[[], Awaitable[float]]:
    async def run() -> float:
        t0 = time.perf_counter()
        for _ in range(repeats):
            await one(n)
        return (time.perf_counter() - t0) / repeats

    return run


def _span(values: list[float], scale: float, fmt: str) -> str:
    return f"{min(values) * scale:{fmt}}-{max(values) * scale:{fmt}}"


def main() -> dict[str, float]:
    _check_nesting()
    runtime = setup(serve=False, set_global=False, registry=CollectorRegistry())
    tel: Telemetry = runtime.telemetry
    figures: dict[str, float] = {}
    nested = _nested_agent(tel)
    turn_only = _turn_only_agent(tel)

    async def turn_one(n: int) -> None:
        async for _ in nested(n):
            pass

    async def turn_only_one(n: int) -> None:
        async for _ in turn_only(n):
            pass

    async def plain_turn_one(n: int) -> None:  # the same layers: one around the agent
        async for _ in bare(_plain_agent(n)):
            pass

    async def single_one(n: int) -> None:
        async for _ in observe_stream(source(n), telemetry=tel, model="m"):
            pass

    async def bare_one(n: int) -> None:
        async for _ in bare(source(n)):
            pass

    loop = asyncio.new_event_loop()
    rows: list[tuple[int, list[list[float]]]] = []
    try:
        loop.run_until_complete(turn_one(SIZES[0]))  # warm-up: first-use instruments
        for n in SIZES:
            turns = max(1, BLOCK_CHUNKS // (2 * n))  # as many chunks in every block
            rows.append((n, _rounds(loop, (_timed(turns, n, plain_turn_one),
                                           _timed(turns, n, turn_one),
                                           _timed(2 * turns, n, bare_one),
                                           _timed(2 * turns, n, single_one),
                                           _timed(turns, n, turn_only_one)))))
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
        runtime.shutdown()

    def table(title: str, base_name: str, form_name: str, unit: str, first: int) -> None:
        print(f"{title:<24} {base_name:>12} {form_name:>12}   {'ratio (min-max)':<22} "
              f"extra per {unit} (min-max)")
        for n, (plain, turn, bare_, single, _) in rows:
            base, cost = ((plain, turn), (bare_, single))[first]
            ratios = [c / b for c, b in zip(cost, base, strict=True)]
            extras = [c - b for c, b in zip(cost, base, strict=True)]
            label = f"{n:,} chunks per call" if first == 0 else f"{n:,} chunks"
            print(f"{label:<24} {statistics.median(base) * 1e6:>9.0f} µs "
                  f"{statistics.median(cost) * 1e6:>9.0f} µs   "
                  f"{statistics.median(ratios):5.2f}x ({_span(ratios, 1, '.2f')}x)   "
                  f"{statistics.median(extras) * 1e6:>6.0f} µs ({_span(extras, 1e6, '.0f')} µs)")
            key = ("turn", "single")[first]
            figures[f"{key}_{n}_ratio"] = statistics.median(ratios)
            figures[f"{key}_{n}_extra_us"] = statistics.median(extras) * 1e6

    table("turn of two calls", "baseline", "ragobs", "turn", 0)
    print()
    table("single stream", "bare", "observed", "stream", 1)
    print()
    print(f"{'where the extra goes':<24} {'turn alone':>12} {'its 2 calls':>12}   "
          f"{'2 single streams':>16}   (µs per turn; calls = ragobs - turn alone)")
    for n, (plain, turn, bare_, single, alone) in rows:
        own = statistics.median([a - p for a, p in zip(alone, plain, strict=True)])
        calls = statistics.median([t - a for t, a in zip(turn, alone, strict=True)])
        two = statistics.median([2 * (s - b) for s, b in zip(single, bare_, strict=True)])
        print(f"{f'{n:,} chunks per call':<24} {own * 1e6:>9.0f} µs {calls * 1e6:>9.0f} µs   "
              f"{two * 1e6:>13.0f} µs")
        figures[f"turn_alone_{n}_extra_us"] = own * 1e6
        figures[f"calls_in_turn_{n}_extra_us"] = calls * 1e6
    print()
    lo, hi = SIZES[0], SIZES[-1]
    for streams, what in ((2, "the two calls"), (3, "the two calls and the turn")):
        residual: dict[int, float] = {}
        cells = []
        for n, (plain, turn, bare_, single, _) in rows:
            per_round = [(t - p) - streams * (s - b)
                         for p, t, b, s, _ in zip(plain, turn, bare_, single, alone,
                                                  strict=True)]
            residual[n] = statistics.median(per_round)
            cells.append(f"{n:,}: {residual[n] * 1e6:>4.0f} µs ({_span(per_round, 1e6, '.0f')})")
            figures[f"residual_{streams}_{n}_us"] = residual[n] * 1e6
        slope = (residual[hi] - residual[lo]) / (2 * (hi - lo))
        figures[f"residual_{streams}_slope_ns"] = slope * 1e9
        print(f"residual per turn: turn extra - single-stream extra of {what}")
        print(f"    {'   '.join(cells)}   slope {slope * 1e9:5.1f} ns per chunk of the turn")
    return figures


if __name__ == "__main__":
    main()
