"""Exact running aggregates of finished requests, in constant memory.

This is what the terminal dashboard (:meth:`StreamingMetrics.display_summary`),
``GET /api/summary`` and the Grafana summary row all show: a :class:`Summary`
is the core of every :class:`~ragobs.report.Report`, which renders it. Averages are over
*successful* requests, as in the seed's dashboard; counts cover every outcome.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass

from ragobs.semconv import Outcome
from ragobs.sketch import QuantileSketch

QUANTILES = (0.5, 0.95, 0.99)


@dataclass(frozen=True, slots=True)
class Percentiles:
    p50: float | None
    p95: float | None
    p99: float | None


@dataclass(frozen=True, slots=True)
class Summary:
    """A consistent snapshot of :class:`SummaryStats`.

    ``avg_*`` figures are over successful requests; ``None`` when there are
    none (or, for TTFT and tokens/sec, none that produced the figure).
    Percentiles are within 1 % of a true sample value.
    """

    total_requests: int
    successful: int
    failed: int
    cancelled: int
    timeouts: int
    success_rate: float | None
    failure_rate: float | None
    avg_ttft_seconds: float | None
    avg_latency_seconds: float | None
    avg_tokens: float | None
    avg_tokens_per_second: float | None
    ttft_seconds: Percentiles
    latency_seconds: Percentiles
    in_flight: int

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class SummaryStats:
    """Thread-safe running totals and quantile sketches over finished requests.

    ``failed`` counts outcomes ``error`` and ``timeout``; ``cancelled`` ones
    (the consumer stopped early) are counted apart and are neither.
    """

    __slots__ = (
        "_counts",
        "_in_flight",
        "_latency_sketch",
        "_latency_sum",
        "_lock",
        "_rate_n",
        "_rate_sum",
        "_tokens_sum",
        "_ttft_n",
        "_ttft_sketch",
        "_ttft_sum",
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = {o: 0 for o in Outcome}
        self._ttft_sum = 0.0
        self._ttft_n = 0
        self._latency_sum = 0.0
        self._tokens_sum = 0
        self._rate_sum = 0.0
        self._rate_n = 0
        self._ttft_sketch = QuantileSketch()
        self._latency_sketch = QuantileSketch()
        self._in_flight = 0

    def started(self) -> None:
        with self._lock:
            self._in_flight += 1

    def record(
        self,
        outcome: Outcome,
        latency: float,
        ttft: float | None,
        tokens: int,
        tokens_per_second: float | None,
    ) -> None:
        """Count one finished request (call :meth:`started` before it)."""
        with self._lock:
            self._in_flight -= 1
            self._counts[outcome] += 1
            if outcome is not Outcome.OK:
                return
            self._latency_sum += latency
            self._latency_sketch.add(latency)
            self._tokens_sum += tokens
            if ttft is not None:
                self._ttft_sum += ttft
                self._ttft_n += 1
                self._ttft_sketch.add(ttft)
            if tokens_per_second is not None:
                self._rate_sum += tokens_per_second
                self._rate_n += 1

    def snapshot(self) -> Summary:
        with self._lock:
            ok = self._counts[Outcome.OK]
            failed = self._counts[Outcome.ERROR] + self._counts[Outcome.TIMEOUT]
            cancelled = self._counts[Outcome.CANCELLED]
            total = ok + failed + cancelled
            return Summary(
                total_requests=total,
                successful=ok,
                failed=failed,
                cancelled=cancelled,
                timeouts=self._counts[Outcome.TIMEOUT],
                success_rate=ok / total if total else None,
                failure_rate=failed / total if total else None,
                avg_ttft_seconds=self._ttft_sum / self._ttft_n if self._ttft_n else None,
                avg_latency_seconds=self._latency_sum / ok if ok else None,
                avg_tokens=self._tokens_sum / ok if ok else None,
                avg_tokens_per_second=self._rate_sum / self._rate_n if self._rate_n else None,
                ttft_seconds=_percentiles(self._ttft_sketch),
                latency_seconds=_percentiles(self._latency_sketch),
                in_flight=self._in_flight,
            )


def _percentiles(sketch: QuantileSketch) -> Percentiles:
    return Percentiles(*(sketch.quantile(q) for q in QUANTILES))
