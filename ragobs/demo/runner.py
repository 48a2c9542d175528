"""Drive the simulated agent under concurrency and print the dashboard."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sys
import time
from dataclasses import dataclass
from typing import TextIO

from ragobs.demo.agent import QUESTIONS, DemoConfig, SimulatedRAGAgent
from ragobs.demo.stack import ProtectedAgent, Protection
from ragobs.resilience._report import format_resilience, resilience_counts
from ragobs.runtime import Runtime
from ragobs.summary import format_dashboard


@dataclass(frozen=True)
class RunOptions:
    """How much traffic to send: ``requests`` (0 = no limit) and/or ``duration``."""

    requests: int = 50
    duration: float | None = None
    concurrency: int = 4
    summary_every: int = 10

    def __post_init__(self) -> None:
        if not isinstance(self.requests, int) or self.requests < 0:
            raise ValueError(f"requests must be an int >= 0 (0 = no limit), got {self.requests!r}")
        if self.duration is not None and not self.duration > 0:
            raise ValueError(f"duration must be > 0 seconds, got {self.duration!r}")
        if not isinstance(self.concurrency, int) or not 1 <= self.concurrency <= 10_000:
            raise ValueError(f"concurrency must be an int in 1..10000, got {self.concurrency!r}")
        if not isinstance(self.summary_every, int) or self.summary_every < 0:
            raise ValueError(f"summary_every must be an int >= 0, got {self.summary_every!r}")


def dashboard(runtime: Runtime) -> str:
    """The seed's dashboard plus what the resilience stack did."""
    telemetry = runtime.telemetry
    body = format_dashboard(telemetry.summary.snapshot())
    rule_at = body.rindex("\n")
    return (body[:rule_at] + "\n\n" + format_resilience(resilience_counts(telemetry))
            + body[rule_at:])


async def one_request(agent: ProtectedAgent, question: str) -> str:
    """One answer through the full stack; a failure ends in the fallback message."""
    return "".join([token async for token in agent.answer(question)])


async def run_demo(runtime: Runtime, config: DemoConfig, options: RunOptions, *,
                   protection: Protection | None = None, seed: int | None = None,
                   out: TextIO | None = None) -> None:
    """Send traffic until the request count or duration is reached, or cancelled."""
    out = out or sys.stdout
    agent = ProtectedAgent(SimulatedRAGAgent(config, seed=seed, telemetry=runtime.telemetry),
                           runtime.telemetry, protection, config.time_scale)
    counter = itertools.count(1)
    deadline = None if options.duration is None else time.monotonic() + options.duration
    done = 0

    def more() -> int | None:
        if deadline is not None and time.monotonic() >= deadline:
            return None
        n = next(counter)
        if options.requests and n > options.requests:
            return None
        return n

    async def worker() -> None:
        nonlocal done
        while (n := more()) is not None:
            question = QUESTIONS[n % len(QUESTIONS)]
            with contextlib.suppress(Exception):  # counted by the instrumentation
                await one_request(agent, question)
            done += 1
            if options.summary_every and done % options.summary_every == 0:
                print(dashboard(runtime), file=out, flush=True)

    try:
        await asyncio.gather(*(worker() for _ in range(options.concurrency)))
    finally:
        print(dashboard(runtime), file=out, flush=True)
