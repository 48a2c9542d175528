"""ragobs: observability and resilience for streaming LLM / RAG agents."""

from ragobs._version import __version__
from ragobs.clock import Clock, ManualClock, MonotonicClock
from ragobs.events import Event, add_hook, remove_hook
from ragobs.semconv import Outcome
from ragobs.telemetry import Telemetry, get_telemetry, set_telemetry

__all__ = [
    "Clock",
    "Event",
    "ManualClock",
    "MonotonicClock",
    "Outcome",
    "Telemetry",
    "__version__",
    "add_hook",
    "get_telemetry",
    "remove_hook",
    "set_telemetry",
]
