"""The aiohttp application of the sidecar.

Routes:
    ``GET /metrics``      Prometheus text format, OpenMetrics when asked
                          (``Accept: application/openmetrics-text``).
    ``GET /healthz``      liveness: 200 while the process serves.
    ``GET /readyz``       readiness: 200 once the app serves (cheap: no collection).
    ``GET /api/summary``  the terminal dashboard's figures plus percentiles
                          (:func:`ragobs.report.as_json` of one report).
    ``GET /``             a live panel of the same figures (no Grafana needed).
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from importlib import resources

from aiohttp import web
from prometheus_client import CollectorRegistry

from ragobs.exposition import render
from ragobs.report import Reporter, as_json
from ragobs.summary_stats import SummaryStats

REGISTRY_KEY = web.AppKey("registry", CollectorRegistry)
REPORTER_KEY = web.AppKey("reporter", Reporter)

_strict_dumps = functools.partial(json.dumps, allow_nan=False)


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
    report = request.app[REPORTER_KEY].report()
    return web.json_response(as_json(report), dumps=_strict_dumps,
                             headers={"Cache-Control": "no-store"})


async def index(request: web.Request) -> web.Response:
    page = resources.files("ragobs.server").joinpath("static/index.html")
    try:
        html = page.read_text(encoding="utf-8")
    except FileNotFoundError:
        return web.Response(text="ragobs sidecar: see /metrics and /api/summary\n")
    return web.Response(text=html, content_type="text/html", headers={"Cache-Control": "no-store"})


def create_app(registry: CollectorRegistry, reporter: Reporter | SummaryStats,
               service: str | None = None) -> web.Application:
    """The sidecar application serving ``registry`` and the reports of ``reporter``.

    ``reporter`` builds each ``/api/summary`` (a runtime's has its resilience
    counts, service name and start time). A bare :class:`SummaryStats` is
    served with ``service`` (default "ragobs"), its uptime
    counted from now; ``service`` goes with a bare ``SummaryStats`` only.
    """
    if isinstance(reporter, SummaryStats):
        reporter = Reporter(reporter, service="ragobs" if service is None else service,
                            started=time.monotonic())
    elif not isinstance(reporter, Reporter):
        raise TypeError(f"reporter must be a Reporter or a SummaryStats, got {reporter!r}")
    elif service is not None:
        raise TypeError("service is given to the Reporter, not to create_app()")
    app = web.Application()
    app[REGISTRY_KEY] = registry
    app[REPORTER_KEY] = reporter
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/api/summary", summary)
    app.router.add_get("/", index)
    return app
