"""Several ``ragobs proxy`` processes, one host sidecar: exact totals.

The README's host recipe with proxies as the workers: a real ``ragobs sidecar``
process, three ``ragobs proxy`` processes pushing to it
(``RAGOBS_SIDECAR_URL``), each on its own port in front of the same local
provider server, and the real ``openai`` SDK spreading streamed calls over
them: some answered after failures before the first content (which the proxy
retries), one cut after content (interrupted, never retried). The proxies are
then stopped with SIGTERM, whose exit flush pushes what the last interval
held, and the host's ``/metrics`` and ``/api/summary`` must be exactly what
the clients saw.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.provider_server import Reply, ThreadedProviderServer
from tests.support import free_port
from tests.test_proxy import sample_sum
from tests.test_workers import _wait

ROOT = Path(__file__).resolve().parent.parent
MESSAGES: Any = [{"role": "user", "content": "hi"}]
PROXIES = 3
#: A failure before the first content, which the proxy retries (after its own
#: backoff, 0.25 s then 0.5 s: the server's shorter Retry-After is a floor).
RETRIED = Reply(status=429, headers={"retry-after-ms": "10"})


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        body: bytes = response.read()
        return body


class Process:
    def __init__(self, name: str, args: list[str], tmp: Path,
                 env: dict[str, str] | None = None, url: str = "") -> None:
        self.url = url
        self.log_path = tmp / f"{name}.log"
        self.log = self.log_path.open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "ragobs.cli", *args],
                                     stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT,
                                     env=dict(os.environ, PYTHONPATH=str(ROOT), **(env or {})))

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()
        return self.proc.returncode

    def tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-2000:]


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[str, ThreadedProviderServer, list[Process]]]:
    """The host sidecar's URL, the provider server, and the proxies in front of it."""
    port = free_port()
    host = f"http://127.0.0.1:{port}"
    proxies: list[Process] = []
    with ThreadedProviderServer() as upstream:
        sidecar = Process("sidecar", ["sidecar", "--port", str(port)], tmp_path)
        try:
            for i in range(PROXIES):
                listen = free_port()
                proxies.append(Process(
                    f"proxy{i}", ["proxy", "--upstream", upstream.server.base_url,
                                  "--listen", f"127.0.0.1:{listen}"],
                    tmp_path, env={"RAGOBS_SIDECAR_URL": host},
                    url=f"http://127.0.0.1:{listen}"))
            # Started together: a push the sidecar is not up for yet is kept and resent.
            _wait(lambda: _get(f"{host}/healthz"), 10.0, "the host sidecar answers")
            # Each says where it pushes once it listens.
            _wait(lambda: all(b"pushed to the host sidecar" in p.log_path.read_bytes()
                              for p in proxies), 10.0, "the proxies listen")
            yield host, upstream, proxies
        except BaseException:
            for proxy in [sidecar, *proxies]:
                print(proxy.tail())
            raise
        finally:
            for proxy in proxies:
                proxy.stop(signal.SIGKILL)
            sidecar.stop()


def test_three_proxies_report_exactly_what_the_clients_saw(
        stack: tuple[str, ThreadedProviderServer, list[Process]]) -> None:
    host, upstream, proxies = stack
    clients = [openai.OpenAI(base_url=f"{p.url}/v1", api_key="sk-test", max_retries=0)
               for p in proxies]
    # One call at a time, so each takes the replies scripted for it.
    plans: list[list[Reply]] = []
    for i in range(24):
        before = [RETRIED] * (i % 6 == 1) + [RETRIED, RETRIED] * (i == 9)
        plans.append([*before, Reply(input_tokens=10 + i, output_tokens=3 + i % 5)])
    plans.append([RETRIED, Reply(cut_after=2, input_tokens=99, output_tokens=99)])

    seen = {"ok": 0, "cut": 0, "input": 0, "output": 0, "retries": 0}
    for i, plan in enumerate(plans):
        upstream.script(*plan)
        stream = clients[i % PROXIES].chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True,
            stream_options={"include_usage": True})
        text = ""
        try:
            for chunk in stream:
                if chunk.usage is not None:
                    seen["input"] += chunk.usage.prompt_tokens
                    seen["output"] += chunk.usage.completion_tokens
                if chunk.choices and chunk.choices[0].delta.content:
                    text += chunk.choices[0].delta.content
        except openai.APIError:
            assert text == "Hello world"  # what came before the cut, never repeated
            seen["cut"] += 1
        else:
            assert text == "Hello world!"
            seen["ok"] += 1
        seen["retries"] += len(plan) - 1
    assert len(upstream.requests) == sum(len(plan) for plan in plans)
    assert seen["cut"] == 1 and seen["retries"] > PROXIES

    # SIGTERM: each proxy pushes what it has not pushed yet as it exits.
    for proxy in proxies:
        assert proxy.stop(signal.SIGTERM) == 128 + signal.SIGTERM, proxy.tail()
    calls = len(plans)
    _wait(lambda: json.loads(_get(f"{host}/api/summary"))["total_requests"] == calls,
          10.0, f"the host counts {calls} calls")

    metrics = _get(f"{host}/metrics").decode()
    summary = json.loads(_get(f"{host}/api/summary"))
    assert sample_sum(metrics, "ragobs_requests_total") == calls
    assert sample_sum(metrics, "ragobs_requests_total", ragobs_outcome="ok") == seen["ok"]
    assert sample_sum(metrics, "ragobs_requests_total", ragobs_outcome="error",
                       error_type="StreamInterrupted") == seen["cut"]
    assert sample_sum(metrics, "ragobs_proxy_interrupted_total") == seen["cut"]
    assert sample_sum(metrics, "ragobs_retry_attempts_total", error_type="429") \
        == seen["retries"]
    assert sample_sum(metrics, "ragobs_retry_attempts_total") == seen["retries"]
    assert sample_sum(metrics, "gen_ai_client_token_usage_sum",
                       gen_ai_token_type="input") == seen["input"]
    assert sample_sum(metrics, "gen_ai_client_token_usage_sum",
                       gen_ai_token_type="output") == seen["output"]
    assert sample_sum(metrics, "ragobs_proxy_overhead_seconds_count") == calls
    assert summary["total_requests"] == calls
    assert summary["successful"] == seen["ok"] and summary["failed"] == seen["cut"]
    assert summary["in_flight"] == 0
    row, = summary["calls"]
    assert (row["calls"], row["failed"]) == (calls, seen["cut"])
    assert (row["input_tokens"], row["output_tokens"]) == (seen["input"], seen["output"])
    assert summary["resilience"]["retries"] == seen["retries"]
    # The cut came after content: given up at once, as output had started.
    assert summary["resilience"]["retries_exhausted"] == seen["cut"]
