"""An event stream through the commit point, measured as it passes.

Before the first content nothing reaches the client: the reads are held
(status line included) and their events read, so that a failure there (a
cut, an error event, a read timeout) can still be retried or answered as a
clean HTTP error (:class:`~ragobs.proxy._call.BeforeCommit`). The first
event that carries output (:func:`ragobs.chunks.carries_output`: text,
refusal, tool-call arguments or reasoning, never a role chunk or a
lifecycle event) is the commit point: the status line, the held reads and
from then on each read are written to the client as they arrive. Holding
also ends, committing the stream as it is, after ``max_hold`` seconds or
``max_hold_bytes`` bytes without content.

After the commit point a failure of the upstream is never retried (the
client has text that a new answer would repeat) and never turned into a
``200`` error event: the client's connection is closed before the end of
the body, so its SDK raises, and the call is counted interrupted.

Every event is read into the call's :class:`~ragobs.StreamObservation`
(the events before the first content when it comes, so that a failed
attempt leaves nothing on it). When the proxy asked for usage on the
client's behalf the stream is forwarded event by event (a read is split at
its last complete event; the rest follows with the next read, which no SSE
client could have acted on sooner) minus the usage event; otherwise each
read is forwarded whole, before it is read.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator, Mapping
from typing import Any

import aiohttp
from aiohttp import web

from ragobs.chunks import carries_output
from ragobs.proxy._call import BeforeCommit, Call
from ragobs.proxy._failures import (
    CLIENT_GONE,
    UPSTREAM_FAILURES,
    StreamInterrupted,
    UpstreamStreamError,
    stream_error,
)
from ragobs.proxy._headers import for_client
from ragobs.proxy._sse import EventParser
from ragobs.proxy._usage import is_usage_only

__all__ = ["Outbox", "StreamSettings", "relay_stream"]

_perf = time.perf_counter


class StreamSettings:
    """The bounds of :func:`relay_stream` (from :class:`~ragobs.proxy.ProxyConfig`)."""

    __slots__ = ("max_hold", "max_hold_bytes", "max_line")

    def __init__(self, max_line: int, max_hold: float, max_hold_bytes: int) -> None:
        self.max_line = max_line
        self.max_hold = max_hold
        self.max_hold_bytes = max_hold_bytes


class Outbox:
    """Bytes read but not yet written, and the events to take out of them.

    Positions are offsets in the upstream's stream; ``take(upto)`` gives the
    bytes up to ``upto`` without the events cut, and forgets them.
    """

    __slots__ = ("_buf", "_cuts", "mark")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._cuts: list[tuple[int, int]] = []
        #: Stream position of the first byte held.
        self.mark = 0

    @property
    def end(self) -> int:
        return self.mark + len(self._buf)

    @property
    def size(self) -> int:
        return len(self._buf)

    def add(self, data: bytes) -> None:
        self._buf += data

    def cut(self, start: int, end: int) -> None:
        """Take the event at ``[start, end)`` out, if none of it was written yet."""
        if start >= self.mark:
            self._cuts.append((start, end))

    def take(self, upto: int) -> bytes:
        mark, buf = self.mark, self._buf
        if not self._cuts:
            out = bytes(buf[:upto - mark])
        else:
            parts = bytearray()
            at = mark
            for start, end in self._cuts:
                if end > upto:
                    break
                parts += buf[at - mark:start - mark]
                at = end
            parts += buf[at - mark:upto - mark]
            out = bytes(parts)
            self._cuts = [c for c in self._cuts if c[1] > upto]
        del buf[:upto - mark]
        self.mark = upto
        return out


#: JSON of one event's data (starting with "{"): ``raw_decode`` of the text
#: skips ``json.loads``' encoding detection and whitespace checks (40% of it).
_scan = json.JSONDecoder().raw_decode


def _event(payload: bytes | None) -> dict[str, Any] | None:
    if payload is None or payload[:1] != b"{":  # "[DONE]", or not read
        return None
    try:
        event = _scan(payload.decode())[0]
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


def _is_error(event: Mapping[str, Any]) -> bool:
    return "error" in event or event.get("type") == "response.failed"


async def relay_stream(call: Call, upstream: aiohttp.ClientResponse, *, strip: bool,
                       settings: StreamSettings) -> tuple[web.StreamResponse, float | None,
                                                          BaseException | None]:
    """Forward ``upstream``'s event stream to ``call``'s client (see the module
    docstring); ``strip``: take the usage event out.

    Returns the response, the proxy's overhead (None when nothing was
    committed by content) and how the stream ended: None, an
    :class:`UpstreamStreamError` sent after the first content, a
    :class:`StreamInterrupted`, or :data:`CLIENT_GONE`. Raises
    :class:`BeforeCommit` for a failure before the commit point.
    """
    return await _Stream(call, upstream, strip, settings).relay()


class _Stream:
    """One stream through the commit point."""

    __slots__ = ("box", "call", "ended", "events", "feed", "read", "response", "settings",
                 "strip", "upstream", "whole")

    def __init__(self, call: Call, upstream: aiohttp.ClientResponse, strip: bool,
                 settings: StreamSettings) -> None:
        self.call = call
        self.upstream = upstream
        self.strip = strip
        self.settings = settings
        self.read = upstream.content.readany
        parser = EventParser(settings.max_line)
        self.feed = parser.feed
        self.events = parser.events
        self.box = Outbox()
        #: Stream position just after the last complete event.
        self.whole = 0
        self.ended: BaseException | None = None
        self.response = web.StreamResponse(status=upstream.status, reason=upstream.reason,
                                           headers=for_client(upstream.headers, stream=True))

    async def relay(self) -> tuple[web.StreamResponse, float | None, BaseException | None]:
        held, rest, content, eof, t_read = await self._hold()
        response = self.response
        await response.prepare(self.call.request)
        self._measure(held)
        box = self.box
        # The commit: the status line and the events up to the first content; the
        # rest of the read that brought it follows at once.
        if not await self._write(box.take(
                self.whole if content or (self.strip and not eof) else box.end)):
            return response, None, CLIENT_GONE
        overhead = self.call.overhead(t_read) if content else None
        if not self.strip:
            if not await self._write(box.take(box.end)):
                return response, overhead, CLIENT_GONE
            self._read_rest(rest)
        else:
            self._read_rest(rest)
            if not await self._write(box.take(self.whole)):
                return response, overhead, CLIENT_GONE
        if not eof:
            self.ended = await (self._forward_events() if self.strip else self._forward_reads())
        if self.ended is None or isinstance(self.ended, UpstreamStreamError):
            with contextlib.suppress(ConnectionError):  # the client had everything
                await response.write_eof()
        return response, overhead, self.ended

    def _measure(self, events: list[dict[str, Any]]) -> None:
        chunk = self.call.obs.chunk
        for event in events:
            chunk(event)
            if self.ended is None and _is_error(event):
                self.ended = stream_error(event, b"")

    def _read_rest(self, rest: Iterator[tuple[int, bytes | None]]) -> None:
        """The events after the first content in its read: read (and cut) now."""
        events = []
        for end, payload in rest:
            start, self.whole = self.whole, end
            event = _event(payload)
            if event is not None:
                if self.strip and is_usage_only(event):
                    self.box.cut(start, end)
                events.append(event)
        self._measure(events)

    async def _hold(self) -> tuple[list[dict[str, Any]], Iterator[tuple[int, bytes | None]],
                                   bool, bool, float]:
        """Read up to the first content: (the events up to it, the events after it
        in its read, not decoded yet, whether content came, whether the stream
        ended, when the last read came)."""
        box, split, read = self.box, self.events, self.read
        headers = self.upstream.headers
        held: list[dict[str, Any]] = []
        rest: Iterator[tuple[int, bytes | None]] = iter(())
        content = eof = False
        t_read = _perf()
        try:
            async with asyncio.timeout(self.settings.max_hold) as hold:
                while not content and box.size <= self.settings.max_hold_bytes:
                    data = await read()
                    t_read = _perf()
                    if not data:
                        eof = True
                        break
                    box.add(data)
                    events = split(data)
                    for end, payload in events:
                        start, self.whole = self.whole, end
                        event = _event(payload)
                        if event is None:
                            continue
                        if _is_error(event):
                            failure = stream_error(event, payload or b"", headers)
                            if failure is not None:
                                raise BeforeCommit(failure)
                        if self.strip and is_usage_only(event):
                            box.cut(start, end)
                        held.append(event)
                        if carries_output(event):
                            content = True
                            rest = events  # split and read after the commit
                            break
        except TimeoutError as exc:
            if not hold.expired():  # the upstream's own read timeout
                raise BeforeCommit(exc) from exc
        except UPSTREAM_FAILURES as exc:
            raise BeforeCommit(exc) from exc
        return held, rest, content, eof, t_read

    async def _write(self, data: bytes) -> bool:
        """Write ``data``; False when the client went away."""
        if data:
            try:
                await self.response.write(data)
            except ConnectionError:
                return False
        return True

    def _interrupted(self, exc: BaseException) -> StreamInterrupted:
        """Cut the client's stream (its SDK sees a body that ends too early)."""
        call = self.call
        failure = StreamInterrupted(f"upstream {call.route.upstream.label!r} failed after "
                                    f"the first content: {type(exc).__name__}: {exc}")
        failure.__cause__ = exc
        transport = call.request.transport
        if transport is not None:
            transport.close()  # after what was written: no final chunk
        return failure

    async def _forward_reads(self) -> BaseException | None:
        """After the commit point: each read written as it comes, then read."""
        feed, read = self.feed, self.read
        chunk = self.call.obs.chunk
        write = self.response.write
        scan = _scan
        ended = self.ended
        while True:
            try:
                data = await read()
            except UPSTREAM_FAILURES as exc:
                return self._interrupted(exc)
            if not data:
                return ended
            try:
                await write(data)
            except ConnectionError:
                return CLIENT_GONE
            for _, payload in feed(data):
                if payload is None or payload[:1] != b"{":
                    continue
                try:
                    event = scan(payload.decode())[0]
                except ValueError:
                    continue
                if event.__class__ is dict:
                    chunk(event)
                    if ended is None and ("error" in event
                                          or event.get("type") == "response.failed"):
                        ended = stream_error(event, payload)

    async def _forward_events(self) -> BaseException | None:
        """After the commit point, taking the usage event out: whole events written."""
        box, feed, read = self.box, self.feed, self.read
        chunk = self.call.obs.chunk
        max_line = self.settings.max_line
        ended = self.ended
        whole = self.whole
        while True:
            try:
                data = await read()
            except UPSTREAM_FAILURES as exc:
                await self._write(box.take(box.end))
                return self._interrupted(exc)
            if not data:
                return ended if await self._write(box.take(box.end)) else CLIENT_GONE
            box.add(data)
            for end, payload in feed(data):
                start, whole = whole, end
                event = _event(payload)
                if event is None:
                    continue
                if is_usage_only(event):
                    box.cut(start, end)
                chunk(event)
                if ended is None and _is_error(event):
                    ended = stream_error(event, payload or b"")
            # An event longer than a line may be goes on as it comes (it is not cut).
            upto = box.end if box.end - whole > max_line else whole
            if upto > box.mark and not await self._write(box.take(upto)):
                return CLIENT_GONE
