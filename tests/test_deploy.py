"""The deployment: Prometheus rules and config, docker-compose.yml and the Dockerfile.

No Docker engine runs here, so the compose file is validated against the
Compose Specification's JSON schema (vendored in ``tests/data``) and
cross-checked with the files it names: build contexts, bind mounts, the port
the agent serves on, the Prometheus scrape target and rule files. The rules go
through ``promtool check`` and their unit tests through ``promtool test rules``;
mutated copies of the rules prove those unit tests notice a wrong threshold.
A real Prometheus then loads the rules against a live demo agent.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, NamedTuple

import jsonschema
import pytest
import yaml
from prometheus_client import CollectorRegistry

from ragobs import semconv
from ragobs._runtime import setup
from ragobs.cli import build_parser
from ragobs.demo.agent import DemoConfig
from ragobs.demo.runner import RunOptions, run_demo
from ragobs.demo.stack import MODEL, OPERATION, Protection
from tests.promserver import PrometheusServer, finite
from tests.support import free_port, require_binary

ROOT = Path(__file__).resolve().parent.parent
PROM_DIR = ROOT / "deploy" / "prometheus"
PROM_CONFIG = PROM_DIR / "prometheus.yml"
RULES = PROM_DIR / "rules" / "ragobs.rules.yml"
RULE_TESTS = PROM_DIR / "tests" / "ragobs.rules.test.yml"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE_SCHEMA = ROOT / "tests" / "data" / "compose-spec.json"

AGENT_PORT = 9464
#: ``ragobs proxy``: where agents reach it, and where its figures are served.
PROXY_PORT, PROXY_FIGURES_PORT = 8080, 9465
#: Container ports each service serves, published on the host as the same numbers.
SERVICE_PORTS = {"agent": (AGENT_PORT,), "proxy": (PROXY_PORT, PROXY_FIGURES_PORT),
                 "prometheus": (9090,), "grafana": (3000,), "jaeger": (16686,)}
ALERTS = {
    "RagobsTargetDown", "RagobsSuccessRateLow", "RagobsErrorRatioRising",
    "RagobsTimeToFirstTokenHigh", "RagobsLatencyHigh", "RagobsTokensPerSecondLow",
    "RagobsRetriesExhausted", "RagobsFallbacksServed", "RagobsRateLimitRejecting",
    "RagobsRateLimitBackendFailingClosed", "RagobsRateLimitBackendFailingOpen",
    "RagobsSpendHigh", "RagobsLengthCutoffsRising",
}
#: The labels the recording rules aggregate by.
SERVICE_MODEL = {"service_name", "gen_ai_operation_name", "gen_ai_request_model"}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(RULES)["groups"] for rule in group["rules"]]


def alert_rules() -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for r in rules() if "alert" in r}


def recorded_names() -> list[str]:
    return [r["record"] for r in rules() if "record" in r]


def run(*argv: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=cwd)


# --- rules: promtool ----------------------------------------------------------------

@pytest.mark.needs_prometheus
def test_promtool_check_rules_is_clean() -> None:
    promtool = require_binary("promtool")
    done = run(promtool, "check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules())} rules found" in done.stdout
    assert "WARNING" not in done.stdout + done.stderr


@pytest.mark.needs_prometheus
def test_promtool_unit_tests_pass() -> None:
    promtool = require_binary("promtool")
    done = run(promtool, "test", "rules", str(RULE_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout and "FAILED" not in done.stdout + done.stderr


def test_unit_tests_show_every_alert_firing_and_not_firing() -> None:
    firing: set[str] = set()
    silent: set[str] = set()
    for case in load_yaml(RULE_TESTS)["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check["exp_alerts"] else silent).add(check["alertname"])
            for alert in check["exp_alerts"]:
                # Annotations are compared too: their templates render.
                assert set(alert["exp_annotations"]) == {"summary", "description"}
    assert set(alert_rules()) == ALERTS
    assert firing == ALERTS, f"never shown firing: {ALERTS - firing}"
    assert silent == ALERTS, f"never shown silent: {ALERTS - silent}"


def test_unit_tests_check_every_recording_rule() -> None:
    exprs = " ".join(check["expr"] for case in load_yaml(RULE_TESTS)["tests"]
                     for check in case.get("promql_expr_test", []))
    tested = set(re.findall(r"[a-z_]+:[a-z0-9_]+:[a-z0-9_]+", exprs))
    missing = set(recorded_names()) - tested
    assert not missing, f"recording rules without a promql_expr_test: {missing}"


def write_groups_apart(directory: Path) -> list[Path]:
    """Each unit-test group of RULE_TESTS as a test file of its own, next to a
    copy of the rules laid out as in the repository."""
    (directory / "rules").mkdir()
    (directory / "tests").mkdir()
    (directory / "rules" / RULES.name).write_bytes(RULES.read_bytes())
    suite = load_yaml(RULE_TESTS)
    paths = []
    for index, group in enumerate(suite["tests"]):
        path = directory / "tests" / f"group{index}.test.yml"
        path.write_text(yaml.safe_dump({**suite, "tests": [group]}), encoding="utf-8")
        paths.append(path)
    return paths


@pytest.mark.needs_prometheus
def test_each_unit_test_group_passes_alone(tmp_path: Path) -> None:
    """What the mutation tests below rely on: a group run by itself passes."""
    promtool = require_binary("promtool")
    paths = write_groups_apart(tmp_path)
    assert len(paths) == 11
    done = run(promtool, "test", "rules", *map(str, paths))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("SUCCESS") == len(paths)


class Mutation(NamedTuple):
    """A wrong change to the rules that a unit-test group must notice."""

    what: str
    old: str  # text of the rules, occurring once
    new: str
    group: str  # the unit-test group that must fail (it runs alone, to be quick)
    name: str  # the alert or recording rule its failure names


MUTATIONS = [Mutation(*m) for m in [
    ("success threshold", "ratio_rate5m < 0.95", "ratio_rate5m < 0.5",
     "failures rising", "RagobsSuccessRateLow"),
    ("cancelled out of the success denominator",
     "expr: service_model:ragobs_requests_ok:rate5m / service_model:ragobs_requests:rate5m",
     "expr: service_model:ragobs_requests_ok:rate5m / (service_model:ragobs_requests_ok:rate5m"
     " + service_model:ragobs_requests_failed:rate5m)",
     "healthy traffic", "service_model:ragobs_requests_success:ratio_rate5m"),
    ("no zero when nothing succeeded",
     "          )\n          or 0 * service_model:ragobs_requests:rate5m\n"
     "      - record: service_model:ragobs_requests_failed:rate5m",
     "          )\n      - record: service_model:ragobs_requests_failed:rate5m",
     "everything fails", "RagobsSuccessRateLow"),
    ("no traffic guard",
     "ratio_rate5m < 0.95\n          and on (service_name, gen_ai_operation_name,"
     " gen_ai_request_model)\n          service_model:ragobs_requests:rate5m >= 0.1",
     "ratio_rate5m < 0.95\n          and on (service_name, gen_ai_operation_name,"
     " gen_ai_request_model)\n          service_model:ragobs_requests:rate5m >= 0",
     "too little traffic", "RagobsSuccessRateLow"),
    ("rising factor", "> 2 * service_model:ragobs_requests", "> 1 * service_model:ragobs_requests",
     "failures rising", "RagobsErrorRatioRising"),
    ("rising floor", "ratio_rate5m > 0.02", "ratio_rate5m > 0.2",
     "failures rising", "RagobsErrorRatioRising"),
    ("TTFT threshold", "seconds:p95_rate5m > 3", "seconds:p95_rate5m > 4",
     "slow streams", "RagobsTimeToFirstTokenHigh"),
    ("TTFT of failed streams too",
     'time_to_first_chunk_seconds_bucket{ragobs_outcome="ok"}',
     "time_to_first_chunk_seconds_bucket",
     "healthy traffic", "time_to_first_chunk_seconds:p95_rate5m"),
    ("latency threshold", "duration_seconds:p95_rate5m > 10", "duration_seconds:p95_rate5m > 16",
     "slow streams", "RagobsLatencyHigh"),
    ("tokens/s threshold", "tokens_per_second:mean5m < 20", "tokens_per_second:mean5m < 10",
     "slow streams", "RagobsTokensPerSecondLow"),
    ("retries threshold",
     "(rate(ragobs_retry_exhausted_total[5m]))\n          / on (service_name) group_left ()"
     " service:ragobs_requests:rate5m > 0.01",
     "(rate(ragobs_retry_exhausted_total[5m]))\n          / on (service_name) group_left ()"
     " service:ragobs_requests:rate5m > 0.03",
     "resilience ratios", "RagobsRetriesExhausted"),
    ("fallbacks threshold",
     "(rate(ragobs_fallbacks_total[5m]))\n          / on (service_name) group_left ()"
     " service:ragobs_requests:rate5m > 0.01",
     "(rate(ragobs_fallbacks_total[5m]))\n          / on (service_name) group_left ()"
     " service:ragobs_requests:rate5m > 0.03",
     "resilience ratios", "RagobsFallbacksServed"),
    ("rejections by every reason", '{ragobs_ratelimit_reason!~"cancelled|backend_unavailable"}',
     "", "resilience ratios", "RagobsRateLimitRejecting"),
    ("fail-closed delay", "          > 0\n        for: 2m", "          > 0\n        for: 5m",
     "rate-limit backend failing", "RagobsRateLimitBackendFailingClosed"),
    ("fail-open delay", "          > 0\n        for: 5m", "          > 0\n        for: 1m",
     "rate-limit backend failing", "RagobsRateLimitBackendFailingOpen"),
    ("any job down", 'up{job="ragobs"} == 0', "up == 0", "sidecar down", "RagobsTargetDown"),
    # Agents without ragobs: counted, and nothing of a ragobs service counted again.
    ("other agents left out",
     "            rate(ragobs_requests_total[5m])\n            or (rate("
     "gen_ai_client_operation_duration_seconds_count{ragobs_outcome=\"\"}[5m])\n"
     "                unless on (service_name) ragobs_requests_total)\n",
     "            rate(ragobs_requests_total[5m])\n",
     "other agents", "service_model:ragobs_requests:rate5m"),
    ("a neighbour instrumentation's calls counted as requests",
     "(rate(gen_ai_client_operation_duration_seconds_count{ragobs_outcome=\"\"}[5m])\n"
     "                unless on (service_name) ragobs_requests_total)",
     "rate(gen_ai_client_operation_duration_seconds_count{ragobs_outcome=\"\"}[5m])",
     "other agents", "service_model:ragobs_requests:rate5m"),
    ("ragobs's own calls counted as requests",
     "rate(gen_ai_client_operation_duration_seconds_count{ragobs_outcome=\"\"}[5m])",
     "rate(gen_ai_client_operation_duration_seconds_count[5m])",
     "other agents", "service_model:ragobs_requests:rate5m"),
    ("other agents' failures counted as ok",
     "            rate(ragobs_requests_total{ragobs_outcome=\"ok\"}[5m])\n"
     "            or (rate(gen_ai_client_operation_duration_seconds_count"
     "{ragobs_outcome=\"\", error_type=\"\"}[5m])",
     "            rate(ragobs_requests_total{ragobs_outcome=\"ok\"}[5m])\n"
     "            or (rate(gen_ai_client_operation_duration_seconds_count"
     "{ragobs_outcome=\"\"}[5m])",
     "other agents", "service_model:ragobs_requests_ok:rate5m"),
    ("other agents' failed operations in the latency",
     "rate(gen_ai_client_operation_duration_seconds_bucket{ragobs_outcome=\"\", error_type=\"\"}",
     "rate(gen_ai_client_operation_duration_seconds_bucket{ragobs_outcome=\"\"}",
     "other agents", "service_model_le:ragobs_turn_duration_seconds_bucket:rate5m"),
    # Spend and finish reasons.
    ("default spend limit", "expr: vector(10)", "expr: vector(20)", "spend", "RagobsSpendHigh"),
    ("a service's own limit ignored",
     'ragobs:spend_usd_per_hour:limit{service_name!=""}\n          or on (service_name)',
     'ragobs:spend_usd_per_hour:limit{service_name="none"}\n          or on (service_name)',
     "spend", "service:ragobs_spend_usd_per_hour:limit"),
    ("spend per second taken as per hour", "service:ragobs_spend_usd:rate1h * 3600\n",
     "service:ragobs_spend_usd:rate1h * 360000\n", "spend", "RagobsSpendHigh"),
    ("length floor", "length:ratio_rate5m > 0.05", "length:ratio_rate5m > 0.25",
     "length cut-offs rising", "RagobsLengthCutoffsRising"),
    ("length rising factor", "> 2 * service_model:ragobs_finish_reasons_length",
     "> 1 * service_model:ragobs_finish_reasons_length",
     "length cut-offs rising", "RagobsLengthCutoffsRising"),
    ("no zero when nothing was cut off",
     "[5m]))\n          or 0 * service_model:ragobs_finish_reasons:rate5m",
     "[5m]))", "length cut-offs rising", "service_model:ragobs_finish_reasons_length"),
]]


@pytest.mark.needs_prometheus
@pytest.mark.parametrize("mutation", MUTATIONS, ids=[m.what for m in MUTATIONS])
def test_unit_tests_fail_on_a_mutated_rule(tmp_path: Path, mutation: Mutation) -> None:
    promtool = require_binary("promtool")
    what, old, new, group, name = mutation
    text = RULES.read_text(encoding="utf-8")
    assert text.count(old) == 1, f"{what}: {old!r} must occur once in the rules"
    suite = load_yaml(RULE_TESTS)
    suite["tests"] = [t for t in suite["tests"] if t["name"] == group]
    assert len(suite["tests"]) == 1, f"no unit-test group named {group!r}"
    (tmp_path / "rules").mkdir()
    (tmp_path / "tests").mkdir()
    (tmp_path / "rules" / RULES.name).write_text(text.replace(old, new), encoding="utf-8")
    (tmp_path / "tests" / RULE_TESTS.name).write_text(yaml.safe_dump(suite), encoding="utf-8")
    checked = run(promtool, "check", "rules", str(tmp_path / "rules" / RULES.name))
    assert checked.returncode == 0, f"{what}: the mutant must still be valid\n{checked.stdout}"
    done = run(promtool, "test", "rules", str(tmp_path / "tests" / RULE_TESTS.name))
    assert done.returncode != 0, f"{what}: the unit tests did not notice"
    report = done.stdout + done.stderr
    assert "FAILED" in report and name in report, report


# --- rules: what they say ------------------------------------------------------------

def test_alerts_have_severity_annotations_and_a_delay() -> None:
    for name, rule in alert_rules().items():
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        assert set(rule["annotations"]) == {"summary", "description"}, name
        assert re.fullmatch(r"\d+m", rule["for"]), name
        # Values are shown humanized or formatted, never as raw floats.
        text = " ".join(rule["annotations"].values())
        for formatted, humanized in re.findall(r'(printf "[^"]*" )?\$value( \| humanize\w*)?',
                                               text):
            assert formatted or humanized, f"{name}: raw $value"


def test_rate_and_percentile_alerts_require_traffic() -> None:
    for name, rule in alert_rules().items():
        if name in {"RagobsTargetDown", "RagobsRateLimitBackendFailingClosed",
                    "RagobsRateLimitBackendFailingOpen", "RagobsSpendHigh"}:
            continue
        assert re.search(r":rate5m >= 0\.1\s*$", rule["expr"]), name


def test_recording_rules_follow_level_metric_operations() -> None:
    # "ragobs": a setting, not an aggregation (the spend limit).
    levels = {"service_model": SERVICE_MODEL, "service_model_outcome": {*SERVICE_MODEL,
              "ragobs_outcome"}, "service_model_le": {*SERVICE_MODEL, "le"},
              "service": {"service_name"}, "ragobs": set()}
    for rule in rules():
        if "record" not in rule:
            continue
        level, metric, operations = rule["record"].split(":")
        assert level in levels, rule["record"]
        assert operations.endswith(("rate5m", "rate1h", "mean5m", "limit")), rule["record"]
        assert level == "ragobs" or metric.startswith(("ragobs_", "gen_ai_")), rule["record"]
        for by in re.findall(r"sum by \(([^)]*)\)", rule["expr"]):
            assert {label.strip() for label in by.split(",")} == levels[level], rule["record"]


def _known_labels() -> set[str]:
    keys = [value for name, value in vars(semconv).items()
            if name.isupper() and isinstance(value, str) and "." in value]
    return {key.replace(".", "_") for key in keys} | {"service_name", "le", "job", "instance"}


def _known_metrics() -> set[str]:
    names = {"up"}
    for spec in semconv.ALL_INSTRUMENTS:
        names.add(spec.prometheus_name)
        if spec.kind is semconv.Kind.HISTOGRAM:
            names |= {f"{spec.prometheus_name}_{part}" for part in ("bucket", "sum", "count")}
    return names


def test_rules_use_only_metrics_and_labels_that_ragobs_exposes() -> None:
    labels, metrics, recorded = _known_labels(), _known_metrics(), set(recorded_names())
    # "": the label is absent (agents without ragobs, see the rules' header).
    values = {"ragobs_outcome": {o.value for o in semconv.Outcome} | {""},
              "ragobs_ratelimit_backend_mode": {"open", "closed"},
              "ragobs_ratelimit_reason": {"no_capacity", "cancelled", "timeout", "too_large",
                                          "backend_unavailable"},
              "job": {"ragobs"}}
    for rule in rules():
        expr = rule["expr"]
        for grouping in re.findall(r"\b(?:by|on)\s*\(([^)]*)\)", expr):
            used = {label.strip() for label in grouping.split(",") if label.strip()}
            assert used <= labels, f"{used - labels} in {expr}"
        for matchers in re.findall(r"\{([^}]*)\}", expr):
            for label, value in re.findall(r'(\w+)\s*(?:=~|!~|!=|=)\s*"([^"]*)"', matchers):
                assert label in labels, f"{label} in {expr}"
                if label in values:
                    assert set(value.split("|")) <= values[label], f"{label}={value}"
        bare = re.sub(r'\{[^}]*\}|\b(?:by|on)\s*\([^)]*\)|"[^"]*"', " ", expr)
        for name in re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", bare):
            if ":" in name:
                assert name in recorded, f"{name} is not recorded"
            elif name.startswith(("ragobs_", "gen_ai_")):
                assert name in metrics, f"{name} is not a ragobs metric"


# --- prometheus.yml ------------------------------------------------------------------

@pytest.mark.needs_prometheus
def test_promtool_check_config_resolves_the_rule_files() -> None:
    promtool = require_binary("promtool")
    # From elsewhere than the config's directory: rule_files resolve against the config.
    done = run(promtool, "check", "config", str(PROM_CONFIG), cwd=ROOT / "tests")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 1 rule files found" in done.stdout
    assert f"Checking {RULES}" in done.stdout
    assert f"SUCCESS: {len(rules())} rules found" in done.stdout


def scrape_job(name: str) -> dict[str, Any]:
    jobs = {job["job_name"]: job for job in load_yaml(PROM_CONFIG)["scrape_configs"]}
    job: dict[str, Any] = jobs[name]
    return job


def test_prometheus_scrapes_the_agent_and_the_proxy_by_their_compose_names_and_ports(
        ) -> None:
    job = scrape_job("ragobs")
    targets = [t for group in job["static_configs"] for t in group["targets"]]
    # The proxy's figures port, never the port agents send their calls to.
    assert targets == [f"agent:{AGENT_PORT}", f"proxy:{PROXY_FIGURES_PORT}"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert {"agent", "proxy"} <= set(compose()["services"])
    # RagobsTargetDown watches this job.
    assert 'up{job="ragobs"}' in alert_rules()["RagobsTargetDown"]["expr"]


# --- docker-compose.yml --------------------------------------------------------------

def compose() -> dict[str, Any]:
    doc: dict[str, Any] = load_yaml(COMPOSE)
    return doc


def compose_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(COMPOSE_SCHEMA.read_text(encoding="utf-8"))
    return schema


def test_vendored_schema_is_the_compose_spec_unchanged() -> None:
    text = COMPOSE_SCHEMA.read_text(encoding="utf-8")
    schema = compose_schema()
    assert schema["title"] == "Compose Specification"
    assert "draft-07" in schema["$schema"]
    note = schema["$comment"]
    assert "compose-spec/compose-spec" in note and "schema/compose-spec.json" in note
    # Only the $comment line was added: the rest hashes to the recorded digest.
    digest = re.search(r"sha256 of the file as shipped: ([0-9a-f]{64})", note)
    assert digest is not None
    lines = text.splitlines(keepends=True)
    assert lines[1].lstrip().startswith('"$comment"')
    original = "".join(lines[:1] + lines[2:]).encode("utf-8")
    assert hashlib.sha256(original).hexdigest() == digest.group(1)
    jsonschema.Draft7Validator.check_schema(schema)


def test_compose_file_is_valid_against_the_compose_spec_schema() -> None:
    validator = jsonschema.Draft7Validator(compose_schema())
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(compose())]
    assert errors == []


@pytest.mark.parametrize(("path", "value"), [
    (("services", "agent", "helthcheck"), {"test": ["CMD", "true"]}),
    (("services", "grafana", "depends_on", "prometheus", "condition"), "service_ready"),
    (("services", "prometheus", "ports"), "9090:9090"),
    (("volumes", "grafana data"), {}),
])
def test_schema_rejects_a_broken_compose_file(path: tuple[str, ...], value: object) -> None:
    doc = compose()
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert list(jsonschema.Draft7Validator(compose_schema()).iter_errors(doc))


def parse_port(spec: str) -> tuple[str, int, int]:
    """``"HOST_IP:PUBLISHED:TARGET"`` of a compose short port syntax."""
    host_ip, published, target = spec.split(":")
    return host_ip, int(published), int(target)


def test_services_publish_their_ports_on_loopback() -> None:
    services = compose()["services"]
    assert set(services) == set(SERVICE_PORTS)
    for name, ports in SERVICE_PORTS.items():
        assert [parse_port(p) for p in services[name]["ports"]] == [
            ("127.0.0.1", port, port) for port in ports], name


def test_every_service_restarts_and_starts_in_a_healthy_order() -> None:
    services = compose()["services"]
    healthy = {name for name, s in services.items() if "healthcheck" in s}
    if "HEALTHCHECK" in dockerfile():
        healthy |= {name for name, s in services.items() if "build" in s}
    for name, service in services.items():
        assert service["restart"] == "unless-stopped", name
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in services, (name, dependency)
            if condition["condition"] == "service_healthy":
                assert dependency in healthy, f"{name} waits on {dependency}'s health"
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"
    # Prometheus must start even with the agent or the proxy unhealthy: it is what
    # reports them down.
    for target in ("agent", "proxy"):
        assert services["prometheus"]["depends_on"][target]["condition"] == "service_started"
    assert {"prometheus", "grafana"} <= healthy


def test_build_contexts_and_dockerfiles_exist() -> None:
    builds = {name: s["build"] for name, s in compose()["services"].items() if "build" in s}
    assert set(builds) == {"agent"}
    for build in builds.values():
        context = ROOT / build["context"]
        assert context.is_dir()
        assert (context / build.get("dockerfile", "Dockerfile")).is_file()


def volume_mounts() -> list[tuple[str, str, str]]:
    """(service, source, target) of every short-syntax volume entry."""
    out = []
    for name, service in compose()["services"].items():
        for spec in service.get("volumes", []):
            source, target = spec.split(":")[:2]
            out.append((name, source, target))
    return out


def test_bind_mounts_exist_and_named_volumes_are_declared() -> None:
    declared = set(compose()["volumes"])
    used = set()
    for service, source, target in volume_mounts():
        assert target.startswith("/"), (service, target)
        if source.startswith((".", "/")):
            assert (ROOT / source).exists(), f"{service} mounts missing {source}"
        else:
            used.add(source)
    assert used == declared == {"prometheus-data", "grafana-data"}


def test_grafana_gets_the_provisioning_and_the_dashboards() -> None:
    grafana = compose()["services"]["grafana"]
    mounts = {target: source for service, source, target in volume_mounts()
              if service == "grafana"}
    assert mounts["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"
    assert mounts["/var/lib/grafana/dashboards"] == "./dashboards"
    assert mounts["/var/lib/grafana"] == "grafana-data"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith("/var/lib/grafana/dashboards/")
    assert (ROOT / "dashboards" / Path(home).name).is_file()
    env = grafana["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"


def test_grafana_datasources_point_at_compose_services() -> None:
    services = compose()["services"]
    urls = [ds["url"] for path in (ROOT / "deploy/grafana/provisioning/datasources").glob("*.y*ml")
            for ds in load_yaml(path).get("datasources", [])]
    assert urls
    for url in urls:
        match = re.fullmatch(r"http://([\w-]+):(\d+)/?", url)
        assert match is not None, url
        host, port = match.group(1), int(match.group(2))
        assert host in services, url
        assert port in SERVICE_PORTS[host], url


def test_exemplars_link_to_a_provisioned_trace_datasource() -> None:
    datasources = [ds for path in (ROOT / "deploy/grafana/provisioning/datasources").glob("*.y*ml")
                   for ds in load_yaml(path).get("datasources", [])]
    uids = {ds["uid"]: ds for ds in datasources}
    (prometheus,) = [ds for ds in datasources if ds["type"] == "prometheus"]
    links = prometheus["jsonData"]["exemplarTraceIdDestinations"]
    # ragobs labels its exemplars trace_id (see ragobs/_exposition.py).
    assert [link["name"] for link in links] == ["trace_id"]
    for link in links:
        assert uids[link["datasourceUid"]]["type"] == "jaeger"


def test_prometheus_container_finds_its_config_and_rule_files() -> None:
    prometheus = compose()["services"]["prometheus"]
    flags = dict(arg.split("=", 1) for arg in prometheus["command"] if "=" in arg)
    config_in_container = flags["--config.file"]
    mounts = {target: source for service, source, target in volume_mounts()
              if service == "prometheus"}
    assert mounts[config_in_container] == "./deploy/prometheus/prometheus.yml"
    assert mounts[flags["--storage.tsdb.path"]] == "prometheus-data"
    # Resolve each rule_files pattern as Prometheus would inside the container,
    # then map it back through the mounts to files in this repository.
    config_dir = Path(config_in_container).parent
    for pattern in load_yaml(PROM_CONFIG)["rule_files"]:
        in_container = config_dir / pattern
        for target, source in mounts.items():
            if in_container.is_relative_to(target) and source.startswith("."):
                host = ROOT / source / in_container.relative_to(target)
                found = sorted(host.parent.glob(host.name))
                assert found == [RULES], (pattern, found)
                break
        else:
            pytest.fail(f"rule_files {pattern!r} is not mounted in the container")


def test_agent_serves_where_prometheus_and_the_healthcheck_look() -> None:
    agent = compose()["services"]["agent"]
    command = agent["command"]
    assert command[0] == "demo"
    assert command[command.index("--requests") + 1] == "0"
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert int(command[command.index("--port") + 1]) == AGENT_PORT
    assert int(agent["environment"]["RAGOBS_PORT"]) == AGENT_PORT
    assert dockerfile()["EXPOSE"] == [str(AGENT_PORT)]
    assert agent["stop_signal"] == dockerfile()["STOPSIGNAL"][0]


def test_agent_sends_traces_to_the_trace_backend() -> None:
    services = compose()["services"]
    env = services["agent"]["environment"]
    match = re.fullmatch(r"http://([\w-]+):4318", env["OTEL_EXPORTER_OTLP_ENDPOINT"])
    assert match is not None and match.group(1) in services
    assert "jaeger" in services["agent"]["depends_on"]
    # Without the [otlp] extra the endpoint would be ignored.
    assert any("[otlp" in line for line in dockerfile()["RUN"])


def test_every_cli_flag_the_agent_gets_exists() -> None:
    command = compose()["services"]["agent"]["command"]
    args = build_parser().parse_args(command)
    assert (args.command, args.requests, args.host, args.port) == ("demo", 0, "0.0.0.0",
                                                                   AGENT_PORT)
    # The real openai client with the provider's usage: priced calls fill the cost panels.
    assert args.provider == "openai"
    installs = " ".join(line for line in dockerfile()["RUN"] if "pip install" in line)
    assert re.search(r"\[[^]]*\bopenai\b[^]]*\]", installs)
    assert re.search(r"\[[^]]*\bcost\b[^]]*\]", installs)
    defaults = build_parser().parse_args(json.loads(dockerfile()["CMD"][0]))
    assert (defaults.command, defaults.requests) == ("demo", 0)


def interpolated(value: str, env: dict[str, str]) -> str:
    """``value`` with compose's ``${VAR:-default}`` and ``${VAR}`` replaced from ``env``."""
    def one(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(3)
        return env.get(name) or (default if default is not None else "")

    return re.sub(r"\$\{(\w+)(:-([^}]*))?\}", one, value)


@pytest.mark.parametrize("env", [{}, {"RAGOBS_PROXY_UPSTREAM": "http://llm:8000/api"}])
def test_proxy_serves_where_agents_prometheus_and_the_healthcheck_look(
        env: dict[str, str]) -> None:
    services = compose()["services"]
    proxy = services["proxy"]
    command = [interpolated(arg, env) for arg in proxy["command"]]
    args = build_parser().parse_args(command)
    assert args.command == "proxy" and not args.no_admin
    [upstream] = args.upstream
    assert upstream.name is None
    assert upstream.url == env.get("RAGOBS_PROXY_UPSTREAM", "https://api.openai.com")
    # Agents in other containers reach it; its figures are served on a port of their own.
    assert args.listen == ("0.0.0.0", PROXY_PORT)
    assert (args.host, args.port) == ("0.0.0.0", PROXY_FIGURES_PORT)
    assert int(proxy["environment"]["RAGOBS_PORT"]) == PROXY_FIGURES_PORT  # healthcheck
    # The agent's image, which the agent's build makes: never pulled from a registry.
    assert proxy["image"] == services["agent"]["image"] and "build" not in proxy
    assert proxy["pull_policy"] == "never"
    assert proxy["depends_on"]["agent"]["condition"] == "service_started"
    assert proxy["stop_signal"] == dockerfile()["STOPSIGNAL"][0]
    traces = re.fullmatch(r"http://([\w-]+):4318",
                          proxy["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"])
    assert traces is not None and traces.group(1) in services


# --- Dockerfile and .dockerignore ----------------------------------------------------

def dockerfile() -> dict[str, list[str]]:
    """Instruction -> its arguments, one entry per occurrence (continuations joined)."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    out: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, rest = line.partition(" ")
        out.setdefault(instruction.upper(), []).append(rest.strip())
    return out


def test_dockerfile_builds_a_slim_non_root_image_of_the_package() -> None:
    d = dockerfile()
    assert d["FROM"] == ["python:3.11-slim"]
    assert len(d["USER"]) == 1 and d["USER"][0] not in {"root", "0"}
    installs = [line for line in d["RUN"] if "pip install" in line]
    assert len(installs) == 1
    assert " -e " not in installs[0] and "--editable" not in installs[0]
    assert "pip install '.[otlp," in installs[0]
    assert d["ENTRYPOINT"] == ['["ragobs"]']
    healthcheck = d["HEALTHCHECK"][0]
    assert "CMD [\"python\"" in healthcheck and "/healthz" in healthcheck
    assert "curl" not in healthcheck and "wget" not in healthcheck


def dockerignore_excludes(path: str) -> bool:
    """Whether the build context leaves ``path`` out: Docker's rule, the last
    pattern matching the path or one of its parent directories decides."""
    excluded = False
    for raw in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(?:.*/)?").replace(r"\*", "[^/]*")
        regex = regex.replace(r"\?", "[^/]").replace(r"\[", "[").replace(r"\]", "]")
        parts = path.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        if any(re.fullmatch(regex, prefix) for prefix in prefixes):
            excluded = not negate
    return excluded


def test_build_context_holds_what_the_dockerfile_copies_and_nothing_else() -> None:
    copied = []
    for args in dockerfile()["COPY"]:
        copied += shlex.split(args)[:-1]
    assert copied
    for source in copied:
        assert (ROOT / source).exists(), source
        assert not dockerignore_excludes(source), source
    assert not dockerignore_excludes("ragobs/_server/app.py")
    for left_out in ("tests/test_deploy.py", ".git/HEAD", "bench/run.py", "dashboards/ragobs.json",
                     "ragobs/__pycache__/cli.cpython-311.pyc", "docker-compose.yml"):
        assert dockerignore_excludes(left_out), left_out


def healthcheck_argv() -> list[str]:
    match = re.search(r"\bCMD (\[.*\])$", dockerfile()["HEALTHCHECK"][0])
    assert match is not None
    argv: list[str] = json.loads(match.group(1))
    assert argv[0] == "python"
    return [sys.executable, *argv[1:]]


@pytest.mark.realtime
async def test_image_healthcheck_asks_a_real_sidecar() -> None:
    """The HEALTHCHECK command, run as Docker would, succeeds against a serving
    sidecar and fails once nothing answers on the port."""
    runtime = setup(service_name="healthcheck-test", serve=False, set_global=False,
                    registry=CollectorRegistry())
    sidecar = await runtime.start_server("127.0.0.1", 0)

    async def healthcheck(port: int) -> int:
        proc = await asyncio.create_subprocess_exec(
            *healthcheck_argv(), env={**os.environ, "RAGOBS_PORT": str(port)},
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        return await asyncio.wait_for(proc.wait(), timeout=30)

    try:
        assert await healthcheck(sidecar.port) == 0
        port = sidecar.port
        await runtime.stop_server()
        assert await healthcheck(port) != 0
        assert await healthcheck(free_port()) != 0
    finally:
        await runtime.stop_server()
        runtime.shutdown()


# --- the rules against a real Prometheus and a live agent -----------------------------

SERVICE = "ragobs-deploy-test"
#: Recorded series a live agent's traffic must produce, one per service/operation/model.
LIVE_RECORDS = (
    "service_model:ragobs_requests:rate5m",
    "service_model:ragobs_requests_success:ratio_rate5m",
    "service_model:ragobs_requests_failure:ratio_rate5m",
    "service_model:ragobs_requests:rate1h",
    "service_model:ragobs_turn_time_to_first_chunk_seconds:p95_rate5m",
    "service_model:ragobs_turn_duration_seconds:p95_rate5m",
    "service_model:ragobs_turn_output_tokens_per_second:mean5m",
)


@pytest.mark.needs_prometheus
async def test_rules_evaluate_cleanly_on_a_live_agent(tmp_path: Path) -> None:
    """Prometheus loads the rules, evaluates every one without error on real
    demo traffic, and the recorded series carry the service/operation/model."""
    require_binary("prometheus")
    runtime = setup(service_name=SERVICE, serve=False, set_global=False,
                    registry=CollectorRegistry())
    sidecar = await runtime.start_server("127.0.0.1", 0)
    prom = PrometheusServer(tmp_path, [f"127.0.0.1:{sidecar.port}"], rule_files=[RULES])

    async def wave(seed: int) -> None:
        await run_demo(
            runtime, DemoConfig(failure_rate=0.3, slow_rate=0.3, time_scale=0.02),
            RunOptions(requests=30, concurrency=8, summary_every=0),
            protection=Protection(rate_limit=6, rate_window=2.0, first_token_timeout=1.0),
            seed=seed, out=io.StringIO())

    def scraped(total: int) -> bool:
        return prom.value("sum(ragobs_requests_total)") == total

    def evaluated() -> bool:
        # Groups evaluate on their own schedules: wait until every rule has run
        # and the recordings have seen the traffic.
        health = [rule["health"] for group in prom.rules() for rule in group["rules"]]
        return ("unknown" not in health
                and all(finite(prom.query(name)) for name in LIVE_RECORDS))

    try:
        await asyncio.to_thread(prom.start)
        await wave(1)
        await asyncio.to_thread(prom.wait_for, lambda: scraped(30), 20.0, 0.2, "first wave")
        await wave(2)
        await asyncio.to_thread(prom.wait_for, lambda: scraped(60), 20.0, 0.2, "second wave")
        await asyncio.to_thread(prom.wait_for, evaluated, 20.0, 0.2, "rules evaluated")
        await asyncio.to_thread(check_live_rules, prom)
    finally:
        await asyncio.to_thread(prom.stop)
        await runtime.stop_server()
        runtime.shutdown()


def check_live_rules(prom: PrometheusServer) -> None:
    loaded = [rule for group in prom.rules() for rule in group["rules"]]
    assert len(loaded) == len(rules())
    broken = [(r["name"], r.get("lastError")) for r in loaded if r["health"] != "ok"]
    assert broken == []
    labels = {"service_name": SERVICE, "gen_ai_operation_name": OPERATION,
              "gen_ai_request_model": MODEL}
    for name in LIVE_RECORDS:
        rows = prom.query(name)
        assert [row["metric"] for row in rows] == [{"__name__": name, **labels}], name
        assert float(rows[0]["value"][1]) >= 0, name
    success = prom.value("service_model:ragobs_requests_success:ratio_rate5m")
    failure = prom.value("service_model:ragobs_requests_failure:ratio_rate5m")
    assert success is not None and failure is not None
    assert 0 < success <= 1 and 0 <= failure < 1
    # Cancelled requests make up the rest (one instant, one evaluation of the group).
    both = prom.value("service_model:ragobs_requests_success:ratio_rate5m"
                      " + service_model:ragobs_requests_failure:ratio_rate5m")
    assert both is not None and both <= 1 + 1e-9
    for name in LIVE_RECORDS[3:]:
        assert (prom.value(name) or 0) > 0, name
    assert prom.query("service:ragobs_requests:rate5m")[0]["metric"]["service_name"] == SERVICE
    # The resilience alerts' label sets exist on the live series they aggregate.
    for metric, by in (("ragobs_fallbacks_total", "ragobs_name"),
                       ("ragobs_retry_attempts_total", "ragobs_name"),
                       ("ragobs_timeouts_total", "ragobs_timeout_kind")):
        rows = prom.query(f"count by (service_name, {by}) ({metric})")
        assert rows and all(row["metric"].get(by) for row in rows), metric
    assert prom.query('up{job="ragobs"} == 0') == []
