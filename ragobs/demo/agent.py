"""The demo's streaming RAG agents: one turn, several LLM calls.

Each answer (a *turn*) is what a small production agent does:

1. a **routing call**: a short streamed request to a cheap model, which names
   the source to search (``python_docs`` or ``javascript_docs``); if the
   router fails, the agent routes by keyword instead and goes on;
2. a **retrieval** from that source (``ragobs.retrieval``, with ``top_k`` and
   the documents found), slow now and then;
3. on "how do I" questions, a **tool** call (a code-example search);
4. the **answer**: a streamed request to the answer model, passed on as it
   streams.

The agent makes each LLM call through the ``call`` it is given (see
:class:`Call`): the demo's stack (:mod:`ragobs.demo.stack`) observes each one
as an inference call of the turn, behind its rate limiter, retry and
per-attempt first-token deadline, so a request that fails before its first
token is retried and the turn still succeeds.

* :class:`SimulatedRAGAgent` calls the in-process
  :class:`~ragobs.demo.provider.SimulatedProvider` (``str`` tokens);
* :class:`OpenAIRAGAgent` calls the real ``openai.AsyncOpenAI`` client (an
  optional dependency, imported when the agent is made) against an
  OpenAI-compatible endpoint, and yields the SDK's ``ChatCompletionChunk`` objects.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import random
from collections.abc import AsyncGenerator, Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any, Final, Protocol

from ragobs._stages import retrieval, stage, tool
from ragobs._telemetry import Telemetry
from ragobs.demo.provider import (
    OPENAI_MODEL,
    OPENAI_ROUTER_MODEL,
    SIMULATED_MODEL,
    SIMULATED_ROUTER_MODEL,
    SOURCES,
    WORDS,
    AgentFailure,
    DemoConfig,
    SimulatedProvider,
    route_of,
)

if TYPE_CHECKING:
    from openai import AsyncOpenAI, AsyncStream
    from openai.types.chat import ChatCompletionChunk

__all__ = [
    "OPENAI_MODEL",
    "OPENAI_ROUTER_MODEL",
    "QUESTIONS",
    "WARMUP_HEADER",
    "WORDS",
    "AgentFailure",
    "Call",
    "DemoConfig",
    "OpenAIRAGAgent",
    "RAGAgent",
    "SimulatedRAGAgent",
    "chunk_text",
    "import_openai",
]

#: Marks :meth:`OpenAIRAGAgent.warm_up`'s request, which the demo's server
#: answers at once and leaves out of its record.
WARMUP_HEADER: Final = "x-ragobs-warmup"
#: Documents a retrieval asks for.
TOP_K: Final = 4
#: The tool "how do I" questions call.
TOOL: Final = "code_examples"

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


def wants_example(question: str) -> bool:
    """Does the agent call its code-example tool for ``question``?"""
    return question.lower().startswith("how do i ")


def chunk_text(chunk: object) -> str:
    """The answer text of one chunk: a str token (or the fallback message), or
    the content of an OpenAI ``ChatCompletionChunk`` ("" for its role, finish
    and usage chunks)."""
    if isinstance(chunk, str):
        return chunk
    choices = getattr(chunk, "choices", None)
    if not choices:
        return ""
    content = getattr(getattr(choices[0], "delta", None), "content", None)
    return content if isinstance(content, str) else ""


class Call(Protocol):
    """How an agent makes one LLM call: the chunks of ``request()`` (a
    zero-argument factory that opens the provider's stream, called once per
    attempt), observed as one inference call of ``model``. ``name`` ("route",
    "generate") names the call's resilience reports."""

    def __call__(self, name: str, model: str,
                 request: Callable[[], Any]) -> AsyncGenerator[Any, None]: ...


class RAGAgent(abc.ABC):
    """The turn (route call, retrieval, tool, answer call) both agents share."""

    #: ``gen_ai.provider.name`` of the calls, the routing model and the answer model.
    provider: str
    router_model: str
    model: str

    def __init__(self, config: DemoConfig | None = None, *, seed: int | None = None,
                 telemetry: Telemetry | None = None) -> None:
        self.config = config or DemoConfig()
        self._rng = random.Random(seed)
        self._telemetry = telemetry

    @abc.abstractmethod
    def _request(self, model: str, question: str, documents: list[str] | None = None) -> Any:
        """Open one provider stream (a zero-argument factory's body)."""

    async def answer(self, question: str, call: Call) -> AsyncGenerator[object, None]:
        """Stream the answer to ``question``, every LLM request made through ``call``."""
        source = await self.route(question, call)
        documents = await self.retrieve(source, question)
        if wants_example(question):
            documents.append(await self.find_example(question))
        async with contextlib.aclosing(call(
                "generate", self.model,
                lambda: self._request(self.model, question, documents))) as chunks:
            async for chunk in chunks:
                yield chunk

    async def route(self, question: str, call: Call) -> str:
        """The source to search, as the routing model says; by keyword if it
        failed (the ``route`` stage records the failure, the turn goes on)."""
        text = ""
        try:
            async with stage("route", telemetry=self._telemetry), contextlib.aclosing(call(
                    "route", self.router_model,
                    lambda: self._request(self.router_model, question))) as chunks:
                async for chunk in chunks:
                    text += chunk_text(chunk)
        except Exception:  # the router is down: a keyword rule is good enough
            return route_of(question)
        return text if text in SOURCES else route_of(question)

    async def retrieve(self, source: str, question: str) -> list[str]:
        cfg, rng = self.config, self._rng
        async with retrieval(source, top_k=TOP_K, telemetry=self._telemetry) as found:
            slow = rng.random() < cfg.slow_rate
            await asyncio.sleep(cfg.seconds(rng, cfg.slow_retrieve_seconds if slow
                                     else cfg.retrieve_seconds))
            documents = [f"{source}#{rng.randrange(1000)}" for _ in range(rng.randint(2, TOP_K))]
            found.documents(len(documents))
        return documents

    async def find_example(self, question: str) -> str:
        cfg, rng = self.config, self._rng
        async with tool(TOOL, telemetry=self._telemetry):
            await asyncio.sleep(cfg.seconds(rng, cfg.tool_seconds))
            return f"example#{rng.randrange(1000)}"

    async def aclose(self) -> None:  # noqa: B027 (a default: nothing to release)
        """Release what the agent holds."""


class SimulatedRAGAgent(RAGAgent):
    """The agent, its LLM calls streamed by the in-process simulated provider."""

    provider = "simulated"
    router_model = SIMULATED_ROUTER_MODEL
    model = SIMULATED_MODEL

    def __init__(self, config: DemoConfig | None = None, *, seed: int | None = None,
                 telemetry: Telemetry | None = None,
                 llm: SimulatedProvider | None = None) -> None:
        super().__init__(config, seed=seed, telemetry=telemetry)
        #: The provider (``llm``, or one of the same config and seed): its
        #: ``sent`` records every request it received.
        self.llm = llm if llm is not None else SimulatedProvider(self.config, seed=seed)

    def _request(self, model: str, question: str,
                 documents: list[str] | None = None) -> AsyncGenerator[str, None]:
        return self.llm.stream(model, question)


def import_openai() -> ModuleType:
    """The ``openai`` package, or an ImportError saying how to install it."""
    try:
        import openai
    except ImportError as exc:
        raise ImportError("the openai provider needs the openai package: "
                          "pip install 'ragobs[openai]'") from exc
    return openai


class OpenAIRAGAgent(RAGAgent):
    """The agent, its LLM calls real ``openai.AsyncOpenAI`` streams.

    ``base_url`` is an OpenAI-compatible endpoint (the demo's
    :class:`~ragobs.demo.openai_wire.OpenAIWireServer`). The client makes no
    retries of its own (the demo's stack retries), and asks for the usage
    chunk, so token figures are the provider's.
    """

    provider = "openai"
    router_model = OPENAI_ROUTER_MODEL
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
        stream = await self._request(self.model, "", extra_headers={WARMUP_HEADER: "1"})
        async with stream:
            async for _ in stream:
                pass

    async def _request(self, model: str, question: str, documents: list[str] | None = None,
                       extra_headers: dict[str, str] | None = None,
                       ) -> AsyncStream[ChatCompletionChunk]:
        system = ("Answer from these documents: " + ", ".join(documents or ())
                  if model != self.router_model else
                  "Name the documentation to search: " + " or ".join(SOURCES) + ".")
        return await self.client.chat.completions.create(
            model=model,
            messages=[{"role": "system", "content": system},
                      {"role": "user", "content": question}],
            stream=True,
            stream_options={"include_usage": True},
            extra_headers=extra_headers,
        )

    async def aclose(self) -> None:
        await self.client.close()
