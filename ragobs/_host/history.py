"""The live panel's charts for the whole host: a :mod:`ragobs._history` source.

:class:`HostHistorySource` gives :class:`ragobs._history.History` its samples
from a :class:`~ragobs._host.merge.HostMetrics`: the same cumulative totals a
single process's :class:`~ragobs._history.InProcessSource` gives (requests
are turns), computed as :func:`~ragobs._host.report.host_figures` does, with
the turns' TTFT and latency distributions as :class:`~ragobs._history.ExplicitBuckets` on ragobs's
declared buckets (so two samples always subtract). The breakdown by model
counts LLM calls, from the host's calls table (the GenAI client metrics), as
in a single process.
"""

from __future__ import annotations

from ragobs import semconv
from ragobs._history import ExplicitBuckets, RawSample, calls_by_model
from ragobs._host.merge import HistogramValue, HostMetrics
from ragobs._host.report import host_figures

__all__ = ["HostHistorySource"]


def _buckets(merged: HistogramValue | None, bounds: tuple[float, ...]) -> ExplicitBuckets:
    if merged is None:
        return ExplicitBuckets(bounds, [0] * (len(bounds) + 1))
    return ExplicitBuckets(merged.bounds, merged.counts)


class HostHistorySource:
    """Samples of the whole host for :class:`ragobs._history.History`."""

    __slots__ = ("host",)

    def __init__(self, host: HostMetrics) -> None:
        if not isinstance(host, HostMetrics):
            raise TypeError(f"host must be a HostMetrics, got {host!r}")
        self.host = host

    def sample(self) -> RawSample:
        figures = host_figures(self.host, declared_bounds=True)
        tokens = figures.output_tokens
        rate = figures.rate
        return RawSample(
            requests=figures.requests,
            output_tokens=0.0 if tokens is None else tokens.sum,
            ttft=_buckets(figures.ttft, semconv.DURATION_BUCKETS),
            latency=_buckets(figures.duration, semconv.DURATION_BUCKETS),
            in_flight=figures.in_flight,
            rate_sum=0.0 if rate is None else rate.sum,
            rate_count=0 if rate is None else rate.count,
            by_model=calls_by_model(figures.calls),
            stages=figures.stages,
        )
