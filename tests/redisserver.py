"""A real ``redis-server`` on loopback, for tests of the shared rate limiter.

:class:`RedisServer` starts the binary on 127.0.0.1 and a free port with no
persistence (``--save '' --appendonly no``), waits until it answers PING and
stops it on :meth:`stop` or at the end of a ``with`` block, whatever happened.
:meth:`restart` brings it back on the same port (for outage tests).

Fixtures: ``redis_server`` (one server per test module) and ``redis_url``.
Use them from another test module by importing them::

    from tests.redisserver import redis_server, redis_url  # noqa: F401 (fixtures)
"""

from __future__ import annotations

import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Self

import pytest

from tests.procserver import ServerProcess
from tests.support import free_port, require_binary


class RedisServerError(RuntimeError):
    """The server did not start or did not answer PING."""


class RedisServer(ServerProcess):
    """One ``redis-server`` process on 127.0.0.1.

    Args:
        workdir: directory for its working dir and log; a fresh temporary one
            (removed at :meth:`stop`) when None.
        port: TCP port; a free one when None.
        extra_args: more command-line arguments, e.g. ``["--maxmemory", "10mb"]``.
    """

    error = RedisServerError
    label = "redis-server"

    def __init__(self, workdir: Path | None = None, *, port: int | None = None,
                 extra_args: tuple[str, ...] = ()) -> None:
        self._own_dir = workdir is None
        self.dir = Path(tempfile.mkdtemp(prefix="ragobs-redis-")) if workdir is None \
            else Path(workdir)
        self.port = port or free_port()
        self.extra_args = extra_args
        super().__init__(self.dir / "redis.log")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, ready_timeout: float = 10.0) -> Self:
        """Start the binary and wait for PONG; fails with the log tail."""
        binary = require_binary("redis-server")
        self.dir.mkdir(parents=True, exist_ok=True)
        self._spawn(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(self.dir),
             "--daemonize", "no", "--logfile", "", *self.extra_args],
            cwd=self.dir, ready=lambda: self.ping(timeout=0.5), timeout=ready_timeout, poll=0.02,
        )
        return self

    def ping(self, timeout: float = 1.0) -> bool:
        """Whether the server answers PING (a raw socket: usable from any thread)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the process (kill after 10 s) and remove its temporary dir;
        safe to call twice."""
        self._terminate()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def pause(self) -> None:
        """Stop the process but keep the port and dir, for :meth:`restart`."""
        self._terminate()

    def restart(self, ready_timeout: float = 10.0) -> Self:
        """Start again on the same port (empty: nothing is persisted)."""
        self._terminate()
        return self.start(ready_timeout)


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    """A running ``redis-server`` shared by the tests of one module (use unique keys)."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url
