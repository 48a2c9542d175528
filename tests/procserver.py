"""A server binary run by a test: started on loopback, always stopped, log kept.

:class:`ServerProcess` is the shared life cycle of :class:`tests.promserver.PrometheusServer`
and :class:`tests.redisserver.RedisServer`: spawn with output to a log file,
wait until a readiness probe passes (failing with the log's tail if the
process exits or the probe never passes), terminate then kill.
"""

from __future__ import annotations

import abc
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self


class ServerProcess(abc.ABC):
    """One child process; subclasses define ``start`` / ``stop`` and the probe."""

    #: Raised when the process does not start or does not become ready.
    error: type[RuntimeError] = RuntimeError
    #: Name used in error messages.
    label = "server"

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _spawn(self, argv: Sequence[str], *, cwd: Path, ready: Callable[[], bool],
               timeout: float, poll: float, log_mode: str = "ab") -> None:
        """Start ``argv`` and wait until ``ready()``; on any failure the process is gone."""
        self._log = self.log_path.open(log_mode)  # type: ignore[assignment]
        self._proc = subprocess.Popen(list(argv), stdout=self._log, stderr=subprocess.STDOUT,
                                      cwd=cwd)
        try:
            deadline = time.monotonic() + timeout
            while True:
                if self._proc.poll() is not None:
                    raise self.error(f"{self.label} exited with {self._proc.returncode}:\n"
                                     f"{self.log_tail()}")
                if ready():
                    return
                if time.monotonic() >= deadline:
                    raise self.error(f"{self.label} not ready after {timeout}s:\n"
                                     f"{self.log_tail()}")
                time.sleep(poll)
        except BaseException:
            self._terminate()
            raise

    def _terminate(self) -> None:
        """Terminate the process (kill after 10 s) and close its log; safe to repeat."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    @abc.abstractmethod
    def start(self, ready_timeout: float = 10.0) -> Self:
        """Start the process and wait until it is ready."""

    def stop(self) -> None:
        self._terminate()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
