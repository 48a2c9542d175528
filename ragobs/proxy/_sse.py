"""Server-sent events, split as the bytes arrive, with a bounded buffer.

The parser never holds the stream: it is fed each read and returns the
events that read completed, with where each one ends in the stream, so the
caller can forward the read at once (or hold and cut at event boundaries).
It keeps only the unfinished line and the data lines of the unfinished
event, together at most ``max_line`` bytes: an event whose data is longer
is passed through by the caller but not read here (its data comes back as
None, so it is not measured). Lines end with LF or CRLF (the providers'
servers use LF; a lone CR is not a line end here). Only ``data:`` fields are
kept: ``event:`` names repeat the JSON's ``type``, and comments are
keepalives.

Reads that start on an event boundary and hold no CR (what the providers
send) are split a whole event at a time; the rest line by line.
"""

from __future__ import annotations

from collections.abc import Iterator

__all__ = ["EventParser"]

#: (stream position just after an event, its data or None), in stream order.
Events = list[tuple[int, bytes | None]]


class EventParser:
    """One stream's events, as it arrives (see the module docstring)."""

    __slots__ = ("_data", "_line", "_size", "_skip", "_unread", "max_line", "pos")

    def __init__(self, max_line: int = 1 << 20) -> None:
        self.max_line = max_line
        #: Bytes fed so far: the stream position after the last read.
        self.pos = 0
        self._line = b""
        self._data: bytes | None = None
        self._size = 0
        #: Dropping the rest of an over-long line.
        self._skip = False
        #: The event being read had an over-long part: it is not read.
        self._unread = False

    def feed(self, chunk: bytes) -> Events:
        """The events ``chunk`` completes: (stream position just after the
        event, its data, or None for an event without data or not read)."""
        return list(self.events(chunk))

    def events(self, chunk: bytes) -> Iterator[tuple[int, bytes | None]]:
        """:meth:`feed`, an event at a time: a caller that stops at the first
        event it wants has not paid for splitting the others yet. Iterate it to
        its end before the next chunk."""
        base = self.pos
        self.pos = base + len(chunk)
        start = 0
        if not self._line and self._data is None and not self._skip and not self._unread \
                and b"\r" not in chunk:
            find = chunk.find
            while (end := find(b"\n\n", start)) >= 0:
                yield base + end + 2, self._block(chunk[start:end])
                start = end + 2
            if start == len(chunk):
                return
        yield from self._lines(chunk, start, base)

    def _block(self, block: bytes) -> bytes | None:
        """The data of one whole event (LF only)."""
        if block[:5] == b"data:" and b"\n" not in block:  # the usual event: one line
            value = block[6:] if block[5:6] == b" " else block[5:]
            return value if len(block) <= self.max_line else None
        data: bytes | None = None
        size = 0
        for line in block.split(b"\n"):
            if line[:5] == b"data:":
                value = line[6:] if line[5:6] == b" " else line[5:]
                size += len(line)
                data = value if data is None else data + b"\n" + value
        return data if size <= self.max_line else None

    def _lines(self, chunk: bytes, start: int, base: int
               ) -> Iterator[tuple[int, bytes | None]]:
        """Line by line from ``start``, keeping an unfinished line and event."""
        limit = self.max_line
        line = self._line
        while True:
            nl = chunk.find(b"\n", start)
            if nl < 0:
                if not self._skip and start < len(chunk):
                    line = line + chunk[start:] if line else chunk[start:]
                    if len(line) + self._size > limit:
                        self._skip = self._unread = True
                        line = b""
                self._line = line
                return
            if self._skip:  # the end of an over-long line: dropped
                self._skip = False
                line = b""
                start = nl + 1
                continue
            text = line + chunk[start:nl] if line else chunk[start:nl]
            line = b""
            start = nl + 1
            if text.endswith(b"\r"):
                text = text[:-1]
            if not text:  # a blank line ends the event
                data = None if self._unread else self._data
                self._data = None
                self._size = 0
                self._unread = False
                yield base + start, data
            elif text.startswith(b"data:"):
                if len(text) + self._size > limit:
                    self._unread = True
                    continue
                value = text[6:] if text[5:6] == b" " else text[5:]
                self._size += len(value) + 1
                data = self._data
                self._data = value if data is None else data + b"\n" + value
