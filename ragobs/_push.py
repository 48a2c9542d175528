"""A worker's side of the host sidecar: push metrics by OTLP/HTTP, delta temporality.

Each worker process exports what it recorded since its last push (delta
temporality), so a worker that restarts never resets the host's totals: the
host adds what arrives. Exports run on the SDK reader's own thread, so a
request never waits for one. When the host sidecar is down, the batches that
could not be sent wait in a bounded queue (``max_pending`` batches, one per
push interval) and leave with the next push that gets through; past the
bound the oldest is dropped and counted in ``ragobs.push.dropped``, which
reaches the host with the next successful push.

What a worker can lose: a process killed with SIGKILL loses what it recorded
since its last push (at most ``push_interval`` seconds of requests); a
graceful stop pushes the rest.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from typing import TYPE_CHECKING, Any, Final

from opentelemetry.sdk.metrics import (
    Counter,
    Histogram,
    ObservableCounter,
    ObservableGauge,
    ObservableUpDownCounter,
    UpDownCounter,
)
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
)

if TYPE_CHECKING:
    from ragobs._telemetry import CounterTable

logger = logging.getLogger("ragobs")

#: Environment variable naming the host sidecar workers push to.
SIDECAR_URL_ENV: Final = "RAGOBS_SIDECAR_URL"
#: Seconds between pushes (also what a SIGKILLed worker may lose).
DEFAULT_PUSH_INTERVAL: Final = 5.0
#: Batches kept while the host sidecar is unreachable (5 minutes at the default interval).
DEFAULT_MAX_PENDING: Final = 60

_DELTA: Final[dict[type, AggregationTemporality]] = {
    Counter: AggregationTemporality.DELTA,
    UpDownCounter: AggregationTemporality.DELTA,
    Histogram: AggregationTemporality.DELTA,
    ObservableCounter: AggregationTemporality.DELTA,
    ObservableUpDownCounter: AggregationTemporality.DELTA,
    ObservableGauge: AggregationTemporality.CUMULATIVE,
}


class DropCounter:
    """Batches dropped because the queue was full; ``sink`` (the worker's
    ``ragobs.push.dropped`` counter table, set once telemetry exists) gets
    each drop too, so the host learns of it with the next push."""

    __slots__ = ("_lock", "sink", "value")

    def __init__(self) -> None:
        self.value = 0
        self.sink: CounterTable | None = None
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self.value += n
        if self.sink is not None:
            self.sink.add_key((), n)


class BufferedExporter(MetricExporter):
    """An OTLP exporter whose failed batches are re-sent, within a bound.

    Delta batches must all arrive once for the host's totals to be exact, so
    a batch that could not be sent is kept and sent before the next one.
    """

    def __init__(self, inner: MetricExporter, *, max_pending: int = DEFAULT_MAX_PENDING,
                 dropped: DropCounter | None = None) -> None:
        super().__init__(preferred_temporality=_DELTA)
        if not isinstance(max_pending, int) or isinstance(max_pending, bool) \
                or not 1 <= max_pending <= 100_000:
            raise ValueError(f"max_pending must be an int in 1..100000, got {max_pending!r}")
        self._inner = inner
        self._pending: deque[MetricsData] = deque()
        self._max_pending = max_pending
        self.dropped = dropped if dropped is not None else DropCounter()
        self._warned = False

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000,
               **kwargs: Any) -> MetricExportResult:
        self._pending.append(metrics_data)
        while len(self._pending) > self._max_pending:
            self._pending.popleft()
            self.dropped.add(1)
        while self._pending:
            try:
                result = self._inner.export(self._pending[0], timeout_millis=timeout_millis)
            except Exception:  # the exporter must never take the worker down
                result = MetricExportResult.FAILURE
            if result is not MetricExportResult.SUCCESS:
                if not self._warned:
                    logger.warning("ragobs: the host sidecar did not take a metrics push; "
                                   "keeping up to %d batches until it does",
                                   self._max_pending)
                    self._warned = True
                # Reported as success: the batch is kept here, not lost.
                return MetricExportResult.SUCCESS
            self._pending.popleft()
            self._warned = False
        return MetricExportResult.SUCCESS

    @property
    def pending(self) -> int:
        """Batches waiting for the host sidecar."""
        return len(self._pending)

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self._inner.force_flush(timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self._inner.shutdown(timeout_millis=timeout_millis)


#: The host sidecar's ingest token, for the workers that push to it (never a flag: a
#: command line is visible to every user of the host).
TOKEN_ENV = "RAGOBS_SIDECAR_TOKEN"


def push_reader(url: str, *, interval: float = DEFAULT_PUSH_INTERVAL,
                max_pending: int = DEFAULT_MAX_PENDING,
                dropped: DropCounter | None = None,
                token: str | None = None) -> PeriodicExportingMetricReader:
    """A reader pushing this process's metrics to the host sidecar at ``url``;
    ``token`` (default ``RAGOBS_SIDECAR_TOKEN``): the sidecar's ingest token."""
    try:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    except ImportError:  # pragma: no cover - the [otlp] extra
        raise ImportError("pushing to a host sidecar needs the OTLP exporter: "
                          "pip install 'ragobs[otlp]'") from None
    if not isinstance(interval, (int, float)) or isinstance(interval, bool) \
            or not 0.05 <= interval <= 3600:
        raise ValueError(f"push_interval must be a number of seconds in [0.05, 3600], "
                         f"got {interval!r}")
    endpoint = url.rstrip("/") + "/v1/metrics"
    # A short timeout: a host sidecar that hangs must not hold the export
    # thread for long (the batch waits in the queue instead).
    token = token if token is not None else os.environ.get(TOKEN_ENV) or None
    headers = {"Authorization": f"Bearer {token}"} if token else None
    inner = OTLPMetricExporter(endpoint=endpoint, timeout=2, preferred_temporality=_DELTA,
                               headers=headers)
    exporter = BufferedExporter(inner, max_pending=max_pending, dropped=dropped)
    return PeriodicExportingMetricReader(exporter, export_interval_millis=interval * 1000)
