"""ragobs: observability and resilience for streaming LLM / RAG agents."""

import importlib
from typing import TYPE_CHECKING

from ragobs._clients import instrument_client
from ragobs._cost import Price, Pricing
from ragobs._events import Event, add_hook, remove_hook
from ragobs._stages import retrieval, stage, tool
from ragobs._stream import StreamObservation, instrument_stream, observe, observe_stream
from ragobs._summary import Session, SessionError, StreamingMetrics
from ragobs._summary_stats import Summary, SummaryStats
from ragobs._telemetry import Telemetry, get_telemetry, set_telemetry
from ragobs._version import __version__
from ragobs.chunks import register_chunk_reader
from ragobs.clock import Clock, ManualClock, MonotonicClock
from ragobs.errors import RagobsError, RateLimiterUnavailable, RateLimitTimeout, StreamTimeout
from ragobs.resilience import (
    RateLimiter,
    RedisRateLimiter,
    RetryBudget,
    fallback,
    fallback_stream,
    retry,
    retry_stream,
    stream_timeout,
    timeout,
    with_timeout,
)
from ragobs.semconv import Outcome

if TYPE_CHECKING:  # loaded on first use: see __getattr__
    from ragobs._runtime import Runtime, setup

# What only setup() needs (the OpenTelemetry SDK, the Prometheus exporter, the
# aiohttp sidecar) loads on first use, so that a library that only instruments
# (`from ragobs import retry, observe_stream`) pays for the OpenTelemetry API alone.
_LAZY = {"Runtime": "ragobs._runtime", "setup": "ragobs._runtime"}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ragobs' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "Clock",
    "Event",
    "ManualClock",
    "MonotonicClock",
    "Outcome",
    "Price",
    "Pricing",
    "RagobsError",
    "RateLimitTimeout",
    "RateLimiter",
    "RateLimiterUnavailable",
    "RedisRateLimiter",
    "RetryBudget",
    "Runtime",
    "Session",
    "SessionError",
    "StreamObservation",
    "StreamTimeout",
    "StreamingMetrics",
    "Summary",
    "SummaryStats",
    "Telemetry",
    "__version__",
    "add_hook",
    "fallback",
    "fallback_stream",
    "get_telemetry",
    "instrument_client",
    "instrument_stream",
    "observe",
    "observe_stream",
    "register_chunk_reader",
    "remove_hook",
    "retrieval",
    "retry",
    "retry_stream",
    "set_telemetry",
    "setup",
    "stage",
    "stream_timeout",
    "timeout",
    "tool",
    "with_timeout",
]
