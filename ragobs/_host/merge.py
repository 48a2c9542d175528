"""Host-wide totals of the metrics several processes push by OTLP.

:class:`HostMetrics` is fed decoded OTLP ``ExportMetricsServiceRequest``
messages (see :mod:`ragobs._host.receiver`) and keeps one merged series per
(scope, metric name, ``service.name``, point attributes). A worker's identity
(``service.instance.id``, ``process.pid``...) never becomes a label: the
host's totals are the point.

How each kind merges
--------------------
* **Monotonic sums (counters) and histograms.** DELTA points are added to
  the series' total. CUMULATIVE points are kept per stream, a stream being a
  (producer, ``start_time_unix_nano``) pair, and the exposed value is the
  total plus the last value of every stream, so a producer that restarts (a
  new start time) adds to the host's counters instead of resetting them, and
  one that pauses and comes back is not counted twice. Streams are only
  folded into the total when the state bound is reached (the least recently
  updated stale one first). A cumulative value that goes down within one
  stream is taken as a reset: the previous value is folded first.
* **Non-monotonic sums (up-down counters, e.g. requests in flight).** Kept
  per producer (DELTA: the running net of its deltas; CUMULATIVE: its last
  value per stream); the exposed value is the sum over producers. A
  producer that has not pushed for ``stale_after`` seconds is dropped with
  its contribution (so is a cumulative stream not updated for as long), so
  a worker killed mid-request does not leave the host's in-flight count
  above zero forever. (OpenTelemetry's own "delta" temporality preference
  keeps up-down counters CUMULATIVE. DELTA ones are accepted too: the nets
  of a stale producer are parked, bounded, and given back if it pushes
  again, since its later deltas only make sense on top of them.)
* **Gauges.** The last value per producer, exposed as the sum over live
  producers (the host's total, like in-flight counts); a stale producer's
  value is dropped.
* **Exponential histograms and summaries** are not merged: their points are
  counted as dropped (``exponential_histogram``, ``unsupported_type``).

A producer is one distinct set of resource attributes (a worker's
``service.instance.id`` / ``process.pid`` make them distinct; two processes
with identical resources are one producer, whose cumulative streams stay
apart by their start times).

Bounds
------
Memory is bounded by :class:`HostLimits`: series per metric and in all,
metrics, producers, per-producer states, attribute size and buckets per
histogram. Beyond a bound the points are dropped and counted by reason
(:data:`DROP_REASONS`, exposed as ``ragobs_host_dropped_points_total``), and
the first drop of each reason is logged once. A histogram point whose bucket
bounds differ from the series' first ones is dropped (``bucket_mismatch``)
rather than merged into wrong buckets.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from itertools import pairwise
from typing import Final, TypeAlias

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1 import metrics_pb2

from ragobs.clock import SYSTEM_CLOCK, Clock

logger = logging.getLogger("ragobs._host")

__all__ = [
    "DEFAULT_STALE_AFTER",
    "DROP_REASONS",
    "REQUEST_REJECT_REASONS",
    "AttributeValue",
    "DropReason",
    "HistogramValue",
    "HostLimits",
    "HostMetrics",
    "HostSnapshot",
    "IngestResult",
    "MetricKind",
    "MetricSnapshot",
    "SeriesSnapshot",
]

#: Three missed pushes at the SDK's usual 5 s export interval.
DEFAULT_STALE_AFTER: Final = 15.0

Number: TypeAlias = int | float
AttributeValue: TypeAlias = "str | bool | int | float | tuple[AttributeValue, ...]"
_AttrKey: TypeAlias = tuple[tuple[str, AttributeValue], ...]
_SeriesKey: TypeAlias = tuple[str | None, _AttrKey]
_MetricKey: TypeAlias = tuple[str, str]  # (scope name, metric name)
_StateKey: TypeAlias = tuple[bytes, int]  # (producer, start time; 0 for per-producer states)
_Ref: TypeAlias = tuple[_MetricKey, _SeriesKey, _StateKey]

_TEMPORALITY_DELTA: Final = metrics_pb2.AGGREGATION_TEMPORALITY_DELTA
_TEMPORALITY_CUMULATIVE: Final = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE
_NO_RECORDED_VALUE: Final = metrics_pb2.DATA_POINT_FLAGS_NO_RECORDED_VALUE_MASK
_SERVICE_NAME: Final = "service.name"
_MAX_NAME: Final = 255
_MAX_UNIT: Final = 63
_MAX_DESCRIPTION: Final = 1024


class MetricKind(StrEnum):
    """How a merged metric is exposed (Prometheus type in brackets)."""

    COUNTER = "counter"                  # monotonic sum (counter)
    UP_DOWN_COUNTER = "up_down_counter"  # non-monotonic sum (gauge)
    GAUGE = "gauge"                      # gauge (gauge)
    HISTOGRAM = "histogram"              # explicit-bucket histogram (histogram)


class DropReason(StrEnum):
    """Why points were not merged (the ``reason`` label of the drop counter)."""

    SERIES_LIMIT = "series_limit"
    METRIC_LIMIT = "metric_limit"
    PRODUCER_LIMIT = "producer_limit"
    STATE_LIMIT = "state_limit"
    BUCKET_MISMATCH = "bucket_mismatch"
    TYPE_CONFLICT = "type_conflict"
    EXPONENTIAL_HISTOGRAM = "exponential_histogram"
    UNSUPPORTED_TYPE = "unsupported_type"
    INVALID_POINT = "invalid_point"


DROP_REASONS: Final = tuple(r.value for r in DropReason)

#: Why the receiver refused a whole request (``ragobs_host_rejected_requests_total``).
REQUEST_REJECT_REASONS: Final = (
    "too_large", "unsupported_media_type", "unsupported_encoding", "malformed", "timeout",
    "busy", "signal_not_supported", "forbidden", "unauthorized",
)


@dataclass(frozen=True, slots=True)
class HostLimits:
    """Bounds on what :class:`HostMetrics` holds; points beyond them are dropped.

    Args:
        max_series_per_metric: distinct (service, attributes) per metric.
        max_series: series over all metrics.
        max_metrics: distinct (scope, name) metrics.
        max_producers: producers pushing within ``stale_after``.
        max_states: per-producer states (cumulative streams, up-down nets,
            gauge values) over all series.
        max_attribute_chars: characters of one point's attribute keys and
            values together.
        max_buckets: explicit bounds of one histogram point.
    """

    max_series_per_metric: int = 2_000
    max_series: int = 20_000
    max_metrics: int = 512
    max_producers: int = 1_024
    max_states: int = 100_000
    max_attribute_chars: int = 2_048
    max_buckets: int = 128

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What one export request did: points merged and points dropped."""

    accepted: int
    rejected: int
    message: str = ""


@dataclass(frozen=True, slots=True)
class HistogramValue:
    """A merged explicit-bucket histogram: per-bucket (not cumulative) counts,
    ``len(bounds) + 1`` of them, the last one for ``+Inf``."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    count: int
    sum: float
    min: float | None = None
    max: float | None = None


@dataclass(frozen=True, slots=True)
class SeriesSnapshot:
    """One merged series: the point's attributes (without ``service.name``
    unless the point itself carried it) and the producer's ``service.name``."""

    attributes: Mapping[str, AttributeValue]
    service: str | None
    value: Number | HistogramValue


@dataclass(frozen=True, slots=True)
class MetricSnapshot:
    scope: str
    name: str
    kind: MetricKind
    description: str
    unit: str
    series: tuple[SeriesSnapshot, ...]


@dataclass(frozen=True, slots=True)
class HostSnapshot:
    """A consistent view of :class:`HostMetrics` (no push is half-merged in it)."""

    metrics: tuple[MetricSnapshot, ...]
    producers: int
    series: int
    exports: int
    points: int
    dropped: Mapping[str, int] = field(default_factory=dict)
    rejected_requests: Mapping[str, int] = field(default_factory=dict)

    def find(self, name: str) -> list[MetricSnapshot]:
        """Every metric called ``name``, whatever its scope."""
        return [m for m in self.metrics if m.name == name]


# --- internal state ----------------------------------------------------------

class _Hist:
    __slots__ = ("count", "counts", "max", "min", "sum")

    def __init__(self, counts: list[int], count: int, total: float,
                 lo: float | None, hi: float | None) -> None:
        self.counts = counts
        self.count = count
        self.sum = total
        self.min = lo
        self.max = hi

    def copy(self) -> _Hist:
        return _Hist(list(self.counts), self.count, self.sum, self.min, self.max)

    def add(self, other: _Hist) -> None:
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.count += other.count
        self.sum += other.sum
        if other.min is not None:
            self.min = other.min if self.min is None else min(self.min, other.min)
        if other.max is not None:
            self.max = other.max if self.max is None else max(self.max, other.max)


class _State:
    """One producer's contribution to one series."""

    __slots__ = ("cumulative", "last_seen", "value")

    def __init__(self, value: Number | _Hist, cumulative: bool, now: float) -> None:
        self.value = value
        self.cumulative = cumulative
        self.last_seen = now


class _Series:
    __slots__ = ("attrs", "base", "bounds", "service", "states")

    def __init__(self, service: str | None, attrs: _AttrKey,
                 bounds: tuple[float, ...] | None) -> None:
        self.service = service
        self.attrs = attrs
        self.bounds = bounds
        #: what no live state holds any more: added deltas, folded cumulative streams
        self.base: Number | _Hist | None = None
        self.states: dict[_StateKey, _State] = {}


class _Metric:
    __slots__ = ("description", "kind", "name", "scope", "series", "unit", "warned")

    def __init__(self, scope: str, name: str, kind: MetricKind, description: str,
                 unit: str) -> None:
        self.scope = scope
        self.name = name
        self.kind = kind
        self.description = description
        self.unit = unit
        self.series: dict[_SeriesKey, _Series] = {}
        self.warned = False


class _Producer:
    __slots__ = ("key", "last_seen", "refs")

    def __init__(self, key: bytes, now: float) -> None:
        self.key = key
        self.last_seen = now
        #: the gauge and up-down states it holds (dropped when it goes stale)
        self.refs: set[_Ref] = set()


class _Invalid(Exception):
    """A point that cannot be merged; the argument is the drop reason."""


# --- decoding helpers ----------------------------------------------------------

_SCALARS: Final = frozenset({"string_value", "bool_value", "int_value", "double_value"})


def _any_value(value: AnyValue) -> AttributeValue:
    which = value.WhichOneof("value")
    if which in _SCALARS:
        scalar: str | bool | int | float = getattr(value, which)
        return scalar
    if which == "array_value":
        return tuple(_any_value(v) for v in value.array_value.values)
    if which == "kvlist_value":
        return str({kv.key: _any_value(kv.value) for kv in value.kvlist_value.values})
    if which == "bytes_value":
        return value.bytes_value.hex()
    return "" if which is None else str(getattr(value, which))


def _attributes(pairs: Iterable[KeyValue]) -> dict[str, AttributeValue]:
    """Decoded attributes; on a repeated key the last one wins."""
    return {kv.key: _any_value(kv.value) for kv in pairs}


def _size(value: AttributeValue) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, tuple):
        return sum(_size(v) for v in value) + len(value)
    return 8


def _number(point: metrics_pb2.NumberDataPoint) -> Number:
    which = point.WhichOneof("value")
    if which == "as_int":
        return point.as_int
    if which == "as_double" and math.isfinite(point.as_double):
        return point.as_double
    raise _Invalid(DropReason.INVALID_POINT)


def _points(metric: metrics_pb2.Metric) -> int:
    which = metric.WhichOneof("data")
    if which is None:
        return 0
    points: Sequence[object] = getattr(metric, which).data_points
    return len(points)


def _producer_key(resource_attrs: Mapping[str, AttributeValue]) -> bytes:
    canonical = repr(sorted(resource_attrs.items(), key=lambda kv: kv[0]))
    return hashlib.blake2b(canonical.encode("utf-8", "backslashreplace"),
                           digest_size=16).digest()


class HostMetrics:
    """Thread-safe merge of the metrics every producer on the host pushes.

    Args:
        stale_after: seconds without a push after which a producer's
            up-down counters and gauges are dropped (default 15: three
            missed pushes at a 5 s interval).
        limits: memory bounds (see :class:`HostLimits`).
        clock: where time comes from (a :class:`~ragobs.clock.ManualClock` in tests).
    """

    def __init__(self, *, stale_after: float = DEFAULT_STALE_AFTER,
                 limits: HostLimits | None = None, clock: Clock | None = None) -> None:
        if (not isinstance(stale_after, (int, float)) or isinstance(stale_after, bool)
                or not math.isfinite(stale_after) or stale_after <= 0):
            raise ValueError(f"stale_after must be a number > 0 (seconds), got {stale_after!r}")
        if limits is not None and not isinstance(limits, HostLimits):
            raise TypeError(f"limits must be a HostLimits or None, got {limits!r}")
        self.stale_after = float(stale_after)
        self.limits = limits if limits is not None else HostLimits()
        self._clock: Clock = clock if clock is not None else SYSTEM_CLOCK
        self._lock = threading.Lock()
        self._metrics: dict[_MetricKey, _Metric] = {}
        self._producers: dict[bytes, _Producer] = {}
        self._n_series = 0
        self._n_states = 0
        self._exports = 0
        self._points = 0
        self._dropped: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        self._rejected: dict[str, int] = dict.fromkeys(REQUEST_REJECT_REASONS, 0)
        self._logged: set[str] = set()
        self._bounds: dict[tuple[float, ...], tuple[float, ...]] = {}
        self._last_sweep = -math.inf
        #: cumulative monotonic streams, least recently updated first
        self._streams: OrderedDict[_Ref, None] = OrderedDict()
        #: delta up-down nets of producers gone stale, oldest first
        self._parked: OrderedDict[bytes, list[tuple[_Ref, Number]]] = OrderedDict()
        self._n_parked = 0

    # --- feeding -----------------------------------------------------------

    def ingest(self, request: ExportMetricsServiceRequest) -> IngestResult:
        """Merge one decoded export request; returns the points merged and dropped.

        The whole request is merged under the lock: a concurrent snapshot
        sees all of it or none of it.
        """
        if not isinstance(request, ExportMetricsServiceRequest):
            raise TypeError(f"request must be an ExportMetricsServiceRequest, got {request!r}")
        accepted = rejected = 0
        reasons: dict[str, int] = {}
        with self._lock:
            now = self._clock.now()
            self._sweep(now)
            for rm in request.resource_metrics:
                resource = _attributes(rm.resource.attributes)
                service_value = resource.get(_SERVICE_NAME)
                service = None if service_value is None else str(service_value)[:_MAX_NAME]
                producer = self._producer(_producer_key(resource), now)
                for sm in rm.scope_metrics:
                    scope = sm.scope.name[:_MAX_NAME]
                    for metric in sm.metrics:
                        if producer is None:
                            ok, dropped = 0, {DropReason.PRODUCER_LIMIT.value: _points(metric)}
                        else:
                            ok, dropped = self._ingest_metric(producer, service, scope,
                                                              metric, now)
                        accepted += ok
                        for reason, n in dropped.items():
                            if n:
                                rejected += n
                                reasons[reason] = reasons.get(reason, 0) + n
                                self._drop(reason, n, f"{scope}/{metric.name[:_MAX_NAME]}")
            self._exports += 1
            self._points += accepted
        message = ", ".join(f"{n} {reason}" for reason, n in sorted(reasons.items()))
        return IngestResult(accepted, rejected,
                            f"dropped points: {message}" if message else "")

    def note_rejected_request(self, reason: str) -> None:
        """Count a request the receiver refused whole (too large, malformed...)."""
        key = reason if reason in self._rejected else "malformed"
        with self._lock:
            self._rejected[key] += 1

    # --- reading -------------------------------------------------------------

    def snapshot(self) -> HostSnapshot:
        """Every merged series now, stale producers expired first."""
        with self._lock:
            self._sweep(self._clock.now())
            metrics = tuple(
                MetricSnapshot(m.scope, m.name, m.kind, m.description, m.unit,
                               tuple(_series_snapshot(m.kind, s) for s in m.series.values()))
                for m in self._metrics.values() if m.series
            )
            return HostSnapshot(metrics=metrics, producers=len(self._producers),
                                series=self._n_series, exports=self._exports,
                                points=self._points, dropped=dict(self._dropped),
                                rejected_requests=dict(self._rejected))

    @property
    def producers(self) -> int:
        """Producers that pushed within ``stale_after``."""
        with self._lock:
            self._sweep(self._clock.now())
            return len(self._producers)

    # --- internals (called with the lock held) --------------------------------

    def _drop(self, reason: str, n: int, where: str) -> None:
        self._dropped[reason] = self._dropped.get(reason, 0) + n
        if reason not in self._logged:
            self._logged.add(reason)
            logger.warning("ragobs host: dropped %d point(s) of %s: %s (counted in "
                           "ragobs_host_dropped_points_total; logged once per reason)",
                           n, where, reason)

    def _producer(self, key: bytes, now: float) -> _Producer | None:
        producer = self._producers.get(key)
        if producer is None:
            if len(self._producers) >= self.limits.max_producers:
                self._sweep(now)
                if len(self._producers) >= self.limits.max_producers:
                    return None
            producer = self._producers[key] = _Producer(key, now)
            self._resume(producer, now)
        producer.last_seen = now
        return producer

    def _resume(self, producer: _Producer, now: float) -> None:
        """Give a producer that went stale and pushes again its delta
        up-down nets back: its next deltas continue from them."""
        parked = self._parked.pop(producer.key, None)
        if parked is None:
            return
        self._n_parked -= len(parked)
        for ref, value in parked:
            metric = self._metrics.get(ref[0])
            if metric is None or self._n_states >= self.limits.max_states:
                continue
            series = metric.series.get(ref[1])
            if series is None:
                if (len(metric.series) >= self.limits.max_series_per_metric
                        or self._n_series >= self.limits.max_series):
                    continue
                series = metric.series[ref[1]] = _Series(ref[1][0], ref[1][1], None)
                self._n_series += 1
            if ref[2] not in series.states:
                series.states[ref[2]] = _State(value, False, now)
                self._n_states += 1
                producer.refs.add(ref)

    def _park(self, producer: _Producer, nets: list[tuple[_Ref, Number]]) -> None:
        """Keep a stale producer's delta up-down nets (bounded) in case it
        was only paused: they cannot be recovered from later deltas."""
        if not nets:
            return
        self._parked[producer.key] = nets
        self._n_parked += len(nets)
        while self._parked and (len(self._parked) > self.limits.max_producers
                                or self._n_parked > self.limits.max_states):
            _, dropped = self._parked.popitem(last=False)
            self._n_parked -= len(dropped)

    def _metric(self, scope: str, metric: metrics_pb2.Metric, kind: MetricKind) -> _Metric:
        key = (scope, metric.name)
        found = self._metrics.get(key)
        if found is None:
            if not metric.name or len(metric.name) > _MAX_NAME or len(metric.unit) > _MAX_UNIT:
                raise _Invalid(DropReason.INVALID_POINT)
            if len(self._metrics) >= self.limits.max_metrics:
                raise _Invalid(DropReason.METRIC_LIMIT)
            found = self._metrics[key] = _Metric(scope, metric.name, kind,
                                                 metric.description[:_MAX_DESCRIPTION],
                                                 metric.unit)
        elif found.kind is not kind:
            raise _Invalid(DropReason.TYPE_CONFLICT)
        return found

    def _ingest_metric(self, producer: _Producer, service: str | None, scope: str,
                       metric: metrics_pb2.Metric, now: float) -> tuple[int, dict[str, int]]:
        which = metric.WhichOneof("data")
        n = _points(metric)
        kind: MetricKind
        temporality = 0
        if which == "sum":
            kind = MetricKind.COUNTER if metric.sum.is_monotonic else MetricKind.UP_DOWN_COUNTER
            temporality = metric.sum.aggregation_temporality
        elif which == "gauge":
            kind = MetricKind.GAUGE
        elif which == "histogram":
            kind = MetricKind.HISTOGRAM
            temporality = metric.histogram.aggregation_temporality
        elif which == "exponential_histogram":
            return 0, {DropReason.EXPONENTIAL_HISTOGRAM.value: n}
        else:
            return 0, {DropReason.UNSUPPORTED_TYPE.value: n}
        if kind is not MetricKind.GAUGE and temporality not in (_TEMPORALITY_DELTA,
                                                                _TEMPORALITY_CUMULATIVE):
            return 0, {DropReason.INVALID_POINT.value: n}
        try:
            target = self._metric(scope, metric, kind)
        except _Invalid as exc:
            return 0, {str(exc.args[0]): n}
        delta = temporality == _TEMPORALITY_DELTA
        accepted = 0
        dropped: dict[str, int] = {}
        points: Iterable[metrics_pb2.NumberDataPoint | metrics_pb2.HistogramDataPoint]
        points = metric.histogram.data_points if kind is MetricKind.HISTOGRAM else (
            metric.gauge.data_points if kind is MetricKind.GAUGE else metric.sum.data_points)
        for point in points:
            try:
                self._ingest_point(target, producer, service, point, delta=delta, now=now)
            except _Invalid as exc:
                reason = str(exc.args[0])
                dropped[reason] = dropped.get(reason, 0) + 1
                if reason == DropReason.SERIES_LIMIT and not target.warned:
                    target.warned = True
                    logger.warning("ragobs host: metric %s has reached its series limit (%d); "
                                   "points of new label sets are dropped",
                                   target.name, self.limits.max_series_per_metric)
            else:
                accepted += 1
        return accepted, dropped

    def _ingest_point(self, metric: _Metric, producer: _Producer, service: str | None,
                      point: metrics_pb2.NumberDataPoint | metrics_pb2.HistogramDataPoint,
                      *, delta: bool, now: float) -> None:
        if point.flags & _NO_RECORDED_VALUE:
            return  # an explicit "no value" marker: nothing to merge
        attrs = _attributes(point.attributes)
        if (len(attrs) > 64 or sum(len(k) + _size(v) for k, v in attrs.items())
                > self.limits.max_attribute_chars):
            raise _Invalid(DropReason.INVALID_POINT)
        kind = metric.kind
        value: Number | _Hist
        bounds: tuple[float, ...] | None = None
        if isinstance(point, metrics_pb2.HistogramDataPoint):
            bounds, value = self._histogram(point)
        else:
            value = _number(point)
            if kind is MetricKind.COUNTER and value < 0:
                raise _Invalid(DropReason.INVALID_POINT)
        series = self._series(metric, service, attrs, bounds)
        if kind is MetricKind.HISTOGRAM and bounds != series.bounds:
            raise _Invalid(DropReason.BUCKET_MISMATCH)
        monotonic = kind in (MetricKind.COUNTER, MetricKind.HISTOGRAM)
        if monotonic and delta:
            _add_to_base(series, value)
            return
        cumulative = not delta and kind is not MetricKind.GAUGE
        state_key = (producer.key, point.start_time_unix_nano if cumulative else 0)
        ref = ((metric.scope, metric.name), (service, series.attrs), state_key)
        state = series.states.get(state_key)
        if state is None:
            if self._n_states >= self.limits.max_states and not self._evict_stream(now):
                if not series.states and series.base is None:  # just created: undo
                    del metric.series[ref[1]]
                    self._n_series -= 1
                raise _Invalid(DropReason.STATE_LIMIT)
            series.states[state_key] = _State(value, cumulative, now)
            self._n_states += 1
            if monotonic:
                self._streams[ref] = None
            else:
                producer.refs.add(ref)
            return
        state.last_seen = now
        if monotonic:
            self._streams.move_to_end(ref)
            if _went_down(state.value, value):
                _add_to_base(series, state.value)  # a reset within one stream
            state.value = value
        elif not cumulative and kind is MetricKind.UP_DOWN_COUNTER:
            assert not isinstance(value, _Hist) and not isinstance(state.value, _Hist)
            state.value += value  # a delta up-down counter: the producer's running net
        else:
            state.value = value

    def _evict_stream(self, now: float) -> bool:
        """Make room for a state by folding the least recently updated
        cumulative stream into its series' total, if it is stale."""
        while self._streams:
            ref = next(iter(self._streams))
            metric = self._metrics.get(ref[0])
            series = None if metric is None else metric.series.get(ref[1])
            state = None if series is None else series.states.get(ref[2])
            if series is None or state is None:  # pragma: no cover - kept in step
                del self._streams[ref]
                continue
            if state.last_seen >= now - self.stale_after:
                return False
            del self._streams[ref]
            del series.states[ref[2]]
            self._n_states -= 1
            _add_to_base(series, state.value)
            return True
        return False

    def _histogram(self, point: metrics_pb2.HistogramDataPoint
                   ) -> tuple[tuple[float, ...], _Hist]:
        bounds = tuple(point.explicit_bounds)
        counts = list(point.bucket_counts)
        if not counts and not bounds:
            counts = [point.count]
        if (len(bounds) > self.limits.max_buckets or len(counts) != len(bounds) + 1
                or sum(counts) != point.count
                or not all(math.isfinite(b) for b in bounds)
                or any(b >= c for b, c in pairwise(bounds))):
            raise _Invalid(DropReason.INVALID_POINT)
        total = point.sum if point.HasField("sum") else 0.0
        if not math.isfinite(total):
            raise _Invalid(DropReason.INVALID_POINT)
        lo = point.min if point.HasField("min") else None
        hi = point.max if point.HasField("max") else None
        shared = self._bounds.get(bounds)
        if shared is None:
            shared = bounds
            if len(self._bounds) < 1024:
                self._bounds[bounds] = bounds
        return shared, _Hist(counts, point.count, total, lo, hi)

    def _series(self, metric: _Metric, service: str | None, attrs: dict[str, AttributeValue],
                bounds: tuple[float, ...] | None) -> _Series:
        attr_key: _AttrKey = tuple(sorted(attrs.items(), key=lambda kv: kv[0]))
        key = (service, attr_key)
        series = metric.series.get(key)
        if series is None:
            if (len(metric.series) >= self.limits.max_series_per_metric
                    or self._n_series >= self.limits.max_series):
                raise _Invalid(DropReason.SERIES_LIMIT)
            series = metric.series[key] = _Series(service, attr_key, bounds)
            self._n_series += 1
        return series

    def _sweep(self, now: float) -> None:
        """Drop what stale producers hold (gauges, up-down counters) and stale
        cumulative up-down streams, at most every ``min(1 s, stale_after / 4)``."""
        if now - self._last_sweep < min(1.0, self.stale_after / 4):
            return
        self._last_sweep = now
        cutoff = now - self.stale_after
        for key, producer in list(self._producers.items()):
            gone = producer.last_seen < cutoff
            nets: list[tuple[_Ref, Number]] = []
            for ref in list(producer.refs):
                metric = self._metrics.get(ref[0])
                series = None if metric is None else metric.series.get(ref[1])
                state = None if series is None else series.states.get(ref[2])
                if metric is None or series is None or state is None:
                    producer.refs.discard(ref)  # pragma: no cover - kept in step
                elif gone or (state.cumulative and state.last_seen < cutoff):
                    producer.refs.discard(ref)
                    del series.states[ref[2]]
                    self._n_states -= 1
                    if not series.states:
                        del metric.series[ref[1]]  # nobody holds this value any more
                        self._n_series -= 1
                    if (metric.kind is MetricKind.UP_DOWN_COUNTER and not state.cumulative
                            and state.value and not isinstance(state.value, _Hist)):
                        nets.append((ref, state.value))
            if gone:
                del self._producers[key]
                self._park(producer, nets)


def _went_down(old: Number | _Hist, new: Number | _Hist) -> bool:
    if isinstance(old, _Hist) and isinstance(new, _Hist):
        return new.count < old.count
    if not isinstance(old, _Hist) and not isinstance(new, _Hist):
        return new < old
    return True


def _add_to_base(series: _Series, value: Number | _Hist) -> None:
    base = series.base
    if isinstance(value, _Hist):
        if base is None:
            series.base = value.copy()
        else:
            assert isinstance(base, _Hist)
            base.add(value)
    else:
        assert not isinstance(base, _Hist)
        series.base = value if base is None else base + value


def _series_snapshot(kind: MetricKind, series: _Series) -> SeriesSnapshot:
    value: Number | HistogramValue
    if kind is MetricKind.HISTOGRAM:
        assert series.bounds is not None
        total: _Hist | None = None
        for part in (series.base, *(s.value for s in series.states.values())):
            if isinstance(part, _Hist):
                if total is None:
                    total = part.copy()
                else:
                    total.add(part)
        if total is None:
            total = _Hist([0] * (len(series.bounds) + 1), 0, 0.0, None, None)
        value = HistogramValue(series.bounds, tuple(total.counts), total.count, total.sum,
                               total.min, total.max)
    else:
        number: Number = 0
        for part in (series.base, *(s.value for s in series.states.values())):
            if part is not None and not isinstance(part, _Hist):
                number += part
        value = number
    return SeriesSnapshot(dict(series.attrs), series.service, value)
