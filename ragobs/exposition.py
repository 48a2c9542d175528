"""Prometheus exposition of the OpenTelemetry metrics, with exemplars.

:class:`PrometheusReader` is opentelemetry-exporter-prometheus's reader plus
one thing the stock reader drops: the SDK's exemplars. Each histogram bucket
carries the trace id of a recent measurement that fell in it, visible when
the scraper asks for OpenMetrics. If a future exporter release changes the
internals this relies on, the reader still works, without exemplars.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from itertools import chain
from typing import Any

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics.export import Histogram
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import HistogramMetricFamily
from prometheus_client.samples import Exemplar as PromExemplar

logger = logging.getLogger("ragobs")

try:  # private API of the exporter: used only to add exemplars
    from opentelemetry.exporter.prometheus import _CustomCollector
    from opentelemetry.exporter.prometheus._mapping import map_unit
except ImportError:  # pragma: no cover - depends on the installed exporter
    _CustomCollector = None  # type: ignore[assignment,misc]


def _with_exemplars(bucket_counts: Sequence[int], bounds: Sequence[float],
                    exemplars: Sequence[Any]) -> list[tuple[Any, ...]]:
    by_bucket: dict[int, Any] = {}
    for ex in exemplars:
        if not ex.trace_id:
            continue
        index = next((i for i, b in enumerate(bounds) if ex.value <= b), len(bounds))
        held = by_bucket.get(index)
        if held is None or ex.time_unix_nano >= held.time_unix_nano:
            by_bucket[index] = ex
    buckets: list[tuple[Any, ...]] = []
    cumulative = 0
    for i, (bound, count) in enumerate(zip(chain(bounds, ["+Inf"]), bucket_counts, strict=True)):
        cumulative += count
        ex = by_bucket.get(i)
        if ex is None:
            buckets.append((f"{bound}", cumulative))
        else:
            labels = {"trace_id": format(ex.trace_id, "032x"),
                      "span_id": format(ex.span_id, "016x")}
            buckets.append(
                (f"{bound}", cumulative, PromExemplar(labels, ex.value, ex.time_unix_nano / 1e9))
            )
    return buckets


if _CustomCollector is not None:

    class _ExemplarCollector(_CustomCollector):
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
            for label_values, value, point in zip(rows, values, points, strict=True):
                assert isinstance(value, dict)
                family.add_metric(
                    labels=label_values,
                    buckets=_with_exemplars(value["bucket_counts"], value["explicit_bounds"],
                                            getattr(point, "exemplars", ()) or ()),
                    sum_value=value["sum"],
                )


class PrometheusReader(PrometheusMetricReader):
    """A PrometheusMetricReader that exports histogram exemplars.

    Args:
        registry: the prometheus_client registry to register with.
        resource_labels: resource attributes copied onto every metric as
            labels (``service.name`` becomes ``service_name``).
    """

    def __init__(self, registry: CollectorRegistry,
                 resource_labels: Sequence[str] = ("service.name",)) -> None:
        wanted = frozenset(resource_labels)
        keep: Callable[[str], bool] = wanted.__contains__
        # Build against a scratch registry: registering with an auto-describing
        # registry (the global one) would collect before a provider is attached.
        super().__init__(scope_info_enabled=False, resource_attribute_filter=keep,
                         registry=CollectorRegistry())
        collector = self._collector
        if _CustomCollector is not None:
            try:
                collector = _ExemplarCollector(scope_info_enabled=False,
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
