"""Prometheus exposition of the OpenTelemetry metrics, with exemplars.

:class:`PrometheusReader` is opentelemetry-exporter-prometheus's reader plus
one thing the stock reader drops: exemplars. Each histogram bucket carries the
trace id of a recent measurement that fell in it, visible when the scraper
asks for OpenMetrics. Exemplars come from the SDK's reservoirs and, for the
stream latency and TTFT histograms of a :func:`ragobs.setup` runtime, from
ragobs' own :class:`~ragobs._telemetry.ExemplarTable` (cheaper per record).
If a future exporter release changes the internals this relies on, the
reader still works, without exemplars.
"""

from __future__ import annotations

import logging
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import chain
from typing import Any

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics.export import Histogram
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.samples import Exemplar as PromExemplar

from ragobs._telemetry import SCOPE_NAME, ExemplarTable, SampledExemplar

logger = logging.getLogger("ragobs")

_SCOPE_LABEL = "otel_scope_name"
_conflicts_reported: set[str] = set()


def _warn_conflict(name: str, kept: str, dropped: str) -> None:
    if name not in _conflicts_reported and len(_conflicts_reported) < 64:
        _conflicts_reported.add(name)
        logger.warning("ragobs: metric %s is a %s here and a %s in another scope; "
                       "only the %s is exposed", name, kept, dropped, kept)

try:  # private API of the exporter: used only to add exemplars
    from opentelemetry.exporter.prometheus import _CustomCollector
    from opentelemetry.exporter.prometheus._mapping import map_unit
except ImportError:  # pragma: no cover - depends on the installed exporter
    _CustomCollector = None  # type: ignore[assignment,misc]


def _sdk_exemplars(point: Any) -> list[SampledExemplar]:
    """The exemplars the SDK's reservoir attached to ``point``, if any."""
    return [SampledExemplar(ex.trace_id, ex.span_id, ex.value, ex.time_unix_nano / 1e9)
            for ex in getattr(point, "exemplars", ()) or () if ex.trace_id]


def _with_exemplars(bucket_counts: Sequence[int], bounds: Sequence[float],
                    exemplars: Iterable[SampledExemplar]) -> list[tuple[Any, ...]]:
    """Cumulative buckets, each with the latest exemplar that fell in it."""
    by_bucket: dict[int, SampledExemplar] = {}
    for ex in exemplars:
        index = bisect_left(bounds, ex.value)  # the bucket with ex.value <= bound
        held = by_bucket.get(index)
        if held is None or ex.timestamp >= held.timestamp:
            by_bucket[index] = ex
    buckets: list[tuple[Any, ...]] = []
    cumulative = 0
    for i, (bound, count) in enumerate(zip(chain(bounds, ["+Inf"]), bucket_counts, strict=True)):
        cumulative += count
        shown = by_bucket.get(i)
        if shown is None:
            buckets.append((f"{bound}", cumulative))
        else:
            labels = {"trace_id": format(shown.trace_id, "032x"),
                      "span_id": format(shown.span_id, "016x")}
            buckets.append(
                (f"{bound}", cumulative, PromExemplar(labels, shown.value, shown.timestamp)))
    return buckets


if _CustomCollector is not None:

    class _ExemplarCollector(_CustomCollector):
        """The exporter's collector, with exemplars and one family per name.

        Other instrumentations in the process (the official OpenAI one, for
        instance) record the same GenAI semconv instrument names under their
        own scope. The stock collector then writes a second HELP / TYPE block
        for the name, which Prometheus rejects. Here samples of every scope
        go into one family per name, and series from other scopes carry an
        ``otel_scope_name`` label, so they never collide with ragobs's own
        (which the dashboard and rules select by ``ragobs_outcome``).
        """

        def __init__(self, exemplars: ExemplarTable | None, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self._exemplars = exemplars
            # Two scrapes at once (an HA Prometheus pair, a curl beside it) must
            # not share the queue of collections below.
            self._scrape_lock = threading.Lock()

        def collect(self) -> Iterator[Metric]:
            with self._scrape_lock:
                families = self._families()
            merged: dict[str, Metric] = {}
            for family in families:
                held = merged.get(family.name)
                if held is None:
                    merged[family.name] = family
                elif held is not family:
                    if held.type == family.type:
                        held.samples.extend(family.samples)
                    else:
                        _warn_conflict(family.name, held.type, family.type)
            yield from merged.values()

        def _families(self) -> list[Metric]:
            # Collections are cumulative: the newest one has everything. Older
            # queued ones (a force_flush between two scrapes queues one more)
            # would print every series twice.
            callback = self._callback
            if callback is not None:
                callback()  # queue the newest collection
            queued = getattr(self, "_metrics_datas", None)
            while queued is not None and len(queued) > 1:
                queued.popleft()
            self._callback = None
            try:
                return list(super().collect())
            finally:
                self._callback = callback

        def _translate_to_prometheus(self, metrics_data: Any,
                                     metric_family_id_metric_family: dict[str, Any]) -> None:
            for rm in metrics_data.resource_metrics:
                resource_attrs = self._build_resource_attrs(rm.resource)
                for sm in rm.scope_metrics:
                    scope = sm.scope.name or ""
                    scope_attrs = {} if scope == SCOPE_NAME else {_SCOPE_LABEL: scope}
                    # One family table per scope: a family binds its label
                    # names when created, so two scopes must never share one
                    # (collect() merges the families by name afterwards).
                    families: dict[str, Any] = {}
                    for metric in sm.metrics:
                        self._translate_metric(
                            metric=metric, scope_attrs=scope_attrs,
                            resource_attrs=resource_attrs,
                            metric_family_id_metric_family=families)
                    for family_id, family in families.items():
                        metric_family_id_metric_family[f"{scope}|{family_id}"] = family

        def _translate_metric(self, metric: Any, scope_attrs: Any, resource_attrs: Any,
                              metric_family_id_metric_family: dict[str, Any]) -> None:
            if not isinstance(metric.data, Histogram):
                super()._translate_metric(metric, scope_attrs, resource_attrs,
                                          metric_family_id_metric_family)
                return
            name = self._resolve_metric_name(metric.name)
            description = metric.description or ""
            unit = map_unit(metric.unit or "")
            keys, rows, values = self._collect_data_points(metric.data, scope_attrs,
                                                           resource_attrs)
            family_id = "|".join((name, description, unit, HistogramMetricFamily.__name__))
            family = metric_family_id_metric_family.get(family_id)
            if family is None:
                family = HistogramMetricFamily(name=name, documentation=description,
                                               labels=keys, unit=unit)
                metric_family_id_metric_family[family_id] = family
            points = metric.data.data_points
            table = self._exemplars
            for label_values, value, point in zip(rows, values, points, strict=True):
                assert isinstance(value, dict)
                exemplars = _sdk_exemplars(point)
                if table is not None:
                    exemplars += table.get(metric.name, point.attributes or {})
                family.add_metric(
                    labels=label_values,
                    buckets=_with_exemplars(value["bucket_counts"], value["explicit_bounds"],
                                            exemplars),
                    sum_value=value["sum"],
                )


class PrometheusReader(PrometheusMetricReader):
    """A PrometheusMetricReader that exports histogram exemplars.

    Args:
        registry: the prometheus_client registry to register with.
        resource_labels: resource attributes copied onto every metric as
            labels (``service.name`` becomes ``service_name``).
        exemplars: ragobs' own exemplars to show besides the SDK's (the
            table :func:`ragobs.setup` also gives its :class:`~ragobs.Telemetry`).
    """

    def __init__(self, registry: CollectorRegistry,
                 resource_labels: Sequence[str] = ("service.name",),
                 exemplars: ExemplarTable | None = None) -> None:
        wanted = frozenset(resource_labels)
        keep: Callable[[str], bool] = wanted.__contains__
        # Build against a scratch registry: registering with an auto-describing
        # registry (the global one) would collect before a provider is attached.
        super().__init__(scope_info_enabled=False, resource_attribute_filter=keep,
                         registry=CollectorRegistry())
        collector = self._collector
        if _CustomCollector is not None:
            try:
                collector = _ExemplarCollector(exemplars, scope_info_enabled=False,
                                               resource_attribute_filter=keep)
            except TypeError:  # pragma: no cover - exporter signature changed
                logger.warning("ragobs: exporter internals changed; exemplars disabled")
        callback: Any = None
        collector._callback = callback
        registry.register(collector)
        callback = self.collect
        collector._callback = callback
        self._collector = collector
        self._registry = registry


def render(registry: CollectorRegistry, accept: str | None) -> tuple[bytes, str]:
    """Encode ``registry`` for a scraper's ``Accept`` header: (body, content type).

    Prometheus text format by default; OpenMetrics (with exemplars) when asked.
    """
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type
