"""One call the proxy reads, as it goes through the attempts and the commit point."""

from __future__ import annotations

import time
from dataclasses import dataclass

from aiohttp import web

from ragobs._stream import StreamObservation
from ragobs.proxy._routing import Route

__all__ = ["BeforeCommit", "Call"]


@dataclass(slots=True)
class Call:
    """A request to an API the proxy reads (see :mod:`ragobs.proxy._routing`)."""

    request: web.Request
    route: Route
    #: The body as the client sent it.
    body: bytes
    #: The body asking for usage on the client's behalf, while the proxy asks.
    asked: bytes | None
    stream: bool
    obs: StreamObservation
    #: ``time.perf_counter()`` when the request came in, and when it was first sent on.
    t_received: float
    t_sent: float | None = None
    #: The attempt under way (1 for the first).
    attempt: int = 1

    def sent(self) -> None:
        """Note the first send upstream (the end of the proxy's own time before it)."""
        if self.t_sent is None:
            self.t_sent = time.perf_counter()

    def overhead(self, t_read: float) -> float:
        """The proxy's own time: before the first send, plus from ``t_read``
        (the first content, or the whole answer, read) to now (written)."""
        before = 0.0 if self.t_sent is None else self.t_sent - self.t_received
        return before + time.perf_counter() - t_read


class BeforeCommit(Exception):
    """An attempt failed before anything reached the client: ``cause`` may be
    retried, or answered as a clean HTTP error."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause
