"""The Grafana dashboard and its provisioning, and every query of it against a real Prometheus.

Structure tests read ``dashboards/ragobs.json`` and the provisioning YAML. The
end-to-end test lets a real ``prometheus`` (exemplar storage on, the shipped
rules loaded) scrape three targets every second:

* the instrumented demo agent (simulated provider);
* a second ragobs service whose calls are priced: the demo through the real
  ``openai`` client, plus scripted calls (prompt-cache reads, answers cut off
  by ``length``, a model without a price, a model that always fails, streams
  the consumer abandons), with the official OpenTelemetry OpenAI
  instrumentation recording the same calls again beside ragobs;
* a host sidecar (``ragobs sidecar``) fed by an agent without ragobs: the
  plain OpenTelemetry SDK recording the GenAI semconv metrics, 50 operations,
  45 ok and 5 failed.

It evaluates every PromQL expression of the dashboard (panels and template
variables) through the HTTP API, the way Grafana would after substituting its
variables, and compares the summary row (turns, and the other agent's
operations), the LLM-calls row, the cost, finish-reason, cache and per-instance
panels with the apps' own ``/api/summary`` and the traffic sent, service by
service and all together; nothing is counted twice. The LLM-call latency and
TTFT panels' exemplars come back with trace ids, and the rules record the
other agent's requests too.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import math
import random
import re
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import yaml
from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

import ragobs
from ragobs import semconv
from ragobs._runtime import Runtime, setup
from ragobs.demo.agent import DemoConfig
from ragobs.demo.provider import OPENAI_MODEL
from ragobs.demo.runner import RunOptions, run_demo
from ragobs.demo.stack import CALL_OPERATION, MODEL, OPERATION, ROUTER_MODEL, Protection
from ragobs.errors import RateLimitTimeout
from ragobs.resilience import RateLimiter, RedisRateLimiter
from tests.procserver import ServerProcess
from tests.promserver import PrometheusServer, finite
from tests.provider_server import ProviderServer, Reply
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
    "ragobs_finish_reasons_total",
    "ragobs_usage_tokens_total",
    "ragobs_spend_usd_total",
    "ragobs_unpriced_calls_total",
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
    "ragobs_turn_cost_usd",
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
#: The clause after other agents' series (no ragobs_outcome): it leaves out every
#: series of a service that runs ragobs (its requests are ragobs_requests_total,
#: and another GenAI instrumentation in its process records the same calls
#: again), over the window of the query around it.
GUARD = re.compile(r"unless on \(service_name\) last_over_time\(ragobs_requests_total"
                   r'\{service_name=~"\$service"\}\[(\$__range|\$__rate_interval)\]\)')
#: The matchers of another agent's series, and of its successful / failed ones.
OTHER = 'ragobs_outcome=""'
OTHER_OK = (OTHER, 'error_type=""')
OTHER_FAILED = (OTHER, 'error_type!=""')


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


def without_guards(expr: str) -> str:
    return GUARD.sub(" ", expr)


def is_other(matchers: str) -> bool:
    """Whether a selector's matchers pick other agents' series (no ragobs_outcome)."""
    return OTHER in matchers


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
        selectors = SELECTOR.findall(without_guards(expr))
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
            # The seed's averages are over successful requests only: ragobs's
            # turns that ended ok, other agents' operations without error.type.
            for _, matchers in SELECTOR.findall(without_guards(p["targets"][0]["expr"])):
                assert ('ragobs_outcome="ok"' in matchers
                        or all(m in matchers for m in OTHER_OK)), p["title"]


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
    """The metrics ``p`` shows (the guards' ragobs_requests_total aside)."""
    return {base_metric(metric) for t in p["targets"]
            for metric, _ in SELECTOR.findall(without_guards(t["expr"]))}


def ours_and_others(p: dict[str, Any]) -> tuple[set[str], set[str]]:
    """The metrics ``p`` reads of ragobs's series, and of other agents' series."""
    ours: set[str] = set()
    others: set[str] = set()
    for t in p["targets"]:
        for metric, matchers in SELECTOR.findall(without_guards(t["expr"])):
            (others if is_other(matchers) else ours).add(base_metric(metric))
    return ours, others


def test_requests_are_turns_and_llm_calls_have_their_own_row() -> None:
    """The summary row and the user-facing percentiles read the turn metrics,
    and other agents' GenAI operations (their calls are their turns); the LLM
    calls row reads the GenAI call metrics: ragobs's own series (an outcome)
    and other agents'."""
    dashboard = load_dashboard()
    by_row = rows(dashboard)
    summary_row = next(title for title in by_row if title.startswith("Summary"))
    for p in by_row[summary_row]:
        ours, others = ours_and_others(p)
        assert ours <= set(TURN_METRICS), p["title"]
        assert others <= set(CALL_METRICS), p["title"]
    for title in ("Time to first token p50 / p95 / p99", "Latency p50 / p95 / p99",
                  "Tokens/sec per request"):
        assert ours_and_others(panel(dashboard, title))[0] <= set(TURN_METRICS), title
    assert ours_and_others(panel(dashboard, "Avg TTFT")) == (
        {"ragobs_turn_time_to_first_chunk_seconds"},
        {"gen_ai_client_operation_time_to_first_chunk_seconds"})
    assert ours_and_others(panel(dashboard, "Avg Latency")) == (
        {"ragobs_turn_duration_seconds"}, {"gen_ai_client_operation_duration_seconds"})
    assert ours_and_others(panel(dashboard, "Avg Tokens")) == (
        {"ragobs_turn_token_usage"}, {"gen_ai_client_token_usage"})
    # Other agents do not measure a request's tokens/s.
    assert ours_and_others(panel(dashboard, "Avg Tokens/sec")) == (
        {"ragobs_turn_output_tokens_per_second"}, set())

    calls = by_row["LLM calls (per provider and model)"]
    assert len(calls) >= 11
    for p in calls:
        assert metrics_of(p) <= set(CALL_METRICS), p["title"]
        for t in p["targets"]:
            assert re.search(r"by \([^)]*gen_ai_request_model", t["expr"]), p["title"]
            for metric, matchers in SELECTOR.findall(without_guards(t["expr"])):
                # GenAI names are shared: each selector says whose series it wants.
                if metric.startswith("gen_ai_"):
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


#: Panels that count agents without ragobs as well (request panels: their
#: operations are their requests; LLM-call panels: their calls).
WITH_OTHER_AGENTS = (
    "Total Requests", "Successful", "Failed", "Avg TTFT", "Avg Latency", "Avg Tokens",
    "Time to first token p50 / p95 / p99", "Latency p50 / p95 / p99", "Requests/s by outcome",
    "Error rate by error.type", "LLM calls/s by model and outcome",
    "LLM call time to first chunk p50 / p95 by model", "LLM call latency p95 by model",
    "Tokens/s in and out by model", "Failed LLM calls/s by model and error.type",
    "Success rate by model", "Time per output chunk p50 / p95 / p99 by model",
    "Requests/s by instance", "Failed share by instance", "Time to first token p95 by instance",
    "Latency p95 by instance",
)


def test_other_agents_count_where_requests_and_calls_do() -> None:
    """Agents without ragobs show on the request and call panels: each target
    reads ragobs's series and other agents' (successful ones where ragobs's
    are; failed ones where ragobs's failed are)."""
    dashboard = load_dashboard()
    for title in WITH_OTHER_AGENTS:
        for t in panel(dashboard, title)["targets"]:
            selectors = SELECTOR.findall(without_guards(t["expr"]))
            ours = [m for _, m in selectors if not is_other(m)]
            others = [m for _, m in selectors if is_other(m)]
            assert ours and others, f"{title}/{t['refId']}"
            if any('ragobs_outcome="ok"' in m for m in ours) and not any(
                    'ragobs_outcome!=""' in m or "ragobs_outcome" not in m for m in ours):
                assert all(all(x in m for x in OTHER_OK) for m in others), title
            if all("error|timeout" in m for m in ours):
                assert all(all(x in m for x in OTHER_FAILED) for m in others), title


def test_other_agents_series_are_guarded_and_ragobs_never_counted_twice() -> None:
    """Every selector of other agents' series (no ragobs_outcome) is followed,
    within its own clause, by the guard that leaves out the services running
    ragobs, over the clause's window; no ragobs selector sits in that clause,
    and a guard follows nothing else."""
    for title, ref, expr in panel_expressions(load_dashboard()):
        guards = list(GUARD.finditer(expr))
        for m in SELECTOR.finditer(expr):
            if not is_other(m.group(2)):
                continue
            guard = next((g for g in guards if g.start() > m.end()), None)
            assert guard is not None, f"{title}/{ref}: {m.group(0)} is not guarded"
            clause = expr[m.end():guard.start()]
            assert all(is_other(matchers) for _, matchers in SELECTOR.findall(clause)), \
                f"{title}/{ref}: ragobs's series inside another agent's clause: {clause}"
            window = "$__range" if "[$__range]" in clause else "$__rate_interval"
            assert guard.group(1) == window, f"{title}/{ref}: guard over {guard.group(1)}"
        for g in guards:
            before = SELECTOR.findall(without_guards(expr[:g.start()]))
            assert before and is_other(before[-1][1]), f"{title}/{ref}: a guard of nothing"


#: The panels operators look for first (issue 17): title -> (type, unit).
OPERATOR_PANELS = {
    "Tokens/s in and out by model": ("timeseries", "short"),
    "Success rate by model": ("table", "short"),
    "Time per output chunk p50 / p95 / p99 by model": ("timeseries", "s"),
    "Streams abandoned or without a first chunk, by model": ("timeseries", "reqps"),
    "Finish reasons/s by model and reason": ("timeseries", "short"),
    "Share cut off by length, by model": ("timeseries", "percentunit"),
    "Cache-hit ratio by model": ("timeseries", "percentunit"),
    "Spend": ("stat", "currencyUSD"),
    "Avg cost per answer": ("stat", "currencyUSD"),
    "Unpriced calls": ("stat", "short"),
    "Spend per hour by model": ("timeseries", "currencyUSD"),
    "Cost per answer p50 / p95": ("timeseries", "currencyUSD"),
    "Requests/s by instance": ("timeseries", "reqps"),
    "Failed share by instance": ("timeseries", "percentunit"),
    "Time to first token p95 by instance": ("timeseries", "s"),
    "Latency p95 by instance": ("timeseries", "s"),
}


def test_the_panels_operators_look_for_first() -> None:
    dashboard = load_dashboard()
    for title, (kind, unit) in OPERATOR_PANELS.items():
        p = panel(dashboard, title)
        assert p["type"] == kind, title
        if title != "Tokens/s in and out by model":
            assert p["fieldConfig"]["defaults"]["unit"] == unit, title
    by_row = rows(dashboard)
    instance = next(ps for title, ps in by_row.items() if title.startswith("Per instance"))
    for p in instance:
        for t in p["targets"]:
            assert re.search(r"by \((le, )?instance\)", t["expr"]), p["title"]
    cost = next(ps for title, ps in by_row.items() if title.startswith("Cost"))
    assert {base for p in cost for base in metrics_of(p)} == {
        "ragobs_spend_usd_total", "ragobs_turn_cost_usd", "ragobs_unpriced_calls_total"}
    assert "3600 * " in panel(dashboard, "Spend per hour by model")["targets"][0]["expr"]
    # The table: instant queries over the range, one row per provider and model,
    # a model without any ok call listed at 0 (not left out).
    table = panel(dashboard, "Success rate by model")
    for t in table["targets"]:
        assert t["instant"] is True and t["format"] == "table" and "$__range" in t["expr"]
        assert t["expr"].startswith(("sum by (gen_ai_provider_name, gen_ai_request_model)",
                                     "100 * (sum by (gen_ai_provider_name, gen_ai_request_model)"))
    for ref in "BCD":
        (t,) = [t for t in table["targets"] if t["refId"] == ref]
        assert "\nor 0 * sum by (gen_ai_provider_name, gen_ai_request_model)" in t["expr"], ref
    renamed = table["transformations"][1]["options"]["renameByName"]
    assert [renamed[f"Value #{ref}"] for ref in "ABCD"] == ["Calls", "OK", "Failed", "Success %"]


#: The metrics ragobs gives exemplars (trace ids) on /metrics: the LLM calls' and
#: the turns' latency and TTFT (see ragobs/_stream.py and ragobs/_exposition.py).
EXEMPLAR_METRICS = {semconv.OPERATION_DURATION.prometheus_name,
                    semconv.TIME_TO_FIRST_CHUNK.prometheus_name,
                    semconv.TURN_DURATION.prometheus_name,
                    semconv.TURN_TIME_TO_FIRST_CHUNK.prometheus_name}


def test_exemplars_on_the_latency_and_ttft_panels_link_to_traces() -> None:
    dashboard = load_dashboard()
    with_exemplars = {(p["title"], t["refId"]): t for p in data_panels(dashboard)
                      for t in p["targets"] if t.get("exemplar")}
    assert {title for title, _ in with_exemplars} == {
        "Time to first token p50 / p95 / p99", "Latency p50 / p95 / p99",  # the turns'
        "LLM call time to first chunk p50 / p95 by model", "LLM call latency p95 by model"}
    for t in with_exemplars.values():
        assert t["instant"] is False  # Grafana draws exemplars on range queries
        assert {base_metric(metric) for metric, _ in SELECTOR.findall(without_guards(t["expr"]))
                } <= EXEMPLAR_METRICS
    # The datasource turns a trace_id exemplar label into a link to Jaeger; the
    # compose Prometheus keeps exemplars.
    links = provisioned_datasource()["jsonData"]["exemplarTraceIdDestinations"]
    assert [(link["name"], link["datasourceUid"]) for link in links] == [("trace_id", "jaeger")]
    jaeger = yaml.safe_load((PROVISIONING / "datasources" / "jaeger.yml").read_text())
    assert [ds["uid"] for ds in jaeger["datasources"] if ds["type"] == "jaeger"] == ["jaeger"]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert "--enable-feature=exemplar-storage" in compose["services"]["prometheus"]["command"]


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
#: A second ragobs service, whose LLM calls are priced (the demo through the real
#: openai client, and scripted calls), with a second GenAI instrumentation beside it.
PRICED = "ragobs-dashboard-priced"
#: An agent without ragobs (the plain OpenTelemetry SDK), behind a host sidecar.
OTHER_SERVICE = "node-agent"
OTHER_MODEL = "gpt-4.1-nano"
#: Its operations per wave, and the indexes of those that fail: 50, 45 ok, 5 failed.
OTHER_WAVE = 25
OTHER_FAILURES = ({3, 11, 19}, {6, 18})
#: Requests per wave of demo traffic (two waves, a scrape between them).
WAVE = 40
#: Turns per wave of the priced service's demo (through openai).
PRICED_TURNS = 8
SCRAPE_INTERVAL = 1.0
RULES = ROOT / "deploy" / "prometheus" / "rules" / "ragobs.rules.yml"

#: The priced service's scripted calls, each wave: the prompt cache read (2 that
#: stop, 1 cut off by max_tokens), a model nobody prices, a model that always
#: fails, and a stream abandoned after its first content.
CACHED_MODEL = "gpt-4.1-mini"
UNPRICED_MODEL = "ragobs-test-unpriced-model"
DOWN_MODEL = "gpt-4o-always-down"
CACHED = Reply(model="gpt-4.1-mini-2025-04-14", input_tokens=1200, cached_tokens=1024,
               output_tokens=30, pieces=("Cached", " answer", "."))
CUT = dataclasses.replace(CACHED, finish_reason="length")
UNPRICED = Reply(model=UNPRICED_MODEL, input_tokens=50, output_tokens=5)
DOWN = Reply(status=500)


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


async def send_priced_wave(runtime: Runtime, server: ProviderServer, seed: int) -> None:
    """The priced service's traffic: demo turns through the real openai client
    (priced from their usage: spend, cost per answer, finish reasons), then the
    scripted calls, each a turn of one call (see :data:`CACHED`)."""
    await run_demo(
        runtime, DemoConfig(failure_rate=0.2, slow_rate=0.1, slow_call_rate=0.1, time_scale=0.2),
        RunOptions(requests=PRICED_TURNS, concurrency=4, summary_every=0),
        protection=Protection(rate_limit=12, rate_window=2.0), seed=seed, out=io.StringIO(),
        provider="openai")
    client = ragobs.instrument_client(
        openai.AsyncOpenAI(base_url=server.openai_url, api_key="test", max_retries=0),
        telemetry=runtime.telemetry)

    async def create(model: str) -> Any:
        return await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], stream=True)

    server.script(CACHED, CACHED, CUT, UNPRICED, DOWN, CACHED)
    for model in (CACHED_MODEL, CACHED_MODEL, CACHED_MODEL, UNPRICED_MODEL):
        async for _ in await create(model):
            pass
    with pytest.raises(openai.InternalServerError):
        await create(DOWN_MODEL)
    stream = await create(CACHED_MODEL)
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            break  # the first content: the consumer goes away
    await stream.close()


class OtherAgent:
    """An agent without ragobs: the plain OpenTelemetry SDK recording the GenAI
    semconv client metrics with the conventions' bucket advice (as
    opentelemetry-util-genai does), pushed by OTLP/HTTP to a host sidecar.
    Nothing here is ragobs's."""

    SECONDS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48,
               40.96, 81.92)
    TOKENS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304,
              16777216, 67108864)

    def __init__(self, sidecar_url: str) -> None:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
        from opentelemetry.sdk.resources import Resource

        reader = PeriodicExportingMetricReader(
            OTLPMetricExporter(endpoint=f"{sidecar_url}/v1/metrics"),
            export_interval_millis=3_600_000)  # pushed by the test, at the end of a wave
        self.provider = MeterProvider(resource=Resource.create({"service.name": OTHER_SERVICE}),
                                      metric_readers=[reader])
        meter = self.provider.get_meter("my.genai.instrumentation")
        self.duration = meter.create_histogram(
            "gen_ai.client.operation.duration", unit="s",
            explicit_bucket_boundaries_advisory=list(self.SECONDS))
        self.ttft = meter.create_histogram(
            "gen_ai.client.operation.time_to_first_chunk", unit="s",
            explicit_bucket_boundaries_advisory=list(self.SECONDS))
        self.tokens = meter.create_histogram(
            "gen_ai.client.token.usage", unit="{token}",
            explicit_bucket_boundaries_advisory=list(self.TOKENS))

    async def wave(self, index: int) -> dict[str, float]:
        """:data:`OTHER_WAVE` operations, pushed; what an exact summary of them says."""
        rng = random.Random(100 + index)
        ok = failed = 0
        latency = 0.0
        for i in range(OTHER_WAVE):
            attrs = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                     "gen_ai.request.model": OTHER_MODEL}
            seconds = round(rng.uniform(0.2, 4.0), 3)
            if i in OTHER_FAILURES[index]:
                self.duration.record(seconds, {**attrs, "error.type": "500"})
                failed += 1
                continue
            self.duration.record(seconds, attrs)
            self.ttft.record(round(seconds * rng.uniform(0.1, 0.5), 3), attrs)
            self.tokens.record(rng.randint(100, 900), {**attrs, "gen_ai.token.type": "input"})
            self.tokens.record(rng.randint(20, 400), {**attrs, "gen_ai.token.type": "output"})
            ok += 1
            latency += seconds
        assert await asyncio.to_thread(self.provider.force_flush)
        return {"total_requests": ok + failed, "successful": ok, "failed": failed,
                "avg_latency_seconds": latency / ok}

    async def stop(self) -> None:
        await asyncio.to_thread(self.provider.shutdown)


class HostSidecar(ServerProcess):
    """``ragobs sidecar`` (the host sidecar) on a free loopback port."""

    label = "host sidecar"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir / "host-sidecar.log")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self, ready_timeout: float = 20.0) -> HostSidecar:
        self._spawn([sys.executable, "-m", "ragobs.cli", "sidecar", "--port", str(self.port)],
                    cwd=ROOT, ready=self._ready, timeout=ready_timeout, poll=0.1)
        return self

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=1.0) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False


async def get_summary(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/api/summary") as resp:
        assert resp.status == 200
        data: dict[str, Any] = await resp.json()
        return data


#: How Prometheus counts each service's requests, to wait for the scrapes.
def counted_requests(service: str) -> str:
    if service == OTHER_SERVICE:
        return f'sum(gen_ai_client_operation_duration_seconds_count{{service_name="{service}"}})'
    return f'sum(ragobs_requests_total{{service_name="{service}"}})'


async def wait_scraped(prom: PrometheusServer, instances: dict[str, str],
                       requests: dict[str, int]) -> dict[str, float]:
    """Wait until Prometheus holds each service's finished ``requests``, then
    for one more scrape of every target (so every series has a sample after the
    traffic); the timestamp of that scrape, per service."""
    def counted() -> bool:
        return all(prom.value(counted_requests(service)) == n for service, n in requests.items())

    def scraped() -> dict[str, float]:
        return {service: prom.value(f'timestamp(up{{instance="{instance}"}})') or 0.0
                for service, instance in instances.items()}

    await asyncio.to_thread(prom.wait_for, counted, 20.0, 0.2, f"{requests} scraped")
    seen = await asyncio.to_thread(scraped)
    await asyncio.to_thread(
        prom.wait_for, lambda: all(t > seen[s] for s, t in scraped().items()),
        10.0, 0.2, "one more scrape")
    return await asyncio.to_thread(scraped)


def duration(seconds: float) -> str:
    """A PromQL duration in whole milliseconds (scrape timestamps are in ms)."""
    return f"{round(seconds * 1000)}ms"


def expected(summary: dict[str, Any], key: str, scale: float) -> float | None:
    value = summary[key]
    return None if value is None else float(value) * scale


@pytest.mark.needs_prometheus
async def test_every_dashboard_query_answers_from_a_real_prometheus(tmp_path: Path) -> None:
    """Every PromQL expression of the dashboard returns data, and its figures
    equal the apps' own ``/api/summary`` and the traffic sent: per service, and
    all services together without counting anything twice.

    Exactness, and the tolerance: none for counts, 1e-9 relative for averages,
    percentages and dollars (float rounding only).

    * Over a range that starts before the apps did, the summary queries take
      each series' whole value (``last_over_time``): exact counts, and
      ``_sum / _count`` means are exact means. The time series panels are
      checked the same way, their ``rate()`` taken as ``last_over_time()``
      over the range (:func:`as_totals`): their per-model, per-reason,
      per-instance totals and ratios.
    * Over a range that starts on the scrape of a target taken between the two
      waves, the series that existed then go through ``increase()``.
      Prometheus 2.x selects ``[T - range, T]`` inclusive, so with both ends on
      that target's scrape timestamps the first and last samples sit on the
      edges and ``increase()`` has nothing to extrapolate: the second wave's
      counts come out exact too, target by target.

    ``$__rate_interval`` and ``$__interval`` become the whole range, so that
    rate() windows span the traffic and have non-zero increases.
    """
    require_binary("prometheus")
    started = time.time()
    demo = setup(service_name=SERVICE, serve=False, set_global=False,
                 registry=CollectorRegistry())
    assert demo.tracer_provider is not None
    spans = InMemorySpanExporter()
    demo.tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    priced = setup(service_name=PRICED, serve=False, set_global=False,
                   registry=CollectorRegistry())
    # Another GenAI instrumentation in the priced service's process: the same
    # calls recorded again, under its own scope, without ragobs_outcome.
    neighbour = OpenAIInstrumentor()  # type: ignore[no-untyped-call]
    neighbour.instrument(meter_provider=priced.meter_provider,
                         tracer_provider=priced.tracer_provider)
    demo_sidecar = await demo.start_server("127.0.0.1", 0)
    priced_sidecar = await priced.start_server("127.0.0.1", 0)
    host = HostSidecar(tmp_path)
    other: OtherAgent | None = None
    prom: PrometheusServer | None = None
    try:
        await asyncio.to_thread(host.start)
        other = OtherAgent(host.url)
        instances = {SERVICE: f"127.0.0.1:{demo_sidecar.port}",
                     PRICED: f"127.0.0.1:{priced_sidecar.port}",
                     OTHER_SERVICE: f"127.0.0.1:{host.port}"}
        prom = PrometheusServer(tmp_path, list(instances.values()), rule_files=[RULES],
                                scrape_interval=f"{SCRAPE_INTERVAL:g}s",
                                extra_args=["--enable-feature=exemplar-storage"])
        await asyncio.to_thread(prom.start)
        urls = {SERVICE: demo_sidecar.url, PRICED: priced_sidecar.url, OTHER_SERVICE: host.url}
        async with ProviderServer() as provider:
            await send_wave(demo, seed=11)
            await send_priced_wave(priced, provider, seed=21)
            other_first = await other.wave(0)
            first = {service: await get_summary(url) for service, url in urls.items()}
            assert first[SERVICE]["total_requests"] == WAVE
            assert first[OTHER_SERVICE]["total_requests"] == OTHER_WAVE
            between = await wait_scraped(
                prom, instances, {s: first[s]["total_requests"] for s in instances})
            await send_wave(demo, seed=12)
            await send_priced_wave(priced, provider, seed=22)
            other_second = await other.wave(1)
        final = {service: await get_summary(url) for service, url in urls.items()}
        assert final[SERVICE]["total_requests"] == 2 * WAVE
        assert final[SERVICE]["failed"] > first[SERVICE]["failed"] > 0
        assert {k: final[OTHER_SERVICE][k] for k in ("total_requests", "successful", "failed")} \
            == {"total_requests": 50, "successful": 45, "failed": 5}
        assert {k: other_first[k] + other_second[k]
                for k in ("total_requests", "successful", "failed")} == {
            "total_requests": 50, "successful": 45, "failed": 5}
        scraped = await wait_scraped(
            prom, instances, {s: final[s]["total_requests"] for s in instances})
        at = max(scraped.values())
        range_s = at - started + 30.0
        await check_dashboard(prom, at, range_s, final)
        await check_calls_row(prom, at, range_s, final)
        await check_operator_panels(prom, at, range_s, final, instances)
        await check_exemplars(prom, started, at, spans.get_finished_spans())
        await check_rules(prom)
        for service in instances:
            await check_second_wave(prom, service, at=scraped[service],
                                    range_s=scraped[service] - between[service],
                                    first=first[service], final=final[service])
        assert math.isclose(
            final[OTHER_SERVICE]["avg_latency_seconds"],
            (other_first["avg_latency_seconds"] * other_first["successful"]
             + other_second["avg_latency_seconds"] * other_second["successful"]) / 45,
            rel_tol=1e-9)
    finally:
        neighbour.uninstrument()
        if prom is not None:
            await asyncio.to_thread(prom.stop)
        if other is not None:
            await other.stop()
        await asyncio.to_thread(host.stop)
        for runtime in (demo, priced):
            await runtime.stop_server()
            runtime.shutdown()


ALL = {"service": ".*", "model": ".*", "operation": ".*"}
#: One value each: the demo's turns.
TURNS = {"service": SERVICE, "model": MODEL, "operation": OPERATION}


def real_values(final: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Every real value selected, as Grafana sends a multi-value selection: the
    services, every model of their calls (turns are of those models too) and
    the operations (turns: invoke_agent; calls: chat)."""
    return {"service": f"({'|'.join(sorted(final))})",
            "model": f"({'|'.join(sorted(models_of(final)))})",
            "operation": f"({OPERATION}|{CALL_OPERATION})"}


def models_of(final: dict[str, dict[str, Any]]) -> set[str]:
    return {row["model"] for summary in final.values() for row in summary["calls"]}


def of_service(service: str) -> dict[str, str]:
    return {**ALL, "service": service}


def grafana_values(range_s: float, filters: dict[str, str]) -> dict[str, str]:
    window = duration(range_s)
    return {"__range": window, "__rate_interval": window, "__interval": window,
            "datasource": "prometheus", **filters}


def as_totals(expr: str) -> str:
    """A time series query with each rate() over the range read as the series'
    last value in it: for series born inside the range (counters from zero),
    the whole count, so the panel's per-label figures can be compared exactly."""
    return re.sub(r"\brate\(([^\[]+)\[\$__rate_interval\]\)", r"last_over_time(\1[$__range])",
                  expr)


#: The summary's averages, and the counts they are over: per ragobs service, and
#: per agent without ragobs (for an exact mean of the services together).
AVERAGE_COUNTS: dict[str, tuple[str, str | None]] = {
    "Avg TTFT": ('ragobs_turn_time_to_first_chunk_seconds_count{ragobs_outcome="ok"',
                 'gen_ai_client_operation_time_to_first_chunk_seconds_count'
                 '{ragobs_outcome="", error_type=""'),
    "Avg Latency": ('ragobs_turn_duration_seconds_count{ragobs_outcome="ok"',
                    'gen_ai_client_operation_duration_seconds_count'
                    '{ragobs_outcome="", error_type=""'),
    "Avg Tokens": ('ragobs_turn_token_usage_count{ragobs_outcome="ok", gen_ai_token_type="output"',
                   'gen_ai_client_token_usage_count'
                   '{ragobs_outcome="", error_type="", gen_ai_token_type="output"'),
    "Avg Tokens/sec": ('ragobs_turn_output_tokens_per_second_count{ragobs_outcome="ok"', None),
}


async def check_dashboard(prom: PrometheusServer, at: float, range_s: float,
                          final: dict[str, dict[str, Any]]) -> None:
    dashboard = load_dashboard()
    exprs = panel_expressions(dashboard)
    real = real_values(final)

    def evaluate(expr: str, filters: dict[str, str]) -> list[dict[str, Any]]:
        return prom.query(substitute(expr, grafana_values(range_s, filters)), at)

    def run_all() -> int:
        evaluated = 0
        for title, ref, expr in exprs:
            for filters in (ALL, real):
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

    # The filters offer every service (the agent without ragobs too), the turns'
    # values and the calls' (an LLM-calls panel filtered by the turns' operation
    # alone would be empty).
    assert await asyncio.to_thread(run_variables) == {
        "service": sorted(final), "model": sorted(models_of(final)),
        "operation": sorted([OPERATION, CALL_OPERATION])}

    # The summary row says what each /api/summary says, service by service (the
    # demo's for its real values and for its turns' alone too).
    def figures(filters: dict[str, str]) -> dict[tuple[str, str], float | None]:
        out: dict[tuple[str, str], float | None] = {}
        for title, refs in SUMMARY_FIGURES.items():
            for t in panel(dashboard, title)["targets"]:
                assert t["refId"] in refs
                rows = evaluate(t["expr"], filters)
                assert len(rows) <= 1, f"{title}/{t['refId']}: {rows}"
                out[title, t["refId"]] = float(rows[0]["value"][1]) if rows else None
        return out

    def compare(got: dict[tuple[str, str], float | None], summary: dict[str, Any],
                where: str) -> None:
        for (title, ref), value in got.items():
            key, scale = SUMMARY_FIGURES[title][ref]
            want = expected(summary, key, scale)
            if want is None or value is None:
                assert value == want, f"{where} {title}/{ref}: dashboard {value}, summary {want}"
            elif scale == 1 and key in ("total_requests", "successful", "failed"):
                assert value == want, f"{where} {title}: dashboard {value}, summary {want}"
            else:
                assert math.isclose(value, want, rel_tol=1e-9), \
                    f"{where} {title}/{ref}: dashboard {value}, summary {want}"

    per_service = {service: await asyncio.to_thread(figures, of_service(service))
                   for service in final}
    for service, got in per_service.items():
        compare(got, final[service], service)
    for filters in ({**real, "service": SERVICE}, TURNS):
        compare(await asyncio.to_thread(figures, filters), final[SERVICE], str(filters))

    # All together: the counts add up, the means are the services' means
    # weighted by the records each is over.
    def weights(title: str) -> dict[str, float]:
        ours, others = AVERAGE_COUNTS[title]
        out = {}
        for service in final:
            selector = others if service == OTHER_SERVICE else ours
            if selector is not None:
                out[service] = prom.value(
                    f'sum(last_over_time({selector}, service_name="{service}"}}'
                    f'[{duration(range_s)}]))', at) or 0.0
        return out

    together = await asyncio.to_thread(figures, ALL)
    counts = {key: sum(final[s][key] for s in final)
              for key in ("total_requests", "successful", "failed")}
    assert together["Total Requests", "A"] == counts["total_requests"]
    assert together["Successful", "A"] == counts["successful"]
    assert together["Failed", "A"] == counts["failed"]
    for title, ref, key in (("Successful", "B", "successful"), ("Failed", "B", "failed")):
        assert math.isclose(together[title, ref] or 0.0,
                            100 * counts[key] / counts["total_requests"], rel_tol=1e-9)
    for title, (key, _) in ((t, SUMMARY_FIGURES[t]["A"]) for t in AVERAGE_COUNTS):
        weight = await asyncio.to_thread(weights, title)
        if title == "Avg Latency":  # every successful request has a duration
            assert weight == {s: final[s]["successful"] for s in final}
        mean = sum(final[s][key] * n for s, n in weight.items() if n) / sum(weight.values())
        assert math.isclose(together[title, "A"] or 0.0, mean, rel_tol=1e-9), title
        assert all(n > 0 for n in weight.values()), (title, weight)


@dataclasses.dataclass(frozen=True)
class Panels:
    """The dashboard's targets as Grafana sends them, answered by ``prom`` at
    ``at`` over a range of ``range_s`` seconds (synchronous: call from a thread)."""

    prom: PrometheusServer
    at: float
    range_s: float

    def rows(self, title: str, ref: str, *labels: str, filters: dict[str, str] = ALL,
             totals: bool = True) -> dict[tuple[str, ...], float]:
        """Target ``ref`` of ``title`` (its rate()s read as totals unless
        ``totals`` is false), summed by ``labels``."""
        (t,) = [t for t in panel(load_dashboard(), title)["targets"] if t["refId"] == ref]
        expr = as_totals(t["expr"]) if totals else t["expr"]
        out: dict[tuple[str, ...], float] = {}
        for row in self.prom.query(substitute(expr, grafana_values(self.range_s, filters)),
                                   self.at):
            key = tuple(row["metric"].get(label, "") for label in labels)
            out[key] = out.get(key, 0.0) + float(row["value"][1])
        return out


async def check_calls_row(prom: PrometheusServer, at: float, range_s: float,
                          final: dict[str, dict[str, Any]]) -> None:
    """The LLM-calls row counts what each ``/api/summary`` calls table counts:
    its panels' per-model totals give the calls, failed calls and tokens of
    each provider and model exactly, the other agent's included; and the
    demo's calls outnumber its turns."""
    demo = final[SERVICE]
    table = {(row["provider"], row["model"]): row for row in demo["calls"]}
    assert set(table) == {("simulated", ROUTER_MODEL), ("simulated", MODEL)}
    calls = sum(row["calls"] for row in table.values())
    # Each turn routes and answers, once or more (retries).
    assert calls >= 2 * demo["total_requests"]
    for row in table.values():
        assert row["calls"] >= demo["total_requests"], row
    assert sum(row["failed"] for row in table.values()) > demo["failed"]  # retries recovered

    panels = Panels(prom, at, range_s)

    def totals(service: str) -> dict[str, dict[tuple[str, ...], float]]:
        filters = of_service(service)
        return {
            "calls": panels.rows("LLM calls/s by model and outcome", "A", "gen_ai_provider_name",
                                 "gen_ai_request_model", filters=filters),
            "failed": panels.rows("Failed LLM calls/s by model and error.type", "A",
                                  "gen_ai_request_model", filters=filters),
            "tokens": panels.rows("Tokens/s in and out by model", "A", "gen_ai_request_model",
                                  "gen_ai_token_type", filters=filters),
        }

    for service, summary in final.items():
        got = await asyncio.to_thread(totals, service)
        rows_ = {(row["provider"], row["model"]): row for row in summary["calls"]}
        assert got["calls"] == {key: row["calls"] for key, row in rows_.items()}, service
        assert got["failed"] == {(model,): row["failed"] for (_, model), row in rows_.items()
                                 if row["failed"]}, service
        tokens = {(model, kind): row[f"{kind}_tokens"] for (_, model), row in rows_.items()
                  for kind in ("input", "output") if row[f"{kind}_tokens"]}
        assert got["tokens"] == tokens, service


async def check_operator_panels(prom: PrometheusServer, at: float, range_s: float,
                                final: dict[str, dict[str, Any]],
                                instances: dict[str, str]) -> None:
    """Spend, cost per answer and unpriced calls as the summaries say; the
    success table lists every model (the one that always fails at 0 %); the
    length share, the cache-hit ratio, the abandoned streams and those without
    a first chunk as the scripted calls made them; the per-instance figures as
    each target's summary."""
    tables = {(row["provider"], row["model"]): row
              for summary in final.values() for row in summary["calls"]}
    priced = final[PRICED]
    panels = Panels(prom, at, range_s)

    def value(title: str, filters: dict[str, str] = ALL) -> float:
        (only,) = panels.rows(title, "A", filters=filters, totals=False).values()
        return only

    def by_model(title: str, ref: str = "A") -> dict[str, float]:
        return {model: v for (model,), v in panels.rows(title, ref, "gen_ai_request_model").items()}

    def run() -> None:
        # Cost.
        spend = sum(summary["spend_usd"] for summary in final.values())
        assert spend > 0 and math.isclose(value("Spend"), spend, rel_tol=1e-9)
        per_hour = by_model("Spend per hour by model")
        assert set(per_hour) == {m for (_, m), row in tables.items() if row["cost_usd"]}
        for (_, model), row in tables.items():
            if row["cost_usd"]:
                assert math.isclose(per_hour[model] / 3600, row["cost_usd"], rel_tol=1e-9)
        assert math.isclose(value("Avg cost per answer"), priced["avg_cost_usd"], rel_tol=1e-9)
        assert math.isclose(value("Avg cost per answer", of_service(PRICED)),
                            priced["avg_cost_usd"], rel_tol=1e-9)
        assert value("Unpriced calls") == priced["unpriced_calls"] == 2
        assert tables["openai", UNPRICED_MODEL]["unpriced"] == 2

        # Success rate by model: every model, the always-failing one at 0 %.
        cells = {ref: panels.rows("Success rate by model", ref, "gen_ai_provider_name",
                                  "gen_ai_request_model", totals=False)
                 for ref in "ABCD"}
        abandoned = panels.rows("Streams abandoned or without a first chunk, by model", "A",
                                "gen_ai_provider_name", "gen_ai_request_model")
        assert abandoned["openai", CACHED_MODEL] == 2
        assert set(cells["A"]) == set(tables)
        for key, row in tables.items():
            calls, ok, failed, share = (cells[ref][key] for ref in "ABCD")
            assert (calls, failed) == (row["calls"], row["failed"]), key
            assert ok == calls - failed - abandoned.get(key, 0), key
            assert math.isclose(share, 100 * ok / calls, rel_tol=1e-9), key
        assert [cells[ref]["openai", DOWN_MODEL] for ref in "ABCD"] == [2, 0, 2, 0]
        assert tables["openai", OTHER_MODEL]["calls"] == 50
        assert [cells[ref]["openai", OTHER_MODEL] for ref in "ABC"] == [50, 45, 5]

        # Streams without a first chunk: the calls that always failed; the
        # abandoned ones had theirs.
        lost = by_model("Streams abandoned or without a first chunk, by model", "B")
        assert lost[DOWN_MODEL] == 2 and lost[CACHED_MODEL] == 0

        # Finish reasons and the length share: one "length" per wave.
        reasons = panels.rows("Finish reasons/s by model and reason", "A",
                              "gen_ai_request_model", "ragobs_finish_reason")
        assert reasons[CACHED_MODEL, "length"] == 2
        assert reasons[CACHED_MODEL, "stop"] == 4
        assert reasons[OPENAI_MODEL, "stop"] > 0
        length = by_model("Share cut off by length, by model")
        assert math.isclose(length[CACHED_MODEL], 2 / 6, rel_tol=1e-9)
        assert length[OPENAI_MODEL] == 0  # never cut off: 0, not missing

        # Cache hits: the scripted calls read 1024 of their 1200 input tokens.
        cache = by_model("Cache-hit ratio by model")
        row = tables["openai", CACHED_MODEL]
        assert row["input_tokens"] == 6 * CACHED.input_tokens
        assert math.isclose(cache[CACHED_MODEL], 6 * CACHED.cached_tokens / row["input_tokens"],
                            rel_tol=1e-9)
        assert cache[OPENAI_MODEL] == 0

        # Per instance: each target's own requests and failure share.
        requests = panels.rows("Requests/s by instance", "A", "instance")
        assert requests == {(instances[s],): final[s]["total_requests"] for s in final}
        failed_share = panels.rows("Failed share by instance", "A", "instance")
        for service, summary in final.items():
            assert math.isclose(failed_share[instances[service],],
                                summary["failed"] / summary["total_requests"], rel_tol=1e-9)

    await asyncio.to_thread(run)


async def check_exemplars(prom: PrometheusServer, start: float, end: float,
                          spans: Any) -> None:
    """The exemplar targets' queries find exemplars in Prometheus, labelled
    with the trace and span ids of the demo's LLM call spans (the call panels)
    and turn spans (the turn panels): what the provisioned datasource links to
    Jaeger by ``trace_id``."""
    calls = {(format(s.context.trace_id, "032x"), format(s.context.span_id, "016x"))
             for s in spans if s.name.startswith(f"{CALL_OPERATION} ")}
    turns = {(format(s.context.trace_id, "032x"), format(s.context.span_id, "016x"))
             for s in spans if s.name.startswith("invoke_agent ")}
    assert calls and turns
    dashboard = load_dashboard()
    targets = [t for p in data_panels(dashboard) for t in p["targets"] if t.get("exemplar")]
    assert targets

    def run() -> None:
        for t in targets:
            expr = substitute(t["expr"], grafana_values(end - start, of_service(SERVICE)))
            found = prom.api("query_exemplars", query=expr, start=f"{start:.3f}",
                             end=f"{end + 1:.3f}")
            exemplars = [ex for series in found for ex in series["exemplars"]]
            assert exemplars, f"{t['refId']}: no exemplars for {expr}"
            names = set()
            for series in found:
                names.add(series["seriesLabels"]["__name__"].removesuffix("_bucket"))
            assert names <= EXEMPLAR_METRICS
            of_turns = names <= {semconv.TURN_DURATION.prometheus_name,
                                 semconv.TURN_TIME_TO_FIRST_CHUNK.prometheus_name}
            for ex in exemplars:
                assert set(ex["labels"]) == {"trace_id", "span_id"}
                ids = (ex["labels"]["trace_id"], ex["labels"]["span_id"])
                assert ids in (turns if of_turns else calls), ex

    await asyncio.to_thread(run)


async def check_rules(prom: PrometheusServer) -> None:
    """The shipped rules record the agent without ragobs as requests, and the
    priced service's turns once: its calls and the other instrumentation's
    records of them add no series (the exact figures: promtool's unit tests)."""
    def recorded(name: str, service: str) -> dict[tuple[str, str], float]:
        rows = prom.query(f'{name}{{service_name="{service}"}}')
        return {(r["metric"]["gen_ai_operation_name"], r["metric"]["gen_ai_request_model"]):
                float(r["value"][1]) for r in rows}

    def raw(expr: str) -> dict[tuple[str, str], float]:
        return {(r["metric"]["gen_ai_operation_name"], r["metric"]["gen_ai_request_model"]):
                float(r["value"][1]) for r in prom.query(
                    f"sum by (gen_ai_operation_name, gen_ai_request_model) ({expr})")}

    def run() -> None:
        name = "service_model:ragobs_requests:rate5m"
        prom.wait_for(lambda: bool(recorded(name, OTHER_SERVICE)) and bool(
            recorded("service_model:ragobs_turn_duration_seconds:p95_rate5m", OTHER_SERVICE)),
            20.0, 0.2, "the rules' first evaluation")
        # The label sets are exactly the requests' (a double count would add
        # the calls' and the neighbour's own operation/model pairs) and the
        # rates theirs (within what another evaluation instant changes).
        for service, expr in (
                (OTHER_SERVICE, f'rate(gen_ai_client_operation_duration_seconds_count'
                                f'{{service_name="{OTHER_SERVICE}"}}[5m])'),
                (PRICED, f'rate(ragobs_requests_total{{service_name="{PRICED}"}}[5m])')):
            got, want = recorded(name, service), raw(expr)
            assert set(got) == set(want) and want, (service, got, want)
            for key, rate in want.items():
                assert math.isclose(got[key], rate, rel_tol=0.2), (service, key, got, want)
        assert set(recorded(name, OTHER_SERVICE)) == {(CALL_OPERATION, OTHER_MODEL)}
        failure = recorded("service_model:ragobs_requests_failure:ratio_rate5m", OTHER_SERVICE)
        assert 0 < failure[CALL_OPERATION, OTHER_MODEL] < 0.5
        p95 = recorded("service_model:ragobs_turn_duration_seconds:p95_rate5m", OTHER_SERVICE)
        assert 0.2 <= p95[CALL_OPERATION, OTHER_MODEL] <= 5.12
        health = [rule["health"] for group in prom.rules() for rule in group["rules"]]
        assert set(health) == {"ok"}, health

    await asyncio.to_thread(run)


async def check_second_wave(prom: PrometheusServer, service: str, *, at: float, range_s: float,
                            first: dict[str, Any], final: dict[str, Any]) -> None:
    """Over a range covering only a service's second wave (between two scrapes
    of its target), the counts and the means with a known denominator equal
    the difference of its two /api/summary snapshots."""
    dashboard = load_dashboard()

    def value(title: str, ref: str = "A") -> float:
        (target,) = [t for t in panel(dashboard, title)["targets"] if t["refId"] == ref]
        expr = substitute(target["expr"], grafana_values(range_s, of_service(service)))
        got = prom.value(expr, at)
        assert got is not None, f"{service} {title}/{ref}: no data over the second wave"
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
    assert got["total"] == delta("total_requests") > 0, service
    if service == SERVICE:
        assert got["total"] == WAVE
    assert got["ok"] == delta("successful"), service
    assert got["failed"] == delta("failed"), service
    assert math.isclose(got["latency"], mean_of_wave("avg_latency_seconds"), rel_tol=1e-9)
    assert math.isclose(got["tokens"], mean_of_wave("avg_tokens"), rel_tol=1e-9)
