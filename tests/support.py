"""Helpers shared by tests that need real components (binaries, free ports)."""

from __future__ import annotations

import os
import shutil
import socket
from typing import NoReturn

import pytest

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
#: ``./scripts/test`` (what CI runs) installs every component first and sets
#: this, so under it a missing component is a failure, CI variable or not.
REQUIRE_COMPONENTS = IN_CI or os.environ.get("RAGOBS_REQUIRE_COMPONENTS") == "1"


def missing(message: str) -> NoReturn:
    """A real component a test needs is not there: a failure under
    ``./scripts/test`` (and so in CI), a skip saying why elsewhere."""
    if REQUIRE_COMPONENTS:
        pytest.fail(message)
    pytest.skip(message)


def require_binary(name: str) -> str:
    """Path of ``name``; fails in CI (skips locally) when it is missing.

    ``./scripts/test`` installs every binary the tests use, so in CI a missing
    one is a broken setup, never a reason to skip.
    """
    path = shutil.which(name)
    if path is None:
        missing(f"{name!r} is not installed; ./scripts/test installs it")
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
