"""LangChain and LangGraph agents in one line: turns, LLM calls, retrievals, tools.

::

    from ragobs.langchain import instrument_langchain

    agent = instrument_langchain(graph_or_chain, agent="docs-agent")
    async for chunk in agent.astream({"messages": [("user", question)]}):
        ...

Each call of the returned runnable is one *turn* (an ``invoke_agent {agent}``
span; the seed's summary counts it). With ``stream`` / ``astream`` /
``astream_events`` its time to first chunk runs to the first chunk carrying
answer text that the runnable gives the caller (see :func:`answer_text`; pass
``is_output=`` to say otherwise); ``invoke`` and ``batch`` turns have none.
Inside it, LangChain's own callbacks tell :class:`RagobsCallbackHandler`:

* each chat model (or LLM) run is an inference call: a ``chat {model}``
  CLIENT span with the provider's usage, its time to first chunk when it
  streams, response model and finish reason, on the same metrics as any
  observed stream;
* each retriever run is a retrieval: ``retrieval {source}`` (the run's name)
  with the number of documents it returned;
* each tool run is a tool call: ``execute_tool {name}`` with its call id.

No double counting: when the chat model's own client is instrumented too
(``instrument_client(llm.root_async_client)``), the observed SDK stream *is*
the call (measured at the wire), and the handler records nothing for it.

The handler alone (``config={"callbacks": [RagobsCallbackHandler()]}``) does
the same inside a turn the caller observes (``observe_stream(chain.astream(q),
agent=...)``, ``with observe(agent=...)``); outside one, each top-level run is
a turn of its own, without a time to first chunk.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from typing import Any, Final
from uuid import UUID

from opentelemetry import context as otel_context
from opentelemetry.context import Context

try:
    from langchain_core.callbacks import BaseCallbackHandler
    from langchain_core.messages import BaseMessage
    from langchain_core.runnables import Runnable, RunnableBinding, RunnableConfig
except ImportError as exc:  # pragma: no cover - the extra is not installed
    raise ImportError("ragobs.langchain needs langchain-core: pip install 'ragobs[langchain]'"
                      ) from exc

from ragobs import semconv
from ragobs._gaps import ChunkGaps
from ragobs._stages import retrieval, stage, tool
from ragobs._stream import StreamObservation, _check_telemetry_arg, _observation, observe_stream
from ragobs._telemetry import Telemetry
from ragobs._turn import PendingCall, current_turn, pending_call, turn_context, turn_of
from ragobs.chunks import carries_output, read_chunk

__all__ = ["RagobsCallbackHandler", "answer_text", "instrument_langchain"]

#: LangChain's ``ls_provider`` -> ``gen_ai.provider.name`` where they differ.
_PROVIDERS: Final = {
    "azure": semconv.PROVIDER_AZURE_OPENAI,
    "google_genai": "gcp.gen_ai",
    "google_vertexai": "gcp.vertex_ai",
    "bedrock": "aws.bedrock",
    "amazon_bedrock": "aws.bedrock",
    "mistralai": "mistral_ai",
    "xai": "x_ai",
}
#: Runs held at once (those started and not yet ended); past it the oldest is dropped.
MAX_OPEN_RUNS: Final = 10_000
#: Keys whose text a mapping chunk gives the user (LangChain's retrieval and agent chains).
_ANSWER_KEYS: Final = ("answer", "output", "result")


def answer_text(chunk: Any) -> bool:
    """Does ``chunk`` carry answer text the user sees? The default rule for a turn's
    first chunk:

    * a non-empty ``str``; an AI message (chunk) with text content (tool-call
      chunks are not answer text);
    * LangGraph's shapes: ``(message, metadata)`` (``stream_mode="messages"``),
      ``(mode, payload)`` and ``(namespace, payload)``; a state or update whose
      last message in ``messages`` is one; ``{node: update}``;
    * a mapping's ``answer`` / ``output`` / ``result`` value.
    """
    if isinstance(chunk, str):
        return bool(chunk)
    if isinstance(chunk, BaseMessage):
        return chunk.type in ("ai", "AIMessageChunk") and _has_text(chunk.content)
    if isinstance(chunk, tuple) and len(chunk) == 2:
        head, payload = chunk
        return answer_text(head) if isinstance(head, BaseMessage) else _nested(payload)
    if isinstance(chunk, Mapping):
        return _nested(chunk)
    return False


def _nested(value: Any, depth: int = 0) -> bool:
    if isinstance(value, (str, BaseMessage)):
        return answer_text(value)
    if not isinstance(value, Mapping) or depth > 2:
        return False
    messages = value.get("messages")
    if isinstance(messages, BaseMessage):
        return answer_text(messages)
    if isinstance(messages, Sequence) and messages and not isinstance(messages, str):
        return answer_text(messages[-1])
    for key in _ANSWER_KEYS:
        found = value.get(key)
        if isinstance(found, (str, BaseMessage)) and answer_text(found):
            return True
    return any(_nested(item, depth + 1) for item in value.values()
               if isinstance(item, Mapping))


def _has_text(content: Any) -> bool:
    if isinstance(content, str):
        return bool(content)
    if isinstance(content, list):
        for block in content:
            if isinstance(block, str) and block:
                return True
            if isinstance(block, Mapping) and block.get("type") == "text" and block.get("text"):
                return True
    return False


# -- what the handler holds per open run -------------------------------------------

class _Scope:
    """A run with nothing of its own to record (a chain, a graph node): its
    children run in its parent's context."""

    __slots__ = ("context",)

    def __init__(self, context: Context) -> None:
        self.context = context

    def end(self, error: BaseException | None) -> None:
        """Nothing to record."""


class _OwnTurn(_Scope):
    """A top-level run outside any observed turn: a turn of its own."""

    __slots__ = ("obs",)

    def __init__(self, obs: StreamObservation) -> None:
        obs.start()
        assert obs._ctx is not None
        super().__init__(obs._ctx)
        self.obs = obs

    def end(self, error: BaseException | None) -> None:
        self.obs.finish(error)


class _Stage(_Scope):
    """A retriever or tool run: a stage span its children run inside."""

    __slots__ = ("stage",)

    def __init__(self, opened: stage, context: Context) -> None:
        opened._open(context)
        super().__init__(opened._context())
        self.stage = opened

    def end(self, error: BaseException | None) -> None:
        self.stage._close(error)


class _Call(_Scope):
    """A chat model or LLM run: recorded when it ends, unless an observed
    SDK stream inside it claimed it (see :class:`ragobs._turn.PendingCall`)."""

    __slots__ = ("chunks", "gaps", "model", "pending", "provider", "t_first", "t_start",
                 "token", "wall_start")

    def __init__(self, context: Context, model: str | None, provider: str | None) -> None:
        super().__init__(context)
        self.model = model
        self.provider = provider
        self.t_start = time.perf_counter()
        self.wall_start = time.time_ns()
        self.t_first: float | None = None
        self.gaps: ChunkGaps | None = None
        self.chunks = 0
        self.pending = PendingCall(context)
        self.token = pending_call.set(self.pending)

    def release(self) -> None:
        """Stop offering the call to SDK streams (from wherever the run ends)."""
        try:
            pending_call.reset(self.token)
        except ValueError:  # ended in another context than it started in
            if pending_call.get() is self.pending:
                pending_call.set(None)

    def record(self, telemetry: Telemetry | None, message: Any,
               error: BaseException | None) -> None:
        t_end = time.perf_counter()
        obs = _observation(telemetry, "chat", self.provider, self.model)
        obs.start(self.t_start, context=self.context, span_start_ns=self.wall_start)
        if self.t_first is not None:
            obs.first_token(at=self.t_first)
            obs._gaps = self.gaps
        if message is not None:
            read_chunk(message, obs)  # usage, response model, finish reason
        obs.set_token_count(self.chunks)
        obs.finish(error, end_time=t_end)


class RagobsCallbackHandler(BaseCallbackHandler):
    """LangChain callbacks to ragobs: chat model and LLM runs are inference
    calls, retrievers retrievals, tools tool calls, all on the turn they run
    in (see the module's documentation).

    Args:
        agent: the agent name of turns this handler opens itself (top-level
            runs outside an observed turn); default: the run's name.
        telemetry: where the figures go; default :func:`~ragobs.get_telemetry`.
    """

    #: Called where LangChain runs the callback, not in a thread: the call's
    #: timing is exact and an SDK stream in the same task can claim it.
    run_inline = True
    raise_error = False

    def __init__(self, *, agent: str | None = None,
                 telemetry: Telemetry | None = None) -> None:
        if agent is not None and (not isinstance(agent, str) or not agent):
            raise ValueError(f"agent must be a non-empty str or None, got {agent!r}")
        self.agent = agent
        self.telemetry = _check_telemetry_arg(telemetry)
        #: What a streamed chunk must carry to be a turn's first (instrument_langchain).
        self.is_output: Callable[[Any], bool] | None = None
        self._runs: dict[UUID, _Scope] = {}

    # -- runs ------------------------------------------------------------

    def _context(self, parent_run_id: UUID | None) -> Context | None:
        """Where a run starts: inside its parent run, else in the turn the
        caller runs (``None``: outside any)."""
        if parent_run_id is not None:
            parent = self._runs.get(parent_run_id)
            if parent is not None:
                return parent.context
        ctx = otel_context.get_current()
        if turn_of(ctx) is not None:
            return ctx
        turn = current_turn()  # the turn's generator is running this code
        if turn is not None:
            return turn.context or turn_context(ctx, turn)
        return None

    def _open(self, run_id: UUID, run: _Scope) -> None:
        runs = self._runs
        if len(runs) >= MAX_OPEN_RUNS:  # a run LangChain never ended: drop the oldest
            oldest = next(iter(runs))
            dropped = runs.pop(oldest)
            if isinstance(dropped, _Call):
                dropped.pending.claimed = True
            dropped.end(None)
        runs[run_id] = run

    def _close(self, run_id: UUID, error: BaseException | None) -> None:
        run = self._runs.pop(run_id, None)
        if run is not None:
            run.end(error)

    def on_chain_start(self, serialized: dict[str, Any] | None, inputs: Any, *,
                       run_id: UUID, parent_run_id: UUID | None = None,
                       **kwargs: Any) -> None:
        ctx = self._context(parent_run_id)
        if ctx is not None:
            self._open(run_id, _Scope(ctx))
            return
        name = self.agent or kwargs.get("name") or _name_of(serialized) or "langchain"
        self._open(run_id, _OwnTurn(_observation(self.telemetry, "chat", None, None,
                                                 agent=name)))

    def on_chain_end(self, outputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._close(run_id, None)

    def on_chain_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._close(run_id, error)

    # -- LLM calls ---------------------------------------------------------

    def on_chat_model_start(self, serialized: dict[str, Any] | None,
                            messages: list[list[BaseMessage]], *, run_id: UUID,
                            parent_run_id: UUID | None = None,
                            metadata: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self._start_call(run_id, parent_run_id, metadata, kwargs)

    def on_llm_start(self, serialized: dict[str, Any] | None, prompts: list[str], *,
                     run_id: UUID, parent_run_id: UUID | None = None,
                     metadata: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self._start_call(run_id, parent_run_id, metadata, kwargs)

    def _start_call(self, run_id: UUID, parent_run_id: UUID | None,
                    metadata: dict[str, Any] | None, kwargs: dict[str, Any]) -> None:
        meta = metadata or {}
        params = kwargs.get("invocation_params") or {}
        model = meta.get("ls_model_name") or params.get("model") or params.get("model_name")
        provider = meta.get("ls_provider")
        if isinstance(provider, str):
            provider = _PROVIDERS.get(provider, provider)
        ctx = self._context(parent_run_id) or Context()
        self._open(run_id, _Call(ctx, model if isinstance(model, str) and model else None,
                                 provider if isinstance(provider, str) and provider else None))

    def on_llm_new_token(self, token: Any, *, chunk: Any = None, run_id: UUID,
                         **kwargs: Any) -> None:
        call = self._runs.get(run_id)
        if not isinstance(call, _Call):
            return
        message = getattr(chunk, "message", None) if chunk is not None else None
        if message is not None:
            output = carries_output(message)
        elif chunk is not None:
            output = bool(getattr(chunk, "text", None))
        else:
            output = bool(token)
        if output:
            if call.gaps is None:
                call.t_first = now = time.perf_counter()
                call.gaps = ChunkGaps(now)
            else:
                call.gaps.tick()
            call.chunks += 1

    def on_llm_end(self, response: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._end_call(run_id, _message_of(response), None)

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._end_call(run_id, None, error)

    def _end_call(self, run_id: UUID, message: Any, error: BaseException | None) -> None:
        call = self._runs.pop(run_id, None)
        if not isinstance(call, _Call):
            return
        call.release()
        if not call.pending.claimed:
            call.pending.claimed = True
            call.record(self.telemetry, message, error)

    # -- retrievals and tools ------------------------------------------------

    def on_retriever_start(self, serialized: dict[str, Any] | None, query: str, *,
                           run_id: UUID, parent_run_id: UUID | None = None,
                           metadata: dict[str, Any] | None = None, **kwargs: Any) -> None:
        source = (kwargs.get("name") or (metadata or {}).get("ls_retriever_name")
                  or _name_of(serialized) or "retriever")
        ctx = self._context(parent_run_id) or Context()
        self._open(run_id, _Stage(retrieval(str(source), telemetry=self.telemetry), ctx))

    def on_retriever_end(self, documents: Sequence[Any], *, run_id: UUID,
                         **kwargs: Any) -> None:
        run = self._runs.get(run_id)
        if isinstance(run, _Stage) and isinstance(run.stage, retrieval):
            run.stage.documents(len(documents))
        self._close(run_id, None)

    def on_retriever_error(self, error: BaseException, *, run_id: UUID,
                           **kwargs: Any) -> None:
        self._close(run_id, error)

    def on_tool_start(self, serialized: dict[str, Any] | None, input_str: str, *,
                      run_id: UUID, parent_run_id: UUID | None = None,
                      **kwargs: Any) -> None:
        name = kwargs.get("name") or _name_of(serialized) or "tool"
        call_id = kwargs.get("tool_call_id")
        ctx = self._context(parent_run_id) or Context()
        opened = tool(str(name), call_id=call_id if isinstance(call_id, str) and call_id
                      else None, telemetry=self.telemetry)
        self._open(run_id, _Stage(opened, ctx))

    def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._close(run_id, None)

    def on_tool_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._close(run_id, error)


def _name_of(serialized: dict[str, Any] | None) -> str | None:
    if not serialized:
        return None
    name = serialized.get("name")
    if isinstance(name, str) and name:
        return name
    ids = serialized.get("id")
    return ids[-1] if isinstance(ids, list) and ids and isinstance(ids[-1], str) else None


def _message_of(response: Any) -> Any:
    """The message (or generation) of an ``LLMResult``'s first generation."""
    generations = getattr(response, "generations", None)
    if not generations or not generations[0]:
        return None
    first = generations[0][0]
    return getattr(first, "message", None) or first


# -- one line: the runnable whose calls are turns -----------------------------------

class _ObservedRunnable(RunnableBinding[Any, Any]):
    """A runnable whose every call is an observed turn (see :func:`instrument_langchain`)."""

    def _handler(self) -> RagobsCallbackHandler:
        callbacks = self.config.get("callbacks")
        for handler in callbacks if isinstance(callbacks, list) else ():
            if isinstance(handler, RagobsCallbackHandler):
                return handler
        raise RuntimeError("the runnable lost its RagobsCallbackHandler")  # pragma: no cover

    def _observe(self, stream: Any, count: Callable[[Any], int]) -> Any:
        handler = self._handler()
        return observe_stream(stream, agent=handler.agent, telemetry=handler.telemetry,
                              count_tokens=count)

    def stream(self, input: Any, config: RunnableConfig | None = None,
               **kwargs: Any) -> Iterator[Any]:
        return self._observe(super().stream(input, config, **kwargs),  # type: ignore[no-any-return]
                             self._handler_output())

    def astream(self, input: Any, config: RunnableConfig | None = None,
                **kwargs: Any) -> AsyncIterator[Any]:
        return self._observe(super().astream(input, config, **kwargs),  # type: ignore[no-any-return]
                             self._handler_output())

    def astream_events(self, input: Any, config: RunnableConfig | None = None,
                       **kwargs: Any) -> Any:
        events = super().astream_events(input, config, **kwargs)
        if not hasattr(events, "__aiter__"):  # version="v3": a typed stream object
            return events
        is_output = self._output_rule()

        def count(event: Any) -> int:  # the chunks astream would give: the root's
            return int(isinstance(event, Mapping) and event.get("event") == "on_chain_stream"
                       and not event.get("parent_ids") and is_output(event["data"]["chunk"]))

        return self._observe(events, count)

    def _output_rule(self) -> Callable[[Any], bool]:
        return self._handler().is_output or answer_text

    def _handler_output(self) -> Callable[[Any], int]:
        is_output = self._output_rule()
        return lambda chunk: int(bool(is_output(chunk)))


def instrument_langchain(
    runnable: Runnable[Any, Any],
    *,
    agent: str | None = None,
    is_output: Callable[[Any], bool] | None = None,
    telemetry: Telemetry | None = None,
) -> Runnable[Any, Any]:
    """``runnable`` (a chain, a LangGraph graph) with every call a turn.

    Args:
        runnable: any LangChain ``Runnable``; instrument the outermost one.
        agent: the turns' ``gen_ai.agent.name``; default ``runnable.get_name()``.
        is_output: ``(chunk) -> bool``: does a chunk the runnable streams carry
            what the user sees (the turn's first chunk)? Default
            :func:`answer_text`.
        telemetry: where the figures go; default :func:`~ragobs.get_telemetry`.

    The result is a ``RunnableBinding``: ``with_config``, ``bind``, ``|`` and
    attribute access (a graph's ``get_state``) work as on ``runnable``.
    """
    if not isinstance(runnable, Runnable):
        raise TypeError(f"runnable must be a LangChain Runnable, got {type(runnable).__name__}")
    if is_output is not None and not callable(is_output):
        raise TypeError(f"is_output must be a callable (chunk) -> bool or None, "
                        f"got {is_output!r}")
    name = agent if agent is not None else runnable.get_name()
    handler = RagobsCallbackHandler(agent=name, telemetry=telemetry)
    handler.is_output = is_output
    return _ObservedRunnable(bound=runnable, config={"callbacks": [handler]})
