"""Several worker processes, one host: exact totals with real gunicorn and uvicorn.

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
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

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
