"""Drive the demo agent under concurrency and print the dashboard."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Final, TextIO

from ragobs._report import build_report, format_text
from ragobs._runtime import Runtime
from ragobs._telemetry import Telemetry
from ragobs.demo.agent import (
    QUESTIONS,
    DemoConfig,
    OpenAIRAGAgent,
    SimulatedRAGAgent,
    chunk_text,
    import_openai,
)
from ragobs.demo.openai_wire import OpenAIWireServer
from ragobs.demo.provider import SimulatedProvider
from ragobs.demo.stack import Agent, ProtectedAgent, Protection

#: Where the LLM calls go: ``simulated`` streams str tokens in-process;
#: ``openai`` streams the same simulated provider through the real openai
#: client, over HTTP in the OpenAI wire format (needs ``ragobs[openai]``).
PROVIDERS: Final = ("simulated", "openai")


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
    """The seed's dashboard plus what the resilience stack did (one report)."""
    return format_text(build_report(runtime.telemetry))


async def one_request(agent: ProtectedAgent, question: str) -> str:
    """One answer through the full stack; a failure ends in the fallback message."""
    return "".join([chunk_text(chunk) async for chunk in agent.answer(question)])


@contextlib.asynccontextmanager
async def open_agent(provider: str, config: DemoConfig, *, seed: int | None = None,
                     telemetry: Telemetry | None = None, wire: OpenAIWireServer | None = None,
                     llm: SimulatedProvider | None = None,
                     out: TextIO | None = None) -> AsyncIterator[Agent]:
    """The agent of ``provider`` (see :data:`PROVIDERS`), for the block.

    ``simulated``: a :class:`SimulatedRAGAgent` calling ``llm``, or a
    :class:`SimulatedProvider` of its own. ``openai``: an
    :class:`OpenAIRAGAgent` streaming from ``wire``, or from an
    :class:`OpenAIWireServer` started (and stopped) here; ImportError first
    if the openai package is missing.
    """
    if provider == "simulated":
        yield SimulatedRAGAgent(config, seed=seed, telemetry=telemetry, llm=llm)
        return
    if provider != "openai":
        raise ValueError(f"provider must be one of {', '.join(PROVIDERS)}, got {provider!r}")
    openai = import_openai()
    async with contextlib.AsyncExitStack() as resources:
        if wire is None:
            wire = await resources.enter_async_context(OpenAIWireServer(config, seed=seed))
        agent = OpenAIRAGAgent(wire.url, config, seed=seed, telemetry=telemetry)
        resources.push_async_callback(agent.aclose)
        await agent.warm_up()
        print(f"ragobs demo: answers stream through openai {openai.__version__} "
              f"(AsyncOpenAI) from the simulated provider at {wire.url}",
              file=out or sys.stdout, flush=True)
        yield agent


async def run_demo(runtime: Runtime, config: DemoConfig, options: RunOptions, *,
                   protection: Protection | None = None, seed: int | None = None,
                   out: TextIO | None = None, provider: str = "simulated",
                   wire: OpenAIWireServer | None = None,
                   llm: SimulatedProvider | None = None) -> int:
    """Send traffic until the request count or duration is reached, or cancelled;
    the number of requests (turns) answered, fallbacks included.

    The dashboard is printed every ``options.summary_every`` requests and once
    at the end, unless the last one printed already shows the final figures.
    ``provider``: see :data:`PROVIDERS`. ``wire``: with ``openai``, a running
    :class:`OpenAIWireServer` to use instead of starting one; ``llm``: with
    ``simulated``, the :class:`SimulatedProvider` to call (the ``sent`` of
    either records every LLM request it received).
    """
    out = out or sys.stdout
    async with open_agent(provider, config, seed=seed, telemetry=runtime.telemetry,
                          wire=wire, llm=llm, out=out) as agent:
        return await _drive(
            ProtectedAgent(agent, runtime.telemetry, protection, config.time_scale),
            runtime, options, out)


async def _drive(agent: ProtectedAgent, runtime: Runtime, options: RunOptions,
                 out: TextIO) -> int:
    counter = itertools.count(1)
    deadline = None if options.duration is None else time.monotonic() + options.duration
    done = 0
    shown = ""  # the dashboard printed last

    def show() -> None:
        nonlocal shown
        text = dashboard(runtime)
        if text != shown:
            print(text, file=out, flush=True)
            shown = text

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
                show()

    try:
        await asyncio.gather(*(worker() for _ in range(options.concurrency)))
    finally:
        show()  # the final figures, unless the last dashboard already had them
    return done
