"""Helpers for your own tests of code that uses ragobs.

* :class:`ManualClock`: time that moves only when you say, for the limiters,
  retries and timeouts (``clock=``), so tests never sleep.
* :func:`recording_telemetry`: a :class:`~ragobs.Telemetry` on the
  OpenTelemetry SDK's own in-memory exporters, to assert on the spans and
  metric points your code produced.

::

    from ragobs.testing import ManualClock, recording_telemetry

    rec = recording_telemetry()
    async for _ in ragobs.observe_stream(my_agent(q), telemetry=rec.telemetry):
        pass
    assert rec.spans()[0].attributes["ragobs.outcome"] == "ok"
    assert rec.points("ragobs.requests")[0].value == 1
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ragobs._telemetry import Telemetry
from ragobs.clock import ManualClock

__all__ = ["ManualClock", "Recording", "recording_telemetry"]


@dataclass(frozen=True)
class Recording:
    """A :class:`Telemetry` on in-memory exporters, and ways to read them."""

    telemetry: Telemetry
    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    span_exporter: InMemorySpanExporter
    metric_reader: InMemoryMetricReader

    def spans(self) -> list[ReadableSpan]:
        """Every span ended so far."""
        return list(self.span_exporter.get_finished_spans())

    def points(self, name: str) -> list[Any]:
        """The data points of metric ``name`` (e.g. ``"ragobs.requests"``) now."""
        data = self.metric_reader.get_metrics_data()
        found: list[Any] = []
        if data is None:
            return found
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        found.extend(metric.data.data_points)
        return found

    def shutdown(self) -> None:
        self.meter_provider.shutdown()
        self.tracer_provider.shutdown()


def recording_telemetry(**options: Any) -> Recording:
    """A fresh :class:`Recording`; ``options`` go to :class:`Telemetry`
    (``max_label_values``, ``capture_content``...)."""
    span_exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(span_exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    telemetry = Telemetry(tracer_provider=tracer_provider, meter_provider=meter_provider,
                          **options)
    return Recording(telemetry, tracer_provider, meter_provider, span_exporter, reader)
