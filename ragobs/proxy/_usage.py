"""Usage in Chat Completions streams, without changing what the client reads.

A Chat Completions stream reports token usage only when asked
(``stream_options.include_usage``). When the client did not ask, the proxy
asks on its behalf and takes the usage chunk (the one with ``usage`` and no
``choices``) out of the stream the client reads; the other chunks then carry
``"usage": null``, as the API sends them whenever usage is asked for, which
the SDKs read as no usage. An upstream that refuses the field (HTTP 400
naming ``stream_options``, the same rule as ``instrument_client``) gets the
client's own request again at once, and is not asked again by this proxy
process: its token figures are then counted from chunks.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from ragobs import semconv
from ragobs._clients import _rejects_stream_options
from ragobs._events import emit

__all__ = ["UsageAsker", "is_usage_only"]


class UsageAsker:
    """Asks upstreams for usage; remembers the ones that refuse."""

    __slots__ = ("_refused", "enabled")

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._refused: set[str] = set()

    def ask(self, upstream: str, body: dict[str, Any]) -> bytes | None:
        """The request body asking for usage, or None when it need not (the
        client asked, the upstream refuses, or asking is off)."""
        if not self.enabled or upstream in self._refused:
            return None
        options = body.get("stream_options")
        if options is not None and not isinstance(options, Mapping):
            return None  # not ours to fix: the upstream answers the client's request
        if options and options.get("include_usage") is True:
            return None
        asked = dict(body)
        asked["stream_options"] = {**(options or {}), "include_usage": True}
        return json.dumps(asked, ensure_ascii=False, separators=(",", ":")).encode()

    def refused(self, upstream: str, exc: BaseException) -> bool:
        """Whether ``exc`` is ``upstream`` refusing the field; if so, remember it."""
        if not _rejects_stream_options(exc):
            return False
        first = upstream not in self._refused
        self._refused.add(upstream)
        emit(semconv.EVENT_STREAM_OPTIONS_REJECTED, f"proxy.{upstream}", error=exc,
             level=logging.INFO if first else logging.DEBUG,
             message=f"proxy upstream {upstream!r} rejects stream_options; streaming "
                     "without it (token figures counted from chunks)")
        return True


def is_usage_only(event: Mapping[str, Any]) -> bool:
    """A Chat Completions usage chunk: usage and no choice."""
    return event.get("usage") is not None and not event.get("choices")
