"""ragobs: observability and resilience for streaming LLM / RAG agents."""

from ragobs._version import __version__
from ragobs.clock import Clock, ManualClock, MonotonicClock
from ragobs.events import Event, add_hook, remove_hook
from ragobs.runtime import Runtime, setup
from ragobs.semconv import Outcome
from ragobs.stages import stage
from ragobs.stream import StreamObservation, instrument_stream, observe, observe_stream
from ragobs.summary import Session, SessionError, StreamingMetrics
from ragobs.summary_stats import Summary, SummaryStats
from ragobs.telemetry import Telemetry, get_telemetry, set_telemetry

__all__ = [
    "Clock",
    "Event",
    "ManualClock",
    "MonotonicClock",
    "Outcome",
    "Runtime",
    "Session",
    "SessionError",
    "StreamObservation",
    "StreamingMetrics",
    "Summary",
    "SummaryStats",
    "Telemetry",
    "__version__",
    "add_hook",
    "get_telemetry",
    "instrument_stream",
    "observe",
    "observe_stream",
    "remove_hook",
    "set_telemetry",
    "setup",
    "stage",
]
