"""The demo's simulated LLM provider: its models, what it answers, how fast, how it fails.

One set of rules for both demo providers: :class:`SimulatedProvider` streams
``str`` tokens in-process, and :class:`~ragobs.demo.openai_wire.OpenAIWireServer`
serves the same responses over HTTP in OpenAI's wire format. Each request
gets a :class:`Plan`, drawn before any wait (see :func:`plan`):

* at ``failure_rate`` one failure: a 429 (with a retry-after), a 503, a
  connection reset before the first token, or a cut mid-stream;
* otherwise, at ``slow_call_rate``, a slow start: the request waits
  ``slow_first_token_seconds`` before its first token (queued at the
  provider), which the demo's per-attempt first-token deadline may cut short;
* a routing model answers with the source to search (``python_docs`` or
  ``javascript_docs``, a few tokens) after ``route_seconds``; any other model
  streams ``tokens`` words. Each token comes after a ``token_gap_seconds`` gap.

Every request is recorded in the provider's ``sent`` list (a :class:`Sent`).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Final, Literal

__all__ = [
    "FAILURES",
    "OPENAI_MODEL",
    "OPENAI_ROUTER_MODEL",
    "ROUTER_MODELS",
    "SIMULATED_MODEL",
    "SIMULATED_ROUTER_MODEL",
    "SOURCES",
    "WORDS",
    "AgentFailure",
    "DemoConfig",
    "Plan",
    "Sent",
    "SimulatedProvider",
    "plan",
    "route_of",
]

#: The models the demo's agents call: a cheap routing model and an answer model.
SIMULATED_ROUTER_MODEL: Final = "sim-router-1"
SIMULATED_MODEL: Final = "sim-rag-1"
OPENAI_ROUTER_MODEL: Final = "gpt-4o-mini"
OPENAI_MODEL: Final = "gpt-4o"
#: Models that answer with a source to search rather than with prose.
ROUTER_MODELS: Final = frozenset({SIMULATED_ROUTER_MODEL, OPENAI_ROUTER_MODEL})
#: Where the agents retrieve from.
SOURCES: Final = ("python_docs", "javascript_docs")

WORDS = tuple(
    "the function returns a value that you can pass to another call so the code stays "
    "simple readable and easy to test when the input changes the result updates without "
    "side effects which makes the behaviour predictable in production systems".split()
)

Failure = Literal["rate_limited", "unavailable", "reset", "cut"]
FAILURES: Final[tuple[Failure, ...]] = ("reset", "cut", "rate_limited", "unavailable")
#: Characters per piece of a routing answer (about one token each).
_ROUTE_PIECE: Final = 4


class AgentFailure(Exception):
    """A simulated provider failure; ``status`` is an HTTP status when set."""

    def __init__(self, message: str, status: int | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


@dataclass(frozen=True)
class DemoConfig:
    """Latency and failure profile of the demo (seconds, 0..1 rates).

    ``failure_rate`` applies to each LLM request, ``slow_rate`` to each
    retrieval (``slow_retrieve_seconds``) and ``slow_call_rate`` to each LLM
    request that does not fail (``slow_first_token_seconds`` before its
    first token).
    """

    failure_rate: float = 0.05
    slow_rate: float = 0.10
    slow_call_rate: float = 0.05
    #: The routing model's time to its first token.
    route_seconds: tuple[float, float] = (0.02, 0.08)
    retrieve_seconds: tuple[float, float] = (0.05, 0.30)
    slow_retrieve_seconds: tuple[float, float] = (1.0, 3.0)
    slow_first_token_seconds: tuple[float, float] = (1.0, 3.0)
    #: A tool call (the code-example search of "how do I" questions).
    tool_seconds: tuple[float, float] = (0.02, 0.10)
    token_gap_seconds: tuple[float, float] = (0.01, 0.05)
    #: Words of an answer (a routing answer is a few tokens whatever this says).
    tokens: tuple[int, int] = (20, 60)
    #: Multiplies every simulated delay (0.1 = ten times faster).
    time_scale: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.time_scale, (int, float)) or not self.time_scale > 0:
            raise ValueError(f"time_scale must be a number > 0, got {self.time_scale!r}")
        for arg in ("failure_rate", "slow_rate", "slow_call_rate"):
            value = getattr(self, arg)
            if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{arg} must be a number in [0, 1], got {value!r}")
        for arg in ("route_seconds", "retrieve_seconds", "slow_retrieve_seconds",
                    "slow_first_token_seconds", "tool_seconds", "token_gap_seconds",
                    "tokens"):
            low, high = getattr(self, arg)
            if not 0 <= low <= high:
                raise ValueError(f"{arg} must be (low, high) with 0 <= low <= high, "
                                 f"got {(low, high)!r}")

    def seconds(self, rng: random.Random, bounds: tuple[float, float]) -> float:
        """A delay drawn from ``bounds``, scaled by ``time_scale``."""
        return rng.uniform(*bounds) * self.time_scale


def route_of(question: str) -> str:
    """The source that answers ``question``: what the simulated router says, and
    what an agent falls back on when the router fails."""
    lowered = question.lower()
    return SOURCES[1] if ("javascript" in lowered or "dom" in lowered) else SOURCES[0]


@dataclass(frozen=True)
class Plan:
    """What the provider does with one request."""

    failure: Failure | None
    #: Seconds before the first token beyond the usual gap (scaled).
    delay: float
    #: The content of each chunk (the routing answer's pieces, or words).
    pieces: tuple[str, ...]
    #: For a ``cut``: the piece the stream breaks before (-1: none).
    cut_at: int


def plan(rng: random.Random, config: DemoConfig, model: str, question: str) -> Plan:
    """Draw the :class:`Plan` of one request for ``model`` about ``question``."""
    failure = rng.choice(FAILURES) if rng.random() < config.failure_rate else None
    slow = failure is None and rng.random() < config.slow_call_rate
    delay = config.seconds(rng, config.slow_first_token_seconds) if slow else 0.0
    if model in ROUTER_MODELS:
        delay += config.seconds(rng, config.route_seconds)
        source = route_of(question)
        pieces = tuple(source[i:i + _ROUTE_PIECE] for i in range(0, len(source), _ROUTE_PIECE))
    else:
        pieces = tuple(rng.choice(WORDS) for _ in range(rng.randint(*config.tokens)))
    cut_at = rng.randint(1, max(1, len(pieces) - 1)) if failure == "cut" else -1
    return Plan(failure, delay, pieces, cut_at)


@dataclass
class Sent:
    """What the provider did with one request."""

    response_id: str
    #: The simulated failure, or None for a stream sent to the end.
    failure: Failure | None = None
    model: str = ""
    content_chunks: int = 0
    #: The usage chunk's figures, once it was written (None: no usage sent).
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    #: The stream was sent to its end.
    done: bool = False


class SimulatedProvider:
    """The provider in-process: :meth:`stream` gives a request's ``str`` tokens.

    Failures are raised as an OpenAI-style SDK would: :class:`AgentFailure`
    with status 429 (and ``retry_after``) or 503 before any token,
    :class:`ConnectionResetError` before the first token, and
    :class:`AgentFailure` with status 500 for a stream cut mid-way.
    """

    def __init__(self, config: DemoConfig | None = None, *, seed: int | None = None) -> None:
        self.config = config or DemoConfig()
        #: Every request received, in the order they arrived.
        self.sent: list[Sent] = []
        self._rng = random.Random(seed)

    async def stream(self, model: str, question: str) -> AsyncGenerator[str, None]:
        """The tokens of one request: received (and planned) when first read."""
        cfg, rng = self.config, self._rng
        todo = plan(rng, cfg, model, question)
        sent = Sent(f"sim-{len(self.sent) + 1}", todo.failure, model)
        self.sent.append(sent)
        if todo.failure == "rate_limited":
            raise AgentFailure("provider rate limit", status=429,
                               retry_after=0.2 * cfg.time_scale)
        if todo.failure == "unavailable":
            raise AgentFailure("provider unavailable", status=503)
        if todo.failure == "reset":
            await asyncio.sleep(cfg.seconds(rng, cfg.token_gap_seconds))
            raise ConnectionResetError("connection reset by provider")
        if todo.delay:
            await asyncio.sleep(todo.delay)
        words = model not in ROUTER_MODELS
        for i, piece in enumerate(todo.pieces):
            await asyncio.sleep(cfg.seconds(rng, cfg.token_gap_seconds))
            if i == todo.cut_at:
                raise AgentFailure("stream interrupted", status=500)
            sent.content_chunks += 1
            yield piece + " " if words else piece
        sent.done = True
