"""The aiohttp application of the sidecar.

Routes:
    ``GET /metrics``      Prometheus text format, OpenMetrics when asked
                          (``Accept: application/openmetrics-text``).
    ``GET /healthz``      liveness: 200 while the process serves.
    ``GET /readyz``       readiness: 200 once the app serves (cheap: no collection).
    ``GET /api/summary``  the terminal dashboard's figures plus percentiles
                          (:func:`ragobs._report.as_json` of one report).
    ``GET /api/history``  the last 15 minutes, one point per 10 s, and the
                          breakdowns by model and stage (:mod:`ragobs._history`);
                          carries an ETag (``If-None-Match``: 304 until the next point).
    ``GET /``             a live panel of the same figures and charts of the
                          history (no Grafana needed): one self-contained page,
                          the vendored charting library inlined.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from collections.abc import AsyncIterator
from importlib import resources

from aiohttp import web
from prometheus_client import CollectorRegistry

from ragobs._exposition import render
from ragobs._history import History, InProcessSource
from ragobs._report import Reporter, ReportSource, as_json
from ragobs._summary_stats import SummaryStats

REGISTRY_KEY = web.AppKey("registry", CollectorRegistry)
REPORTER_KEY = web.AppKey("reporter", ReportSource)
HISTORY_KEY = web.AppKey("history", History)

#: Files of ``static/`` the page inlines where its placeholder comments are,
#: so that ``/`` is one self-contained response (no other URL is loaded).
INLINED = {
    "/* ragobs:inline uPlot.min.css */": "static/uPlot.min.css",
    "/* ragobs:inline uPlot.iife.min.js */": "static/uPlot.iife.min.js",
    "ragobs:inline uPlot.LICENSE": "static/uPlot.LICENSE",
}
#: What an inlined file must not contain (it would close its element or comment).
_CLOSERS = ("</script", "</style", "-->")

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


async def api_history(request: web.Request) -> web.Response:
    recorded = request.app[HISTORY_KEY]
    # In case the sampler task lags (or a test drives the clock). A failing source is
    # the sampler's to log: serve what there is.
    with contextlib.suppress(Exception):
        recorded.sample_if_due()
    etag = recorded.etag
    headers = {"Cache-Control": "no-store", "ETag": etag}
    wanted = request.headers.get("If-None-Match", "")
    if etag in (tag.strip() for tag in wanted.split(",")):
        return web.Response(status=304, headers=headers)
    return web.json_response(recorded.as_json(), dumps=_strict_dumps, headers=headers)


@functools.cache
def _page() -> str | None:
    """The panel with its vendored files inlined; read once."""
    static = resources.files("ragobs._server")
    try:
        html = static.joinpath("static/index.html").read_text(encoding="utf-8")
        for placeholder, path in INLINED.items():
            text = static.joinpath(path).read_text(encoding="utf-8")
            if placeholder not in html or any(c in text.lower() for c in _CLOSERS):
                raise ValueError(f"cannot inline {path} into the panel")
            html = html.replace(placeholder, text, 1)
    except FileNotFoundError:
        return None
    return html


async def index(request: web.Request) -> web.Response:
    html = _page()
    if html is None:
        return web.Response(text="ragobs sidecar: see /metrics, /api/summary and /api/history\n")
    return web.Response(text=html, content_type="text/html", headers={"Cache-Control": "no-store"})


async def _sampler(app: web.Application) -> AsyncIterator[None]:
    """The history's sampler, for as long as the app serves."""
    recorded = app[HISTORY_KEY]
    # The first interval starts as the app does (a failing source: the sampler logs it).
    with contextlib.suppress(Exception):
        recorded.sample_if_due()
    task = asyncio.create_task(recorded.run(), name="ragobs-history")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def create_app(registry: CollectorRegistry, reporter: ReportSource | SummaryStats,
               service: str | None = None, *, history: History | None = None) -> web.Application:
    """The sidecar application serving ``registry`` and the reports of ``reporter``.

    ``reporter`` builds each ``/api/summary`` (a runtime's has its resilience
    counts, service name and start time). A bare :class:`SummaryStats` is
    served with ``service`` (default "ragobs"), its uptime
    counted from now; ``service`` goes with a bare ``SummaryStats`` only.

    ``history`` serves ``/api/history``; by default one of ``reporter``'s
    summary and telemetry (:class:`~ragobs._history.InProcessSource`), a point
    every 10 s. Its sampler runs while the app serves.
    """
    if isinstance(reporter, SummaryStats):
        reporter = Reporter(reporter, service="ragobs" if service is None else service,
                            started=time.monotonic())
    elif not callable(getattr(reporter, "report", None)):
        raise TypeError(f"reporter must be a Reporter (anything with report()) or a "
                        f"SummaryStats, got {reporter!r}")
    elif service is not None:
        raise TypeError("service is given to the Reporter, not to create_app()")
    if history is None:
        if not isinstance(reporter, Reporter):
            raise TypeError("history must be given with a reporter of another kind "
                            "than ragobs._report.Reporter")
        history = History(InProcessSource(reporter.stats, reporter.telemetry))
    elif not isinstance(history, History):
        raise TypeError(f"history must be a History or None, got {history!r}")
    app = web.Application()
    app[REGISTRY_KEY] = registry
    app[REPORTER_KEY] = reporter
    app[HISTORY_KEY] = history
    app.cleanup_ctx.append(_sampler)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/api/summary", summary)
    app.router.add_get("/api/history", api_history)
    app.router.add_get("/", index)
    return app
