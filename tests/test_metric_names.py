"""One table of metric names, and the switch to the names the conventions propose."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ragobs import semconv
from tests.support import require_binary

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = (ROOT / "dashboards" / "ragobs.json",
           ROOT / "deploy" / "prometheus" / "rules" / "ragobs.rules.yml")

PROGRAM = """
import ragobs
from prometheus_client import CollectorRegistry, generate_latest
from ragobs._runtime import setup
registry = CollectorRegistry()
runtime = setup(serve=False, set_global=False, registry=registry)
with ragobs.observe(model="m", provider="p", telemetry=runtime.telemetry) as obs:
    obs.tokens(1)
    obs.tokens(1)
print(generate_latest(registry).decode())
"""


def run(names: str, program: str = PROGRAM) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, semconv.METRIC_NAMES_ENV: names}
    return subprocess.run([sys.executable, "-c", program], env=env, capture_output=True,
                          text=True, timeout=60, check=False)


def test_every_instrument_name_is_declared_once() -> None:
    names = [spec.name for spec in semconv.ALL_INSTRUMENTS]
    prometheus = [spec.prometheus_name for spec in semconv.ALL_INSTRUMENTS]
    assert len(set(names)) == len(names) and len(set(prometheus)) == len(prometheus)
    for spec in semconv.ALL_INSTRUMENTS:  # the exporter's rule: dots to underscores, a unit
        assert spec.prometheus_name.startswith(spec.name.replace(".", "_")), spec.name


def test_the_proposed_names_reach_metrics_and_pass_promtool() -> None:
    done = run("proposed")
    assert done.returncode == 0, done.stderr
    body = done.stdout
    for current in semconv.PENDING_RENAMES:
        assert current.replace(".", "_") not in body
    assert "gen_ai_client_inference_duration_seconds_count" in body
    assert "gen_ai_client_inference_time_to_first_chunk_seconds_bucket" in body
    assert "gen_ai_client_inference_time_per_output_chunk_seconds_count" in body
    promtool = require_binary("promtool")
    check = subprocess.run([promtool, "check", "metrics"], input=body, text=True,
                           capture_output=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    # The default stays the released conventions.
    assert "gen_ai_client_operation_duration_seconds_count" in run("current").stdout


def test_a_bad_switch_value_is_refused_by_name() -> None:
    done = run("newest", "import ragobs")
    assert done.returncode != 0
    assert "RAGOBS_GENAI_METRIC_NAMES must be 'current' or 'proposed', got 'newest'" \
        in done.stderr


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_the_dashboard_and_rules_move_to_the_proposed_names_and_back(path: Path) -> None:
    text = path.read_text()
    moved = semconv.rewrite_names(text)
    for current in semconv.PENDING_RENAMES:
        assert current.replace(".", "_") not in moved
    if path.suffix == ".json":
        assert moved != text  # the dashboard queries the renamed families
    assert semconv.rewrite_names(moved, to="current") == text
    with pytest.raises(ValueError, match="to must be 'current' or 'proposed'"):
        semconv.rewrite_names(text, to="latest")
