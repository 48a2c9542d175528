"""The recommended production stack for one streamed RAG answer, used by the demo.

From the provider outwards:

1. **rate limiter**: each attempt takes a slot first (provider quotas);
2. **retry**: failures before the first token reopen the stream, with backoff
   (a per-attempt first-token deadline makes a stalled attempt retryable);
3. **timeout**: a total and an idle deadline over the whole answer, retries included;
4. **instrumented stream**: what the user experienced, outcome and all;
5. **fallback**: a failed answer ends with a friendly message, never a traceback.

The instrumentation wraps the timeout so a deadline is recorded as outcome
``timeout``, and the fallback wraps the instrumentation so failures are still
counted as failures.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from ragobs._stream import observe_stream
from ragobs._telemetry import Telemetry
from ragobs.demo.agent import SimulatedRAGAgent
from ragobs.resilience import RateLimiter, fallback_stream, retry_stream, stream_timeout

OPERATION = "chat"
#: The labels of the default (simulated) agent.
PROVIDER = SimulatedRAGAgent.provider
MODEL = SimulatedRAGAgent.model


class Agent(Protocol):
    """What the stack protects: an agent that streams one answer per question."""

    @property
    def provider(self) -> str:
        """``gen_ai.provider.name`` of its answers."""
        ...

    @property
    def model(self) -> str:
        """``gen_ai.request.model`` of its answers."""
        ...

    def answer(self, question: str) -> AsyncIterator[object]:
        """The answer's chunks: str tokens, or a provider SDK's chunk objects."""
        ...


@dataclass(frozen=True)
class Protection:
    """Limits of the stack, in seconds of the agent's (unscaled) time."""

    rate_limit: int = 24
    rate_window: float = 5.0
    attempts: int = 3
    first_token_timeout: float = 2.5
    idle_timeout: float = 1.0
    total_timeout: float = 12.0


class ProtectedAgent:
    """An :class:`Agent` behind limiter → retry → timeout → metrics → fallback.

    Each attempt is a fresh call of the agent (route, retrieve, and the
    provider request), so a failed request phase is retried and counts
    against the first-token deadline. The chunks reach the instrumentation as
    the agent streams them: with the OpenAI agent, the SDK's chunk objects,
    whose usage chunk gives the token figures.
    """

    def __init__(self, agent: Agent, telemetry: Telemetry,
                 protection: Protection | None = None, time_scale: float = 1.0) -> None:
        self.agent = agent
        self.telemetry = telemetry
        p = protection or Protection()
        self.protection = p
        self.scale = time_scale
        self.limiter = RateLimiter(max_requests=p.rate_limit,
                                   window_seconds=p.rate_window * time_scale,
                                   name="provider", telemetry=telemetry)

    def answer(self, question: str) -> AsyncGenerator[object, None]:
        """The answer's chunks, ending with the fallback message (a str) if it failed."""
        p, scale, tel = self.protection, self.scale, self.telemetry

        async def attempt() -> AsyncGenerator[object, None]:
            # A factory (no generator of its own in between): retry_stream opens
            # and closes each attempt's stream itself, so an attempt given up
            # mid-way is closed at once, in this task, never left to the GC.
            await self.limiter.acquire()
            return stream_timeout(self.agent.answer(question),
                                  first_token=p.first_token_timeout * scale,
                                  name="attempt", telemetry=tel)

        stream = retry_stream(attempt, attempts=p.attempts, initial=0.25 * scale,
                              max_delay=2.0 * scale, name="generate", telemetry=tel)
        stream = stream_timeout(stream, total=p.total_timeout * scale,
                                idle=p.idle_timeout * scale, name="answer", telemetry=tel)
        observed = observe_stream(stream, operation=OPERATION, provider=self.agent.provider,
                                  model=self.agent.model, telemetry=tel)
        # Simulated failures are expected here: one log line each, no traceback.
        return fallback_stream(observed, name="answer", level=logging.WARNING, telemetry=tel)
