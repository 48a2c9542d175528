"""A call's attempts upstream, until one commits or the failure is answered.

Before the commit point (see :mod:`ragobs.proxy._streaming`) a failed
attempt is decided by :func:`ragobs.retry`'s own policy (the same schedule,
``Retry-After`` rule, reporting and counters, named ``proxy.<upstream>``):
retried, or answered as a clean HTTP error (:func:`failure_response`). An
upstream that refuses the ``stream_options`` the proxy added gets the
client's own request again at once (not counted as a retry).
"""

from __future__ import annotations

import aiohttp
from aiohttp import web
from opentelemetry import propagate
from yarl import URL

from ragobs._classify import is_timeout
from ragobs._telemetry import Telemetry
from ragobs.proxy._call import BeforeCommit, Call
from ragobs.proxy._config import ProxyConfig
from ragobs.proxy._failures import (
    CLIENT_GONE,
    UPSTREAM_FAILURES,
    StreamInterrupted,
    UpstreamStatus,
    UpstreamStreamError,
    error_body,
)
from ragobs.proxy._headers import for_client, for_upstream, is_event_stream
from ragobs.proxy._instruments import ProxyMetrics
from ragobs.proxy._passthrough import pipe, read_body
from ragobs.proxy._routing import Api
from ragobs.proxy._streaming import StreamSettings, relay_stream
from ragobs.proxy._usage import UsageAsker
from ragobs.proxy._whole import relay_whole
from ragobs.resilience._retry import _Policy

__all__ = ["Relay", "failure_response"]

#: The most of an error answer read (the rest is dropped, the connection closed).
_ERROR_BODY = 1 << 20
_Result = tuple[web.StreamResponse, float | None, BaseException | None]


def failure_response(api: Api | None, upstream: str, failure: BaseException) -> web.Response:
    """The clean HTTP error for a failure before the commit point: the
    upstream's own status, body and headers when it answered, else 504
    (timeout) or 502 with an error in the API's format."""
    if isinstance(failure, UpstreamStatus):
        return web.Response(status=failure.status, body=failure.raw,
                            headers=for_client(failure.headers, stream=False))
    if isinstance(failure, UpstreamStreamError):
        headers = for_client(failure.headers, stream=False) if failure.headers else {}
        headers["Content-Type"] = "application/json"
        return web.Response(status=failure.status, body=failure.raw, headers=headers)
    timeout = is_timeout(failure)
    status = 504 if timeout else 502
    kind = ("timeout_error" if timeout else "api_error") if api is Api.MESSAGES else \
        "server_error"
    what = "timed out" if timeout else "failed"
    message = f"ragobs proxy: upstream {upstream!r} {what}: {type(failure).__name__}: {failure}"
    return web.Response(status=status, body=error_body(api, message, kind=kind),
                        content_type="application/json")


class Relay:
    """Sends calls upstream; one per proxy app."""

    __slots__ = ("_max_body", "_metrics", "_policies", "_session", "_stream", "_usage")

    def __init__(self, session: aiohttp.ClientSession, config: ProxyConfig,
                 telemetry: Telemetry, metrics: ProxyMetrics, usage: UsageAsker) -> None:
        self._session = session
        self._metrics = metrics
        self._usage = usage
        self._max_body = config.max_body
        self._stream = StreamSettings(config.max_line, config.max_hold, config.max_hold_bytes)
        r = config.retries
        self._policies = {
            u.label: _Policy.checked(
                attempts=r.attempts, initial=r.initial, multiplier=2.0, max_delay=r.max_delay,
                jitter=r.jitter, on=None, deadline=None, budget=None, name=f"proxy.{u.label}",
                clock=config.clock, telemetry=telemetry, rng=None,
                max_retry_after=r.max_retry_after)
            for u in config.upstreams}

    async def call(self, call: Call) -> web.StreamResponse:
        """Attempts until one commits (its response) or the failure is answered;
        ``call.obs`` is finished either way."""
        label = call.route.upstream.label
        policy = self._policies[label]
        start = policy.clock.now()
        while True:
            body = call.asked if call.asked is not None else call.body
            try:
                response, overhead, ended = await self._attempt(
                    call, body, strip=call.asked is not None)
            except BeforeCommit as signal:
                failure = signal.cause
            else:
                if overhead is not None:
                    self._metrics.record_overhead(label, overhead)
                if isinstance(ended, (StreamInterrupted, UpstreamStreamError)):
                    self._metrics.record_interrupted(label)
                    policy.output_started(ended, call.attempt)
                call.obs.finish(ended)
                return response
            if call.asked is not None and self._usage.refused(label, failure):
                call.asked = None
                continue
            if not await policy.pause(failure, call.attempt, start):
                call.obs.finish(failure)
                return failure_response(call.route.api, label, failure)
            call.attempt += 1

    async def _attempt(self, call: Call, body: bytes, *, strip: bool) -> _Result:
        headers = for_upstream(call.request.headers, read=True)
        propagate.inject(headers)  # the call's span (current) is the upstream's parent
        call.sent()
        try:
            upstream = await self._session.request(
                "POST", URL(call.route.url, encoded=True), data=body, headers=headers,
                allow_redirects=False)
        except UPSTREAM_FAILURES as exc:
            raise BeforeCommit(exc) from exc
        try:
            if not 200 <= upstream.status < 300:
                try:
                    raw, _ = await read_body(upstream, _ERROR_BODY)
                except UPSTREAM_FAILURES as exc:
                    raise BeforeCommit(exc) from exc
                raise BeforeCommit(UpstreamStatus(upstream.status, upstream.headers, raw))
            encoding = upstream.headers.get("Content-Encoding", "").lower()
            if encoding not in ("", "identity"):  # not readable: passed on as it is
                response, ended = await pipe(call.request, upstream)
                return response, None, _interrupted(call, ended)
            if is_event_stream(upstream.headers):
                return await relay_stream(call, upstream, strip=strip, settings=self._stream)
            return await relay_whole(call, upstream, max_body=self._max_body)
        finally:
            if upstream.content.is_eof():
                upstream.release()
            else:  # the upstream is told at once: it stops generating
                upstream.close()


def _interrupted(call: Call, ended: BaseException | None) -> BaseException | None:
    if ended is None or ended is CLIENT_GONE:
        return ended
    failure = StreamInterrupted(f"upstream {call.route.upstream.label!r} failed midway: "
                                f"{type(ended).__name__}: {ended}")
    failure.__cause__ = ended
    return failure
