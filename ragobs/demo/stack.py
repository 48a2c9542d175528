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
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from ragobs.demo.agent import SimulatedRAGAgent
from ragobs.resilience import RateLimiter, fallback_stream, retry_stream, stream_timeout
from ragobs.stream import observe_stream
from ragobs.telemetry import Telemetry

OPERATION = "chat"
PROVIDER = "simulated"
MODEL = "sim-rag-1"


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
    """A :class:`SimulatedRAGAgent` behind limiter → retry → timeout → metrics → fallback."""

    def __init__(self, agent: SimulatedRAGAgent, telemetry: Telemetry,
                 protection: Protection | None = None, time_scale: float = 1.0) -> None:
        self.agent = agent
        self.telemetry = telemetry
        p = protection or Protection()
        self.protection = p
        self.scale = time_scale
        self.limiter = RateLimiter(max_requests=p.rate_limit,
                                   window_seconds=p.rate_window * time_scale,
                                   name="provider", telemetry=telemetry)

    def answer(self, question: str) -> AsyncGenerator[str, None]:
        p, scale, tel = self.protection, self.scale, self.telemetry

        async def attempt() -> AsyncGenerator[str, None]:
            await self.limiter.acquire()
            async for token in stream_timeout(self.agent.answer(question),
                                              first_token=p.first_token_timeout * scale,
                                              name="attempt", telemetry=tel):
                yield token

        stream = retry_stream(attempt, attempts=p.attempts, initial=0.25 * scale,
                              max_delay=2.0 * scale, name="generate", telemetry=tel)
        stream = stream_timeout(stream, total=p.total_timeout * scale,
                                idle=p.idle_timeout * scale, name="answer", telemetry=tel)
        observed = observe_stream(stream, operation=OPERATION, provider=PROVIDER, model=MODEL,
                                  telemetry=tel)
        # Simulated failures are expected here: one log line each, no traceback.
        return fallback_stream(observed, name="answer", level=logging.WARNING, telemetry=tel)
