"""The host sidecar's network surface: scraping from anywhere, pushing from this host.

The sidecar listens on every interface (the README's recipe for Prometheus on
another machine); pushes come over real sockets from loopback and from this
host's own network address, which the server sees as a remote peer.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from ragobs._history import History
from ragobs._host import HostCollector, HostReporter
from ragobs._host.history import HostHistorySource
from ragobs._host.merge import HostMetrics
from ragobs._host.receiver import add_otlp_routes
from ragobs._push import TOKEN_ENV
from ragobs._runtime import setup
from ragobs._server.app import create_app
from ragobs._stream import observe_stream
from tests.support import free_port, missing

TOKEN = "s3cret-token-for-tests-0123456789"
PROTOBUF = {"Content-Type": "application/x-protobuf"}


def network_address() -> str:
    """This host's address on its network interface (not loopback)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))  # no packet is sent: routing only
            address: str = probe.getsockname()[0]
        except OSError:
            address = "127.0.0.1"
    if address.startswith("127."):
        missing("this machine has no network interface besides loopback")
    return address


@dataclass
class Served:
    metrics: HostMetrics
    port: int
    remote: str  # this host's network address: a push from it is not from loopback

    def url(self, address: str, path: str = "/v1/metrics") -> str:
        return f"http://{address}:{self.port}{path}"


async def serve(**options: object) -> tuple[Served, aiohttp.web.AppRunner]:
    metrics = HostMetrics()
    registry = CollectorRegistry()
    registry.register(HostCollector(metrics))
    # The host sidecar's app, as `ragobs sidecar` builds it: /metrics, /api/summary, the panel.
    app = create_app(registry, HostReporter(metrics, service="host", started=0.0),
                     history=History(HostHistorySource(metrics)))
    add_otlp_routes(app, metrics, **options)  # type: ignore[arg-type]
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await aiohttp.web.TCPSite(runner, "0.0.0.0", port).start()
    return Served(metrics, port, network_address()), runner


@pytest.fixture
async def loopback_only() -> AsyncIterator[Served]:
    served, runner = await serve()
    try:
        yield served
    finally:
        await runner.cleanup()


@pytest.fixture
async def open_with_token() -> AsyncIterator[Served]:
    served, runner = await serve(token=TOKEN, allow_remote=True)
    try:
        yield served
    finally:
        await runner.cleanup()


async def post(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.post(
            url, data=b"", headers={**PROTOBUF, **(headers or {})}) as response:
        return response.status, await response.text()


def rejected(metrics: HostMetrics, reason: str) -> int:
    return metrics.snapshot().rejected_requests[reason]


async def test_pushes_come_from_this_host_only_while_scrapes_come_from_anywhere(
        loopback_only: Served) -> None:
    served = loopback_only
    assert (await post(served.url("127.0.0.1")))[0] == 200
    status, text = await post(served.url(served.remote))
    assert status == 403 and "from this host only" in text
    assert rejected(served.metrics, "forbidden") == 1
    async with aiohttp.ClientSession() as session:  # Prometheus on another machine
        for path in ("/metrics", "/api/summary"):
            async with session.get(served.url(served.remote, path)) as response:
                assert response.status == 200, path


async def test_ingest_opened_to_the_network_needs_the_token(open_with_token: Served) -> None:
    served = open_with_token
    status, text = await post(served.url(served.remote))
    assert status == 401 and "token" in text
    assert (await post(served.url(served.remote),
                       {"Authorization": "Bearer wrong-token-000000000"}))[0] == 401
    assert (await post(served.url("127.0.0.1")))[0] == 401  # a token guards loopback too
    assert (await post(served.url(served.remote),
                       {"Authorization": f"Bearer {TOKEN}"}))[0] == 200
    assert rejected(served.metrics, "unauthorized") == 3


async def test_a_worker_pushes_with_the_token_from_its_environment(
        open_with_token: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    served = open_with_token
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    runtime = setup(sidecar_url=f"http://{served.remote}:{served.port}", set_global=False,
                    registry=CollectorRegistry(), push_interval=3600)
    try:
        for _ in observe_stream(iter(["a", "b"]), model="m", telemetry=runtime.telemetry):
            pass
        assert runtime.meter_provider is not None
        assert await asyncio.to_thread(runtime.meter_provider.force_flush)
        snapshot = served.metrics.snapshot()
        assert snapshot.rejected_requests["unauthorized"] == 0
        assert snapshot.find("ragobs.requests")
    finally:
        await asyncio.to_thread(runtime.shutdown)


def test_ingest_is_never_opened_without_a_token() -> None:
    with pytest.raises(ValueError, match="allow_remote=True needs a token"):
        add_otlp_routes(aiohttp.web.Application(), HostMetrics(), allow_remote=True)
    with pytest.raises(ValueError, match="token must be a str of at least 16"):
        add_otlp_routes(aiohttp.web.Application(), HostMetrics(), token="short")


def start_sidecar(port: int, *flags: str, token: str | None) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    if token is not None:
        env[TOKEN_ENV] = token
    return subprocess.Popen([sys.executable, "-m", "ragobs.cli", "sidecar", "--host",
                             "0.0.0.0", "--port", str(port), *flags],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


async def wait_ready(url: str, proc: subprocess.Popen[bytes]) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            assert proc.poll() is None, proc.communicate()[0].decode()
            try:
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError("the host sidecar never answered")


@pytest.mark.parametrize("opened", [False, True], ids=["default", "ingest-from-network"])
async def test_ragobs_sidecar_takes_pushes_as_its_flags_say(opened: bool) -> None:
    remote, port = network_address(), free_port()
    proc = start_sidecar(port, *(["--ingest-from-network"] if opened else []),
                         token=TOKEN if opened else None)
    try:
        await wait_ready(f"http://{remote}:{port}/healthz", proc)
        url = f"http://{remote}:{port}/v1/metrics"
        with_token = {"Authorization": f"Bearer {TOKEN}"}
        if opened:
            assert (await post(url))[0] == 401
            assert (await post(url, with_token))[0] == 200
        else:
            assert (await post(url, with_token))[0] == 403
            assert (await post(f"http://127.0.0.1:{port}/v1/metrics"))[0] == 200
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_ingest_from_network_without_a_token_refuses_to_start() -> None:
    proc = start_sidecar(free_port(), "--ingest-from-network", token=None)
    out = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode != 0
    assert "--ingest-from-network needs a token in RAGOBS_SIDECAR_TOKEN" in out
