"""Running a proxy: its listener, and the admin surface beside it.

The proxy listens where agents reach it (``127.0.0.1:8080`` by default;
``0.0.0.0`` to serve other hosts or containers). Its figures are served by
the same sidecar as any ragobs process (``/metrics``, ``/api/summary``,
``/api/history``, the panel) on a listener of their own, loopback by
default (``127.0.0.1:9464``, or ``RAGOBS_HOST`` / ``RAGOBS_PORT``): nothing
of it is reachable through the proxy's port.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass

from aiohttp import web

from ragobs._runtime import Runtime, setup
from ragobs.proxy._app import create_proxy_app
from ragobs.proxy._config import ProxyConfig

__all__ = ["RunningProxy", "run_proxy", "start_proxy"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
_log = logging.getLogger("ragobs.proxy")


@dataclass
class RunningProxy:
    """A proxy serving; :meth:`stop` stops it (and the runtime it made)."""

    runtime: Runtime
    #: The proxy's base URL (agents: ``<url>/v1``, or ``<url>/<upstream>/v1``).
    url: str
    #: The admin surface's base URL (``/metrics``...), None when not served.
    admin_url: str | None
    _runner: web.AppRunner
    _owns_runtime: bool

    async def stop(self) -> None:
        await self._runner.cleanup()
        await self.runtime.stop_server()
        if self._owns_runtime:
            self.runtime.shutdown()


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def start_proxy(config: ProxyConfig, *, host: str = DEFAULT_HOST,
                      port: int = DEFAULT_PORT, admin: bool = True,
                      admin_host: str | None = None, admin_port: int | None = None,
                      runtime: Runtime | None = None,
                      service_name: str | None = None) -> RunningProxy:
    """Serve ``config``'s proxy on ``host:port`` (``port=0``: any free one),
    and (``admin``) its figures on ``admin_host:admin_port`` (default
    loopback, see :func:`ragobs._server.resolve_address`), unless the runtime
    pushes them to a host sidecar (``RAGOBS_SIDECAR_URL``: several proxy
    processes on one host).

    ``runtime``: the :func:`ragobs.setup` runtime to record into; default
    one made here (``service_name`` default ``OTEL_SERVICE_NAME``, else
    ``ragobs-proxy``), shut down by
    :meth:`RunningProxy.stop`.
    """
    owns = runtime is None
    if runtime is None:
        if service_name is None and not os.environ.get("OTEL_SERVICE_NAME"):
            service_name = "ragobs-proxy"
        runtime = setup(service_name=service_name, serve=False)
    app = create_proxy_app(config, telemetry=runtime.telemetry)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, logger=_log)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        try:
            await site.start()
        except OSError as exc:
            raise OSError(exc.errno, f"ragobs proxy cannot bind {host}:{port}: "
                                     f"{exc.strerror}") from exc
        # A runtime that pushes to a host sidecar has nothing to serve here.
        serve = admin and runtime.pushing_to is None
        admin_url = (await runtime.start_server(admin_host, admin_port)).url if serve else None
    except BaseException:
        await runner.cleanup()
        if owns:
            runtime.shutdown()
        raise
    server = getattr(site, "_server", None)
    if server is not None and server.sockets:
        port = server.sockets[0].getsockname()[1]
    return RunningProxy(runtime, _url(host, port), admin_url, runner, owns)


async def run_proxy(config: ProxyConfig, *, host: str = DEFAULT_HOST,
                    port: int = DEFAULT_PORT, admin: bool = True, admin_host: str | None = None,
                    admin_port: int | None = None, service_name: str | None = None) -> None:
    """:func:`start_proxy`, say where, then serve until cancelled (Ctrl-C, SIGTERM)."""
    proxy = await start_proxy(config, host=host, port=port, admin=admin,
                              admin_host=admin_host, admin_port=admin_port,
                              service_name=service_name)
    routes = ", ".join(f"{proxy.url}/{u.name}/ -> {u.url}" if u.name else
                       f"{proxy.url}/ -> {u.url}" for u in config.upstreams)
    print(f"ragobs proxy: {routes}", flush=True)
    if proxy.admin_url is not None:
        print(f"ragobs proxy: metrics at {proxy.admin_url}/metrics, live panel at "
              f"{proxy.admin_url}/", flush=True)
    elif proxy.runtime.pushing_to is not None:
        print(f"ragobs proxy: metrics pushed to the host sidecar {proxy.runtime.pushing_to}",
              flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await proxy.stop()
