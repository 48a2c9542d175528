"""Prometheus exposition of a :class:`~ragobs._host.merge.HostMetrics`.

:class:`HostCollector` turns the merged series into the OpenTelemetry SDK's
own data classes (``MetricsData``, CUMULATIVE temporality, ``service.name``
on every point) and has them translated by the very collector the in-process
``/metrics`` uses (:class:`ragobs._exposition.PrometheusReader`'s: one family
per name, ``otel_scope_name`` on series of scopes other than ragobs's, units
and ``_total`` appended by opentelemetry-exporter-prometheus). The host's
``/metrics`` therefore has the same names, types, units, labels and HELP as a
single process's, and the shipped dashboard and rules work unchanged. The
``target_info`` family is left out (it would describe one producer, not the
host). The sidecar's own figures are added: ``ragobs_host_*``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from itertools import groupby
from typing import Any

from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric as PrometheusMetric

from ragobs import semconv
from ragobs._exposition import PrometheusReader
from ragobs._host.merge import (
    HistogramValue,
    HostMetrics,
    HostSnapshot,
    MetricKind,
    MetricSnapshot,
    SeriesSnapshot,
)

__all__ = ["HostCollector", "metrics_data"]

_CUMULATIVE = AggregationTemporality.CUMULATIVE
_SERVICE_NAME = "service.name"

#: The bucket bounds ragobs's histograms are declared with. OTLP carries
#: bounds as doubles, but the exporter writes ``le`` from the Python value
#: (``le="256"`` for an int, ``"256.0"`` for a float): the host writes the
#: declared values, so its ``le`` labels are the workers' own.
_DECLARED_BOUNDS: dict[str, tuple[float, ...]] = {
    spec.name: spec.buckets for spec in semconv.ALL_INSTRUMENTS if spec.buckets}


def _bounds(name: str, bounds: tuple[float, ...]) -> tuple[float, ...]:
    declared = _DECLARED_BOUNDS.get(name)
    if declared is not None and tuple(float(b) for b in declared) == bounds:
        return declared
    return bounds


def _attributes(series: SeriesSnapshot) -> dict[str, Any]:
    # As the in-process exporter chains resource then point attributes: the
    # point's own service.name, if it has one, wins.
    if series.service is None:
        return dict(series.attributes)
    return {_SERVICE_NAME: series.service, **series.attributes}


def _metric(snapshot: MetricSnapshot, time_ns: int) -> Metric:
    data: Sum | Gauge | Histogram
    if snapshot.kind is MetricKind.HISTOGRAM:
        points: list[HistogramDataPoint] = []
        for series in snapshot.series:
            value = series.value
            assert isinstance(value, HistogramValue)
            points.append(HistogramDataPoint(
                attributes=_attributes(series), start_time_unix_nano=0,
                time_unix_nano=time_ns, count=value.count, sum=value.sum,
                bucket_counts=value.counts,
                explicit_bounds=_bounds(snapshot.name, value.bounds),
                min=value.min if value.min is not None else float("nan"),
                max=value.max if value.max is not None else float("nan")))
        data = Histogram(data_points=points, aggregation_temporality=_CUMULATIVE)
    else:
        numbers = []
        for series in snapshot.series:
            assert not isinstance(series.value, HistogramValue)
            numbers.append(NumberDataPoint(attributes=_attributes(series),
                                           start_time_unix_nano=0, time_unix_nano=time_ns,
                                           value=series.value))
        if snapshot.kind is MetricKind.GAUGE:
            data = Gauge(data_points=numbers)
        else:
            # A cumulative non-monotonic sum is exposed as a gauge, as in-process.
            data = Sum(data_points=numbers, aggregation_temporality=_CUMULATIVE,
                       is_monotonic=snapshot.kind is MetricKind.COUNTER)
    return Metric(name=snapshot.name, description=snapshot.description, unit=snapshot.unit,
                  data=data)


def metrics_data(snapshot: HostSnapshot, time_ns: int = 0) -> MetricsData:
    """``snapshot`` as the SDK's ``MetricsData`` (one empty resource, one
    scope per scope name, CUMULATIVE, ``service.name`` on each point)."""
    by_scope = sorted(snapshot.metrics, key=lambda m: m.scope)
    scopes = [
        ScopeMetrics(scope=InstrumentationScope(scope),
                     metrics=[_metric(m, time_ns) for m in group], schema_url="")
        for scope, group in groupby(by_scope, key=lambda m: m.scope)
    ]
    return MetricsData(resource_metrics=[
        ResourceMetrics(resource=Resource.get_empty(), scope_metrics=scopes, schema_url="")])


def _own_families(snapshot: HostSnapshot) -> list[PrometheusMetric]:
    dropped = CounterMetricFamily(
        "ragobs_host_dropped_points", "Data points the host sidecar did not merge, by reason.",
        labels=["reason"])
    for reason, n in sorted(snapshot.dropped.items()):
        dropped.add_metric([reason], n)
    rejected = CounterMetricFamily(
        "ragobs_host_rejected_requests",
        "OTLP requests the host sidecar refused whole, by reason.", labels=["reason"])
    for reason, n in sorted(snapshot.rejected_requests.items()):
        rejected.add_metric([reason], n)
    return [
        dropped,
        rejected,
        CounterMetricFamily("ragobs_host_exports", "OTLP metric export requests merged.",
                            value=snapshot.exports),
        CounterMetricFamily("ragobs_host_points", "Data points merged.",
                            value=snapshot.points),
        GaugeMetricFamily("ragobs_host_producers",
                          "Producers (distinct resources) that pushed within stale_after.",
                          value=snapshot.producers),
        GaugeMetricFamily("ragobs_host_series", "Merged series held.",
                          value=snapshot.series),
    ]


class HostCollector:
    """A prometheus_client collector serving what a :class:`HostMetrics` merged.

    Register it on a ``CollectorRegistry`` (a dedicated one: the host's
    series have the names of the workers' own) and serve that registry with
    :func:`ragobs._exposition.render`.

    Args:
        host: the merged metrics.
        own_metrics: also expose the sidecar's ``ragobs_host_*`` figures.
    """

    def __init__(self, host: HostMetrics, *, own_metrics: bool = True) -> None:
        if not isinstance(host, HostMetrics):
            raise TypeError(f"host must be a HostMetrics, got {host!r}")
        self._host = host
        self._own = own_metrics
        self._lock = threading.Lock()
        self._pending: MetricsData | None = None
        # ragobs's reader on a private registry: its collector does the
        # translation, fed by the callback below instead of a MeterProvider.
        self._scratch = CollectorRegistry()
        self._reader = PrometheusReader(self._scratch)
        take: Any = self._take
        self._reader._set_collect_callback(take)  # the SDK's own hook for MeterProviders

    def _take(self, *_args: object, **_kwargs: object) -> MetricsData | None:
        pending, self._pending = self._pending, None
        return pending

    def describe(self) -> list[PrometheusMetric]:
        return []  # no collection when registered on an auto-describing registry

    def collect(self) -> Iterator[PrometheusMetric]:
        snapshot = self._host.snapshot()
        with self._lock:  # one translation at a time: the collector keeps a queue
            self._pending = metrics_data(snapshot)
            families = [f for f in self._scratch.collect()
                        if not (f.type == "info" and f.name == "target")]
        yield from families
        if self._own:
            yield from _own_families(snapshot)
