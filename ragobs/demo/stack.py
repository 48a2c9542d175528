"""The recommended production stack for a streamed RAG agent, used by the demo.

A turn (one question answered) makes several LLM calls. Each **call**, from
the provider outwards:

1. **rate limiter**: each attempt takes a slot first (provider quotas);
2. **first-token deadline** per attempt, so a stalled attempt is retryable;
3. **instrumented call**: each attempt is one inference call of the turn
   (``chat {model}``), outcome and all, so a failed attempt is a failed call;
4. **retry**: failures before the first token open a new attempt, with
   backoff; a recovered call leaves one failed call and a turn that succeeds.

The **turn**, from the agent outwards:

5. **timeout**: a total and an idle deadline over the whole answer, every
   call and retry included;
6. **instrumented turn**: what the user experienced (``invoke_agent
   rag-demo``), the calls, stages and tools inside it counted on it;
7. **fallback**: a failed answer ends with a friendly message, never a traceback.

The instrumentation wraps each deadline so that a deadline is recorded as
outcome ``timeout``, and the fallback wraps the turn's instrumentation so
failed turns are still counted as failures.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterable, Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol, cast

from ragobs import semconv
from ragobs._stream import observe_stream
from ragobs._telemetry import Telemetry
from ragobs.demo.agent import Call, SimulatedRAGAgent
from ragobs.resilience import RateLimiter, fallback_stream, retry_stream, stream_timeout

#: What the demo's turns are: an agent's, ``invoke_agent rag-demo``.
AGENT: Final = "rag-demo"
OPERATION: Final = semconv.OPERATION_INVOKE_AGENT
#: The operation of each LLM call.
CALL_OPERATION: Final = "chat"
#: The labels of the default (simulated) agent: a turn carries its answer model.
PROVIDER: Final = SimulatedRAGAgent.provider
MODEL: Final = SimulatedRAGAgent.model
ROUTER_MODEL: Final = SimulatedRAGAgent.router_model


class Agent(Protocol):
    """What the stack protects: an agent that streams one answer per question,
    making its LLM calls through the ``call`` it is given."""

    @property
    def provider(self) -> str:
        """``gen_ai.provider.name`` of its calls."""
        ...

    @property
    def model(self) -> str:
        """``gen_ai.request.model`` of its answers (the turn carries it)."""
        ...

    def answer(self, question: str, call: Call) -> AsyncGenerator[object, None]:
        """The answer's chunks: str tokens, or a provider SDK's chunk objects."""
        ...


@dataclass(frozen=True)
class Protection:
    """Limits of the stack, in seconds of the agent's (unscaled) time.

    ``attempts`` and ``first_token_timeout`` apply to each LLM call;
    ``idle_timeout`` and ``total_timeout`` to the whole turn.
    """

    rate_limit: int = 36
    rate_window: float = 5.0
    attempts: int = 3
    first_token_timeout: float = 2.5
    idle_timeout: float = 1.0
    total_timeout: float = 12.0


class ProtectedAgent:
    """An :class:`Agent` whose calls and turns go through the stack above.

    The chunks reach the instrumentation as the provider streams them: with
    the OpenAI agent, the SDK's chunk objects, whose usage chunks give each
    call's token figures (and the turn's, their sum).
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

    def call(self, name: str, model: str,
             request: Callable[[], Any]) -> AsyncGenerator[Any, None]:
        """One LLM call of the current turn (see :class:`~ragobs.demo.agent.Call`)."""
        p, scale, tel = self.protection, self.scale, self.telemetry

        async def attempt() -> AsyncGenerator[Any, None]:
            # A factory (no generator of its own in between): retry_stream opens
            # and closes each attempt's stream itself, so an attempt given up
            # mid-way is closed at once, in this task, never left to the GC.
            await self.limiter.acquire()
            # stream_timeout opens the factory itself, so the request is inside the
            # deadline (its overloads only name iterables: hence the cast).
            source = cast(AsyncIterable[Any], request)
            return observe_stream(
                stream_timeout(source, first_token=p.first_token_timeout * scale,
                               name=name, telemetry=tel),
                operation=CALL_OPERATION, provider=self.agent.provider, model=model,
                telemetry=tel)

        return retry_stream(attempt, attempts=p.attempts, initial=0.25 * scale,
                            max_delay=2.0 * scale, name=name, telemetry=tel)

    def answer(self, question: str) -> AsyncGenerator[object, None]:
        """The answer's chunks, ending with the fallback message (a str) if it failed."""
        p, scale, tel = self.protection, self.scale, self.telemetry
        stream = stream_timeout(self.agent.answer(question, self.call),
                                total=p.total_timeout * scale, idle=p.idle_timeout * scale,
                                name="answer", telemetry=tel)
        observed = observe_stream(stream, agent=AGENT, provider=self.agent.provider,
                                  model=self.agent.model, telemetry=tel)
        # Simulated failures are expected here: one log line each, no traceback.
        return fallback_stream(observed, name="answer", level=logging.WARNING, telemetry=tel)
