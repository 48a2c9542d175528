"""The ``ragobs`` command: the demo end to end, Ctrl-C, bad flags."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tests.support import free_port

RAGOBS = [sys.executable, "-m", "ragobs.cli"]
FAST = ["--time-scale", "0.05", "--seed", "3"]


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*RAGOBS, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_demo_runs_and_prints_the_dashboard() -> None:
    done = run("demo", "--requests", "24", "--concurrency", "6", "--port", "0",
               "--summary-every", "12", *FAST)
    assert done.returncode == 0, done.stderr
    assert "metrics at http://127.0.0.1:" in done.stdout
    totals = re.findall(r"^Total Requests: (\d+)$", done.stdout, re.MULTILINE)
    assert totals[-1] == "24"
    assert len(totals) == 3  # every 12 requests, and a final one
    ok = int(re.findall(r"^Successful: (\d+) \(", done.stdout, re.MULTILINE)[-1])
    failed = int(re.findall(r"^Failed: (\d+) \(", done.stdout, re.MULTILINE)[-1])
    assert ok + failed == 24 and ok > 0


def test_demo_serves_metrics_while_running_and_stops_cleanly_on_ctrl_c() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [*RAGOBS, "demo", "--requests", "0", "--concurrency", "4", "--port", str(port),
         "--summary-every", "0", *FAST],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        body = ""
        deadline = time.monotonic() + 30
        ok_series = 'ragobs_outcome="ok"'
        while time.monotonic() < deadline and ok_series not in body:
            time.sleep(0.2)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    body = r.read().decode()
            except OSError:
                continue
        assert ok_series in body
        # Parsed, not matched as text: the exporter orders labels as it likes
        # (an error series adds error_type="" to every series of the family).
        requests = [sample for family in text_string_to_metric_families(body)
                    if family.name == "ragobs_requests" for sample in family.samples
                    if sample.name == "ragobs_requests_total"]
        assert any(s.labels["gen_ai_operation_name"] == "chat"
                   and s.labels["gen_ai_request_model"] == "sim-rag-1"
                   and s.labels["ragobs_outcome"] == "ok" and s.value >= 1 for s in requests)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "STREAMING METRICS DASHBOARD" in out  # the final summary
    assert "stopped" in err
    assert "Traceback" not in err


def test_bad_flags_are_clear_errors() -> None:
    done = run("demo", "--requests", "-1")
    assert done.returncode == 2
    assert "requests must be an int >= 0" in done.stderr
    done = run("demo", "--failure-rate", "1.5")
    assert done.returncode == 2
    assert "must be in [0, 1]" in done.stderr
    done = run("demo", "--rate-limit", "0")
    assert done.returncode == 2
    assert "--rate-limit: must be an int >= 1" in done.stderr
    done = run("demo", "--port", "70000")
    assert done.returncode == 2
    assert "port must be an int in 0..65535" in done.stderr
    assert "Traceback" not in done.stderr
