"""The seed's ``StreamingMetrics``: sessions you start, mark and finish by hand.

Code written against the seed runs unchanged::

    metrics = StreamingMetrics()
    session = metrics.start_session()
    metrics.record_first_token(session)
    session["token_count"] += 1
    session["error"] = "..."          # or an exception, when it failed
    metrics.finish_session(session)
    metrics.display_summary()

Each finished session also feeds the OpenTelemetry / Prometheus instruments
and the process-wide summary, exactly like an instrumented stream.

The dashboard is :func:`ragobs._report.format_text` of this object's report
(``format_dashboard`` is re-exported from :mod:`ragobs._report`).

Memory: aggregates (counts, sums, percentile sketches) are exact over every
session and take constant memory; ``sessions`` keeps only the most recent
``keep_sessions`` finished sessions (1,000 by default).
"""

from __future__ import annotations

import sys
import time
import weakref
from collections import deque
from typing import Any, Final, SupportsIndex, TextIO, overload

from ragobs._report import Reporter, format_dashboard, format_text
from ragobs._stream import StreamObservation, _check_names, _observation
from ragobs._summary_stats import Summary, SummaryStats
from ragobs._telemetry import Telemetry

__all__ = [  # format_dashboard: re-exported from ragobs._report, where it moved
    "DEFAULT_KEEP_SESSIONS",
    "MAX_KEEP_SESSIONS",
    "RecentSessions",
    "Session",
    "SessionError",
    "StreamingMetrics",
    "format_dashboard",
]

DEFAULT_KEEP_SESSIONS = 1000


class SessionError(Exception):
    """Stands for a session whose ``error`` was set to something not an exception."""


class Session(dict[str, Any]):
    """A seed session: a dict with ``start_time``, ``first_token_time``
    (``None`` until the first token), ``token_count``, ``error`` and, once
    finished, ``end_time``, ``ttft`` and ``latency`` (seconds, monotonic clock).
    """

    __slots__ = ("__weakref__", "_finalizer", "_obs")
    #: The request's recorder while it runs; dropped once finished, so a kept
    #: session holds its figures only, not its ended span.
    _obs: StreamObservation | None
    _finalizer: weakref.finalize[[StreamObservation], Session]


def _abandon(obs: StreamObservation) -> None:
    obs.finish(GeneratorExit())


class RecentSessions(deque[Session]):
    """The last ``maxlen`` finished sessions: a deque that also takes slices,
    so seed code such as ``metrics.sessions[-10:]`` keeps working."""

    @overload
    def __getitem__(self, index: SupportsIndex) -> Session: ...

    @overload
    def __getitem__(self, index: slice) -> list[Session]: ...

    def __getitem__(self, index: SupportsIndex | slice) -> Session | list[Session]:
        if isinstance(index, slice):
            return list(self)[index]
        return super().__getitem__(index)


#: The most finished sessions ``StreamingMetrics`` may be asked to keep.
MAX_KEEP_SESSIONS: Final = 10_000_000


class StreamingMetrics:
    """Seed-compatible session metrics with a terminal dashboard.

    Args:
        operation, model, provider: attributes of the recorded requests.
        telemetry: where spans and metrics go (default: the process-wide one).
        keep_sessions: how many recent finished sessions ``sessions`` keeps.
    """

    def __init__(
        self,
        *,
        operation: str = "chat",
        model: str | None = None,
        provider: str | None = None,
        telemetry: Telemetry | None = None,
        keep_sessions: int = DEFAULT_KEEP_SESSIONS,
    ) -> None:
        _check_names(operation, model, provider)
        if (not isinstance(keep_sessions, int) or isinstance(keep_sessions, bool)
                or not 0 <= keep_sessions <= MAX_KEEP_SESSIONS):
            raise ValueError(f"keep_sessions must be an int in 0..{MAX_KEEP_SESSIONS}, "
                             f"got {keep_sessions!r}")
        self._labels = (operation, provider, model)
        self._telemetry = telemetry
        self._stats = SummaryStats()
        self._reporter = Reporter(self._stats)
        self._sessions = RecentSessions(maxlen=keep_sessions)

    @property
    def sessions(self) -> RecentSessions:
        """The most recent finished sessions, oldest first (a bounded deque
        that also slices like the seed's list)."""
        return self._sessions

    def start_session(self) -> Session:
        operation, provider, model = self._labels
        obs = _observation(self._telemetry, operation, provider, model, also=self._stats)
        start = time.perf_counter()
        obs.start(start)
        session = Session(start_time=start, first_token_time=None, token_count=0, error=None)
        session._obs = obs
        # A session dropped without finish_session is recorded as cancelled.
        session._finalizer = weakref.finalize(session, _abandon, obs)
        return session

    def record_first_token(self, session: Session) -> None:
        """Mark now as the session's first token (later calls are ignored)."""
        obs = _obs_of(session)
        if session["first_token_time"] is None:
            session["first_token_time"] = time.perf_counter()
            if obs is not None:
                obs.first_token(at=session["first_token_time"])

    def finish_session(self, session: Session) -> None:
        """Record the session (once) from its ``token_count`` and ``error``.

        A session whose ``token_count`` is not an int >= 0 is still recorded
        (as a failed request, with no token figure), then ``ValueError`` says
        what was wrong: it never stays in flight.
        """
        obs = _obs_of(session)
        if obs is None:  # finished already: recorded once, but still say what is wrong
            tokens = session["token_count"]
            if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 0:
                raise ValueError(f"session['token_count'] must be an int >= 0, got {tokens!r}")
            return
        end = time.perf_counter()
        session._finalizer.detach()
        session._obs = None
        first_time = not obs.finished
        tokens = session["token_count"]
        invalid: ValueError | None = None
        if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 0:
            invalid = ValueError(f"session['token_count'] must be an int >= 0, got {tokens!r}")
            tokens = 0
        first = session["first_token_time"]
        if first is not None:
            obs.first_token(at=first)
        obs.set_token_count(tokens)
        error = session["error"]
        exc: BaseException | None
        if invalid is not None:
            exc = invalid
        elif error is None or error is False or error == "":
            exc = None
        elif isinstance(error, BaseException):
            exc = error
        else:
            exc = SessionError(str(error))
        obs.finish(exc, end_time=end)
        if first_time:
            session["end_time"] = end
            session["latency"] = end - session["start_time"]
            session["ttft"] = None if first is None else first - session["start_time"]
            self._sessions.append(session)
        if invalid is not None:
            raise invalid

    def summary(self) -> Summary:
        """Aggregates over every session finished through this object."""
        return self._stats.snapshot()

    def format_summary(self) -> str:
        """The seed's dashboard (plus percentiles) as text."""
        return format_text(self._reporter.report())

    def display_summary(self, file: TextIO | None = None) -> None:
        """Print the seed's dashboard (plus percentiles)."""
        print(self.format_summary(), file=file or sys.stdout)


def _obs_of(session: object) -> StreamObservation | None:
    """The session's recorder; ``None`` once it was finished."""
    if not isinstance(session, Session) or not hasattr(session, "_obs"):
        raise TypeError("session must come from StreamingMetrics.start_session()")
    return session._obs
