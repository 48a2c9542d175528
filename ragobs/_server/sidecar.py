"""Running the sidecar: in the agent's event loop, in a thread, or standalone."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
from typing import Any

from aiohttp import web

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9464


def resolve_address(host: str | None = None, port: int | None = None) -> tuple[str, int]:
    """Host and port: arguments, else ``RAGOBS_HOST``/``RAGOBS_PORT``, else the
    standard ``OTEL_EXPORTER_PROMETHEUS_HOST``/``_PORT``, else 127.0.0.1:9464."""
    env = os.environ
    if host is not None and (not isinstance(host, str) or not host.strip()):
        raise ValueError(f"host must be a non-empty str (an address or host name) or None, "
                         f"got {host!r}")
    host = (host or env.get("RAGOBS_HOST") or env.get("OTEL_EXPORTER_PROMETHEUS_HOST")
            or DEFAULT_HOST)
    if port is None:
        raw = env.get("RAGOBS_PORT") or env.get("OTEL_EXPORTER_PROMETHEUS_PORT")
        if raw is not None:
            try:
                port = int(raw)
            except ValueError:
                raise ValueError(f"RAGOBS_PORT must be an int in 0..65535, got {raw!r}") from None
        else:
            port = DEFAULT_PORT
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an int in 0..65535, got {port!r}")
    return host, port


class _OneLineLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's server logger for the sidecar: a malformed request from a
    scanner or a confused client is one debug line on ``ragobs.sidecar``, not
    a traceback in the application's stderr."""

    def exception(self, msg: object, *args: Any, exc_info: Any = True, **kwargs: Any) -> None:
        error = exc_info if isinstance(exc_info, BaseException) else (
            sys.exc_info()[1] if exc_info else None)
        if self.logger.isEnabledFor(logging.DEBUG):
            text = str(msg) % args if args else str(msg)
            self.logger.debug("sidecar: %s: %s", text,
                              f"{type(error).__name__}: {error}" if error else "")

    def error(self, msg: object, *args: Any, **kwargs: Any) -> None:
        kwargs["exc_info"] = kwargs.get("exc_info", False)
        self.exception(msg, *args, **kwargs)

    def debug(self, msg: object, *args: Any, exc_info: Any = None, **kwargs: Any) -> None:
        self.exception(msg, *args, exc_info=exc_info)


_HTTP_LOG = _OneLineLog(logging.getLogger("ragobs.sidecar"), {})


class Sidecar:
    """One running sidecar server.

    ``await start()`` serves inside the current event loop (an async agent);
    ``start_in_thread()`` serves from a daemon thread with its own loop (a
    synchronous program). ``port=0`` picks a free port; :attr:`port` tells it.
    """

    def __init__(self, app: web.Application, host: str | None = None,
                 port: int | None = None) -> None:
        self._app = app
        self.host, self.port = resolve_address(host, port)
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> Sidecar:
        # lingering_time: a refused (oversized) upload is not read on for long.
        runner = web.AppRunner(self._app, access_log=None, logger=_HTTP_LOG, lingering_time=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise OSError(exc.errno, f"ragobs sidecar cannot bind {self.host}:{self.port}: "
                                     f"{exc.strerror}") from exc
        server = getattr(site, "_server", None)
        if server is not None and server.sockets:
            self.port = server.sockets[0].getsockname()[1]
        self._runner = runner
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def start_in_thread(self) -> Sidecar:
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:
                failure.append(exc)
                started.set()
                loop.close()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(self.stop())
            loop.close()

        self._thread = threading.Thread(target=run, name="ragobs-sidecar", daemon=True)
        self._thread.start()
        started.wait()
        if failure:
            raise failure[0]
        return self

    def stop_thread(self, timeout: float = 5.0) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)
            self._thread = None
            self._loop = None
