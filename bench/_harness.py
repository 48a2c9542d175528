"""Shared benchmark plumbing: an SDK like production's, and a robust timer."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import AsyncGenerator, AsyncIterable, Callable

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry

from ragobs._exposition import PrometheusReader
from ragobs._telemetry import Telemetry


async def source(n: int) -> AsyncGenerator[str, None]:
    """``n`` one-token chunks, as fast as the loop goes."""
    for _ in range(n):
        yield "tok"


async def bare(stream: AsyncIterable[str]) -> AsyncGenerator[str, None]:
    """The baseline of every stream wrapper: a plain pass-through."""
    async for chunk in stream:
        yield chunk


def production_like() -> tuple[Telemetry, TracerProvider, MeterProvider]:
    """A Telemetry on a real SDK: sampled spans, the Prometheus reader."""
    tracer_provider = TracerProvider()
    meter_provider = MeterProvider(metric_readers=[PrometheusReader(CollectorRegistry())])
    telemetry = Telemetry(tracer_provider=tracer_provider, meter_provider=meter_provider)
    return telemetry, tracer_provider, meter_provider


def best_of(fn: Callable[[], float], rounds: int = 7) -> float:
    """Median of ``rounds`` runs of ``fn`` (which returns a per-op cost)."""
    gc.collect()
    results = []
    for _ in range(rounds):
        results.append(fn())
    return statistics.median(results)


def paired(fn: Callable[[], float], base: Callable[[], float],
           rounds: int = 9) -> tuple[float, float, float]:
    """Run ``fn`` and ``base`` alternately; (median fn, median base, median ratio).

    Alternating makes load from anything else on the machine hit both sides
    alike; the ratio is taken per round, then the median of those.
    """
    gc.collect()
    costs, bases, ratios = [], [], []
    for _ in range(rounds):
        b = base()
        c = fn()
        costs.append(c)
        bases.append(b)
        ratios.append(c / b)
    return statistics.median(costs), statistics.median(bases), statistics.median(ratios)


def per_op(fn: Callable[[], None], n: int) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) / n


def line(name: str, cost_s: float, base_s: float, base_name: str, *, target: str,
         ratio: float | None = None) -> str:
    ratio = cost_s / base_s if ratio is None else ratio
    return (f"{name:<44} {cost_s * 1e9:>9.0f} ns/op   baseline {base_name} "
            f"{base_s * 1e9:>7.0f} ns/op   ratio {ratio:5.2f}x   (target {target})")
