"""What one chunk of a stream says: does it carry output, and what usage and
response metadata came with it.

ragobs reads the chunks of the clients people use, duck-typed (no SDK is
imported), as objects or as the same shapes in plain dicts:

* ``str`` / ``bytes``: output when non-empty;
* OpenAI Chat Completions chunks: ``choices[].delta`` content, refusal or
  tool-call arguments are output (the role-only first chunk and the finish
  chunk are not); ``usage`` (with cached and reasoning tokens), ``model``,
  ``id``, ``finish_reason``;
* OpenAI Responses API events: ``response.output_text.delta``,
  ``response.refusal.delta`` and ``response.function_call_arguments.delta``
  are output; ``response.created`` / ``response.completed`` (also
  ``incomplete`` and ``failed``) give model, id, usage and status;
* Anthropic Messages events: ``content_block_delta`` with text or tool input
  is output; ``message_start`` gives input usage, model and id,
  ``message_delta`` the output usage and stop reason (the helper stream's
  derived ``text`` / ``input_json`` events are skipped, not counted twice);
* LangChain message chunks (``AIMessageChunk``, or a ``ChatGenerationChunk``
  holding one): ``content`` as a string or content blocks, tool-call chunks;
  ``usage_metadata`` (summed over chunks, as LangChain adds them) and
  ``response_metadata``;
* anything else: output when truthy.

Teach it another shape with :func:`register_chunk_reader`: a reader takes the
chunk and a :class:`ChunkSink`, returns how many output units (content
pieces) the chunk carries (0 for metadata-only chunks), and tells the sink
any usage or response metadata it finds.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol

__all__ = ["ChunkReader", "ChunkSink", "carries_output", "read_chunk", "register_chunk_reader"]


class ChunkSink(Protocol):
    """Where a reader reports what a chunk says besides its output."""

    #: The response model once known (readers skip looking for it after).
    response_model: str | None

    def note_usage(self, *, input_tokens: int | None = None,
                   output_tokens: int | None = None,
                   cache_read_input_tokens: int | None = None,
                   cache_write_input_tokens: int | None = None,
                   reasoning_output_tokens: int | None = None,
                   add: bool = False) -> None:
        """Provider-reported usage: replaces what was noted before, or adds to
        it when ``add`` (streams that report usage in parts). Cache writes are
        ``cache_write_input_tokens`` (the sink also takes their old name,
        ``cache_creation_input_tokens``)."""

    def note_cost(self, amount: float) -> None:
        """The cost of the call in USD, as the response itself reported it
        (OpenRouter's ``usage.cost``, a gateway's)."""

    def note_reasoning(self) -> None:
        """The chunk being read carries reasoning (thinking) output and no answer:
        it counts for the time to first chunk, not for the time to first answer chunk."""

    def note_response(self, *, model: str | None = None, response_id: str | None = None,
                      finish_reason: str | None = None, provider: str | None = None,
                      choice: int = 0) -> None:
        """Response metadata: the model that answered, its id, a finish reason
        (of choice ``choice``: one is kept per choice),
        and the provider whose wire format the chunk is in (``gen_ai.provider.name``)."""


#: Reads one chunk: returns the output units it carries, tells the sink the rest.
ChunkReader = Callable[[Any, ChunkSink], int]


class _Discard:
    """A sink for callers that only ask whether a chunk carries output."""

    response_model: str | None = ""

    def note_usage(self, **_: Any) -> None:
        pass

    def note_reasoning(self) -> None:
        pass

    def note_cost(self, amount: float) -> None:
        pass

    def note_response(self, **_: Any) -> None:
        pass


_DISCARD: Final = _Discard()


#: gen_ai.provider.name of the wire formats read here.
_OPENAI: Final = "openai"
_ANTHROPIC: Final = "anthropic"


def _get(obj: Any, name: str) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def _int(value: Any) -> int | None:
    return value if type(value) is int and value >= 0 else None


# --- text --------------------------------------------------------------------


def read_text(chunk: Any, sink: ChunkSink) -> int:
    """str / bytes, and the fallback for unknown objects: output when truthy."""
    return 1 if chunk else 0


# --- OpenAI Chat Completions ---------------------------------------------------


def _delta_output(delta: Any) -> bool:
    return bool(_get(delta, "content") or _get(delta, "refusal") or _get(delta, "tool_calls")
                or _get(delta, "function_call"))


def _delta_reasoning(delta: Any) -> bool:
    """Reasoning text, as OpenAI-compatible servers stream it (DeepSeek, vLLM,
    OpenRouter, ...): ``reasoning_content`` or ``reasoning``."""
    return bool(_get(delta, "reasoning_content") or _get(delta, "reasoning"))


def _openai_usage(usage: Any, sink: ChunkSink) -> None:
    prompt = _get(usage, "prompt_tokens_details")
    completion = _get(usage, "completion_tokens_details")
    sink.note_usage(
        input_tokens=_int(_get(usage, "prompt_tokens")),
        output_tokens=_int(_get(usage, "completion_tokens")),
        cache_read_input_tokens=_int(_get(prompt, "cached_tokens")) if prompt else None,
        reasoning_output_tokens=_int(_get(completion, "reasoning_tokens")) if completion else None,
    )
    cost = _get(usage, "cost")  # OpenRouter and gateways price the call themselves
    if isinstance(cost, (int, float)) and not isinstance(cost, bool):
        sink.note_cost(cost)


def read_openai_chat(chunk: Any, sink: ChunkSink) -> int:
    """An OpenAI ``ChatCompletionChunk`` (object form)."""
    choices = chunk.choices
    usage = getattr(chunk, "usage", None)
    if usage is None and len(choices) == 1 and sink.response_model is not None:
        choice = choices[0]  # the common case, read with as few lookups as it takes
        if choice.finish_reason is None:
            delta = choice.delta
            if delta is None:
                return 0
            if delta.content or getattr(delta, "refusal", None) \
                    or getattr(delta, "tool_calls", None):
                return 1
            if _delta_reasoning(delta):
                sink.note_reasoning()
                return 1
            return 0
    n = 0
    answer = False
    for choice in choices:
        delta = choice.delta
        if delta is not None:
            if delta.content or getattr(delta, "refusal", None) \
                    or getattr(delta, "tool_calls", None):
                n += 1
                answer = True
            elif _delta_reasoning(delta):
                n += 1
        if choice.finish_reason:
            sink.note_response(finish_reason=str(choice.finish_reason),
                               choice=_int(getattr(choice, "index", 0)) or 0)
    if n and not answer:
        sink.note_reasoning()
    if usage is not None:
        _openai_usage(usage, sink)
    if sink.response_model is None:
        sink.note_response(model=getattr(chunk, "model", None),
                           response_id=getattr(chunk, "id", None), provider=_OPENAI)
    return n


def _read_openai_chat_dict(chunk: Mapping[str, Any], sink: ChunkSink) -> int:
    n = 0
    answer = False
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta")
        if delta and _delta_output(delta):
            n += 1
            answer = True
        elif delta and _delta_reasoning(delta):
            n += 1
        if choice.get("finish_reason"):
            sink.note_response(finish_reason=str(choice["finish_reason"]),
                               choice=_int(choice.get("index")) or 0)
    if n and not answer:
        sink.note_reasoning()
    usage = chunk.get("usage")
    if usage:
        _openai_usage(usage, sink)
    if sink.response_model is None:
        sink.note_response(model=chunk.get("model"), response_id=chunk.get("id"),
                           provider=_OPENAI)
    return n


# --- typed events: OpenAI Responses API and Anthropic Messages ------------------


def _delta_text(event: Any, sink: ChunkSink) -> int:
    return 1 if _get(event, "delta") else 0


def _reasoning_delta(event: Any, sink: ChunkSink) -> int:
    if _get(event, "delta"):
        sink.note_reasoning()
        return 1
    return 0


def _responses_response(event: Any, sink: ChunkSink) -> int:
    response = _get(event, "response")
    if response is None:
        return 0
    sink.note_response(model=_get(response, "model"), response_id=_get(response, "id"),
                       provider=_OPENAI)
    usage = _get(response, "usage")
    if usage:
        inputs = _get(usage, "input_tokens_details")
        outputs = _get(usage, "output_tokens_details")
        sink.note_usage(
            input_tokens=_int(_get(usage, "input_tokens")),
            output_tokens=_int(_get(usage, "output_tokens")),
            cache_read_input_tokens=_int(_get(inputs, "cached_tokens")) if inputs else None,
            reasoning_output_tokens=_int(_get(outputs, "reasoning_tokens")) if outputs else None,
        )
    status = _get(response, "status")
    if status and status not in ("in_progress", "queued"):
        details = _get(response, "incomplete_details")
        reason = _get(details, "reason") if details else None
        sink.note_response(finish_reason=str(reason or status))
    return 0


def _anthropic_usage(usage: Any, sink: ChunkSink) -> None:
    read = _int(_get(usage, "cache_read_input_tokens"))
    created = _int(_get(usage, "cache_creation_input_tokens"))
    uncached = _int(_get(usage, "input_tokens"))
    # Semconv: gen_ai.usage.input_tokens includes the cached input tokens,
    # which Anthropic reports apart.
    inputs = None if uncached is None else uncached + (read or 0) + (created or 0)
    sink.note_usage(input_tokens=inputs, output_tokens=_int(_get(usage, "output_tokens")),
                    cache_read_input_tokens=read, cache_write_input_tokens=created)


def _anthropic_message_start(event: Any, sink: ChunkSink) -> int:
    message = _get(event, "message")
    if message is not None:
        sink.note_response(model=_get(message, "model"), response_id=_get(message, "id"),
                           provider=_ANTHROPIC)
        usage = _get(message, "usage")
        if usage:
            _anthropic_usage(usage, sink)
    return 0


def _anthropic_block_delta(event: Any, sink: ChunkSink) -> int:
    delta = _get(event, "delta")
    if delta is None:
        return 0
    if _get(delta, "text") or _get(delta, "partial_json"):
        return 1
    if _get(delta, "thinking"):  # a thinking_delta (a signature_delta is no output)
        sink.note_reasoning()
        return 1
    return 0


def _anthropic_message_delta(event: Any, sink: ChunkSink) -> int:
    delta = _get(event, "delta")
    reason = _get(delta, "stop_reason") if delta is not None else None
    if reason:
        sink.note_response(finish_reason=str(reason))
    usage = _get(event, "usage")
    if usage:
        # Cumulative: output always, input only when this event carries it.
        if _int(_get(usage, "input_tokens")) is not None:
            _anthropic_usage(usage, sink)
        else:
            sink.note_usage(output_tokens=_int(_get(usage, "output_tokens")))
    return 0


def _no_output(event: Any, sink: ChunkSink) -> int:
    return 0


_EVENTS: Final[dict[str, ChunkReader]] = {
    # OpenAI Responses API
    "response.output_text.delta": _delta_text,
    "response.refusal.delta": _delta_text,
    "response.function_call_arguments.delta": _delta_text,
    "response.reasoning_text.delta": _reasoning_delta,
    "response.reasoning_summary_text.delta": _reasoning_delta,
    "response.created": _responses_response,
    "response.in_progress": _responses_response,
    "response.completed": _responses_response,
    "response.incomplete": _responses_response,
    "response.failed": _responses_response,
    # Anthropic Messages
    "message_start": _anthropic_message_start,
    "content_block_delta": _anthropic_block_delta,
    "message_delta": _anthropic_message_delta,
}


def read_event(chunk: Any, sink: ChunkSink) -> int:
    """A typed stream event (``.type`` or ``["type"]``): OpenAI Responses or Anthropic."""
    return _EVENTS.get(_get(chunk, "type"), _no_output)(chunk, sink)


# --- LangChain ------------------------------------------------------------------


def _content_output(content: Any) -> bool:
    if isinstance(content, str):
        return bool(content)
    if isinstance(content, list):
        for block in content:
            if isinstance(block, str):
                if block:
                    return True
            elif isinstance(block, Mapping):
                kind = block.get("type")
                if kind in ("text", "output_text") and block.get("text"):
                    return True
                if kind in ("tool_use", "tool_call_chunk", "input_json_delta") and (
                        block.get("input") or block.get("args") or block.get("partial_json")):
                    return True
    return False


def _content_reasoning(content: Any) -> bool:
    """Reasoning content blocks: Anthropic's ``thinking``, LangChain's ``reasoning``."""
    if isinstance(content, list):
        for block in content:
            if isinstance(block, Mapping) and block.get("type") in ("thinking", "reasoning") \
                    and (block.get("thinking") or block.get("reasoning")):
                return True
    return False


def read_langchain(chunk: Any, sink: ChunkSink) -> int:
    """A LangChain ``AIMessageChunk`` / ``BaseMessageChunk``."""
    n = 1 if _content_output(chunk.content) else 0
    if not n:
        for call in getattr(chunk, "tool_call_chunks", None) or ():
            if _get(call, "args"):  # a chunk naming the tool is its opening, not output
                n = 1
                break
    if not n and (_content_reasoning(chunk.content) or _get(
            getattr(chunk, "additional_kwargs", None) or {}, "reasoning_content")):
        sink.note_reasoning()
        n = 1
    usage = getattr(chunk, "usage_metadata", None)
    if usage:
        inputs = _get(usage, "input_token_details") or {}
        outputs = _get(usage, "output_token_details") or {}
        sink.note_usage(
            input_tokens=_int(_get(usage, "input_tokens")),
            output_tokens=_int(_get(usage, "output_tokens")),
            cache_read_input_tokens=_int(_get(inputs, "cache_read")),
            cache_write_input_tokens=_int(_get(inputs, "cache_creation")),
            reasoning_output_tokens=_int(_get(outputs, "reasoning")),
            add=True,
        )
    metadata = getattr(chunk, "response_metadata", None)
    if metadata:
        reason = metadata.get("finish_reason") or metadata.get("stop_reason")
        if reason:
            sink.note_response(finish_reason=str(reason))
        model = metadata.get("model_name") or metadata.get("model")
        if model:
            provider = metadata.get("model_provider")
            sink.note_response(model=model, response_id=metadata.get("id"),
                               provider=provider if isinstance(provider, str) else None)
    return n


def _read_generation(chunk: Any, sink: ChunkSink) -> int:
    return read_langchain(chunk.message, sink)


# --- dispatch --------------------------------------------------------------------


def _read_mapping(chunk: Any, sink: ChunkSink) -> int:
    if "choices" in chunk:
        return _read_openai_chat_dict(chunk, sink)
    if "type" in chunk:
        return read_event(chunk, sink)
    return 1 if chunk else 0


def _resolve(chunk: Any) -> ChunkReader:  # noqa: PLR0911
    """The reader for ``chunk``'s class, worked out from one instance."""
    cls = type(chunk)
    for klass in cls.__mro__:
        found = _registered.get(klass)
        if found is not None:
            return found
    if isinstance(chunk, (str, bytes, bytearray)):
        return read_text
    if isinstance(chunk, Mapping):
        return _read_mapping
    if isinstance(getattr(chunk, "choices", None), list):
        return read_openai_chat
    # LangChain messages have a ``type`` too ("AIMessageChunk"): look for them first.
    if hasattr(chunk, "content") and (hasattr(chunk, "usage_metadata")
                                      or hasattr(chunk, "response_metadata")):
        return read_langchain
    if isinstance(getattr(chunk, "type", None), str):
        return read_event
    message = getattr(chunk, "message", None)
    if message is not None and hasattr(message, "content") and hasattr(chunk, "text"):
        return _read_generation
    return read_text


#: Readers found per chunk class. Classes are few (an SDK has tens of event
#: types); past this size a new class is resolved each time, uncached.
_CACHED_CLASSES: Final = 512
_registered: dict[type, ChunkReader] = {}
#: class -> reader; read lock-free on the hot path, written under the lock.
readers: dict[type, ChunkReader] = {str: read_text, bytes: read_text}
_lock = threading.Lock()


def reader_for(chunk: Any) -> ChunkReader:
    """The reader of ``chunk``'s class (cached)."""
    cls = type(chunk)
    found = readers.get(cls)
    if found is None:
        found = _resolve(chunk)
        with _lock:
            if len(readers) < _CACHED_CLASSES:
                readers[cls] = found
    return found


def read_chunk(chunk: Any, sink: ChunkSink) -> int:
    """Output units ``chunk`` carries; usage and metadata go to ``sink``."""
    return reader_for(chunk)(chunk, sink)


def carries_output(chunk: Any) -> bool:
    """Does ``chunk`` carry output (content, refusal, tool-call arguments)?
    What the first-token deadlines and retry wait for."""
    return read_chunk(chunk, _DISCARD) > 0


def register_chunk_reader(cls: type, reader: ChunkReader) -> None:
    """Teach ragobs the chunks of class ``cls`` (and its subclasses).

    ``reader(chunk, sink)`` returns the output units the chunk carries (0 for
    chunks that carry only metadata; the first chunk with more than 0 is the
    first token) and may call ``sink.note_usage(...)`` and
    ``sink.note_response(...)`` (see :class:`ChunkSink`). It runs for every
    chunk: keep it cheap, and never let it raise.
    """
    if not isinstance(cls, type):
        raise TypeError(f"cls must be a class, got {cls!r}")
    if not callable(reader):
        raise TypeError(f"reader must be a callable (chunk, sink) -> int, got {reader!r}")
    with _lock:
        _registered[cls] = reader
        readers.clear()
        readers.update({t: read_text for t in (str, bytes) if t not in _registered})
