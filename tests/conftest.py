"""Shared fixtures: an isolated OpenTelemetry SDK per test, in-memory exporters."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ragobs._telemetry import Telemetry
from ragobs.testing import recording_telemetry
from tests.provider_server import provider_server, threaded_provider_server

__all__ = ["provider_server", "threaded_provider_server"]  # fixtures for every test module


@dataclass
class OTelHarness:
    """A :class:`Telemetry` wired to its own SDK providers, and ways to read them."""

    telemetry: Telemetry
    spans_exporter: InMemorySpanExporter
    reader: InMemoryMetricReader
    tracer_provider: TracerProvider
    meter_provider: MeterProvider

    def spans(self) -> list[ReadableSpan]:
        return list(self.spans_exporter.get_finished_spans())

    def points(self, name: str) -> list[Any]:
        """Every data point of metric ``name`` in one fresh collection."""
        data = self.reader.get_metrics_data()
        out: list[Any] = []
        if data is None:
            return out
        for rm in data.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if metric.name == name:
                        out.extend(metric.data.data_points)
        return out

    def _matching(self, name: str, attrs: dict[str, str]) -> list[Any]:
        return [
            p for p in self.points(name)
            if all(p.attributes.get(k) == v for k, v in attrs.items())
        ]

    def value(self, name: str, **attrs: str) -> float:
        """Sum of a counter / up-down counter over points matching ``attrs``."""
        return sum(p.value for p in self._matching(name, _dotted(attrs)))

    def count(self, name: str, **attrs: str) -> int:
        """Number of histogram records over points matching ``attrs``."""
        return sum(p.count for p in self._matching(name, _dotted(attrs)))

    def total(self, name: str, **attrs: str) -> float:
        """Sum of histogram records over points matching ``attrs``."""
        return sum(p.sum for p in self._matching(name, _dotted(attrs)))


def _dotted(attrs: dict[str, str]) -> dict[str, str]:
    """Keyword names use ``__`` for dots: ``error__type`` → ``error.type``."""
    return {k.replace("__", "."): v for k, v in attrs.items()}


@pytest.fixture
def otel() -> Iterator[OTelHarness]:
    rec = recording_telemetry()
    yield OTelHarness(rec.telemetry, rec.span_exporter, rec.metric_reader,
                      rec.tracer_provider, rec.meter_provider)
    rec.shutdown()
