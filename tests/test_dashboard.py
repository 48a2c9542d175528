"""The Grafana dashboard and its provisioning, and every query of it against a real Prometheus.

Structure tests read ``dashboards/ragobs.json`` and the provisioning YAML. The
end-to-end test serves an instrumented demo agent on loopback, lets a real
``prometheus`` scrape it every second, then evaluates every PromQL expression
of the dashboard (panels and template variables) through the HTTP API, the way
Grafana would after substituting its variables, and compares the summary row
(turns) and the LLM-calls row (the demo's routing and answer calls, more than
the turns) with the app's own ``/api/summary``.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client import CollectorRegistry

from ragobs import semconv
from ragobs._runtime import Runtime, setup
from ragobs.demo.agent import DemoConfig
from ragobs.demo.runner import RunOptions, run_demo
from ragobs.demo.stack import CALL_OPERATION, MODEL, OPERATION, ROUTER_MODEL, Protection
from ragobs.errors import RateLimitTimeout
from ragobs.resilience import RateLimiter, RedisRateLimiter
from tests.promserver import PrometheusServer, finite
from tests.support import free_port, require_binary

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "dashboards" / "ragobs.json"
PROVISIONING = ROOT / "deploy" / "grafana" / "provisioning"
#: Where the compose stack mounts ./dashboards inside the Grafana container.
GRAFANA_DASHBOARDS_DIR = "/var/lib/grafana/dashboards"
PROMETHEUS_URL = "http://prometheus:9090"

#: Template variables filtering the panels, and the Prometheus label each one selects.
FILTERS = {"service": "service_name", "model": "gen_ai_request_model",
           "operation": "gen_ai_operation_name"}
#: Metrics of the LLM calls (per provider and model).
CALL_METRICS = (
    "gen_ai_client_operation_duration_seconds",
    "gen_ai_client_operation_time_to_first_chunk_seconds",
    "gen_ai_client_operation_time_per_output_chunk_seconds",
    "gen_ai_client_token_usage",
    "ragobs_stream_output_tokens_per_second",
)
#: Metrics of the turns (requests: one question answered), what the summary row reads.
TURN_METRICS = (
    "ragobs_requests_total",
    "ragobs_errors_total",
    "ragobs_requests_active",
    "ragobs_turn_duration_seconds",
    "ragobs_turn_time_to_first_chunk_seconds",
    "ragobs_turn_token_usage",
    "ragobs_turn_output_tokens_per_second",
    "ragobs_turn_inference_calls",
    "ragobs_turn_tool_calls",
    "ragobs_turn_time_to_first_chunk_phase_seconds_total",
)
#: Metrics recorded per call or turn: they carry model and operation labels besides the service.
REQUEST_METRICS = CALL_METRICS + TURN_METRICS

#: The summary row: title -> per refId, the /api/summary key and how to scale it.
SUMMARY_FIGURES: dict[str, dict[str, tuple[str, float]]] = {
    "Total Requests": {"A": ("total_requests", 1)},
    "Successful": {"A": ("successful", 1), "B": ("success_rate", 100)},
    "Failed": {"A": ("failed", 1), "B": ("failure_rate", 100)},
    "Avg TTFT": {"A": ("avg_ttft_seconds", 1)},
    "Avg Latency": {"A": ("avg_latency_seconds", 1)},
    "Avg Tokens": {"A": ("avg_tokens", 1)},
    "Avg Tokens/sec": {"A": ("avg_tokens_per_second", 1)},
}


# --- reading the dashboard ---------------------------------------------------------


def load_dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def all_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows and the panels inside collapsed rows included."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def data_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in all_panels(dashboard) if p["type"] != "row"]


def panel(dashboard: dict[str, Any], title: str) -> dict[str, Any]:
    found = [p for p in all_panels(dashboard) if p.get("title") == title]
    assert len(found) == 1, f"expected one panel titled {title!r}, found {len(found)}"
    return found[0]


def variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard["templating"]["list"]}


def variable_query(var: dict[str, Any]) -> str:
    """A query variable's query, whether stored as a string or as Grafana 10+'s object."""
    query = var["query"]
    text = query.get("query", "") if isinstance(query, dict) else query
    assert isinstance(text, str) and text
    return text


def panel_expressions(dashboard: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(panel title, refId, expr) of every panel target."""
    return [(p["title"], t["refId"], t["expr"])
            for p in data_panels(dashboard) for t in p["targets"]]


LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(?P<match>.+?)\s*,\s*)?(?P<label>\w+)\s*\)\s*$",
                          re.DOTALL)
QUERY_RESULT = re.compile(r"^\s*query_result\((?P<expr>.+)\)\s*$", re.DOTALL)
GRAFANA_VAR = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")
SELECTOR = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}")


def substitute(expr: str, values: dict[str, str]) -> str:
    """Replace Grafana variables the way Grafana does before sending a query.

    Fails on a variable the caller did not give, so no ``$...`` reaches Prometheus.
    """
    def one(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        if name not in values:
            raise AssertionError(f"no value for Grafana variable ${name} in {expr!r}")
        return values[name]

    return GRAFANA_VAR.sub(one, expr)


def referenced_filters(expr: str) -> set[str]:
    return {name for m in GRAFANA_VAR.finditer(expr)
            if (name := m.group(1) or m.group(2) or m.group(3)) in FILTERS}


def base_metric(name: str) -> str:
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and name[: -len(suffix)] in _HISTOGRAMS:
            return name[: -len(suffix)]
    return name


_HISTOGRAMS = {s.prometheus_name for s in semconv.ALL_INSTRUMENTS
               if s.kind is semconv.Kind.HISTOGRAM}
_CATALOGUE = {s.prometheus_name for s in semconv.ALL_INSTRUMENTS}


# --- structure -------------------------------------------------------------------


def test_dashboard_is_a_current_grafana_model() -> None:
    dashboard = load_dashboard()
    # Grafana 11.0 saves schemaVersion 39; newer releases migrate it forward on load.
    assert dashboard["schemaVersion"] >= 39
    assert dashboard["uid"] == "ragobs"
    assert dashboard["title"]
    assert dashboard["id"] is None  # importable into any Grafana
    assert dashboard["time"]["from"].startswith("now-")


def test_panel_ids_unique_and_layout_sane() -> None:
    dashboard = load_dashboard()
    panels = list(all_panels(dashboard))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    boxes = []
    for p in panels:
        g = p["gridPos"]
        assert g["w"] > 0 and g["h"] > 0 and g["x"] >= 0 and g["y"] >= 0, p["title"]
        assert g["x"] + g["w"] <= 24, f"{p['title']} is wider than the grid"
        boxes.append((p["title"], g["x"], g["y"], g["x"] + g["w"], g["y"] + g["h"]))
    for i, (a, ax0, ay0, ax1, ay1) in enumerate(boxes):
        for b, bx0, by0, bx1, by1 in boxes[i + 1:]:
            overlap = ax0 < bx1 and bx0 < ax1 and ay0 < by1 and by0 < ay1
            assert not overlap, f"panels {a!r} and {b!r} overlap"


def test_every_panel_queries_through_the_datasource_variable() -> None:
    dashboard = load_dashboard()
    panels = data_panels(dashboard)
    assert len(panels) >= 20
    for p in panels:
        assert p["description"].strip(), f"{p['title']} has no description"
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], f"{p['title']} has no query"
        ref_ids = [t["refId"] for t in p["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), p["title"]
        for t in p["targets"]:
            assert t["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
            assert t["expr"].strip()
    for var in variables(dashboard).values():
        if var["type"] == "query":
            assert var["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def test_variables_filter_service_model_and_operation() -> None:
    dashboard = load_dashboard()
    found = variables(dashboard)
    ds = found["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    assert ds["current"]["value"] == provisioned_datasource()["uid"]
    for name, label in FILTERS.items():
        var = found[name]
        assert var["type"] == "query"
        assert var["multi"] is True and var["includeAll"] is True
        m = LABEL_VALUES.match(variable_query(var))
        assert m is not None and m.group("label") == label, variable_query(var)


def test_every_query_filters_on_the_labels_its_metric_has() -> None:
    """Request metrics are filtered by service, model and operation; stage and
    resilience metrics (which only carry service_name) by service."""
    dashboard = load_dashboard()
    for title, ref, expr in panel_expressions(dashboard):
        selectors = SELECTOR.findall(expr)
        assert selectors, f"{title}/{ref}: no metric selector in {expr!r}"
        for metric, matchers in selectors:
            base = base_metric(metric)
            assert base in _CATALOGUE, f"{title}/{ref}: {metric} is not a ragobs metric"
            wanted = dict(FILTERS) if base in REQUEST_METRICS else {"service": "service_name"}
            for var, label in wanted.items():
                assert f'{label}=~"${var}"' in matchers, f"{title}/{ref}: {metric} lacks ${var}"
            if base not in REQUEST_METRICS:
                for label in ("gen_ai_request_model", "gen_ai_operation_name"):
                    assert label not in matchers, f"{title}/{ref}: {metric} has no {label}"


def test_summary_row_reproduces_the_seed_dashboard_with_its_targets() -> None:
    dashboard = load_dashboard()
    first_row_y = min(p["gridPos"]["y"] for p in dashboard["panels"] if p["type"] == "row")
    second_row_y = sorted({p["gridPos"]["y"] for p in dashboard["panels"]
                           if p["type"] == "row"})[1]
    summary = [p for p in dashboard["panels"]
               if p["type"] == "stat" and first_row_y < p["gridPos"]["y"] < second_row_y]
    assert [p["title"] for p in sorted(summary, key=lambda p: p["gridPos"]["x"])] == list(
        SUMMARY_FIGURES)

    def steps(p: dict[str, Any], ref: str = "A") -> list[tuple[str, float | None]]:
        thresholds = p["fieldConfig"]["defaults"]["thresholds"]
        for override in p["fieldConfig"]["overrides"]:
            if override["matcher"] == {"id": "byFrameRefID", "options": ref}:
                props = {x["id"]: x["value"] for x in override["properties"]}
                thresholds = props.get("thresholds", thresholds)
        return [(s["color"], s["value"]) for s in thresholds["steps"]]

    def unit(p: dict[str, Any], ref: str = "A") -> str:
        value: str = p["fieldConfig"]["defaults"]["unit"]
        for override in p["fieldConfig"]["overrides"]:
            if override["matcher"] == {"id": "byFrameRefID", "options": ref}:
                value = {x["id"]: x["value"] for x in override["properties"]}.get("unit", value)
        return value

    # The seed's targets: success > 95 %, TTFT < 3 s, latency < 10 s, tokens/sec > 20.
    assert steps(panel(dashboard, "Successful"), "B") == [("red", None), ("green", 95)]
    assert unit(panel(dashboard, "Successful"), "B") == "percent"
    assert steps(panel(dashboard, "Failed"), "B") == [("green", None), ("red", 5)]
    assert unit(panel(dashboard, "Failed"), "B") == "percent"
    assert steps(panel(dashboard, "Avg TTFT")) == [("green", None), ("red", 3)]
    assert unit(panel(dashboard, "Avg TTFT")) == "s"
    assert steps(panel(dashboard, "Avg Latency")) == [("green", None), ("red", 10)]
    assert unit(panel(dashboard, "Avg Latency")) == "s"
    assert steps(panel(dashboard, "Avg Tokens/sec")) == [("red", None), ("green", 20)]
    for p in summary:
        refs = {t["refId"] for t in p["targets"]}
        assert refs == set(SUMMARY_FIGURES[p["title"]]), p["title"]
        for t in p["targets"]:
            assert t["instant"] is True, p["title"]
            assert "$__range" in t["expr"], p["title"]
        if p["title"].startswith("Avg "):
            # The seed's averages are over successful requests only.
            for _, matchers in SELECTOR.findall(p["targets"][0]["expr"]):
                assert 'ragobs_outcome="ok"' in matchers, p["title"]


def rows(dashboard: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Row title -> the panels laid out under it (up to the next row)."""
    starts = sorted((p["gridPos"]["y"], p["title"]) for p in dashboard["panels"]
                    if p["type"] == "row")
    found: dict[str, list[dict[str, Any]]] = {title: [] for _, title in starts}
    for p in data_panels(dashboard):
        y = p["gridPos"]["y"]
        title = [t for start, t in starts if start < y][-1]
        found[title].append(p)
    return found


def metrics_of(p: dict[str, Any]) -> set[str]:
    return {base_metric(metric) for t in p["targets"] for metric, _ in SELECTOR.findall(t["expr"])}


def test_requests_are_turns_and_llm_calls_have_their_own_row() -> None:
    """The summary row and the user-facing percentiles read the turn metrics;
    the LLM calls row reads the GenAI call metrics, ragobs's own series only."""
    dashboard = load_dashboard()
    by_row = rows(dashboard)
    summary_row = next(title for title in by_row if title.startswith("Summary"))
    for p in by_row[summary_row]:
        assert metrics_of(p) <= set(TURN_METRICS), p["title"]
    for title in ("Time to first token p50 / p95 / p99", "Latency p50 / p95 / p99",
                  "Tokens/sec per request"):
        assert metrics_of(panel(dashboard, title)) <= set(TURN_METRICS), title
    assert metrics_of(panel(dashboard, "Avg TTFT")) == {"ragobs_turn_time_to_first_chunk_seconds"}
    assert metrics_of(panel(dashboard, "Avg Latency")) == {"ragobs_turn_duration_seconds"}
    assert metrics_of(panel(dashboard, "Avg Tokens")) == {"ragobs_turn_token_usage"}
    assert metrics_of(panel(dashboard, "Avg Tokens/sec")) == {
        "ragobs_turn_output_tokens_per_second"}

    calls = by_row["LLM calls (per provider and model)"]
    assert len(calls) >= 5
    for p in calls:
        assert metrics_of(p) <= set(CALL_METRICS), p["title"]
        for t in p["targets"]:
            assert re.search(r"by \([^)]*gen_ai_request_model", t["expr"]), p["title"]
            for _, matchers in SELECTOR.findall(t["expr"]):
                # Other GenAI instrumentations record the same names, without an outcome.
                assert "ragobs_outcome" in matchers, p["title"]
    turns = next(ps for title, ps in by_row.items() if title.startswith("Turns"))
    used = set().union(*(metrics_of(p) for p in turns))
    assert {"ragobs_turn_inference_calls", "ragobs_turn_tool_calls",
            "ragobs_turn_time_to_first_chunk_phase_seconds_total"} <= used
    (phases,) = [t["expr"] for p in turns for t in p["targets"] if "phase" in t["expr"]]
    assert phases.startswith("sum by (ragobs_phase)") and "/ scalar(" in phases
    # Every turn metric but the gauge has a panel somewhere.
    everywhere = set().union(*(metrics_of(p) for p in data_panels(dashboard)))
    assert set(TURN_METRICS) <= everywhere


def test_time_series_use_rate_interval_and_bucket_quantiles() -> None:
    dashboard = load_dashboard()
    series = [p for p in data_panels(dashboard) if p["type"] == "timeseries"]
    titles = " | ".join(p["title"] for p in series)
    for word in ("first token", "Latency", "Tokens/sec", "error", "In-flight", "stage",
                 "Rate-limit", "rejections", "Retries", "Timeouts", "Fallbacks"):
        assert word.lower() in titles.lower(), f"no time series panel about {word!r}"
    for p in series:
        for t in p["targets"]:
            expr = t["expr"]
            if "rate(" in expr:
                assert "[$__rate_interval]" in expr, f"{p['title']}: {expr}"
            if "histogram_quantile(" in expr:
                assert "_bucket{" in expr and "sum by (le" in expr, f"{p['title']}: {expr}"
    quantiles = {q for t in panel(dashboard, "Latency p50 / p95 / p99")["targets"]
                 for q in re.findall(r"histogram_quantile\((0\.\d+)", t["expr"])}
    assert quantiles == {"0.50", "0.95", "0.99"}


def provisioned_datasource() -> dict[str, Any]:
    config = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())
    assert config["apiVersion"] == 1
    (datasource,) = config["datasources"]
    assert isinstance(datasource, dict)
    return datasource


def test_provisioning_points_at_prometheus_and_the_dashboard() -> None:
    datasource = provisioned_datasource()
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == PROMETHEUS_URL
    assert datasource["uid"] == "prometheus" and datasource["isDefault"] is True
    config = yaml.safe_load((PROVISIONING / "dashboards" / "ragobs.yml").read_text())
    assert config["apiVersion"] == 1
    (provider,) = config["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == GRAFANA_DASHBOARDS_DIR
    # The compose stack mounts the repository's dashboards/ there.
    assert DASHBOARD.parent.name == "dashboards"
    for compose in (*ROOT.glob("*compose*.y*ml"), *ROOT.glob("deploy/*compose*.y*ml")):
        text = compose.read_text()
        assert f"dashboards:{GRAFANA_DASHBOARDS_DIR}" in text, compose
        assert "grafana/provisioning:/etc/grafana/provisioning" in text, compose


# --- end to end against a real Prometheus --------------------------------------------

SERVICE = "ragobs-dashboard-test"
#: Requests per wave of demo traffic (two waves, a scrape between them).
WAVE = 40
SCRAPE_INTERVAL = 1.0


async def send_wave(runtime: Runtime, seed: int) -> None:
    """Demo traffic through the full stack, plus rate-limit refusals.

    The demo's limiter makes requests wait, it never refuses them, so the
    rejection panel's two common reasons are provoked on a second limiter, and
    a shared (Redis) limiter whose Redis is unreachable feeds the backend panel.
    """
    await run_demo(
        runtime,
        DemoConfig(failure_rate=0.3, slow_rate=0.3, slow_call_rate=0.3, time_scale=0.02),
        RunOptions(requests=WAVE, concurrency=8, summary_every=0),
        protection=Protection(rate_limit=6, rate_window=2.0, first_token_timeout=1.0),
        seed=seed,
        out=io.StringIO(),
    )
    quota = RateLimiter(max_requests=1, window_seconds=60.0, name="quota",
                        telemetry=runtime.telemetry)
    assert quota.try_acquire()
    assert not quota.try_acquire()  # reason no_capacity
    with pytest.raises(RateLimitTimeout):
        await quota.acquire(max_wait=0.01)  # reason timeout
    shared = RedisRateLimiter(10, 60.0, url=f"redis://127.0.0.1:{free_port()}/0",
                              on_unavailable="open", backend_timeout=0.5, name="shared",
                              telemetry=runtime.telemetry)
    try:
        assert await shared.acquire() == 0.0  # nothing listens there: granted, counted
    finally:
        await shared.aclose()


async def get_summary(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/api/summary") as resp:
        assert resp.status == 200
        data: dict[str, Any] = await resp.json()
        return data


async def scrape_time(prom: PrometheusServer) -> float:
    """Timestamp of the latest scrape of the app (all its samples carry it)."""
    value = await asyncio.to_thread(prom.value, 'timestamp(up{job="ragobs"})')
    return value if value is not None else 0.0


async def wait_scraped(prom: PrometheusServer, requests: int) -> float:
    """Wait until Prometheus holds ``requests`` finished requests, then for one more
    scrape (so every series has a sample after the traffic); its timestamp."""
    def counted() -> bool:
        return prom.value("sum(ragobs_requests_total)") == requests

    await asyncio.to_thread(prom.wait_for, counted, 20.0, 0.2, f"{requests} requests scraped")
    seen = await scrape_time(prom)
    await asyncio.to_thread(
        prom.wait_for, lambda: (prom.value('timestamp(up{job="ragobs"})') or 0) > seen,
        10.0, 0.2, "one more scrape")
    return await scrape_time(prom)


def duration(seconds: float) -> str:
    """A PromQL duration in whole milliseconds (scrape timestamps are in ms)."""
    return f"{round(seconds * 1000)}ms"


def expected(summary: dict[str, Any], key: str, scale: float) -> float:
    value = summary[key]
    assert value is not None, key
    return float(value) * scale


@pytest.mark.needs_prometheus
async def test_every_dashboard_query_answers_from_a_real_prometheus(tmp_path: Path) -> None:
    """Every PromQL expression of the dashboard returns data, and the summary row
    equals the app's ``/api/summary``.

    Exactness, and the tolerance: none for counts, 1e-9 relative for averages
    and percentages (float rounding only).

    * Over a range that starts before the app did, the summary queries take
      each series' whole value (``last_over_time``): exact counts, and
      ``_sum / _count`` means are exact means.
    * Over a range that starts on the scrape taken between the two waves, the
      series that existed then go through ``increase()``. Prometheus 2.x
      selects ``[T - range, T]`` inclusive, so with both ends on scrape
      timestamps the first and last samples sit on the edges and
      ``increase()`` has nothing to extrapolate: the second wave's counts come
      out exact too.

    ``$__rate_interval`` and ``$__interval`` become the whole range, so that
    rate() windows span the traffic and have non-zero increases.
    """
    require_binary("prometheus")
    started = time.time()
    runtime = setup(service_name=SERVICE, serve=False, set_global=False,
                    registry=CollectorRegistry())
    sidecar = await runtime.start_server("127.0.0.1", 0)
    prom = PrometheusServer(tmp_path, [f"127.0.0.1:{sidecar.port}"],
                            scrape_interval=f"{SCRAPE_INTERVAL:g}s")
    try:
        await asyncio.to_thread(prom.start)
        await send_wave(runtime, seed=11)
        first = await get_summary(sidecar.url)
        assert first["total_requests"] == WAVE
        between = await wait_scraped(prom, WAVE)
        await send_wave(runtime, seed=12)
        final = await get_summary(sidecar.url)
        assert final["total_requests"] == 2 * WAVE
        assert final["failed"] > first["failed"] > 0
        at = await wait_scraped(prom, 2 * WAVE)
        await check_dashboard(prom, at, at - started + 30.0, final)
        await check_calls_row(prom, at, at - started + 30.0, final)
        await check_second_wave(prom, at, at - between, first, final)
    finally:
        await asyncio.to_thread(prom.stop)
        await runtime.stop_server()
        runtime.shutdown()


ALL = {"service": ".*", "model": ".*", "operation": ".*"}
#: Every real value selected, as Grafana sends a multi-value selection: the
#: turns' (invoke_agent, their answer model) and the calls' (chat, both models).
REAL = {"service": SERVICE, "model": f"({MODEL}|{ROUTER_MODEL})",
        "operation": f"({OPERATION}|{CALL_OPERATION})"}
#: One value each: the turns.
TURNS = {"service": SERVICE, "model": MODEL, "operation": OPERATION}


def grafana_values(range_s: float, filters: dict[str, str]) -> dict[str, str]:
    window = duration(range_s)
    return {"__range": window, "__rate_interval": window, "__interval": window,
            "datasource": "prometheus", **filters}


async def check_dashboard(prom: PrometheusServer, at: float, range_s: float,
                          final: dict[str, Any]) -> None:
    dashboard = load_dashboard()
    exprs = panel_expressions(dashboard)

    def evaluate(expr: str, filters: dict[str, str]) -> list[dict[str, Any]]:
        return prom.query(substitute(expr, grafana_values(range_s, filters)), at)

    def run_all() -> int:
        evaluated = 0
        for title, ref, expr in exprs:
            for filters in (ALL, REAL):
                rows = evaluate(expr, filters)
                assert finite(rows), f"{title}/{ref} with {filters}: no data: {rows}"
                evaluated += 1
            # Each filter the query uses really filters: a value nobody has empties it.
            for var in referenced_filters(expr):
                rows = evaluate(expr, {**ALL, var: "no-such-value"})
                assert rows == [], f"{title}/{ref} ignores ${var}: {rows}"
                evaluated += 1
        return evaluated

    evaluated = await asyncio.to_thread(run_all)
    assert evaluated >= 3 * len(exprs)

    # Template variables: label_values(...) as Grafana asks for it.
    def run_variables() -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for name, var in variables(dashboard).items():
            if var["type"] != "query":
                continue
            query = substitute(variable_query(var), ALL)
            if m := LABEL_VALUES.match(query):
                match = [m.group("match")] if m.group("match") else []
                out[name] = prom.label_values(m.group("label"), match)
            elif m := QUERY_RESULT.match(query):
                out[name] = [json.dumps(r["metric"]) for r in prom.query(m.group("expr"), at)]
            else:
                raise AssertionError(f"variable {name}: unsupported query {query!r}")
        return out

    # The filters offer the turns' values and the calls' (an LLM-calls panel
    # filtered by the turns' operation alone would be empty).
    assert await asyncio.to_thread(run_variables) == {
        "service": [SERVICE], "model": sorted([MODEL, ROUTER_MODEL]),
        "operation": sorted([OPERATION, CALL_OPERATION])}

    # The summary row says what /api/summary says, for All and for the real values.
    def figures(filters: dict[str, str]) -> dict[tuple[str, str], float]:
        out = {}
        for title, refs in SUMMARY_FIGURES.items():
            for t in panel(dashboard, title)["targets"]:
                assert t["refId"] in refs
                rows = evaluate(t["expr"], filters)
                assert len(rows) == 1, f"{title}/{t['refId']}: {rows}"
                out[title, t["refId"]] = float(rows[0]["value"][1])
        return out

    for filters in (ALL, REAL, TURNS):
        got = await asyncio.to_thread(figures, filters)
        for (title, ref), value in got.items():
            key, scale = SUMMARY_FIGURES[title][ref]
            want = expected(final, key, scale)
            if scale == 1 and key in ("total_requests", "successful", "failed"):
                assert value == want, f"{title}: dashboard {value}, /api/summary {want}"
            else:
                assert math.isclose(value, want, rel_tol=1e-9), \
                    f"{title}/{ref}: dashboard {value}, /api/summary {want}"


async def check_calls_row(prom: PrometheusServer, at: float, range_s: float,
                          final: dict[str, Any]) -> None:
    """The LLM-calls row counts what the ``/api/summary`` calls table counts:
    its panels' series, each taken whole over a range that starts before the
    app did, give the calls, failed calls and tokens of each provider and
    model exactly; and the calls outnumber the turns."""
    dashboard = load_dashboard()
    table = {(row["provider"], row["model"]): row for row in final["calls"]}
    assert set(table) == {("simulated", ROUTER_MODEL), ("simulated", MODEL)}
    calls = sum(row["calls"] for row in table.values())
    # Each turn routes and answers, once or more (retries).
    assert calls >= 2 * final["total_requests"]
    for row in table.values():
        assert row["calls"] >= final["total_requests"], row

    def totals(title: str, by: tuple[str, ...]) -> dict[tuple[str, ...], float]:
        """``title``'s series, each one's whole value summed ``by`` these labels."""
        (target,) = panel(dashboard, title)["targets"]
        selectors = {m.group(0) for m in SELECTOR.finditer(target["expr"])}
        assert len(selectors) == 1, selectors
        selector = substitute(selectors.pop(), grafana_values(range_s, ALL))
        expr = (f"sum by ({', '.join(by)}) "
                f"(last_over_time({selector}[{duration(range_s)}]))")
        return {tuple(row["metric"].get(label, "") for label in by): float(row["value"][1])
                for row in prom.query(expr, at)}

    by_model = ("gen_ai_provider_name", "gen_ai_request_model")
    got = await asyncio.to_thread(lambda: {
        "calls": totals("LLM calls/s by model and outcome", by_model),
        "failed": totals("Failed LLM calls/s by model and error.type", by_model),
        "tokens": totals("Tokens/s in and out by model",
                         ("gen_ai_request_model", "gen_ai_token_type")),
    })
    assert got["calls"] == {key: row["calls"] for key, row in table.items()}
    assert sum(got["calls"].values()) == calls > final["total_requests"]
    assert got["failed"] == {key: row["failed"] for key, row in table.items() if row["failed"]}
    assert sum(got["failed"].values()) > final["failed"]  # retried calls recovered turns
    for (_, model), row in table.items():
        assert got["tokens"][model, "output"] == row["output_tokens"] > 0
        assert got["tokens"].get((model, "input"), 0) == row["input_tokens"]


async def check_second_wave(prom: PrometheusServer, at: float, range_s: float,
                            first: dict[str, Any], final: dict[str, Any]) -> None:
    """Over a range covering only the second wave, the counts and the means with a
    known denominator equal the difference of the two /api/summary snapshots."""
    dashboard = load_dashboard()

    def value(title: str, ref: str = "A") -> float:
        (target,) = [t for t in panel(dashboard, title)["targets"] if t["refId"] == ref]
        expr = substitute(target["expr"], grafana_values(range_s, ALL))
        got = prom.value(expr, at)
        assert got is not None, f"{title}/{ref}: no data over the second wave"
        return got

    def delta(key: str) -> float:
        return float(final[key] - first[key])

    def mean_of_wave(key: str) -> float:
        ok_1, ok_2 = first["successful"], final["successful"]
        return float((final[key] * ok_2 - first[key] * ok_1) / (ok_2 - ok_1))

    got = await asyncio.to_thread(lambda: {
        "total": value("Total Requests"),
        "ok": value("Successful"),
        "failed": value("Failed"),
        "latency": value("Avg Latency"),
        "tokens": value("Avg Tokens"),
    })
    assert got["total"] == delta("total_requests") == WAVE
    assert got["ok"] == delta("successful")
    assert got["failed"] == delta("failed")
    assert math.isclose(got["latency"], mean_of_wave("avg_latency_seconds"), rel_tol=1e-9)
    assert math.isclose(got["tokens"], mean_of_wave("avg_tokens"), rel_tol=1e-9)
