"""What can go wrong with an upstream, as exceptions ragobs' failure rules read.

Each failure is an exception so that :mod:`ragobs._classify` (the one home
of those rules) decides for the proxy as for the library: ``error.type``
(the HTTP status when there is one), whether a retry may fix it, the
server's ``Retry-After`` and ``x-should-retry``.

* :class:`UpstreamStatus`: the upstream answered an error status; the
  client gets that status, body and headers when it is not retried.
* :class:`UpstreamStreamError`: the upstream opened a stream with ``200``,
  then sent an error event (Anthropic's ``error``, the Responses API's
  ``error`` / ``response.failed``, an OpenAI-compatible server's
  ``{"error": ...}``). Before the first content the proxy treats it as the
  error status it stands for (Anthropic's ``overloaded_error`` is a 529), so
  the client gets a clean HTTP error instead of a ``200`` carrying it.
* :class:`StreamInterrupted`: the upstream failed after the first content
  reached the client: the stream is cut, never retried.

:func:`error_body` writes the errors the proxy answers itself (an
unreachable upstream, a caller over its limits) in the API's own format.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

import aiohttp
from multidict import CIMultiDictProxy

from ragobs.errors import RagobsError
from ragobs.proxy._routing import Api

__all__ = ["CLIENT_GONE", "UPSTREAM_FAILURES", "StreamInterrupted", "UpstreamStatus",
           "UpstreamStreamError", "error_body", "stream_error"]

#: What an upstream connection or read raises when the upstream fails (around
#: reads only: a failed write to the client is a ConnectionError too).
UPSTREAM_FAILURES: Final = (aiohttp.ClientError, TimeoutError, OSError)
#: How a call ends when its client went away: ``cancelled``, as a consumer's ``break``.
CLIENT_GONE: Final = GeneratorExit()

#: Error types of in-stream error events -> the HTTP status they stand for.
_STATUSES: Final = {
    # Anthropic
    "invalid_request_error": 400, "authentication_error": 401, "permission_error": 403,
    "not_found_error": 404, "request_too_large": 413, "rate_limit_error": 429,
    "api_error": 500, "timeout_error": 504, "overloaded_error": 529,
    # OpenAI (error.type or error.code)
    "rate_limit_exceeded": 429, "server_error": 500, "insufficient_quota": 429,
}


def _message(body: Any) -> str | None:
    error = body.get("error", body) if isinstance(body, Mapping) else None
    if isinstance(error, Mapping):
        message = error.get("message")
        if isinstance(message, str):
            return message
    return None


class UpstreamStatus(Exception):
    """The upstream answered ``status`` (not retried, or no longer).

    ``headers`` and ``raw`` are what it sent; ``body`` the parsed JSON
    (None when it was not JSON), as the SDKs' errors carry it.
    """

    def __init__(self, status: int, headers: CIMultiDictProxy[str], raw: bytes) -> None:
        self.status = status
        self.headers = headers
        self.raw = raw
        try:
            self.body: Any = json.loads(raw) if raw else None
        except ValueError:
            self.body = None
        text = _message(self.body)
        super().__init__(f"upstream answered {status}" + (f": {text}" if text else ""))


class UpstreamStreamError(Exception):
    """An error event in a ``200`` stream; ``status`` is the one it stands for."""

    def __init__(self, status: int, event: Mapping[str, Any], raw: bytes,
                 headers: CIMultiDictProxy[str] | None = None) -> None:
        self.status = status
        self.event = event
        self.raw = raw
        #: The stream's response headers (a ``Retry-After`` there is honoured).
        self.headers = headers
        text = _message(event.get("response", event)) or _message(event)
        super().__init__(f"error event in the stream ({status})" + (f": {text}" if text else ""))


class StreamInterrupted(RagobsError, ConnectionError):
    """The upstream failed after the first content had reached the client;
    the stream was cut (``__cause__``: the upstream's failure)."""


def _error_kind(error: Any) -> str | None:
    if not isinstance(error, Mapping):
        return None
    for key in ("type", "code"):
        value = error.get(key)
        if isinstance(value, str) and value in _STATUSES:
            return value
    return None


def stream_error(event: Mapping[str, Any], raw: bytes,
                 headers: CIMultiDictProxy[str] | None = None) -> UpstreamStreamError | None:
    """The failure an event reports, if it is an error event (see the module docstring)."""
    kind = event.get("type")
    if kind == "error" or (kind is None and isinstance(event.get("error"), (Mapping, str))
                           and "choices" not in event):
        error = event.get("error", event)
    elif kind == "response.failed":
        response = event.get("response")
        error = response.get("error") if isinstance(response, Mapping) else None
    else:
        return None
    found = _error_kind(error)
    return UpstreamStreamError(_STATUSES[found] if found else 500, event, raw, headers)


def error_body(api: Api | None, message: str, *, kind: str, code: str | None = None) -> bytes:
    """An error the proxy answers itself, in ``api``'s format (OpenAI's when None)."""
    if api is Api.MESSAGES:
        return json.dumps({"type": "error", "error": {"type": kind, "message": message}}
                          ).encode()
    return json.dumps({"error": {"message": message, "type": kind, "param": None,
                                 "code": code}}).encode()
