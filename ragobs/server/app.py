"""The aiohttp application of the sidecar.

Routes:
    ``GET /metrics``      Prometheus text format, OpenMetrics when asked
                          (``Accept: application/openmetrics-text``).
    ``GET /healthz``      liveness: 200 while the process serves.
    ``GET /readyz``       readiness: 200 once the app serves (cheap: no collection).
    ``GET /api/summary``  the terminal dashboard's figures plus percentiles.
    ``GET /``             a live panel of the same figures (no Grafana needed).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from importlib import resources

from aiohttp import web
from prometheus_client import CollectorRegistry

from ragobs._version import __version__
from ragobs.exposition import render
from ragobs.summary_stats import SummaryStats

REGISTRY_KEY = web.AppKey("registry", CollectorRegistry)
SUMMARY_KEY = web.AppKey("summary", SummaryStats)
STARTED_KEY = web.AppKey("started", float)
SERVICE_KEY = web.AppKey("service", str)
EXTRA_KEY = web.AppKey("extra", object)


async def metrics(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY_KEY]
    accept = request.headers.get("Accept")
    # Collection walks every instrument: keep it off the event loop.
    body, content_type = await asyncio.get_running_loop().run_in_executor(
        None, render, registry, accept
    )
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready once the app serves a registry: a probe costs a dict lookup, not
    a collection (probes come every few seconds; ``/metrics`` is the costly one)."""
    if request.app.get(REGISTRY_KEY) is None:  # pragma: no cover - create_app sets it
        return web.json_response({"status": "unavailable"}, status=503)
    return web.json_response({"status": "ready"})


async def summary(request: web.Request) -> web.Response:
    data = request.app[SUMMARY_KEY].snapshot().as_dict()
    data["service"] = request.app[SERVICE_KEY]
    data["version"] = __version__
    data["uptime_seconds"] = time.monotonic() - request.app[STARTED_KEY]
    extra = request.app.get(EXTRA_KEY)
    if callable(extra):
        data.update(extra())
    return web.json_response(data, headers={"Cache-Control": "no-store"})


async def index(request: web.Request) -> web.Response:
    page = resources.files("ragobs.server").joinpath("static/index.html")
    try:
        html = page.read_text(encoding="utf-8")
    except FileNotFoundError:
        return web.Response(text="ragobs sidecar: see /metrics and /api/summary\n")
    return web.Response(text=html, content_type="text/html", headers={"Cache-Control": "no-store"})


def create_app(registry: CollectorRegistry, summary_stats: SummaryStats,
               service: str = "ragobs",
               extra: Callable[[], dict[str, object]] | None = None) -> web.Application:
    """The sidecar application serving ``registry`` and ``summary_stats``.

    ``extra`` adds keys to ``/api/summary`` (the runtime adds ``resilience``).
    """
    app = web.Application()
    if extra is not None:
        app[EXTRA_KEY] = extra
    app[REGISTRY_KEY] = registry
    app[SUMMARY_KEY] = summary_stats
    app[STARTED_KEY] = time.monotonic()
    app[SERVICE_KEY] = service
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/api/summary", summary)
    app.router.add_get("/", index)
    return app
