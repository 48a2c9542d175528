"""The last minutes of the live figures, kept by the sidecar for its charts.

Every ``interval`` seconds (10 by default) a :class:`History` takes one
:class:`RawSample` from its :class:`HistorySource`: *cumulative* totals
(finished requests by outcome, output tokens, the TTFT and latency
distributions, LLM calls by model, count and time per RAG stage) plus the
requests in flight at that moment. Requests are turns (one question answered,
whatever LLM calls it made), as in ``/api/summary``. Two consecutive samples
give one point of the charts, a difference:

* requests/s by outcome and output tokens/s of the requests that finished
  in the interval (counts over the interval's length);
* TTFT and latency p50 / p95 / p99 *of those requests only*: the two samples'
  distributions are subtracted (a :class:`~ragobs._sketch.QuantileSketch`'s
  buckets are cumulative, as are a histogram's), ``null`` when none finished;
* the mean per-stream tokens/s of those requests (``null`` when none);
* in flight, as sampled.

Memory is bounded: a ring of ``points`` points (90: 15 minutes at 10 s) and,
for the breakdowns by model and by stage over that window, the ring's
per-model and per-stage counts, whose rows the label caps already bound
(``gen_ai.request.model`` and ``ragobs.stage`` take at most
:data:`~ragobs._labels.DEFAULT_MAX_VALUES` values each, then ``_OTHER``).

``by_model`` counts *LLM calls*, not turns: a turn's model is not its calls'
(an agent's turn may call a router model and an answering one). Its rows are
``{model, calls, failed, failure_rate}``, from the calls table
(:class:`~ragobs._summary_stats.CallStats`, the GenAI client metrics on a
host), the providers of one model added up. (Before turns had calls, the rows
counted requests: ``{model, requests, ok, failed, timeouts, cancelled,
failure_rate}``; the calls table keeps no ok / timeout / cancelled split.)

Where samples come from is a small protocol, :class:`HistorySource`.
:class:`InProcessSource` reads this process's
:class:`~ragobs._summary_stats.SummaryStats` and
:class:`~ragobs._telemetry.Telemetry`; a host sidecar merging several workers'
OTLP metrics provides :class:`RawSample` s of its own, its distributions as
:class:`ExplicitBuckets` (histogram bucket counts and bounds). The JSON
(:meth:`History.as_json`, ``GET /api/history``) is the same whatever the source.

The sampler runs as a task (:meth:`History.run`, started with the sidecar's
app) on an injectable :class:`~ragobs.clock.Clock`; a reader can also ask for
a sample when the last one is stale (:meth:`History.sample_if_due`), so a test
drives it with a :class:`~ragobs.clock.ManualClock` and never sleeps.
"""

from __future__ import annotations

import logging
import math
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol, Self

from ragobs._summary_stats import QUANTILES, CallSummary, SummaryStats
from ragobs._telemetry import Telemetry
from ragobs.clock import SYSTEM_CLOCK, Clock
from ragobs.semconv import Outcome

__all__ = [
    "CALLS",
    "DEFAULT_INTERVAL",
    "DEFAULT_POINTS",
    "FAILED",
    "Distribution",
    "ExplicitBuckets",
    "History",
    "HistorySource",
    "InProcessSource",
    "RawSample",
    "calls_by_model",
]

DEFAULT_INTERVAL: Final = 10.0
DEFAULT_POINTS: Final = 90  # 15 minutes at 10 s
OUTCOMES: Final = tuple(o.value for o in Outcome)
#: The two counts :attr:`RawSample.by_model` keeps per model.
CALLS: Final = "calls"
FAILED: Final = "failed"

log = logging.getLogger("ragobs._history")


# --- what a source provides ------------------------------------------------------

class Distribution(Protocol):
    """Cumulative counts of observed values, from which an interval's quantiles follow.

    ``later.minus(earlier)`` holds the values observed between the two
    readings; a count that went down is taken as a restart of the source
    (the later reading is then all new).
    """

    @property
    def count(self) -> int: ...

    def minus(self, earlier: Self) -> Self: ...

    def quantile(self, q: float) -> float | None: ...


@dataclass(frozen=True, slots=True)
class ExplicitBuckets:
    """A histogram with explicit bucket bounds (OpenTelemetry / Prometheus style).

    ``counts[i]`` counts values in ``(bounds[i-1], bounds[i]]``; the last of
    the ``len(bounds) + 1`` counts is the overflow bucket above ``bounds[-1]``.
    Quantiles interpolate linearly inside a bucket, as Prometheus'
    ``histogram_quantile`` does (the first bucket from 0, the overflow bucket
    answered with the largest bound).
    """

    bounds: Sequence[float]
    counts: Sequence[int]

    def __post_init__(self) -> None:
        if len(self.counts) != len(self.bounds) + 1:
            raise ValueError(f"a histogram with {len(self.bounds)} bounds has "
                             f"{len(self.bounds) + 1} bucket counts, got {len(self.counts)}")
        if any(b >= a for a, b in zip(self.bounds[1:], self.bounds, strict=False)):
            raise ValueError(f"bounds must increase, got {list(self.bounds)!r}")

    @property
    def count(self) -> int:
        return sum(self.counts)

    def minus(self, earlier: ExplicitBuckets) -> ExplicitBuckets:
        if not isinstance(earlier, ExplicitBuckets):
            raise TypeError(f"cannot subtract {type(earlier).__name__} from ExplicitBuckets")
        if list(earlier.bounds) != list(self.bounds):
            raise ValueError("cannot subtract histograms with different bucket bounds")
        diffs = [a - b for a, b in zip(self.counts, earlier.counts, strict=True)]
        if any(d < 0 for d in diffs):
            return self
        return ExplicitBuckets(self.bounds, diffs)

    def quantile(self, q: float) -> float | None:
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"q must be in the range [0, 1], got {q!r}")
        total = self.count
        if total == 0:
            return None
        rank = q * total
        seen = 0
        for i, n in enumerate(self.counts):
            if n and seen + n >= rank:
                if i == len(self.bounds):  # the overflow bucket has no upper bound
                    return float(self.bounds[-1]) if self.bounds else None
                upper = float(self.bounds[i])
                lower = float(self.bounds[i - 1]) if i else min(0.0, upper)
                return lower + (upper - lower) * max(rank - seen, 0.0) / n
            seen += n
        return float(self.bounds[-1]) if self.bounds else None  # pragma: no cover - rank <= total


@dataclass(frozen=True, slots=True)
class RawSample:
    """Cumulative totals at one moment, whatever their source.

    Every count only grows while the source lives; a count that goes down is
    taken as a restart (the new value then counts from zero).
    """

    #: finished requests by outcome (``ok``, ``error``, ``timeout``, ``cancelled``)
    requests: Mapping[str, int]
    #: output tokens of the successful requests
    output_tokens: float
    #: TTFT and latency of the successful requests, in seconds
    ttft: Distribution
    latency: Distribution
    #: requests in flight now (not cumulative)
    in_flight: int
    #: per-stream output tokens/s of the successful requests: sum and count
    rate_sum: float = 0.0
    rate_count: int = 0
    #: finished LLM calls by (model, :data:`CALLS`) and the failed ones (errors and
    #: timeouts) by (model, :data:`FAILED`); model ``None``: the call named none
    by_model: Mapping[tuple[str | None, str], int] = field(default_factory=dict)
    #: RAG stage -> (runs, total seconds)
    stages: Mapping[str, tuple[int, float]] = field(default_factory=dict)


class HistorySource(Protocol):
    """Where a :class:`History` takes its samples from."""

    def sample(self) -> RawSample:
        """The cumulative totals now (called every interval, from the event loop:
        keep it to a copy of counters, no I/O)."""
        ...


def calls_by_model(calls: Iterable[CallSummary]) -> dict[tuple[str | None, str], int]:
    """:attr:`RawSample.by_model` of a calls table: the providers of one model added up."""
    counts: dict[tuple[str | None, str], int] = {}
    for row in calls:
        for kind, n in ((CALLS, row.calls), (FAILED, row.failed)):
            key = (row.model, kind)
            counts[key] = counts.get(key, 0) + n
    return counts


class InProcessSource:
    """Samples of this process: a :class:`SummaryStats` (requests, tokens,
    sketches, in flight, stages) and, when given, the calls table of a
    :class:`Telemetry` (:attr:`~ragobs._telemetry.Telemetry.calls`: LLM calls by model)."""

    __slots__ = ("stats", "telemetry")

    def __init__(self, stats: SummaryStats, telemetry: Telemetry | None = None) -> None:
        if not isinstance(stats, SummaryStats):
            raise TypeError(f"stats must be a SummaryStats, got {stats!r}")
        if telemetry is not None and not isinstance(telemetry, Telemetry):
            raise TypeError(f"telemetry must be a Telemetry or None, got {telemetry!r}")
        self.stats = stats
        self.telemetry = telemetry

    def sample(self) -> RawSample:
        totals = self.stats.totals()
        telemetry = self.telemetry
        by_model = {} if telemetry is None else calls_by_model(telemetry.calls.snapshot())
        return RawSample(
            requests=totals.requests,
            output_tokens=totals.output_tokens,
            ttft=totals.ttft,
            latency=totals.latency,
            in_flight=totals.in_flight,
            rate_sum=totals.rate_sum,
            rate_count=totals.rate_count,
            by_model=by_model,
            stages=totals.stages,
        )


# --- the history ------------------------------------------------------------------

def _since(now: float, then: float) -> float:
    """How much a cumulative count grew; one that went down restarted from zero."""
    return now - then if now >= then else now


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _percentiles(dist: Distribution) -> dict[str, float | None]:
    return {f"p{round(q * 100)}": _finite(dist.quantile(q)) for q in QUANTILES}


def _point(t: float, seconds: float, before: RawSample, now: RawSample) -> dict[str, object]:
    rates = {o: _since(now.requests.get(o, 0), before.requests.get(o, 0)) / seconds
             for o in OUTCOMES}
    rate_count = now.rate_count - before.rate_count
    rate_sum = now.rate_sum - before.rate_sum
    if rate_count < 0:
        rate_count, rate_sum = now.rate_count, now.rate_sum
    return {
        "t": round(t, 3),
        "seconds": seconds,
        "requests_per_second": rates,
        "ttft_seconds": _percentiles(now.ttft.minus(before.ttft)),
        "latency_seconds": _percentiles(now.latency.minus(before.latency)),
        "tokens_per_second": _finite(_since(now.output_tokens, before.output_tokens) / seconds),
        "stream_tokens_per_second": _finite(rate_sum / rate_count) if rate_count > 0 else None,
        "in_flight": now.in_flight,
    }


@dataclass(frozen=True, slots=True)
class _Tables:
    """The breakdown counts of one sample (what the window needs of it)."""

    t: float
    by_model: Mapping[tuple[str | None, str], int]
    stages: Mapping[str, tuple[int, float]]


def _by_model(newest: _Tables, oldest: _Tables) -> list[dict[str, object]]:
    grown: dict[str | None, int] = {}
    for (model, kind), n in newest.by_model.items():
        if kind == CALLS:
            calls = int(_since(n, oldest.by_model.get((model, CALLS), 0)))
            if calls:
                grown[model] = calls
    rows: list[dict[str, object]] = []
    # Busiest first; ties by name (no model last).
    for model, calls in sorted(grown.items(), key=lambda kv: (-kv[1], kv[0] is None, kv[0] or "")):
        failed = int(_since(newest.by_model.get((model, FAILED), 0),
                            oldest.by_model.get((model, FAILED), 0)))
        failed = min(failed, calls)  # a restart seen in one count only
        rows.append({"model": model, "calls": calls, "failed": failed,
                     "failure_rate": failed / calls})
    return rows


def _by_stage(newest: _Tables, oldest: _Tables) -> list[dict[str, object]]:
    grown: list[tuple[str, int, float]] = []
    for stage, (count, total) in newest.stages.items():
        count0, total0 = oldest.stages.get(stage, (0, 0.0))
        if count < count0:  # restarted
            count0, total0 = 0, 0.0
        if count > count0:
            grown.append((stage, count - count0, max(total - total0, 0.0)))
    grown.sort(key=lambda g: (-g[2], g[0]))  # most time spent first
    return [{"stage": stage, "count": runs, "avg_seconds": _finite(seconds / runs),
             "total_seconds": _finite(seconds)} for stage, runs, seconds in grown]


class History:
    """A ring of per-interval points and the breakdowns over the same window.

    Args:
        source: where samples come from (see :class:`HistorySource`).
        interval: seconds between samples.
        points: how many points are kept (the window is ``points * interval``).
        clock: the time base of the sampler and of staleness (monotonic).
        wall: Unix time, read once to date the points (``t``) from ``clock``.
    """

    def __init__(self, source: HistorySource, *, interval: float = DEFAULT_INTERVAL,
                 points: int = DEFAULT_POINTS, clock: Clock = SYSTEM_CLOCK,
                 wall: Callable[[], float] = time.time) -> None:
        if not callable(getattr(source, "sample", None)):
            raise TypeError(f"source must have a sample() method, got {source!r}")
        if (not isinstance(interval, (int, float)) or isinstance(interval, bool)
                or not 0 < interval < math.inf):
            raise ValueError(f"interval must be a finite number of seconds > 0, got {interval!r}")
        if not isinstance(points, int) or isinstance(points, bool) or not 1 <= points <= 100_000:
            raise ValueError(f"points must be an int in 1..100000, got {points!r}")
        self.source = source
        self.interval = float(interval)
        self.capacity = points
        self._clock = clock
        self._epoch = wall() - clock.now()
        self._lock = threading.Lock()
        self._last: tuple[float, RawSample] | None = None
        self._points: deque[dict[str, object]] = deque(maxlen=points)
        # One more than the points: the oldest is where the window starts.
        self._tables: deque[_Tables] = deque(maxlen=points + 1)
        self._seq = 0
        self._tag = secrets.token_hex(4)  # tells this history's ETags from a restarted one's
        self._json: tuple[int, dict[str, object]] | None = None

    # -- sampling -------------------------------------------------------------------

    def sample(self) -> bool:
        """Take one sample now; ``True`` if it was kept (it closes an interval,
        or is the first). A sample at the same instant as the last is dropped."""
        raw = self.source.sample()
        with self._lock:
            now = self._clock.now()
            t = self._epoch + now
            if self._last is not None:
                last_now, last = self._last
                seconds = now - last_now
                if seconds <= 0:
                    return False
                self._points.append(_point(t, seconds, last, raw))
            self._last = (now, raw)
            self._tables.append(_Tables(t, dict(raw.by_model), dict(raw.stages)))
            self._seq += 1
            return True

    def due_in(self) -> float:
        """Seconds until the next sample is due (0: now)."""
        with self._lock:
            if self._last is None:
                return 0.0
            return max(0.0, self._last[0] + self.interval - self._clock.now())

    def sample_if_due(self) -> bool:
        """Take a sample if none was taken in the last ``interval`` seconds."""
        return self.sample() if self.due_in() <= 0 else False

    async def run(self) -> None:
        """Sample every ``interval`` seconds until cancelled."""
        while True:
            await self._clock.sleep(self.due_in())
            try:
                self.sample_if_due()
            except Exception:
                log.exception("ragobs history: taking a sample failed")
                await self._clock.sleep(self.interval)

    # -- reading ----------------------------------------------------------------------

    @property
    def etag(self) -> str:
        """Changes with every sample kept (an HTTP entity tag, quoted)."""
        return f'"{self._tag}-{self._seq}"'

    @property
    def points(self) -> list[dict[str, object]]:
        """The points kept, oldest first (as in :meth:`as_json`)."""
        with self._lock:
            return list(self._points)

    def as_json(self) -> dict[str, object]:
        """The body of ``GET /api/history``: strict JSON (no NaN or infinity).

        ``points`` oldest first; ``by_model`` (LLM calls) and ``by_stage``
        cover the same window, from the oldest sample kept to the newest
        (``window_seconds``); percentiles and per-stream rates are ``null``
        for an interval in which no request finished.
        """
        with self._lock:
            if self._json is not None and self._json[0] == self._seq:
                return self._json[1]
            if self._tables:
                newest, oldest = self._tables[-1], self._tables[0]
                window = newest.t - oldest.t
                by_model, by_stage = _by_model(newest, oldest), _by_stage(newest, oldest)
            else:
                window, by_model, by_stage = 0.0, [], []
            body: dict[str, object] = {
                "interval_seconds": self.interval,
                "capacity": self.capacity,
                "window_seconds": round(window, 3),
                "points": list(self._points),
                "by_model": by_model,
                "by_stage": by_stage,
            }
            self._json = (self._seq, body)
            return body

