"""An OTLP/HTTP metrics receiver feeding a :class:`~ragobs._host.merge.HostMetrics`.

``POST /v1/metrics`` takes an ``ExportMetricsServiceRequest``, binary
protobuf (``application/x-protobuf``) or OTLP's JSON encoding
(``application/json``, what some SDKs' "http/json" exporters send), decoded
with the official ``opentelemetry-proto`` classes. Bad requests are refused
whole and counted (``ragobs_host_rejected_requests_total{reason}``); the
server keeps serving:

* another content type: 415 (``unsupported_media_type``);
* a ``Content-Encoding`` other than gzip: 415 (``unsupported_encoding``;
  aiohttp itself answers 400 to one it cannot decode, e.g. ``br``);
* a body over ``max_body`` bytes: 413 (``too_large``), from the
  ``Content-Length`` alone when there is one, and never read past the limit;
* a gzip body inflating past ``max_decompressed`` bytes: 413
  (``too_large``), never inflated past it;
* a body still incomplete after ``read_timeout`` seconds: 408 (``timeout``);
* a truncated or corrupt body, not an ``ExportMetricsServiceRequest``: 400
  (``malformed``);
* more than ``max_concurrent`` requests at once: 503 with ``Retry-After``
  (``busy``; OTLP exporters retry it).

On success the answer is 200 with an ``ExportMetricsServiceResponse`` in the
request's encoding, its ``partial_success`` filled when points were dropped
(over a bound, mismatched buckets...: see :mod:`ragobs._host.merge`).

Traces and logs are not this sidecar's job: ``POST /v1/traces`` and
``/v1/logs`` answer 404 with a message saying so (and are counted as
``signal_not_supported``), so a misdirected exporter reports an error
instead of losing its data silently. Point traces at a collector, or set
only ``OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`` to this sidecar.

Who may push: by default only this host (a loopback peer); a push from
anywhere else is refused 403 (``forbidden``), even when the sidecar listens on
``0.0.0.0`` so that Prometheus can scrape it from elsewhere. Ingest from the
network is opened explicitly (``allow_remote=True``) and then needs a token:
every push, from any peer, must carry ``Authorization: Bearer <token>``
(compared in constant time); a token set alone also guards loopback pushes.
"""

from __future__ import annotations

import asyncio
import hmac
import importlib
import ipaddress
import logging
import math
import zlib
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsPartialSuccess,
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)

from ragobs._host.merge import HostMetrics, IngestResult

__all__ = [
    "DEFAULT_MAX_BODY",
    "DEFAULT_MAX_DECOMPRESSED",
    "HOST_METRICS_KEY",
    "METRICS_PATH",
    "OtlpReceiver",
    "ReceiverLimits",
    "add_otlp_routes",
    "inflate_gzip",
]

logger = logging.getLogger("ragobs._host")

METRICS_PATH: Final = "/v1/metrics"
DEFAULT_MAX_BODY: Final = 4 * 1024 * 1024
DEFAULT_MAX_DECOMPRESSED: Final = 16 * 1024 * 1024
_PROTOBUF_TYPES: Final = frozenset({"application/x-protobuf", "application/protobuf"})
_JSON_TYPE: Final = "application/json"
_GZIP_MAGIC: Final = b"\x1f\x8b"
_READ_CHUNK: Final = 64 * 1024

# protobuf ships no type hints: loaded untyped so type-checking needs no stubs.
json_format: Any = importlib.import_module("google.protobuf.json_format")

HOST_METRICS_KEY: Final = web.AppKey("ragobs_host_metrics", HostMetrics)


@dataclass(frozen=True, slots=True)
class ReceiverLimits:
    """Bounds on one request.

    Args:
        max_body: bytes on the wire (compressed or not).
        max_decompressed: bytes of a gzip body once inflated.
        max_concurrent: requests read and merged at once; more get 503.
        read_timeout: seconds a body may take to arrive; slower gets 408.
    """

    max_body: int = DEFAULT_MAX_BODY
    max_decompressed: int = DEFAULT_MAX_DECOMPRESSED
    max_concurrent: int = 4
    read_timeout: float = 30.0

    def __post_init__(self) -> None:
        for name in ("max_body", "max_decompressed", "max_concurrent"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        timeout = self.read_timeout
        if (not isinstance(timeout, (int, float)) or isinstance(timeout, bool)
                or not 0 < timeout < math.inf):
            raise ValueError(f"read_timeout must be a number of seconds > 0, got {timeout!r}")


class _Refused(Exception):
    def __init__(self, status: int, reason: str, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.reason = reason
        self.text = text


class _TooLarge(ValueError):
    pass


def inflate_gzip(data: bytes, limit: int) -> bytes:
    """``data`` gunzipped, never holding more than ``limit`` inflated bytes.

    Raises ``ValueError`` (a subclass for "over ``limit``") or ``zlib.error``
    on a corrupt stream; trailing bytes after the first gzip member are an error.
    """
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    out = bytearray()
    pending = data
    while pending:
        out += inflater.decompress(pending, limit + 1 - len(out))
        if len(out) > limit:
            raise _TooLarge(f"gzip body inflates past {limit} bytes")
        pending = inflater.unconsumed_tail
    if not inflater.eof or inflater.unused_data:
        raise ValueError("truncated or trailing gzip data")
    return bytes(out)


class OtlpReceiver:
    """The handlers of an OTLP/HTTP metrics endpoint (see :func:`add_otlp_routes`)."""

    def __init__(self, host: HostMetrics, limits: ReceiverLimits | None = None, *,
                 token: str | None = None, allow_remote: bool = False) -> None:
        if not isinstance(host, HostMetrics):
            raise TypeError(f"host must be a HostMetrics, got {host!r}")
        if limits is not None and not isinstance(limits, ReceiverLimits):
            raise TypeError(f"limits must be a ReceiverLimits or None, got {limits!r}")
        if token is not None and (not isinstance(token, str) or len(token) < 16
                                  or not token.isprintable() or " " in token):
            raise ValueError("token must be a str of at least 16 printable characters "
                             "without spaces, or None")
        if not isinstance(allow_remote, bool):
            raise TypeError(f"allow_remote must be a bool, got {allow_remote!r}")
        if allow_remote and token is None:
            raise ValueError("allow_remote=True needs a token: ingest open to the network "
                             "without one would let anyone write into the host's figures")
        self.host = host
        self.limits = limits if limits is not None else ReceiverLimits()
        self._expected = None if token is None else f"Bearer {token}".encode()
        self._allow_remote = allow_remote
        self._active = 0

    def _check_peer(self, request: web.Request) -> None:
        """Refuses a push from a peer that may not write into the host's figures."""
        if not self._allow_remote and not _is_loopback(request.remote):
            raise _Refused(403, "forbidden", "this host sidecar takes pushes from this host "
                           "only (open it with --ingest-from-network and a token)")
        if self._expected is not None:
            given = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, self._expected):
                raise _Refused(401, "unauthorized", "a push needs the sidecar's token "
                               "(Authorization: Bearer <token>)")

    async def metrics(self, request: web.Request) -> web.Response:
        """``POST /v1/metrics``."""
        try:
            self._check_peer(request)
        except _Refused as refused:
            response = self._refuse(request, refused)
            response.force_close()  # do not read an unwanted body
            return response
        if self._active >= self.limits.max_concurrent:
            return self._refuse(request, _Refused(503, "busy", "too many concurrent exports"),
                                retry_after=True)
        self._active += 1
        try:
            as_json = self._check_headers(request)
            body = await self._read(request)
            result = await asyncio.get_running_loop().run_in_executor(
                None, self._decode_and_merge, body, as_json)
        except _Refused as refused:
            return self._refuse(request, refused)
        finally:
            self._active -= 1
        return self._answer(result, as_json)

    async def unsupported_signal(self, request: web.Request) -> web.Response:
        """``POST /v1/traces`` and ``/v1/logs``: 404, this sidecar takes metrics only."""
        return self._refuse(request, _Refused(
            404, "signal_not_supported",
            f"this ragobs host sidecar receives metrics only ({METRICS_PATH}); "
            f"send {request.path} to an OpenTelemetry collector"))

    # --- steps ---------------------------------------------------------------

    def _check_headers(self, request: web.Request) -> bool:
        """Whether the body is JSON; refuses what cannot be an OTLP metrics export."""
        content_type = request.content_type.lower()
        if content_type not in _PROTOBUF_TYPES and content_type != _JSON_TYPE:
            raise _Refused(415, "unsupported_media_type",
                           "Content-Type must be application/x-protobuf or application/json")
        encoding = request.headers.get("Content-Encoding", "").strip().lower()
        if encoding not in ("", "identity", "gzip"):
            raise _Refused(415, "unsupported_encoding", "Content-Encoding must be gzip or none")
        length = request.content_length
        if length is not None and length > self.limits.max_body:
            raise _Refused(413, "too_large", f"body over {self.limits.max_body} bytes")
        return content_type == _JSON_TYPE

    async def _read(self, request: web.Request) -> bytes:
        """The body, read no further than the limits allow.

        aiohttp inflates gzip bodies itself by default (in bounded steps):
        the stream then yields inflated bytes, bounded by ``max_decompressed``.
        A server run with ``auto_decompress=False`` hands over the gzip bytes,
        which are bounded by ``max_body`` and inflated here, bounded too.
        """
        gzip = request.headers.get("Content-Encoding", "").strip().lower() == "gzip"
        limit = self.limits.max_decompressed if gzip else self.limits.max_body
        body = bytearray()
        try:
            async with asyncio.timeout(self.limits.read_timeout):
                while True:
                    chunk = await request.content.read(min(_READ_CHUNK, limit + 1 - len(body)))
                    if not chunk:
                        break
                    body += chunk
                    if len(body) > limit:
                        raise _Refused(413, "too_large", f"body over {limit} bytes")
        except _Refused:
            raise
        except TimeoutError as exc:
            raise _Refused(408, "timeout",
                           f"body not received within {self.limits.read_timeout} s") from exc
        except Exception as exc:  # a broken chunked stream, corrupt gzip under aiohttp
            raise _Refused(400, "malformed", f"unreadable body: {type(exc).__name__}") from exc
        if gzip and body[:2] == _GZIP_MAGIC:  # not inflated by aiohttp (OTLP never starts so)
            if len(body) > self.limits.max_body:
                raise _Refused(413, "too_large", f"body over {self.limits.max_body} bytes")
            try:
                return await asyncio.get_running_loop().run_in_executor(
                    None, inflate_gzip, bytes(body), self.limits.max_decompressed)
            except _TooLarge as exc:
                raise _Refused(413, "too_large", str(exc)) from exc
            except (ValueError, zlib.error) as exc:
                raise _Refused(400, "malformed", "corrupt gzip body") from exc
        return bytes(body)

    def _decode_and_merge(self, body: bytes, as_json: bool) -> IngestResult:
        """Runs in a worker thread: parsing and merging a large export take a while."""
        message = ExportMetricsServiceRequest()
        try:
            if as_json:
                json_format.Parse(body.decode("utf-8"), message, ignore_unknown_fields=True)
            else:
                message.ParseFromString(body)
        except Exception as exc:  # DecodeError, json_format.ParseError, UnicodeDecodeError...
            raise _Refused(400, "malformed",
                           "body is not an OTLP ExportMetricsServiceRequest") from exc
        return self.host.ingest(message)

    def _answer(self, result: IngestResult, as_json: bool) -> web.Response:
        response = ExportMetricsServiceResponse()
        if result.rejected:
            response.partial_success.CopyFrom(ExportMetricsPartialSuccess(
                rejected_data_points=result.rejected, error_message=result.message))
        if as_json:
            return web.Response(body=json_format.MessageToJson(response).encode(),
                                content_type=_JSON_TYPE)
        return web.Response(body=response.SerializeToString(),
                            content_type="application/x-protobuf")

    def _refuse(self, request: web.Request, refused: _Refused, *,
                retry_after: bool = False) -> web.Response:
        self.host.note_rejected_request(refused.reason)
        logger.debug("ragobs host: %s %s refused: %d %s", request.method, request.path,
                     refused.status, refused.text)
        response = web.Response(status=refused.status, text=refused.text + "\n")
        if retry_after:
            response.headers["Retry-After"] = "1"
        if refused.status in (408, 413):
            # The rest of the body is not wanted: do not keep the connection.
            response.force_close()
        return response


def _is_loopback(remote: str | None) -> bool:
    if remote is None:  # a Unix socket: this host
        return True
    try:
        return ipaddress.ip_address(remote.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def add_otlp_routes(app: web.Application, host: HostMetrics, *,
                    limits: ReceiverLimits | None = None, token: str | None = None,
                    allow_remote: bool = False) -> OtlpReceiver:
    """Add ``POST /v1/metrics`` (and the 404 of ``/v1/traces``, ``/v1/logs``) to ``app``.

    ``host`` is also stored as ``app[HOST_METRICS_KEY]``. Serve the app on
    loopback; for quick refusal of oversized bodies, run it with a short
    ``lingering_time`` (``web.AppRunner(app, lingering_time=1)``): aiohttp
    otherwise reads and discards an unwanted body for up to 10 s.
    """
    receiver = OtlpReceiver(host, limits, token=token, allow_remote=allow_remote)
    app[HOST_METRICS_KEY] = host
    app.router.add_post(METRICS_PATH, receiver.metrics)
    app.router.add_post("/v1/traces", receiver.unsupported_signal)
    app.router.add_post("/v1/logs", receiver.unsupported_signal)
    return receiver
