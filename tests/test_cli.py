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
    # Every 12 requests; the one at 24 is the final one, not printed a second time.
    assert totals == ["12", "24"]
    ok = int(re.findall(r"^Successful: (\d+) \(", done.stdout, re.MULTILINE)[-1])
    failed = int(re.findall(r"^Failed: (\d+) \(", done.stdout, re.MULTILINE)[-1])
    assert ok + failed == 24 and ok > 0
    # It ended by itself: the last line says so, and that the sidecar goes with it.
    last = done.stdout.rstrip("\n").rsplit("\n", 1)[-1]
    assert re.fullmatch(r"ragobs demo: finished after 24 requests; the sidecar on "
                        r"http://127\.0\.0\.1:\d+ stops now \(--requests 0 runs until Ctrl-C\)",
                        last), last


def test_demo_prints_a_final_dashboard_when_the_last_one_is_behind() -> None:
    done = run("demo", "--requests", "24", "--concurrency", "6", "--port", "0",
               "--summary-every", "10", *FAST)
    assert done.returncode == 0, done.stderr
    totals = re.findall(r"^Total Requests: (\d+)$", done.stdout, re.MULTILINE)
    assert totals == ["10", "20", "24"]


def test_demo_says_when_it_stops_after_its_duration_and_lingers() -> None:
    done = run("demo", "--requests", "0", "--duration", "1", "--linger", "0.2",
               "--port", "0", "--summary-every", "0", *FAST)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("STREAMING METRICS DASHBOARD") == 1
    last = done.stdout.rstrip("\n").rsplit("\n", 1)[-1]
    assert re.fullmatch(r"ragobs demo: finished after 1 s \(\d+ requests\); the sidecar on "
                        r"http://127\.0\.0\.1:\d+ stays up 0\.2 s more, then stops "
                        r"\(without --duration it runs until Ctrl-C\)", last), last


# Tight enough that every run waits for the rate limit, retries and times out.
NOISY = ["--requests", "40", "--concurrency", "8", "--rate-limit", "8", "--rate-window", "10",
         "--failure-rate", "0.3", "--slow-rate", "0.3", "--port", "0", "--summary-every", "0",
         *FAST]


def test_demo_is_quiet_by_default_and_log_level_shows_each_notice() -> None:
    done = run("demo", *NOISY)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # the dashboard counts waits, retries and timeouts instead
    resilience = done.stdout.split("Resilience:")[-1]
    assert not re.search(r"Rate-limit waits: 0 |Retries: 0 ", resilience), resilience

    for level in ("warning", "info"):
        done = run("demo", *NOISY, "--log-level", level)
        assert done.returncode == 0, done.stderr
        assert "Rate limit reached (8 requests/" in done.stderr
        assert "retry generate after" in done.stderr
        assert "Waiting 0.0s" not in done.stderr


def test_demo_serves_metrics_while_running_and_stops_cleanly_on_ctrl_c() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [*RAGOBS, "demo", "--requests", "0", "--concurrency", "4", "--port", str(port),
         "--summary-every", "0", *FAST],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        def seen(body: str) -> set[str]:
            """What /metrics shows so far: an answered turn of the agent, ok calls per model."""
            # Parsed, not matched as text: the exporter orders labels as it likes
            # (an error series adds error_type="" to every series of the family).
            found = set()
            for family in text_string_to_metric_families(body):
                for s in family.samples:
                    if s.labels.get("ragobs_outcome") != "ok" or s.value < 1:
                        continue
                    if (s.name == "ragobs_requests_total"
                            and s.labels["gen_ai_operation_name"] == "invoke_agent"
                            and s.labels["gen_ai_agent_name"] == "rag-demo"
                            and s.labels["gen_ai_request_model"] == "sim-rag-1"):
                        found.add("turn")
                    if (s.name == "gen_ai_client_operation_duration_seconds_count"
                            and s.labels["gen_ai_operation_name"] == "chat"):
                        found.add(s.labels["gen_ai_request_model"])
            return found

        # A request is the agent's turn; its LLM calls are counted per model.
        wanted = {"turn", "sim-router-1", "sim-rag-1"}
        found: set[str] = set()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not wanted <= found:
            time.sleep(0.2)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    found = seen(r.read().decode())
            except OSError:
                continue
        assert wanted <= found, found
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "STREAMING METRICS DASHBOARD" in out  # the final summary
    assert "finished after" not in out  # stopped, not finished
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
