"""Exact running aggregates of finished requests, in constant memory.

This is what the terminal dashboard (:meth:`StreamingMetrics.display_summary`),
``GET /api/summary`` and the Grafana summary row all show: a :class:`Summary`
is the core of every :class:`~ragobs._report.Report`, which renders it. Averages are over
*successful* requests, as in the seed's dashboard; counts cover every outcome.

:meth:`SummaryStats.totals` gives the raw cumulative totals behind it (sketch
buckets included, as :class:`SketchBuckets`), which :mod:`ragobs._history`
samples and subtracts to chart the last minutes; the same object keeps a
count and a sum per RAG stage (:meth:`SummaryStats.record_stage`).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

from ragobs._labels import DEFAULT_MAX_VALUES
from ragobs._sketch import QuantileSketch
from ragobs.semconv import OTHER, Outcome

QUANTILES = (0.5, 0.95, 0.99)
#: Distinct stage names :meth:`SummaryStats.record_stage` keeps apart (as the
#: label guard's cap on ``ragobs.stage``); later ones are counted as ``_OTHER``.
MAX_STAGES = DEFAULT_MAX_VALUES


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
    #: Per successful turn: input tokens (summed over its calls), LLM calls, tool calls.
    avg_input_tokens: float | None = None
    avg_inference_calls: float | None = None
    avg_tool_calls: float | None = None
    #: Where the successful turns' time to first chunk went: phase -> mean seconds
    #: (a stage name, ``ratelimit``, ``llm``, ``other``; they add up to avg TTFT).
    ttft_breakdown: Mapping[str, float] = field(default_factory=dict)
    #: The LLM calls, per provider and model.
    calls: tuple[CallSummary, ...] = ()
    #: USD over every priced call (the calls table's sum), and per successful turn
    #: that had a cost; calls with provider usage but no price.
    spend_usd: float = 0.0
    avg_cost_usd: float | None = None
    unpriced_calls: int = 0

    @classmethod
    def of(cls, requests: Mapping[Outcome, int], *, avg_ttft_seconds: float | None,
           avg_latency_seconds: float | None, avg_tokens: float | None,
           avg_tokens_per_second: float | None, ttft_seconds: Percentiles,
           latency_seconds: Percentiles, in_flight: int,
           avg_input_tokens: float | None = None, avg_inference_calls: float | None = None,
           avg_tool_calls: float | None = None,
           ttft_breakdown: Mapping[str, float] | None = None,
           calls: tuple[CallSummary, ...] = (),
           avg_cost_usd: float | None = None) -> Summary:
        """The summary of finished ``requests`` by outcome, and these figures.

        One rule for every source: ``failed`` is ``error`` + ``timeout``;
        ``cancelled`` requests are counted in the total and are neither.
        """
        ok = requests.get(Outcome.OK, 0)
        timeouts = requests.get(Outcome.TIMEOUT, 0)
        failed = requests.get(Outcome.ERROR, 0) + timeouts
        cancelled = requests.get(Outcome.CANCELLED, 0)
        total = ok + failed + cancelled
        return cls(
            total_requests=total,
            successful=ok,
            failed=failed,
            cancelled=cancelled,
            timeouts=timeouts,
            success_rate=ok / total if total else None,
            failure_rate=failed / total if total else None,
            avg_ttft_seconds=avg_ttft_seconds,
            avg_latency_seconds=avg_latency_seconds,
            avg_tokens=avg_tokens,
            avg_tokens_per_second=avg_tokens_per_second,
            ttft_seconds=ttft_seconds,
            latency_seconds=latency_seconds,
            in_flight=in_flight,
            avg_input_tokens=avg_input_tokens,
            avg_inference_calls=avg_inference_calls,
            avg_tool_calls=avg_tool_calls,
            ttft_breakdown=dict(ttft_breakdown or {}),
            calls=calls,
            spend_usd=sum(row.cost_usd for row in calls),
            avg_cost_usd=avg_cost_usd,
            unpriced_calls=sum(row.unpriced for row in calls),
        )

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class CallSummary:
    """The LLM calls of one provider and model (what the provider did, apart
    from the turns they served). Averages are over successful calls."""

    provider: str | None
    model: str | None
    calls: int
    failed: int
    avg_ttft_seconds: float | None
    avg_latency_seconds: float | None
    input_tokens: int
    output_tokens: int
    #: USD of the calls that had a cost; calls with provider usage but no price.
    cost_usd: float = 0.0
    unpriced: int = 0


class CallTotals:
    """The running totals of one (provider, model): what :class:`CallStats`
    keeps in process and the host sidecar adds up from merged metrics."""

    __slots__ = ("calls", "cost", "failed", "input_tokens", "latency_sum", "ok",
                 "output_tokens", "ttft_n", "ttft_sum", "unpriced")

    def __init__(self) -> None:
        self.calls = self.failed = self.ok = self.ttft_n = self.unpriced = 0
        self.input_tokens = self.output_tokens = 0
        self.ttft_sum = self.latency_sum = self.cost = 0.0


def call_summaries(rows: Mapping[tuple[str | None, str | None], CallTotals]
                   ) -> tuple[CallSummary, ...]:
    """One :class:`CallSummary` per (provider, model) that made calls, the most called first."""
    out = [CallSummary(
        provider=provider, model=model, calls=row.calls, failed=row.failed,
        avg_ttft_seconds=row.ttft_sum / row.ttft_n if row.ttft_n else None,
        avg_latency_seconds=row.latency_sum / row.ok if row.ok else None,
        input_tokens=row.input_tokens, output_tokens=row.output_tokens,
        cost_usd=row.cost, unpriced=row.unpriced)
        for (provider, model), row in rows.items() if row.calls]
    out.sort(key=lambda r: (-r.calls, str(r.provider), str(r.model)))
    return tuple(out)


class CallStats:
    """Running totals of LLM calls per (provider, model), thread-safe.

    Rows are bounded by ``max_rows`` (the label guard caps the names that
    reach here); later combinations are counted under ``(_OTHER, _OTHER)``.
    """

    __slots__ = ("_lock", "_max_rows", "_rows")

    def __init__(self, max_rows: int = 200) -> None:
        self._lock = threading.Lock()
        self._max_rows = max_rows
        self._rows: dict[tuple[str | None, str | None], CallTotals] = {}

    def record(self, provider: str | None, model: str | None, outcome: Outcome, *,
               latency: float, ttft: float | None, input_tokens: int | None,
               output_tokens: int | None, cost: float | None = None,
               unpriced: bool = False) -> None:
        with self._lock:
            rows = self._rows
            key = (provider, model)
            row = rows.get(key)
            if row is None:
                if len(rows) >= self._max_rows:
                    key = (OTHER, OTHER)
                    row = rows.get(key)
                if row is None:
                    row = rows[key] = CallTotals()
            row.calls += 1
            if outcome is Outcome.ERROR or outcome is Outcome.TIMEOUT:
                row.failed += 1
            elif outcome is Outcome.OK:
                row.ok += 1
                row.latency_sum += latency
                if ttft is not None:
                    row.ttft_sum += ttft
                    row.ttft_n += 1
            row.input_tokens += input_tokens or 0
            row.output_tokens += output_tokens or 0
            if cost is not None:
                row.cost += cost
            elif unpriced:
                row.unpriced += 1

    def snapshot(self) -> tuple[CallSummary, ...]:
        """One row per (provider, model), the most called first."""
        with self._lock:
            return call_summaries(self._rows)


@dataclass(frozen=True, slots=True)
class SketchBuckets:
    """The buckets of a :class:`~ragobs._sketch.QuantileSketch` at one moment.

    Cumulative, like the sketch: ``later.minus(earlier)`` holds exactly the
    values added between the two copies, and :meth:`quantile` answers as a
    sketch holding only those would (the sketch's own code does the sums).
    """

    relative_accuracy: float
    #: log-bucket index -> values in it (no zero counts)
    buckets: Mapping[int, int] = field(default_factory=dict)
    #: values at or below the sketch's smallest bucket (zero durations)
    zeros: int = 0

    @classmethod
    def of(cls, sketch: QuantileSketch) -> SketchBuckets:
        """A copy of ``sketch``'s buckets (the caller holds whatever lock guards it)."""
        # QuantileSketch has no public accessor for its buckets yet.
        return cls(sketch._alpha, dict(sketch._buckets), sketch._zeros)

    @property
    def count(self) -> int:
        return self.zeros + sum(self.buckets.values())

    def minus(self, earlier: SketchBuckets) -> SketchBuckets:
        """What was added since ``earlier``. A bucket that went down means the
        sketch was replaced (a restart): the whole of ``self`` is then new."""
        if not isinstance(earlier, SketchBuckets):
            raise TypeError(f"cannot subtract {type(earlier).__name__} from SketchBuckets")
        if earlier.relative_accuracy != self.relative_accuracy:
            raise ValueError("cannot subtract sketches of different relative accuracy")
        zeros = self.zeros - earlier.zeros
        buckets: dict[int, int] = {}
        for key, n in self.buckets.items():
            diff = n - earlier.buckets.get(key, 0)
            if diff < 0:
                return self
            if diff:
                buckets[key] = diff
        if zeros < 0 or any(key not in self.buckets for key in earlier.buckets):
            return self
        return SketchBuckets(self.relative_accuracy, buckets, zeros)

    def quantile(self, q: float) -> float | None:
        """The ``q``-quantile of the values held, ``None`` when there are none."""
        sketch = QuantileSketch(self.relative_accuracy)
        sketch._buckets = dict(self.buckets)
        sketch._zeros = self.zeros
        sketch._count = self.count
        return sketch.quantile(q)


@dataclass(frozen=True, slots=True)
class Totals:
    """The raw cumulative totals of a :class:`SummaryStats`, read at one moment."""

    #: finished requests by outcome (every :class:`~ragobs.semconv.Outcome` value)
    requests: Mapping[str, int]
    #: output tokens of the successful requests
    output_tokens: int
    #: per-stream output tokens/s of successful requests: sum and count
    rate_sum: float
    rate_count: int
    #: TTFT and latency of successful requests
    ttft: SketchBuckets
    latency: SketchBuckets
    in_flight: int
    #: stage name -> (count, total seconds)
    stages: Mapping[str, tuple[int, float]]


class SummaryStats:
    """Thread-safe running totals and quantile sketches over finished requests.

    ``failed`` counts outcomes ``error`` and ``timeout``; ``cancelled`` ones
    (the consumer stopped early) are counted apart and are neither.
    """

    __slots__ = (
        "_calls_sum",
        "_cost_n",
        "_cost_sum",
        "_counts",
        "_in_flight",
        "_input_n",
        "_input_sum",
        "_latency_sketch",
        "_latency_sum",
        "_lock",
        "_phases",
        "_rate_n",
        "_rate_sum",
        "_stages",
        "_tokens_sum",
        "_tools_sum",
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
        self._stages: dict[str, tuple[int, float]] = {}
        self._input_sum = 0
        self._input_n = 0
        self._calls_sum = 0
        self._tools_sum = 0
        self._cost_sum = 0.0
        self._cost_n = 0
        self._phases: dict[str, float] = {}

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
        *,
        input_tokens: int | None = None,
        calls: int = 1,
        tool_calls: int = 0,
        phases: Mapping[str, float] | None = None,
        cost: float | None = None,
    ) -> None:
        """Count one finished request, a turn (call :meth:`started` before it):
        ``tokens`` and ``input_tokens`` are what it cost over its ``calls``
        LLM calls; ``phases`` where its TTFT went."""
        with self._lock:
            self._in_flight -= 1
            self._counts[outcome] += 1
            if outcome is not Outcome.OK:
                return
            if input_tokens is not None:
                self._input_sum += input_tokens
                self._input_n += 1
            self._calls_sum += calls
            self._tools_sum += tool_calls
            if cost is not None:
                self._cost_sum += cost
                self._cost_n += 1
            if phases:
                held = self._phases
                for phase, seconds in phases.items():
                    name = phase if phase in held or len(held) < MAX_STAGES else OTHER
                    held[name] = held.get(name, 0.0) + seconds
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

    def record_stage(self, stage: str, seconds: float) -> None:
        """Count one run of a RAG pipeline stage that took ``seconds``.

        At most :data:`MAX_STAGES` names are kept apart; later ones are
        counted under ``_OTHER`` (names normally arrive capped already).
        """
        with self._lock:
            stages = self._stages
            found = stages.get(stage)
            if found is None and len(stages) >= MAX_STAGES:
                stage = OTHER
                found = stages.get(stage)
            count, total = found if found is not None else (0, 0.0)
            stages[stage] = (count + 1, total + seconds)

    def totals(self) -> Totals:
        """The raw cumulative totals, copied in one consistent read."""
        with self._lock:
            return Totals(
                requests={o.value: n for o, n in self._counts.items()},
                output_tokens=self._tokens_sum,
                rate_sum=self._rate_sum,
                rate_count=self._rate_n,
                ttft=SketchBuckets.of(self._ttft_sketch),
                latency=SketchBuckets.of(self._latency_sketch),
                in_flight=self._in_flight,
                stages=dict(self._stages),
            )

    def snapshot(self, calls: tuple[CallSummary, ...] = ()) -> Summary:
        """The summary now; ``calls``: the LLM calls' table to include."""
        with self._lock:
            ok = self._counts[Outcome.OK]
            ttft_n = self._ttft_n
            return Summary.of(
                self._counts,
                avg_ttft_seconds=self._ttft_sum / self._ttft_n if self._ttft_n else None,
                avg_latency_seconds=self._latency_sum / ok if ok else None,
                avg_tokens=self._tokens_sum / ok if ok else None,
                avg_tokens_per_second=self._rate_sum / self._rate_n if self._rate_n else None,
                ttft_seconds=_percentiles(self._ttft_sketch),
                latency_seconds=_percentiles(self._latency_sketch),
                in_flight=self._in_flight,
                avg_input_tokens=self._input_sum / self._input_n if self._input_n else None,
                avg_inference_calls=self._calls_sum / ok if ok else None,
                avg_tool_calls=self._tools_sum / ok if ok else None,
                ttft_breakdown={name: seconds / ttft_n for name, seconds in
                                sorted(self._phases.items())} if ttft_n else {},
                calls=calls,
                avg_cost_usd=self._cost_sum / self._cost_n if self._cost_n else None,
            )


def _percentiles(sketch: QuantileSketch) -> Percentiles:
    return Percentiles(*(sketch.quantile(q) for q in QUANTILES))
