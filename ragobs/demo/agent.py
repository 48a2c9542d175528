"""The demo's streaming RAG agents, with realistic, configurable latency.

Both route the question, retrieve from "Python docs" or "JavaScript docs",
then stream an answer. Some queries are slow, some fail (before the first
token, mid-stream, or with a provider 429 / 503).

* :class:`SimulatedRAGAgent` generates in-process and streams ``str`` tokens;
* :class:`OpenAIRAGAgent` streams from the real ``openai`` client (an optional
  dependency, imported when the agent is made) talking to an OpenAI-compatible
  endpoint, and yields the SDK's ``ChatCompletionChunk`` objects.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Final

from ragobs._stages import stage
from ragobs._telemetry import Telemetry

if TYPE_CHECKING:
    from openai import AsyncOpenAI, AsyncStream
    from openai.types.chat import ChatCompletionChunk

#: The model :class:`OpenAIRAGAgent` asks for.
OPENAI_MODEL: Final = "gpt-4o-mini"
#: Marks :meth:`OpenAIRAGAgent.warm_up`'s request, which the demo's server
#: answers at once and leaves out of its record.
WARMUP_HEADER: Final = "x-ragobs-warmup"

QUESTIONS = (
    "How do I read a file line by line in Python?",
    "What is the difference between let and const in JavaScript?",
    "How do Python decorators work?",
    "How do I use async/await with fetch in JavaScript?",
    "What does the GIL do in CPython?",
    "How do JavaScript promises chain?",
    "How do I create a virtual environment in Python?",
    "What is event bubbling in the DOM?",
)

WORDS = tuple(
    "the function returns a value that you can pass to another call so the code stays "
    "simple readable and easy to test when the input changes the result updates without "
    "side effects which makes the behaviour predictable in production systems".split()
)


class AgentFailure(Exception):
    """A simulated provider failure; ``status`` is an HTTP status when set."""

    def __init__(self, message: str, status: int | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


@dataclass(frozen=True)
class DemoConfig:
    """Latency and failure profile of the simulated agent (seconds, 0..1 rates)."""

    failure_rate: float = 0.05
    slow_rate: float = 0.10
    route_seconds: tuple[float, float] = (0.02, 0.08)
    retrieve_seconds: tuple[float, float] = (0.05, 0.30)
    slow_retrieve_seconds: tuple[float, float] = (1.0, 3.0)
    token_gap_seconds: tuple[float, float] = (0.01, 0.05)
    tokens: tuple[int, int] = (20, 60)
    #: Multiplies every simulated delay (0.1 = ten times faster).
    time_scale: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.time_scale, (int, float)) or not self.time_scale > 0:
            raise ValueError(f"time_scale must be a number > 0, got {self.time_scale!r}")
        for arg in ("failure_rate", "slow_rate"):
            value = getattr(self, arg)
            if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{arg} must be a number in [0, 1], got {value!r}")
        for arg in ("route_seconds", "retrieve_seconds", "slow_retrieve_seconds",
                    "token_gap_seconds", "tokens"):
            low, high = getattr(self, arg)
            if not 0 <= low <= high:
                raise ValueError(f"{arg} must be (low, high) with 0 <= low <= high, "
                                 f"got {(low, high)!r}")


class RAGAgent:
    """Routing and retrieval, with stages traced: what the demo's agents share."""

    def __init__(self, config: DemoConfig | None = None, *, seed: int | None = None,
                 telemetry: Telemetry | None = None) -> None:
        self.config = config or DemoConfig()
        self._rng = random.Random(seed)
        self._telemetry = telemetry

    def _uniform(self, bounds: tuple[float, float]) -> float:
        return self._rng.uniform(*bounds) * self.config.time_scale

    async def route(self, question: str) -> str:
        async with stage("route", telemetry=self._telemetry):
            await asyncio.sleep(self._uniform(self.config.route_seconds))
            lowered = question.lower()
            return "javascript_docs" if ("javascript" in lowered or "dom" in lowered) \
                else "python_docs"

    async def retrieve(self, source: str, question: str) -> list[str]:
        async with stage("retrieve", source=source, telemetry=self._telemetry):
            slow = self._rng.random() < self.config.slow_rate
            bounds = self.config.slow_retrieve_seconds if slow else self.config.retrieve_seconds
            await asyncio.sleep(self._uniform(bounds))
            return [f"{source}#{self._rng.randrange(1000)}" for _ in range(3)]

    async def aclose(self) -> None:
        """Release what the agent holds (nothing, here)."""


class SimulatedRAGAgent(RAGAgent):
    """Streams answers like an LLM-backed RAG agent would, with stages traced."""

    provider = "simulated"
    model = "sim-rag-1"

    async def answer(self, question: str) -> AsyncGenerator[str, None]:
        """Stream the answer to ``question`` token by token."""
        cfg = self.config
        rng = self._rng
        source = await self.route(question)
        await self.retrieve(source, question)
        fail = rng.random() < cfg.failure_rate
        mode = rng.choice(("before_first_token", "mid_stream", "rate_limited", "unavailable"))
        n_tokens = rng.randint(*cfg.tokens)
        async with stage("generate", telemetry=self._telemetry):
            if fail and mode == "rate_limited":
                raise AgentFailure("provider rate limit", status=429,
                                   retry_after=0.2 * cfg.time_scale)
            if fail and mode == "unavailable":
                raise AgentFailure("provider unavailable", status=503)
            if fail and mode == "before_first_token":
                await asyncio.sleep(self._uniform(cfg.token_gap_seconds))
                raise ConnectionResetError("connection reset by provider")
            fail_at = rng.randint(1, max(1, n_tokens - 1)) if fail else -1
            for i in range(n_tokens):
                await asyncio.sleep(self._uniform(cfg.token_gap_seconds))
                if i == fail_at:
                    raise AgentFailure("stream interrupted", status=500)
                yield rng.choice(WORDS) + " "


def import_openai() -> ModuleType:
    """The ``openai`` package, or an ImportError saying how to install it."""
    try:
        import openai
    except ImportError as exc:
        raise ImportError("the openai provider needs the openai package: "
                          "pip install 'ragobs[openai]'") from exc
    return openai


class OpenAIRAGAgent(RAGAgent):
    """The same agent, its generate step a real ``openai.AsyncOpenAI`` stream.

    ``base_url`` is an OpenAI-compatible endpoint (the demo's
    :class:`~ragobs.demo.openai_wire.OpenAIWireServer`). The client makes no
    retries of its own (the demo's stack retries), and asks for the usage
    chunk, so token figures are the provider's.
    """

    provider = "openai"
    model = OPENAI_MODEL

    def __init__(self, base_url: str, config: DemoConfig | None = None, *,
                 seed: int | None = None, telemetry: Telemetry | None = None) -> None:
        openai = import_openai()
        super().__init__(config, seed=seed, telemetry=telemetry)
        self.client: AsyncOpenAI = openai.AsyncOpenAI(base_url=base_url, api_key="demo",
                                                      max_retries=0)

    async def warm_up(self) -> None:
        """One unmeasured request before the traffic: the SDK's first call
        imports and builds what it needs (about 0.1 s, once per process),
        which is no part of the provider's latency."""
        stream = await self._request("", extra_headers={WARMUP_HEADER: "1"})
        async with stream:
            async for _ in stream:
                pass

    async def _request(self, question: str, documents: list[str] | None = None,
                       extra_headers: dict[str, str] | None = None,
                       ) -> AsyncStream[ChatCompletionChunk]:
        return await self.client.chat.completions.create(
            model=self.model,
            messages=[
                {"role": "system",
                 "content": "Answer from these documents: " + ", ".join(documents or ())},
                {"role": "user", "content": question},
            ],
            stream=True,
            stream_options={"include_usage": True},
            extra_headers=extra_headers,
        )

    async def answer(self, question: str) -> AsyncGenerator[ChatCompletionChunk, None]:
        """Stream the answer to ``question`` as the SDK's chunks (role, content,
        finish and usage chunks); closing this closes the HTTP response."""
        source = await self.route(question)
        documents = await self.retrieve(source, question)
        async with stage("generate", telemetry=self._telemetry):
            stream = await self._request(question, documents)
            try:
                async for chunk in stream:
                    yield chunk
            finally:
                await stream.close()

    async def aclose(self) -> None:
        await self.client.close()
