"""A graceful stop loses nothing: SIGTERM, as kill, systemd, Kubernetes and Docker send it.

Real processes export their spans by OTLP/HTTP to a receiver in the test,
which decodes them with the official protobuf package and counts them. The
batch processor's delay is set far beyond the test, so every span counted
was flushed by the stop itself.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.support import free_port

ROOT = Path(__file__).resolve().parent.parent
STREAMS = 40


class Receiver:
    """OTLP/HTTP traces on loopback: span names as received."""

    def __init__(self) -> None:
        self.spans: list[str] = []
        self.url = ""

    async def _traces(self, request: web.Request) -> web.Response:
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        for resource in message.resource_spans:
            for scope in resource.scope_spans:
                self.spans.extend(span.name for span in scope.spans)
        return web.Response(status=200)

    async def _metrics(self, request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=200)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    found = Receiver()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/traces", found._traces)
    app.router.add_post("/v1/metrics", found._metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    found.url = f"http://127.0.0.1:{port}"
    try:
        yield found
    finally:
        await runner.cleanup()


def _env(receiver: Receiver) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_BSP_SCHEDULE_DELAY": "600000",      # nothing leaves before the stop
        "OTEL_METRIC_EXPORT_INTERVAL": "600000",
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
    })
    return env


USER_PROGRAM = textwrap.dedent(f"""
    import sys, time
    import ragobs

    handle = sys.argv[1] == "handle"
    ragobs.setup(service_name="user-program", serve=False, handle_sigterm=handle)
    for _ in range({STREAMS}):
        list(ragobs.observe_stream(["a", "b", "c"], model="m"))
    print("ready", flush=True)
    if sys.argv[2] == "wait":
        time.sleep(60)
""")


async def _wait_for_line(proc: asyncio.subprocess.Process, pattern: str,
                         limit: float = 30.0) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        line = await asyncio.wait_for(proc.stdout.readline(), deadline - time.monotonic())
        if not line:
            break
        if re.search(pattern, line.decode()):
            return line.decode()
    raise AssertionError(f"the process never printed {pattern!r}")


async def _run_user_program(receiver: Receiver, tmp_path: Path, *args: str) -> int:
    script = tmp_path / "program.py"
    script.write_text(USER_PROGRAM)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(script), *args, env=_env(receiver),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    await _wait_for_line(proc, "ready")
    if args[1] == "wait":
        proc.send_signal(signal.SIGTERM)
    code = await asyncio.wait_for(proc.wait(), 30)
    await asyncio.sleep(0.1)
    return code


async def test_sigterm_with_handle_sigterm_flushes_every_span(
        receiver: Receiver, tmp_path: Path) -> None:
    code = await _run_user_program(receiver, tmp_path, "handle", "wait")
    assert code == 128 + signal.SIGTERM
    assert receiver.spans.count("chat m") == STREAMS


async def test_a_program_that_ends_flushes_at_exit(receiver: Receiver, tmp_path: Path) -> None:
    code = await _run_user_program(receiver, tmp_path, "default", "end")
    assert code == 0
    assert receiver.spans.count("chat m") == STREAMS


async def test_without_the_opt_in_sigterm_still_ends_the_process_at_once(
        receiver: Receiver, tmp_path: Path) -> None:
    """ragobs takes no signal unasked: the default (immediate) SIGTERM stays,
    which is why the README tells programs to opt in."""
    code = await _run_user_program(receiver, tmp_path, "default", "wait")
    assert code == -signal.SIGTERM
    assert receiver.spans == []


@pytest.mark.parametrize("command", ["demo", "serve"])
async def test_the_cli_stops_on_sigterm_as_on_ctrl_c(receiver: Receiver,
                                                     command: str) -> None:
    args = ["demo", "--requests", "0", "--time-scale", "0.05", "--concurrency", "4",
            "--summary-every", "10", "--port", "0", "--log-level", "error"] \
        if command == "demo" else ["serve", "--port", "0"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ragobs.cli", *args, env=_env(receiver),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    await _wait_for_line(proc, "STREAMING METRICS DASHBOARD" if command == "demo"
                         else "ragobs sidecar")
    proc.send_signal(signal.SIGTERM)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 128 + signal.SIGTERM, err.decode()
    assert "stopped" in err.decode()
    if command == "demo":
        totals = re.findall(r"Total Requests: (\d+)", out.decode())
        assert totals, out.decode()
        await asyncio.sleep(0.1)
        # The final dashboard's total is every request (turn), and each one's span
        # left; so did the span of each LLM call its calls table counts.
        assert receiver.spans.count("invoke_agent rag-demo") == int(totals[-1]) > 0
        final = out.decode().rsplit("STREAMING METRICS DASHBOARD", 1)[-1]
        calls = {model: int(n) for model, n in
                 re.findall(r"^  simulated (\S+): (\d+), ", final, re.MULTILINE)}
        assert set(calls) == {"sim-router-1", "sim-rag-1"}, final
        for model, n in calls.items():
            assert receiver.spans.count(f"chat {model}") == n
