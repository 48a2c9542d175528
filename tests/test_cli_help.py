"""The ``ragobs`` command's help, version and one-line errors, as a new user meets them."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

import ragobs
from ragobs.cli import main

RAGOBS = [sys.executable, "-m", "ragobs.cli"]
COMMANDS = ("demo", "serve", "sidecar")


def help_of(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    with pytest.raises(SystemExit) as stopped:
        main([*args, "--help"])
    assert stopped.value.code == 0
    return capsys.readouterr().out


def test_help_names_every_command_in_plain_text(capsys: pytest.CaptureFixture[str]) -> None:
    top = help_of(capsys)
    description, commands = top.split("positional arguments:")
    for command in COMMANDS:
        assert f"'{command}'" in description, command
    # serve is one process, sidecar a host's process of its own: each says which.
    lines = {line.split()[0]: line for line in commands.splitlines()
             if line.strip().startswith(COMMANDS)}
    assert "one process" in lines["serve"]
    assert "one per host" in lines["sidecar"]
    for text in [top, *(help_of(capsys, command) for command in COMMANDS)]:
        assert "`" not in text  # argparse prints reStructuredText markup as it is


def test_each_command_says_what_its_log_level_shows(
        capsys: pytest.CaptureFixture[str]) -> None:
    sidecar = " ".join(help_of(capsys, "sidecar").split())
    assert "(default warning)" in sidecar
    # The host sidecar runs no resilience wrappers: it has no waits or retries to tell.
    assert "rate-limit" not in sidecar and "retry" not in sidecar
    assert "points dropped" in sidecar
    demo = " ".join(help_of(capsys, "demo").split())
    assert "(default error)" in demo and "rate-limit wait, retry, timeout" in demo
    serve = " ".join(help_of(capsys, "serve").split())
    assert "(default warning)" in serve and "rate-limit wait, retry and timeout" in serve


def test_version() -> None:
    done = subprocess.run([*RAGOBS, "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"ragobs {ragobs.__version__}\n"


@pytest.mark.parametrize("command", COMMANDS)
def test_a_port_in_use_is_one_plain_line(command: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([*RAGOBS, command, "--port", str(port)],
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr == (f"ragobs: error: cannot bind 127.0.0.1:{port}: Address already in "
                           "use (another sidecar there? --port 0 picks a free port)\n")


def test_a_wait_too_short_to_show_is_never_logged() -> None:
    """The limiter's notice rounds to 0.1 s: a shorter wait would read "Waiting 0.0s..."."""
    script = "\n".join([
        "from ragobs.cli import _configure_logging",
        "from ragobs.resilience._limiter import LimiterReport",
        "_configure_logging('info')",
        "report = LimiterReport('provider', 24, 5.0, None)",
        "for wait in (0.001, 0.049, 0.05, 1.25):",
        "    report.waiting(wait, 1)",
    ])
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        "Rate limit reached (24 requests/5s). Waiting 0.1s...",  # 0.05 rounds up: shown
        "Rate limit reached (24 requests/5s). Waiting 1.2s...",
    ]
