"""The proxy's own figures: what it adds, what it cut, whom it refused.

Everything else a proxied call records is what an instrumented call records
(:class:`ragobs.StreamObservation`), and retries are counted by ragobs' retry
rules (``ragobs.retry.*``, named ``proxy.<upstream>``). The instruments are
declared in :mod:`ragobs.semconv` with the others.
"""

from __future__ import annotations

from ragobs import semconv
from ragobs._telemetry import BoundHistogram, Telemetry

__all__ = ["ProxyMetrics"]


class ProxyMetrics:
    """The proxy's instruments, on one :class:`~ragobs.Telemetry`."""

    __slots__ = ("_bound", "_keys", "interrupted", "limited", "overhead", "telemetry")

    def __init__(self, telemetry: Telemetry) -> None:
        self.telemetry = telemetry
        self.overhead = telemetry.histogram(semconv.PROXY_OVERHEAD)
        self.interrupted = telemetry.counter(semconv.PROXY_INTERRUPTED)
        self.limited = telemetry.counter(semconv.PROXY_LIMITED)
        self._keys: dict[str, dict[str, str]] = {}
        self._bound: dict[str, BoundHistogram] = {}

    def _attrs(self, upstream: str) -> dict[str, str]:
        found = self._keys.get(upstream)
        if found is None:
            found = self._keys[upstream] = {
                semconv.PROXY_UPSTREAM: self.telemetry.bound(semconv.PROXY_UPSTREAM, upstream)}
        return found

    def record_overhead(self, upstream: str, seconds: float) -> None:
        bound = self._bound.get(upstream)
        if bound is None:  # one series per upstream: recorded past the SDK's lookups
            bound = self._bound[upstream] = BoundHistogram(self.overhead, self._attrs(upstream))
        bound.record(seconds)

    def record_interrupted(self, upstream: str) -> None:
        self.interrupted.add(1, self._attrs(upstream))

    def record_limited(self, upstream: str, limit: str) -> None:
        self.limited.add(1, {**self._attrs(upstream), semconv.PROXY_LIMIT: limit})
