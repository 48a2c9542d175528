"""The proxy as an aiohttp application: :func:`create_proxy_app`.

One handler takes every path: it routes the request, applies the caller's
limits, and either passes it through untouched or reads it as a call of a
known API, observed from the moment it came in as an instrumented client's
call is (a :class:`ragobs.StreamObservation` whose span continues the
client's ``traceparent``).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace

from ragobs import semconv
from ragobs._stream import StreamObservation, observe
from ragobs._telemetry import Telemetry, get_telemetry
from ragobs.proxy._attempts import Relay
from ragobs.proxy._call import Call
from ragobs.proxy._config import ProxyConfig
from ragobs.proxy._failures import error_body
from ragobs.proxy._instruments import ProxyMetrics
from ragobs.proxy._limits import Limits, Refusal, caller_of
from ragobs.proxy._passthrough import passthrough
from ragobs.proxy._routing import Api, Route, Router
from ragobs.proxy._usage import UsageAsker

__all__ = ["create_proxy_app"]

_perf = time.perf_counter
#: Headers the HTTP client must not add on its own: only the client's go upstream.
_NO_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")


class _State:
    """What the handler works with; the HTTP client is made when the app starts."""

    __slots__ = ("config", "limits", "metrics", "relay", "router", "session", "telemetry",
                 "usage")

    def __init__(self, config: ProxyConfig, telemetry: Telemetry) -> None:
        self.config = config
        self.telemetry = telemetry
        self.router = Router(config.upstreams)
        self.limits = Limits(config.limits, telemetry=telemetry, clock=config.clock)
        self.metrics = ProxyMetrics(telemetry)
        self.usage = UsageAsker(config.include_usage)
        self.session: aiohttp.ClientSession | None = None
        self.relay: Relay | None = None


STATE = web.AppKey("ragobs_proxy", _State)


def create_proxy_app(config: ProxyConfig, *,
                     telemetry: Telemetry | None = None) -> web.Application:
    """The proxy of ``config`` as an aiohttp application.

    ``telemetry``: where calls and the proxy's own figures are recorded
    (default :func:`ragobs.get_telemetry`). Serve it with
    ``web.AppRunner(app, handler_cancellation=True)`` (as
    :func:`~ragobs.proxy.start_proxy` does), so that a client that goes away
    cancels its call at once, closing the upstream request.
    """
    if not isinstance(config, ProxyConfig):
        raise TypeError(f"config must be a ragobs.proxy.ProxyConfig, got {config!r}")
    if telemetry is not None and not isinstance(telemetry, Telemetry):
        raise TypeError(f"telemetry must be a ragobs.Telemetry or None, got {telemetry!r}")
    app = web.Application(client_max_size=config.max_body)
    app[STATE] = _State(config, telemetry or get_telemetry())
    app.cleanup_ctx.append(_client)
    app.router.add_route("*", "/{tail:.*}", _handle)
    return app


async def _client(app: web.Application) -> AsyncIterator[None]:
    """The upstream HTTP client, for as long as the app serves."""
    state = app[STATE]
    config = state.config
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=config.max_connections, limit_per_host=0),
        timeout=aiohttp.ClientTimeout(total=None, connect=config.connect_timeout,
                                      sock_read=config.read_timeout),
        auto_decompress=False, skip_auto_headers=_NO_AUTO_HEADERS,
        cookie_jar=aiohttp.DummyCookieJar())  # callers never share cookies
    state.session = session
    state.relay = Relay(session, config, state.telemetry, state.metrics, state.usage)
    try:
        yield
    finally:
        await session.close()
        await state.limits.aclose()


def _json_error(route: Route | None, status: int, message: str, *, kind: str,
                code: str | None = None, headers: dict[str, str] | None = None
                ) -> web.Response:
    return web.Response(status=status, headers=headers, content_type="application/json",
                        body=error_body(route.api if route else None, message, kind=kind,
                                        code=code))


def _limited(route: Route, refusal: Refusal, window: float) -> web.Response:
    anthropic = route.api is Api.MESSAGES
    message = (f"ragobs proxy: rate limit reached for this API key on {refusal.limit} per "
               f"{window:g} s; try again in {refusal.retry_after:.1f} s")
    return _json_error(route, 429, message,
                       kind="rate_limit_error" if anthropic else refusal.limit,
                       code=None if anthropic else "rate_limit_exceeded",
                       headers=refusal.headers)


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        body = json.loads(raw)
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


async def _handle(request: web.Request) -> web.StreamResponse:
    t_received = _perf()
    state = request.app[STATE]
    route = state.router.route(request.method, request.raw_path)
    if route is None:
        return _json_error(None, 404, f"ragobs proxy: no upstream serves {request.path}; "
                                      f"prefixes: {', '.join(state.router.prefixes())}",
                           kind="not_found_error")
    assert state.session is not None  # made as the app started
    caller = None
    if state.limits.enabled:
        caller = caller_of(request.headers)
        refusal = await state.limits.admit(caller)
        if refusal is not None:
            state.metrics.record_limited(route.upstream.label, refusal.limit)
            return _limited(route, refusal, state.config.limits.window)
    if route.api is None:
        return await passthrough(request, state.session, route.url)
    raw = await request.read()
    body = _json_object(raw)
    if body is None:  # not a call it can read: the upstream answers it as it is
        return await passthrough(request, state.session, route.url, raw)
    return await _call(request, state, route, raw=raw, body=body, caller=caller,
                       t_received=t_received)


async def _call(request: web.Request, state: _State, route: Route, *, raw: bytes,
                body: dict[str, Any], caller: str | None, t_received: float
                ) -> web.StreamResponse:
    """One call of a known API, observed."""
    assert state.relay is not None
    label = route.upstream.label
    stream = body.get("stream") is True
    asked = state.usage.ask(label, body) if stream and route.api is Api.CHAT else None
    model = body.get("model")
    obs = observe(model=model if isinstance(model, str) and model else None,
                  provider=route.provider, telemetry=state.telemetry)
    remote = propagate.extract(request.headers)
    obs.start(start_time=t_received, context=remote,
              span_start_ns=time.time_ns() - int((_perf() - t_received) * 1e9))
    span = obs.span
    if span.is_recording():
        span.set_attribute(semconv.PROXY_UPSTREAM, label)
        if not stream:
            span.set_attribute(semconv.REQUEST_STREAM, False)
    token = otel_context.attach(trace.set_span_in_context(span, remote))
    call = Call(request, route, raw, asked, stream, obs, t_received)
    try:
        return await state.relay.call(call)
    except BaseException as exc:  # cancelled (the client left), or a failure of its own
        obs.finish(exc)
        raise
    finally:
        otel_context.detach(token)
        if caller is not None:
            state.limits.charge(caller, _tokens(obs))


def _tokens(obs: StreamObservation) -> int:
    """Input and output tokens of a call: the provider's usage, else the chunks counted."""
    return (obs.input_tokens or 0) + obs.token_count
