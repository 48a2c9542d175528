"""Several worker processes, one host: exact totals with real gunicorn and uvicorn,
and with worker processes running the demo's multi-call agent.

Each test starts, as real processes, the host sidecar (``ragobs sidecar``),
a server with three workers serving ``tests/deploy/app.py`` (which calls
``ragobs.setup()`` at import, as a user's app module does), and a real
Prometheus scraping the sidecar as the README says. Requests spread over
the workers; the totals in Prometheus and in ``/api/summary`` must equal the
requests sent. Then one worker is killed with SIGKILL and replaced, and the
totals stay exact (nothing it served was unpushed: the test waits one push
first, which is the documented loss window); then a graceful SIGTERM of the
whole server delivers what was served since the last push, as the exit flush.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.promserver import PrometheusServer
from tests.support import free_port, require_binary

ROOT = Path(__file__).resolve().parent.parent
N = 60
#: Long enough that nothing is pushed between the test's phases unless the
#: test waits for it; the exit flush delivers the rest.
PUSH_INTERVAL = 1.0


def _get(url: str, timeout: float = 10.0) -> bytes:
    return _fetch(url, timeout)[0]


def _fetch(url: str, timeout: float = 10.0) -> tuple[bytes, dict[str, str]]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        body: bytes = response.read()
        return body, {k.lower(): v for k, v in response.headers.items()}


def _wait(condition: object, limit: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + limit
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if condition():  # type: ignore[operator]
                return
        except Exception as exc:  # not up yet
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"{what} not met after {limit}s (last error: {last})")


class Sidecar:
    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = (tmp / "sidecar.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ragobs.cli", "sidecar", "--port", str(self.port)],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)
        _wait(lambda: _get(f"{self.url}/healthz"), what="the host sidecar answers")

    def summary(self) -> dict[str, object]:
        data: dict[str, object] = json.loads(_get(f"{self.url}/api/summary"))
        return data

    def total(self) -> int:
        return int(self.summary()["total_requests"])  # type: ignore[call-overload]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()


@pytest.fixture
def sidecar(tmp_path: Path) -> Iterator[Sidecar]:
    side = Sidecar(tmp_path)
    try:
        yield side
    finally:
        side.stop()


def _server_cmd(kind: str, port: int) -> list[str]:
    if kind.startswith("gunicorn"):
        cmd = [sys.executable, "-m", "gunicorn", "-w", "3", "-b", f"127.0.0.1:{port}",
               "-k", "aiohttp.GunicornWebWorker", "--graceful-timeout", "10"]
        if kind == "gunicorn-preload":
            cmd.append("--preload")
        return [*cmd, "tests.deploy.app:app"]
    return [sys.executable, "-m", "uvicorn", "--workers", "3", "--host", "127.0.0.1",
            "--port", str(port), "--log-level", "warning", "tests.deploy.app:asgi"]


class Server:
    def __init__(self, kind: str, sidecar: Sidecar, tmp: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, RAGOBS_SIDECAR_URL=sidecar.url, PYTHONPATH=str(ROOT),
                   TEST_PUSH_INTERVAL=str(PUSH_INTERVAL))
        self.log_path = tmp / f"{kind}.log"
        self.log = self.log_path.open("wb")
        self.proc = subprocess.Popen(_server_cmd(kind, self.port), stdout=self.log,
                                     stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        _wait(lambda: _get(f"{self.url}/pid"), what=f"{kind} answers")

    def ask(self, n: int) -> set[int]:
        """``n`` streamed answers, 16 at a time; the pids of the workers that served them."""
        def one(_: int) -> tuple[bytes, dict[str, str]]:
            return _fetch(f"{self.url}/ask?tokens=5")

        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(one, range(n)))
        assert all(body.startswith(b"t0 ") for body, _ in answers)
        return {int(headers["x-worker-pid"]) for _, headers in answers}

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(30)
        self.log.close()
        return self.proc.returncode

    def tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]


@pytest.mark.parametrize("kind", ["gunicorn", "gunicorn-preload", "uvicorn"])
def test_three_workers_report_exact_totals(kind: str, sidecar: Sidecar, tmp_path: Path) -> None:
    require_binary("prometheus")
    server = Server(kind, sidecar, tmp_path)
    prom = PrometheusServer(tmp_path, [f"127.0.0.1:{sidecar.port}"]).start()
    try:
        # Until at least two workers served (the kernel picks who accepts).
        pids: set[int] = set()
        sent = 0
        while len(pids) < 2:
            assert sent < 5 * N, f"requests never spread over the workers: {pids}"
            pids |= server.ask(N)
            sent += N
        _wait(lambda: sidecar.total() == sent, what=f"the host total reaches {sent}",
              limit=15)
        prom.wait_for(lambda: prom.value("sum(ragobs_requests_total)") == sent,
                      what="Prometheus sees every request")
        summary = sidecar.summary()
        assert summary["successful"] == sent and summary["in_flight"] == 0

        # One worker killed outright and replaced: what it pushed stays counted.
        time.sleep(PUSH_INTERVAL * 2.5)  # its last push is done: the loss window is empty
        victim = next(iter(pids))
        os.kill(victim, signal.SIGKILL)
        after = server.ask(N)  # served by the others, then by the replacement too
        assert victim not in after
        sent += N
        _wait(lambda: sidecar.total() == sent, what=f"the host total reaches {sent}",
              limit=15)
        prom.wait_for(lambda: prom.value("sum(ragobs_requests_total)") == sent,
                      what="Prometheus sees the requests after the kill")

        # A graceful stop right after more requests: the exit flush delivers them.
        server.ask(N // 2)
        sent += N // 2
        code = server.stop(signal.SIGTERM)
        assert code == 0, server.tail()
        _wait(lambda: sidecar.total() == sent,
              what="the exit flush delivers the last requests", limit=15)
        assert sidecar.summary()["in_flight"] == 0
    except BaseException:
        print(server.tail())
        raise
    finally:
        server.stop(signal.SIGKILL)
        prom.stop()


def _run_workers(sidecar: Sidecar, seeds: list[int], turns: int) -> list[dict[str, Any]]:
    """Worker processes running the demo's agent at once; each one's own /api/summary."""
    env = dict(os.environ, RAGOBS_SIDECAR_URL=sidecar.url, PYTHONPATH=str(ROOT),
               TEST_PUSH_INTERVAL="0.2")
    procs = [subprocess.Popen([sys.executable, "-m", "tests.deploy.demo_worker", str(seed),
                               str(turns)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env, cwd=ROOT) for seed in seeds]
    found = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        found.append(json.loads(out.strip().splitlines()[-1]))
    return found


def test_workers_running_multi_call_turns_add_up_on_the_host(sidecar: Sidecar) -> None:
    """Three processes answer with the demo's agent (several LLM calls a turn,
    failures retried, turns failed and served the fallback) and push to the
    host sidecar: its /api/summary has exactly their turns, and a calls table
    that is exactly the sum of theirs, row by row."""
    turns = 25
    workers = _run_workers(sidecar, [1, 2, 3], turns)
    sent = turns * len(workers)
    _wait(lambda: sidecar.total() == sent, what=f"the host total reaches {sent}", limit=15)
    host: dict[str, Any] = dict(sidecar.summary())

    # Turns: the counts add up; the means are the workers' means weighted by their
    # successful turns (a histogram's sum and count are exact).
    for key in ("total_requests", "successful", "failed", "cancelled", "timeouts"):
        assert host[key] == sum(w[key] for w in workers), key
    assert host["in_flight"] == 0
    assert host["failed"] > 0 and host["successful"] > 0
    ok = host["successful"]
    for key in ("avg_ttft_seconds", "avg_latency_seconds", "avg_tokens",
                "avg_tokens_per_second", "avg_inference_calls", "avg_tool_calls"):
        mean = sum(w[key] * w["successful"] for w in workers) / ok
        assert math.isclose(host[key], mean, rel_tol=1e-9), key
    assert host["avg_inference_calls"] > 2  # routing and answer calls, and retried ones
    for phase in host["ttft_breakdown"]:
        mean = sum(w["ttft_breakdown"].get(phase, 0.0) * w["successful"] for w in workers) / ok
        assert math.isclose(host["ttft_breakdown"][phase], mean, rel_tol=1e-9), phase

    # Calls: the host's table is the workers' tables added up, row by row.
    def rows(summary: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
        return {(r["provider"], r["model"]): r for r in summary["calls"]}

    table = rows(host)
    assert set(table) == {("simulated", "sim-router-1"), ("simulated", "sim-rag-1")}
    for model, row in table.items():
        for field in ("calls", "failed", "input_tokens", "output_tokens"):
            assert row[field] == sum(rows(w)[model][field] for w in workers), (model, field)
    calls = sum(row["calls"] for row in table.values())
    assert calls > 2 * sent and sum(row["failed"] for row in table.values()) > host["failed"]
    # What the stack did: every call took a rate-limit slot; retries and fallbacks add up.
    resilience = host["resilience"]
    for name in resilience:
        assert resilience[name] == sum(w["resilience"][name] for w in workers), name
    assert resilience["ratelimit_acquisitions"] == calls
    assert resilience["fallbacks"] == host["failed"]
