"""The host sidecar's core: receive the workers' OTLP metrics, merge, expose.

One process per host (``ragobs sidecar``) receives what every worker
process pushes over OTLP/HTTP on loopback, merges it into host-wide series,
and serves them like a single process's ``/metrics`` and ``/api/summary``:

* :mod:`ragobs._host.merge`: :class:`HostMetrics`, the thread-safe merge
  (delta and cumulative temporality, stale producers, memory bounds);
* :mod:`ragobs._host.receiver`: :func:`add_otlp_routes`, ``POST /v1/metrics``;
* :mod:`ragobs._host.exposition`: :class:`HostCollector`, the Prometheus view;
* :mod:`ragobs._host.report`: :func:`host_summary` and :class:`HostReporter`,
  the ``/api/summary`` figures;
* :mod:`ragobs._host.history`: :class:`HostHistorySource`, the samples of
  ``/api/history`` (the live panel's charts).
"""

from ragobs._host.exposition import HostCollector, metrics_data
from ragobs._host.history import HostHistorySource
from ragobs._host.merge import (
    DEFAULT_STALE_AFTER,
    DropReason,
    HistogramValue,
    HostLimits,
    HostMetrics,
    HostSnapshot,
    IngestResult,
    MetricKind,
    MetricSnapshot,
    SeriesSnapshot,
)
from ragobs._host.receiver import (
    HOST_METRICS_KEY,
    METRICS_PATH,
    OtlpReceiver,
    ReceiverLimits,
    add_otlp_routes,
)
from ragobs._host.report import (
    HostFigures,
    HostReporter,
    histogram_quantile,
    host_figures,
    host_resilience,
    host_summary,
)

__all__ = [
    "DEFAULT_STALE_AFTER",
    "HOST_METRICS_KEY",
    "METRICS_PATH",
    "DropReason",
    "HistogramValue",
    "HostCollector",
    "HostFigures",
    "HostHistorySource",
    "HostLimits",
    "HostMetrics",
    "HostReporter",
    "HostSnapshot",
    "IngestResult",
    "MetricKind",
    "MetricSnapshot",
    "OtlpReceiver",
    "ReceiverLimits",
    "SeriesSnapshot",
    "add_otlp_routes",
    "histogram_quantile",
    "host_figures",
    "host_resilience",
    "host_summary",
    "metrics_data",
]
