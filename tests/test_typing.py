"""The public decorators keep the user's function types under mypy --strict."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def test_decorated_functions_keep_their_signatures() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental",
         "--follow-imports=silent", str(HERE / "typing" / "decorated.py")],
        capture_output=True, text=True, cwd=HERE.parent)
    assert done.returncode == 0, done.stdout + done.stderr


def test_importing_ragobs_loads_the_opentelemetry_api_only() -> None:
    """A library that only instruments pays for the OpenTelemetry API, not for
    the SDK, the Prometheus exporter or an HTTP server (setup() loads those)."""
    code = ("import sys, ragobs\n"
            "heavy = [m for m in ('aiohttp', 'opentelemetry.sdk', 'prometheus_client',\n"
            "         'opentelemetry.exporter.prometheus', 'google.protobuf')\n"
            "         if m in sys.modules]\n"
            "print(heavy)\n"
            "ragobs.setup\n"
            "print('opentelemetry.sdk' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=HERE.parent)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[]", "True"]
