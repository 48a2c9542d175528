"""Headers across the proxy: what is forwarded each way, and what is added.

Forwarded unchanged both ways except the hop-by-hop headers (RFC 9110 §7.6.1:
``Connection`` and the names it lists, ``Keep-Alive``, ``Proxy-*``, ``TE``,
``Trailer``, ``Transfer-Encoding``, ``Upgrade``) and ``Host``. For the calls
the proxy reads it also replaces the trace context (its span is the
upstream's parent), asks for an uncompressed answer (it must read it), and
sets the length of a body it rewrote. Streamed answers get the headers that
stop intermediaries from buffering: ``X-Accel-Buffering: no`` (nginx) and
``Cache-Control: no-cache``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from multidict import CIMultiDict, CIMultiDictProxy

__all__ = ["for_client", "for_upstream", "is_event_stream"]

_HOP_BY_HOP: Final = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
    "proxy-connection", "te", "trailer", "trailers", "transfer-encoding", "upgrade",
})
#: Request headers the proxy sets itself on the calls it reads.
_READ_CALL: Final = frozenset({"host", "content-length", "accept-encoding", "traceparent",
                               "tracestate"})
#: Response headers that no longer hold once the proxy re-frames the body.
_REFRAMED: Final = frozenset({"content-length"})
_NO_BUFFERING: Final = (("X-Accel-Buffering", "no"), ("Cache-Control", "no-cache"))


def _dropped(headers: CIMultiDictProxy[str], extra: frozenset[str]) -> set[str]:
    drop = set(_HOP_BY_HOP | extra)
    for value in headers.getall("Connection", ()):
        drop.update(token.strip().lower() for token in value.split(","))
    return drop


def for_upstream(headers: CIMultiDictProxy[str], *, read: bool) -> CIMultiDict[str]:
    """The client's request headers to send upstream; ``read``: a call the
    proxy reads (its own trace context, an uncompressed answer, a body
    length the HTTP client sets)."""
    drop = _dropped(headers, _READ_CALL if read else frozenset({"host"}))
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        if name.lower() not in drop:
            out.add(name, value)
    if read:
        out["Accept-Encoding"] = "identity"
    return out


def for_client(headers: CIMultiDictProxy[str], *, stream: bool,
               reframed: bool = True) -> CIMultiDict[str]:
    """The upstream's response headers to send the client; ``stream``: an
    event stream (headers against buffering added); ``reframed``: the proxy
    writes the body itself (its length is not the upstream's)."""
    drop = _dropped(headers, _REFRAMED if reframed else frozenset())
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        if name.lower() not in drop:
            out.add(name, value)
    if stream:
        for name, value in _NO_BUFFERING:
            out[name] = value
    return out


def is_event_stream(headers: Mapping[str, str]) -> bool:
    return headers.get("Content-Type", "").lower().startswith("text/event-stream")
