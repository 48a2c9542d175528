"""Instrument one token stream: a span, the GenAI histograms, counters, summary.

Three forms share one recorder, :class:`StreamObservation`:

* ``@instrument_stream(...)`` on an async generator or generator function;
* ``observe_stream(iterable, ...)`` around any (async) iterable;
* ``with observe(...) as obs:`` for a loop written by hand
  (``obs.first_token()``, ``obs.tokens(n)``).

Guarantees, whatever way a stream ends (exhausted, raised, ``break`` then
``aclose()`` or garbage collection, task cancellation, a timeout): its span
ends and its figures are recorded exactly once, with one outcome — ``ok``,
``error``, ``timeout`` (a :class:`TimeoutError`) or ``cancelled`` (the
consumer stopped early; not an error).

Timing starts when the consumer first asks for a chunk. A chunk counts as a
token when it is truthy (empty strings, ``b""`` and ``None`` do not), unless
``count_tokens`` says otherwise. The stream's span is the current span while
the source works towards its first chunk (routing and retrieval stages become
its children); after that, chunks pass through a loop that only counts them,
so per-token overhead stays small. The time of the last chunk is taken when
the stream reports its end.
"""

from __future__ import annotations

import functools
import inspect
import json
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    Awaitable,
    Callable,
    Coroutine,
    Generator,
    Iterable,
)
from types import TracebackType
from typing import Any, Final, TypeVar, cast, overload

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from ragobs import semconv
from ragobs._classify import classify, error_type
from ragobs._cost import CURRENCY
from ragobs._gaps import NO_GAPS, ChunkGaps
from ragobs._sources import aclose_source, aopen, check_streamed, close_source, open_sync
from ragobs._summary_stats import SummaryStats
from ragobs._telemetry import BoundHistogram, ExemplarSeries, Telemetry, get_telemetry
from ragobs._turn import (
    PHASE_LLM,
    PHASE_OTHER,
    Turn,
    claim_pending_call,
    current_turn,
    enter,
    in_phase,
    leave,
    phase_context,
    turn_context,
    turn_of,
)
from ragobs.chunks import ChunkReader, read_openai_chat, reader_for, readers
from ragobs.semconv import Outcome

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

_perf = time.perf_counter
#: Passed as the context of records that take no exemplar from the SDK (no
#: span in it, so the SDK's trace-based filter skips its reservoir): only
#: latency and TTFT carry exemplars, and ragobs may keep those itself.
_NO_EXEMPLAR = Context()
_attach = otel_context.attach
_detach = otel_context.detach
_current = otel_context.get_current


#: Which attributes give way first when a label combination is over the
#: series bound: the error type, then the model, provider and operation. The
#: outcome never does.
_FOLD_ORDER: Final = (semconv.ERROR_TYPE, semconv.REQUEST_MODEL, semconv.PROVIDER_NAME,
                      semconv.OPERATION_NAME)


def _admitted(telemetry: Telemetry, attrs: dict[str, str]) -> dict[str, str]:
    """``attrs``, folded to ``_OTHER`` value by value until the combination is
    within the telemetry's series bound (see :class:`~ragobs._labels.SeriesGuard`)."""
    guard = telemetry.series
    if guard.admit(tuple(sorted(attrs.items()))):
        return attrs
    folded = dict(attrs)
    for name in _FOLD_ORDER:
        if name in folded and folded[name] != semconv.OTHER:
            folded[name] = semconv.OTHER
            last = all(folded.get(n, semconv.OTHER) == semconv.OTHER for n in _FOLD_ORDER)
            if guard.admit(tuple(sorted(folded.items())), reserved=last):
                return folded
    guard.admit(tuple(sorted(folded.items())), reserved=True)
    return folded


class _Ending:
    """Everything :meth:`StreamObservation.finish` needs for one (labels, outcome,
    error.type), built once and reused by every stream that ends that way."""

    __slots__ = (
        "attrs", "cost", "duration", "error_type", "exemplars", "input_attrs", "input_tokens",
        "key", "keys_with", "outcome", "output_attrs", "output_tokens", "per_chunk", "rate",
        "ttfa", "ttft", "turn_calls", "turn_cost", "turn_duration", "turn_exemplars",
        "turn_input", "turn_output", "turn_rate", "turn_tools", "turn_ttft",
    )

    def __init__(self, telemetry: Telemetry, span_attributes: dict[str, str],
                 outcome: Outcome, etype: str | None) -> None:
        attrs = dict(span_attributes)
        attrs[semconv.OUTCOME] = self.outcome = outcome.value
        if etype is not None:
            attrs[semconv.ERROR_TYPE] = telemetry.bound(semconv.ERROR_TYPE, etype)
        #: the span's error.type (metrics may fold it, spans are not aggregated)
        self.error_type = attrs.get(semconv.ERROR_TYPE)
        #: histogram attributes, and the sorted key of the counters and exemplars
        self.attrs = attrs = _admitted(telemetry, attrs)
        self.key = tuple(sorted(attrs.items()))
        self.output_attrs = {**attrs, semconv.TOKEN_TYPE: semconv.TokenType.OUTPUT.value}
        self.input_attrs = {**attrs, semconv.TOKEN_TYPE: semconv.TokenType.INPUT.value}
        # The series this ending records into, bound once (see BoundHistogram).
        self.output_tokens = BoundHistogram(telemetry.token_usage, self.output_attrs)
        self.input_tokens = BoundHistogram(telemetry.token_usage, self.input_attrs)
        self.rate = BoundHistogram(telemetry.output_token_rate, attrs)
        self.per_chunk = BoundHistogram(telemetry.time_per_output_chunk, attrs)
        self.ttfa = BoundHistogram(telemetry.time_to_first_answer_chunk, attrs)
        self.cost = BoundHistogram(telemetry.operation_cost, attrs)
        # The turn's series (the same labels: a turn of one call is both).
        self.turn_duration = BoundHistogram(telemetry.turn_duration, attrs)
        self.turn_ttft = BoundHistogram(telemetry.turn_time_to_first_chunk, attrs)
        self.turn_output = BoundHistogram(telemetry.turn_token_usage, self.output_attrs)
        self.turn_input = BoundHistogram(telemetry.turn_token_usage, self.input_attrs)
        self.turn_rate = BoundHistogram(telemetry.turn_output_token_rate, attrs)
        self.turn_calls = BoundHistogram(telemetry.turn_inference_calls, attrs)
        self.turn_tools = BoundHistogram(telemetry.turn_tool_calls, attrs)
        self.turn_cost = BoundHistogram(telemetry.turn_cost, attrs)
        #: (attribute, value) -> the counter key of these attributes plus that one
        self.keys_with: dict[tuple[str, str], tuple[tuple[str, str], ...]] = {}
        #: latency and TTFT, when no exemplar goes to the SDK (ragobs keeps them)
        self.duration: BoundHistogram | None = None
        self.ttft: BoundHistogram | None = None
        #: (latency, TTFT) series of ragobs' own exemplar table, if it keeps one,
        #: for the calls and for the turns
        self.exemplars: tuple[ExemplarSeries, ExemplarSeries] | None = None
        self.turn_exemplars: tuple[ExemplarSeries, ExemplarSeries] | None = None
        table = telemetry.exemplars
        if table is not None:
            self.duration = BoundHistogram(telemetry.operation_duration, attrs)
            self.ttft = BoundHistogram(telemetry.time_to_first_chunk, attrs)
            self.exemplars = (
                table.series(semconv.OPERATION_DURATION.name, self.key,
                             semconv.DURATION_BUCKETS),
                table.series(semconv.TIME_TO_FIRST_CHUNK.name, self.key,
                             semconv.TIME_TO_FIRST_CHUNK_BUCKETS),
            )
            self.turn_exemplars = (
                table.series(semconv.TURN_DURATION.name, self.key, semconv.DURATION_BUCKETS),
                table.series(semconv.TURN_TIME_TO_FIRST_CHUNK.name, self.key,
                             semconv.DURATION_BUCKETS),
            )


    def phase_key(self, telemetry: Telemetry, phase: str) -> tuple[tuple[str, str], ...]:
        """The counter key of one phase of the time to first chunk (cached)."""
        return self.key_with(telemetry, semconv.PHASE, phase)

    def key_with(self, telemetry: Telemetry, attribute: str,
                 value: str) -> tuple[tuple[str, str], ...]:
        """The counter key of these attributes plus ``attribute=value`` (cached)."""
        found = self.keys_with.get((attribute, value))
        if found is None:
            attrs = {**self.attrs, attribute: telemetry.bound(attribute, value)}
            found = tuple(sorted(attrs.items()))
            if len(self.keys_with) < _ENDINGS_CACHED:
                self.keys_with[(attribute, value)] = found
        return found


class _LabelSet:
    """Attribute dicts and counter keys for one (operation, provider, model)."""

    __slots__ = ("_ends", "_telemetry", "active_key", "agent", "model", "operation",
                 "provider", "span_attributes", "span_kind", "span_name", "start_attributes")

    def __init__(self, telemetry: Telemetry, operation: str, provider: str | None,
                 model: str | None, agent: str | None = None) -> None:
        self.operation = operation
        self.provider = provider
        self.model = model
        #: An agent's turn: an ``invoke_agent {name}`` span (INTERNAL), never an LLM call.
        self.agent = agent
        bound = telemetry.bound
        attrs: dict[str, str] = {semconv.OPERATION_NAME: bound(semconv.OPERATION_NAME, operation)}
        if provider is not None:
            attrs[semconv.PROVIDER_NAME] = bound(semconv.PROVIDER_NAME, provider)
        if model is not None:
            attrs[semconv.REQUEST_MODEL] = bound(semconv.REQUEST_MODEL, model)
        if agent is not None:
            attrs[semconv.AGENT_NAME] = bound(semconv.AGENT_NAME, agent)
        # The span name carries the real model (spans are not aggregated).
        self.span_name = (f"{operation} {agent}" if agent else
                          f"{operation} {model}" if model else operation)
        self.span_kind = SpanKind.INTERNAL if agent else SpanKind.CLIENT
        self.span_attributes = attrs
        self.start_attributes: dict[str, AttributeValue] = dict(attrs)
        if agent is None:
            self.start_attributes[semconv.REQUEST_STREAM] = True
        self.active_key = tuple(sorted(_admitted(telemetry, attrs).items()))
        self._ends: dict[tuple[Outcome, str | None], _Ending] = {}
        self._telemetry = telemetry

    def end(self, outcome: Outcome, etype: str | None) -> _Ending:
        """The :class:`_Ending` for this outcome and (raw) error type, cached
        while fewer than ``_ENDINGS_CACHED`` are."""
        found = self._ends.get((outcome, etype))
        if found is None:
            found = _Ending(self._telemetry, self.span_attributes, outcome, etype)
            if len(self._ends) < _ENDINGS_CACHED:
                self._ends[(outcome, etype)] = found
        return found


#: The caches are keyed by raw names (the span name carries the real model),
#: which callers may vary without bound: past these sizes a new name is served
#: uncached (a few µs more), so memory never grows with the names seen.
_LABEL_SETS_CACHED: Final = 1024
#: Characters of answer text kept per stream when content capture is on.
CONTENT_LIMIT: Final = 65_536
_ENDINGS_CACHED: Final = 64
#: What no argument of ``tokens()`` is: the value it checked last, at first.
_UNCHECKED: Final = object()


def _label_set(telemetry: Telemetry, operation: str, provider: str | None,
               model: str | None, agent: str | None = None) -> _LabelSet:
    key = (operation, provider, model, agent)
    cache = telemetry.label_sets
    found = cache.get(key)
    if found is None:
        found = _LabelSet(telemetry, operation, provider, model, agent)
        if len(cache) < _LABEL_SETS_CACHED:
            cache[key] = found
    return found


def _check_names(operation: object, model: object, provider: object,
                 agent: object = None) -> None:
    if not isinstance(operation, str) or not operation:
        raise ValueError(f"operation must be a non-empty str, got {operation!r}")
    for arg, value in (("model", model), ("provider", provider), ("agent", agent)):
        if value is not None and (not isinstance(value, str) or not value):
            raise ValueError(f"{arg} must be a non-empty str or None, got {value!r}")


class StreamObservation:
    """The measurements of one stream, and the hand-written-loop API.

    Use it as ``with observe(...) as obs`` (or ``async with``): its span is
    the current span inside the block, so stages and the resilience wrappers'
    events land on it. Call :meth:`chunk` with each chunk the provider sends
    (or :meth:`first_token` and :meth:`tokens` for counts of your own), and
    let the block end. An exception leaving the block sets the outcome; it is
    never swallowed.

    Token figures: the provider's usage whenever the stream reported it
    (:meth:`set_usage`, or the usage chunks :meth:`chunk` reads), else the
    count of chunks that carried output. A failed request (outcome
    ``error`` or ``timeout``) with no provider usage records no token figure.
    """

    __slots__ = (
        "_also",
        "_cache_read",
        "_cache_write",
        "_content",
        "_cost",
        "_ctx",
        "_finish_reasons",
        "_finished",
        "_gaps",
        "_input_tokens",
        "_labels",
        "_n_checked",
        "_n_tokens",
        "_output_tokens",
        "_owns_turn",
        "_phase",
        "_provider",
        "_reasoning",
        "_reasoning_chunk",
        "_response_id",
        "_room",
        "_span",
        "_t_answer",
        "_t_first",
        "_t_start",
        "_telemetry",
        "_token",
        "_turn",
        "_turn_stack",
        "response_model",
    )

    def __init__(self, telemetry: Telemetry, labels: _LabelSet,
                 also: SummaryStats | None = None) -> None:
        self._telemetry = telemetry
        self._turn: Turn | None = None
        self._owns_turn = False
        self._turn_stack: list[Turn] | None = None
        #: A call directly inside its turn reports its time to first chunk as this phase.
        self._phase: str | None = None
        self._also = also
        self._labels = labels
        self._span: trace.Span = trace.INVALID_SPAN
        self._ctx: Context | None = None
        self._token: object = None
        self._t_start = 0.0
        self._t_first: float | None = None
        self._n_tokens = 0
        self._n_checked: object = _UNCHECKED
        self._input_tokens: int | None = None
        self._output_tokens: int | None = None
        self._cache_read: int | None = None
        self._cache_write: int | None = None
        self._reasoning: int | None = None
        #: The model that answered, once a chunk said (gen_ai.response.model).
        self.response_model: str | None = None
        #: The provider whose wire format the chunks are in, once one said.
        self._provider: str | None = None
        self._response_id: str | None = None
        #: choice index -> its finish reason
        self._finish_reasons: dict[int, str] | None = None
        #: When the first chunk of the answer itself arrived (after any reasoning).
        self._t_answer: float | None = None
        #: The chunk being read carries reasoning only (set by its reader).
        self._reasoning_chunk = False
        self._finished = False
        #: The cost the response reported (USD), if it did.
        self._cost: float | None = None
        #: The gaps between output chunks, from the first one on.
        self._gaps: ChunkGaps | None = None
        #: Answer text kept for the span, only when the user opted in.
        self._content: list[str] | None = [] if telemetry.capture_content else None
        self._room = CONTENT_LIMIT

    # -- the hand-written-loop API --------------------------------------

    def first_token(self, at: float | None = None) -> None:
        """Mark the first chunk as arrived now, or at ``at`` (a
        :func:`time.perf_counter` value); later calls are ignored."""
        if self._t_first is None:
            if at is None:
                self._t_first = t_first = _perf()
                self._span.add_event(semconv.EVENT_FIRST_CHUNK)
            else:  # the event at that moment, on the span's (wall) clock
                self._t_first = t_first = at
                self._span.add_event(semconv.EVENT_FIRST_CHUNK, timestamp=time.time_ns()
                                     - int((_perf() - at) * 1e9))
            turn = self._turn
            # Time per output chunk is a call's figure: a turn that is an agent's, or
            # whose calls have started already, is no call itself and times nothing.
            self._gaps = NO_GAPS if self._owns_turn and turn is not None and (
                self._labels.agent is not None or turn.calls_started) else ChunkGaps(t_first)
            if self._reasoning_chunk:  # the model thinks first: the answer comes later
                self._reasoning_chunk = False
            else:
                self._t_answer = t_first
            if turn is not None:
                if self._owns_turn:
                    turn.t_first = t_first
                elif self._phase is not None:
                    turn.phase(self._phase, self._t_start, t_first)

    def set_token_count(self, n: int) -> None:
        """Replace the count of output tokens (a caller that counts them itself)."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"n must be an int >= 0, got {n!r}")
        self._n_tokens = n

    def tokens(self, n: int = 1) -> None:
        """Count ``n`` output tokens (marks the first token if not yet)."""
        if n is self._n_checked:  # the value checked last, after the first token
            self._n_tokens += n
            self._gaps.tick()  # type: ignore[union-attr]  # made by the first token
            return
        if n.__class__ is not int or n < 0:  # one check: bool's class is not int
            raise ValueError(f"n must be an int >= 0, got {n!r}")
        if n:
            if self._t_first is None:
                self.first_token()
            else:
                self._gaps.tick()  # type: ignore[union-attr]
            # Checked once: the same object again (small ints are cached, so
            # every tokens(1) of a stream) takes the identity test above.
            self._n_checked = n
        self._n_tokens += n

    def chunk(self, chunk: object) -> int:
        """Read one chunk as the stream forms do (see :mod:`ragobs.chunks`):
        the first one carrying output marks the first token, usage and
        response metadata are noted. Returns the output units it carried."""
        n = reader_for(chunk)(chunk, self)
        if n:
            if self._t_first is None:
                self.first_token()
            else:
                gaps = self._gaps
                gaps.tick()  # type: ignore[union-attr]
                if self._t_answer is None and not self._reasoning_chunk:
                    self._t_answer = gaps.last  # type: ignore[union-attr]
            self._reasoning_chunk = False
            self._n_tokens += n
            if self._content is not None:
                self.record_output(chunk)
        return n

    def set_usage(self, *, input_tokens: int | None = None,
                  output_tokens: int | None = None) -> None:
        """Token usage reported by the provider; overrides counted chunks."""
        for arg, value in (("input_tokens", input_tokens), ("output_tokens", output_tokens)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                      or value < 0):
                raise ValueError(f"{arg} must be an int >= 0 or None, got {value!r}")
        if input_tokens is not None:
            self._input_tokens = input_tokens
        if output_tokens is not None:
            self._output_tokens = output_tokens

    def note_usage(self, *, input_tokens: int | None = None, output_tokens: int | None = None,
                   cache_read_input_tokens: int | None = None,
                   cache_write_input_tokens: int | None = None,
                   reasoning_output_tokens: int | None = None, add: bool = False,
                   cache_creation_input_tokens: int | None = None) -> None:
        """Usage read from a chunk (see :class:`ragobs.chunks.ChunkSink`);
        ``cache_creation_input_tokens`` is the old name of ``cache_write_input_tokens``."""
        if cache_write_input_tokens is None:
            cache_write_input_tokens = cache_creation_input_tokens
        if add:
            input_tokens = _plus(self._input_tokens, input_tokens)
            output_tokens = _plus(self._output_tokens, output_tokens)
            cache_read_input_tokens = _plus(self._cache_read, cache_read_input_tokens)
            cache_write_input_tokens = _plus(self._cache_write, cache_write_input_tokens)
            reasoning_output_tokens = _plus(self._reasoning, reasoning_output_tokens)
        if input_tokens is not None:
            self._input_tokens = input_tokens
        if output_tokens is not None:
            self._output_tokens = output_tokens
        if cache_read_input_tokens is not None:
            self._cache_read = cache_read_input_tokens
        if cache_write_input_tokens is not None:
            self._cache_write = cache_write_input_tokens
        if reasoning_output_tokens is not None:
            self._reasoning = reasoning_output_tokens

    def note_cost(self, amount: float) -> None:
        """The cost the response itself reported, in USD (see :class:`ragobs.chunks.ChunkSink`)."""
        if isinstance(amount, (int, float)) and not isinstance(amount, bool) and amount >= 0:
            self._cost = float(amount)

    def note_reasoning(self) -> None:
        """The chunk being read carries reasoning output only
        (see :class:`ragobs.chunks.ChunkSink`)."""
        self._reasoning_chunk = True

    def note_response(self, *, model: str | None = None, response_id: str | None = None,
                      finish_reason: str | None = None, provider: str | None = None,
                      choice: int = 0) -> None:
        """Response metadata read from a chunk (see :class:`ragobs.chunks.ChunkSink`)."""
        if model and isinstance(model, str):
            self.response_model = model
        if provider and isinstance(provider, str):
            self._provider = provider
        if response_id and isinstance(response_id, str):
            self._response_id = response_id
        if finish_reason:
            reasons = self._finish_reasons
            if reasons is None:
                self._finish_reasons = {choice: finish_reason}
            elif choice in reasons or len(reasons) < _FINISH_REASONS_KEPT:
                reasons[choice] = finish_reason

    def record_output(self, chunk: object) -> None:
        """Keep the text of ``chunk`` for the span's ``gen_ai.output.messages``:
        only when the :class:`Telemetry` has ``capture_content=True``, and at
        most ``CONTENT_LIMIT`` characters. str, UTF-8 bytes, and the text of
        the chunk shapes :mod:`ragobs.chunks` reads."""
        content = self._content
        if content is None:
            return
        text = _text_of(chunk)
        if text and self._room > 0:
            content.append(text[:self._room])
            self._room -= len(content[-1])

    @property
    def span(self) -> trace.Span:
        """The stream's span (non-recording before the stream starts)."""
        return self._span

    @property
    def finished(self) -> bool:
        """Whether the stream's figures were recorded (they are, once)."""
        return self._finished

    @property
    def token_count(self) -> int:
        """Output tokens: the provider's usage if reported, else the count."""
        return self._output_tokens if self._output_tokens is not None else self._n_tokens

    @property
    def input_tokens(self) -> int | None:
        """Input tokens, as the provider reported them (None when it did not)."""
        return self._input_tokens

    def __enter__(self) -> StreamObservation:
        self.start()
        if self._token is None:
            self._token = _attach(self._ctx)  # type: ignore[arg-type]
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        token, self._token = self._token, None
        if token is not None:
            _detach(token)  # type: ignore[arg-type]
        self.finish(exc)

    async def __aenter__(self) -> StreamObservation:
        return self.__enter__()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.__exit__(exc_type, exc, tb)

    # -- recording ------------------------------------------------------

    def _read_from(self, source: object) -> None:
        """The stream reads from ``source``: if this is a turn and ``source`` a
        generator (an agent), calls made while it runs belong to the turn,
        whatever context they run in (see :func:`ragobs._turn.current_turn`)."""
        turn = self._turn
        if self._owns_turn and turn is not None and (
                hasattr(source, "ag_running") or hasattr(source, "gi_running")):
            turn.source = source
            self._turn_stack = enter(turn)

    def start(self, start_time: float | None = None, *, context: Context | None = None,
              span_start_ns: int | None = None) -> None:
        """Open the span and count the request as in flight (once).

        ``context``: where the stream runs (its turn, parent span and phase),
        when not the current context; ``span_start_ns``: the span's start (ns
        since the epoch) when the stream started before this call."""
        if self._ctx is not None:
            return
        self._t_start = t_start = _perf() if start_time is None else start_time
        labels = self._labels
        tel = self._telemetry
        if context is None:  # a call an integration saw start is this stream (once)
            context = claim_pending_call()
        if context is None:
            parent = current_turn()
            inside_phase = in_phase()
        else:
            parent = turn_of(context)
            inside_phase = in_phase(context)
        if parent is not None and labels.agent is None:  # a call of the running turn
            self._turn = parent
            parent.call_started()
            if not inside_phase:
                self._phase = PHASE_LLM
        self._span = span = tel.tracer.start_span(
            labels.span_name, context=context, kind=labels.span_kind,
            attributes=labels.start_attributes, start_time=span_start_ns,
        )
        ctx = trace.set_span_in_context(span)
        if self._turn is not None:
            self._ctx = phase_context(ctx, self._turn)
        else:  # a turn of its own: what starts inside it is its call, stage or tool
            self._turn = turn = Turn(t_start)
            self._owns_turn = True
            self._ctx = turn.context = turn_context(ctx, turn)
            tel.active.add_key(labels.active_key, 1)
            tel.summary.started()
        if self._also is not None:
            self._also.started()

    def finish(self, exc: BaseException | None = None, end_time: float | None = None) -> Outcome:
        """Record everything for this stream, exactly once; returns the outcome."""
        outcome = classify(exc)
        if self._finished or self._ctx is None:
            return outcome
        self._finished = True
        t_end = _perf() if end_time is None else end_time
        tel = self._telemetry
        labels = started = self._labels
        turn = self._turn
        assert turn is not None  # start() gave it one
        # An LLM call: a call of a turn, or a turn that made no call itself (not an agent's).
        is_call = not self._owns_turn or (turn.calls == 0 and labels.agent is None)
        if is_call and (labels.model is None or labels.provider is None):
            labels = self._labels_from_chunks(labels)
        etype = error_type(exc) if exc is not None and outcome is not Outcome.CANCELLED else None
        ending = labels.end(outcome, etype)
        span = self._span
        output_tokens = self._output_tokens
        reported = output_tokens is not None
        tokens = output_tokens if output_tokens is not None else self._n_tokens
        failed = outcome is Outcome.ERROR or outcome is Outcome.TIMEOUT
        # Semconv: a failed call records token usage only if the provider reported it.
        record_tokens = reported or not failed
        input_tokens = self._input_tokens
        latency = t_end - self._t_start
        t_first = self._t_first
        ttft = None if t_first is None else t_first - self._t_start
        rate = None
        if t_first is not None:
            window = t_end - t_first
            if tokens >= 2 and window > 0 and record_tokens:
                rate = tokens / window
        cost: tuple[float, str] | None = None
        if not self._owns_turn:  # an inference call of a turn
            cost = self._record_call(ending, outcome, tokens if record_tokens else None, latency,
                                     ttft=ttft, rate=rate, t_end=t_end)
            turn.call_finished(failed=failed, input_tokens=input_tokens,
                               output_tokens=tokens if record_tokens else None,
                               cost=None if cost is None else cost[0])
            if self._phase is not None and t_first is None:
                turn.phase(self._phase, self._t_start, t_end)
            turn_figures = None
        else:
            if self._turn_stack is not None:
                leave(turn, self._turn_stack)
            own_call = is_call
            if own_call:  # a turn of one call: the call's own figures too
                cost = self._record_call(ending, outcome, tokens if record_tokens else None,
                                         latency, ttft=ttft, rate=rate, t_end=t_end)
                turn_out: int | None = tokens if record_tokens else None
                turn_in = input_tokens
                turn_cost = None if cost is None else cost[0]
            else:
                turn_out, turn_in, turn_cost = (turn.output_tokens, turn.input_tokens,
                                                turn.cost)
            turn_figures = (turn_out, turn_in)
            self._record_turn(ending, turn, own_call=own_call, outcome=outcome, failed=failed,
                              latency=latency, ttft=ttft, rate=rate, output_tokens=turn_out,
                              input_tokens=turn_in, cost=turn_cost)
            tel.active.add_key(started.active_key, -1)
        if self._also is not None:
            self._also.record(outcome, latency, ttft,
                              tokens if turn_figures is None else turn_figures[0] or 0, rate)

        if span.is_recording():
            self._end_attributes(span, ending, exc, tokens if record_tokens else None, ttft,
                                 turn=turn if self._owns_turn else None,
                                 turn_figures=turn_figures, cost=cost)
        span.end()
        return outcome

    def _call_cost(self) -> tuple[float, str] | None:
        """(USD, source) of this call: what the response said, else computed from the
        provider's usage; None when neither (an unknown model is counted apart)."""
        if self._cost is not None:
            return self._cost, "provider"
        output_tokens = self._output_tokens
        if output_tokens is None or self._input_tokens is None:
            return None  # no usage from the provider: nothing to price
        labels = self._labels
        amount = self._telemetry.pricing.cost(
            labels.provider or self._provider, (self.response_model, labels.model),
            input_tokens=self._input_tokens, output_tokens=output_tokens,
            cache_read=self._cache_read or 0, cache_write=self._cache_write or 0,
            reasoning=self._reasoning or 0)
        return None if amount is None else (amount, "local")

    def _record_call(self, ending: _Ending, outcome: Outcome, tokens: int | None,
                     latency: float, *, ttft: float | None, rate: float | None,
                     t_end: float) -> tuple[float, str] | None:
        """The GenAI client figures of one LLM call (per model); returns its cost."""
        tel = self._telemetry
        attrs = ending.attrs  # the names the metrics carry (bounded), for the calls table too
        cost = self._call_cost()
        if cost is not None:
            ending.cost.record(cost[0])
            tel.spend.add_key(ending.key, cost[0])  # type: ignore[arg-type]  # USD, not counts
        elif self._output_tokens is not None and self._input_tokens is not None:
            tel.unpriced.add_key(ending.key, 1)
        reasons = self._finish_reasons
        if reasons:
            for reason in reasons.values():
                tel.finish_reasons.add_key(
                    ending.key_with(tel, semconv.FINISH_REASON, reason), 1)
        for kind, n in ((semconv.UsageTokenType.CACHE_READ, self._cache_read),
                        (semconv.UsageTokenType.CACHE_WRITE, self._cache_write),
                        (semconv.UsageTokenType.REASONING, self._reasoning)):
            if n:
                tel.usage_tokens.add_key(ending.key_with(tel, semconv.USAGE_TOKEN_TYPE, kind), n)
        tel.calls.record(attrs.get(semconv.PROVIDER_NAME), attrs.get(semconv.REQUEST_MODEL),
                         outcome, latency=latency, ttft=ttft, input_tokens=self._input_tokens,
                         output_tokens=tokens, cost=None if cost is None else cost[0],
                         unpriced=cost is None and self._output_tokens is not None
                         and self._input_tokens is not None)
        # Latency and TTFT carry the stream's trace id as an exemplar: in our
        # own table when setup() gave us one (see ExemplarTable), else through
        # the SDK's reservoir, which reads the span from ``context``.
        exemplars = ending.exemplars
        exemplar_ctx = self._ctx if exemplars is None else _NO_EXEMPLAR
        if ending.duration is not None:
            ending.duration.record(latency)
        else:
            tel.operation_duration.record(latency, attrs, context=exemplar_ctx)
        if tokens is not None:
            ending.output_tokens.record(tokens)
        if self._input_tokens is not None:
            ending.input_tokens.record(self._input_tokens)
        t_first = self._t_first
        if ttft is not None and t_first is not None:
            if ending.ttft is not None:
                ending.ttft.record(ttft)
            else:
                tel.time_to_first_chunk.record(ttft, attrs, context=exemplar_ctx)
            if rate is not None:
                ending.rate.record(rate)
            if self._t_answer is not None:
                ending.ttfa.record(self._t_answer - self._t_start)
            gaps = self._gaps
            if gaps is not None and gaps.maximum >= 0:  # a gap was counted
                ending.per_chunk.merge(gaps)
        if exemplars is not None:
            span_context = self._span.get_span_context()
            if span_context.trace_flags.sampled:  # as the SDK's trace-based filter
                now = time.time()
                trace_id, span_id = span_context.trace_id, span_context.span_id
                exemplars[0].offer(latency, trace_id, span_id, now)
                if ttft is not None:
                    exemplars[1].offer(ttft, trace_id, span_id, now)
        return cost

    def _record_turn(self, ending: _Ending, turn: Turn, *, own_call: bool, outcome: Outcome,
                     failed: bool, latency: float, ttft: float | None, rate: float | None,
                     output_tokens: int | None, input_tokens: int | None,
                     cost: float | None) -> None:
        """The figures of one turn: the seed's summary and the turn instruments."""
        tel = self._telemetry
        exemplars = ending.turn_exemplars
        if exemplars is not None:  # ragobs keeps them (see _record_call)
            ending.turn_duration.record(latency)
            if ttft is not None:
                ending.turn_ttft.record(ttft)
            span_context = self._span.get_span_context()
            if span_context.trace_flags.sampled:
                now = time.time()
                exemplars[0].offer(latency, span_context.trace_id, span_context.span_id, now)
                if ttft is not None:
                    exemplars[1].offer(ttft, span_context.trace_id, span_context.span_id, now)
        else:  # the SDK's reservoir takes them, reading the turn's span from the context
            tel.turn_duration.record(latency, ending.attrs, context=self._ctx)
            if ttft is not None:
                tel.turn_time_to_first_chunk.record(ttft, ending.attrs, context=self._ctx)
        if output_tokens is not None:
            ending.turn_output.record(output_tokens)
        if input_tokens is not None:
            ending.turn_input.record(input_tokens)
        calls = 1 if own_call else turn.calls
        ending.turn_calls.record(calls)
        ending.turn_tools.record(turn.tool_calls)
        if cost is not None:
            ending.turn_cost.record(cost)
        phases = None
        if ttft is not None:
            if rate is not None:
                ending.turn_rate.record(rate)
            if outcome is Outcome.OK:
                phases = turn.breakdown(ttft)
                if own_call:  # the rest of a lone stream's wait is the LLM's
                    phases[PHASE_LLM] = phases.get(PHASE_LLM, 0.0) + phases.pop(PHASE_OTHER)
                table = tel.ttft_phases
                for name, seconds in phases.items():
                    key = ending.phase_key(tel, name)
                    table.add_key(key, seconds)  # type: ignore[arg-type]  # seconds, not counts
        key = ending.key
        tel.requests.add_key(key, 1)
        if failed:
            tel.errors.add_key(key, 1)
        tel.summary.record(outcome, latency, ttft, output_tokens or 0, rate,
                           input_tokens=input_tokens, calls=calls,
                           tool_calls=turn.tool_calls, phases=phases, cost=cost)

    def _labels_from_chunks(self, labels: _LabelSet) -> _LabelSet:
        """``labels`` completed with the model and provider the chunks named,
        for a stream observed without them (``observe_stream(client...create())``);
        the span takes the same names."""
        model = labels.model or self.response_model
        provider = labels.provider or self._provider
        if model == labels.model and provider == labels.provider:
            return labels
        found = _label_set(self._telemetry, labels.operation, provider, model, labels.agent)
        span = self._span
        if span.is_recording():
            span.update_name(found.span_name)
            span.set_attributes(found.span_attributes)
        return found

    def _end_attributes(self, span: trace.Span, ending: _Ending, exc: BaseException | None,
                        tokens: int | None, ttft: float | None, *, turn: Turn | None,
                        turn_figures: tuple[int | None, int | None] | None,
                        cost: tuple[float, str] | None) -> None:
        span_attrs: dict[str, Any] = {semconv.OUTCOME: ending.outcome}
        input_tokens = self._input_tokens
        if turn is not None and turn.calls:  # a turn with calls: what they cost in all
            tokens, input_tokens = turn_figures or (None, None)
            if tokens is not None:
                span_attrs[semconv.USAGE_OUTPUT_TOKENS] = tokens
        elif tokens is not None:
            span_attrs[semconv.USAGE_OUTPUT_TOKENS] = tokens
            span_attrs[semconv.USAGE_SOURCE] = (
                "provider" if self._output_tokens is not None else "counted")
        if turn is not None:
            span_attrs[semconv.INFERENCE_CALLS] = turn.calls or (
                1 if self._labels.agent is None else 0)
            span_attrs[semconv.TOOL_CALLS] = turn.tool_calls
            span_attrs[semconv.RETRIEVALS] = turn.retrievals
            span_attrs[semconv.FAILED_CALLS] = turn.failed_calls
        if turn is not None and turn.calls:  # an agent's turn: its calls' cost summed
            if turn.cost is not None:
                span_attrs[semconv.TURN_COST_AMOUNT] = turn.cost
        elif cost is not None:  # an inference call (a turn of one call included)
            span_attrs[semconv.USAGE_COST_AMOUNT] = cost[0]
            span_attrs[semconv.USAGE_COST_CURRENCY] = CURRENCY
            span_attrs[semconv.USAGE_COST_SOURCE] = cost[1]
        if ttft is not None:
            span_attrs[semconv.RESPONSE_TIME_TO_FIRST_CHUNK] = ttft
            if self._t_answer is not None:
                span_attrs[semconv.RESPONSE_TIME_TO_FIRST_ANSWER_CHUNK] = (
                    self._t_answer - self._t_start)
        for key, value in ((semconv.USAGE_INPUT_TOKENS, input_tokens),
                           (semconv.USAGE_CACHE_READ_INPUT_TOKENS, self._cache_read),
                           (semconv.USAGE_CACHE_WRITE_INPUT_TOKENS, self._cache_write),
                           (semconv.USAGE_REASONING_OUTPUT_TOKENS, self._reasoning),
                           (semconv.RESPONSE_MODEL, self.response_model),
                           (semconv.RESPONSE_ID, self._response_id)):
            if value is not None:
                span_attrs[key] = value
        if self._finish_reasons:
            reasons = self._finish_reasons
            span_attrs[semconv.RESPONSE_FINISH_REASONS] = tuple(reasons[i] for i in sorted(reasons))
        if self._content:
            span_attrs[semconv.OUTPUT_MESSAGES] = json.dumps([{
                "role": "assistant",
                "parts": [{"type": "text", "content": "".join(self._content)}],
            }], ensure_ascii=False)
        if ending.error_type is not None and exc is not None:
            span_attrs[semconv.ERROR_TYPE] = ending.error_type
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        span.set_attributes(span_attrs)


def _plus(held: int | None, more: int | None) -> int | None:
    if more is None:
        return held
    return more if held is None else held + more


#: Distinct finish reasons kept per stream (one per choice, usually one).
_FINISH_REASONS_KEPT: Final = 16


def _text_of(chunk: object) -> str | None:  # noqa: PLR0911
    """The answer text a chunk carries, for opted-in content capture."""
    if isinstance(chunk, str):
        return chunk
    if isinstance(chunk, (bytes, bytearray)):
        return bytes(chunk).decode("utf-8", "replace")
    if isinstance(chunk, dict):
        choices = chunk.get("choices")
        if choices:
            delta = choices[0].get("delta") or {}
            return delta.get("content") or None
        return chunk.get("delta") if isinstance(chunk.get("delta"), str) else None
    choices = getattr(chunk, "choices", None)
    if isinstance(choices, list):
        delta = getattr(choices[0], "delta", None) if choices else None
        content = getattr(delta, "content", None)
        return content if isinstance(content, str) else None
    delta = getattr(chunk, "delta", None)
    if isinstance(delta, str):  # OpenAI Responses text delta
        return delta
    text = getattr(delta, "text", None)  # Anthropic text delta
    if isinstance(text, str):
        return text
    content = getattr(chunk, "content", None)  # LangChain
    if isinstance(content, str):
        return content
    return None


def _observation(telemetry: Telemetry | None, operation: str, provider: str | None,
                 model: str | None, also: SummaryStats | None = None, *,
                 agent: str | None = None) -> StreamObservation:
    tel = telemetry if telemetry is not None else get_telemetry()
    if agent is not None:
        operation = semconv.OPERATION_INVOKE_AGENT
    return StreamObservation(tel, _label_set(tel, operation, provider, model, agent), also)


def observe(
    *,
    operation: str = "chat",
    model: str | None = None,
    provider: str | None = None,
    agent: str | None = None,
    telemetry: Telemetry | None = None,
) -> StreamObservation:
    """A :class:`StreamObservation` for a loop written by hand, or for one turn
    of an agent (``agent="name"``: an ``invoke_agent`` span whose LLM calls,
    tools and retrievals inside the block are counted on it).

    >>> with observe(operation="chat", model="gpt-4o") as obs:  # doctest: +SKIP
    ...     for chunk in client.stream(q):
    ...         obs.tokens(1)
    """
    _check_names(operation, model, provider, agent)
    return _observation(_check_telemetry_arg(telemetry), operation, provider, model,
                        agent=agent)


def _checked(count: Callable[[Any], int]) -> Callable[[Any], int]:
    """``count``, refusing what is not an int >= 0 (so a broken callback ends
    its own stream with a clear error, never the accounting)."""
    def checked(chunk: Any) -> int:
        k = count(chunk)
        if type(k) is not int or k < 0:
            kind = TypeError if not isinstance(k, int) or isinstance(k, bool) else ValueError
            raise kind(f"count_tokens must return an int >= 0, got {k!r} "
                       f"for a {type(chunk).__name__} chunk")
        return k

    return checked


def _restore(ctx: Context | None, outer: Context) -> None:
    """Undo a leak of the stream's context into the consumer's.

    A source that opens a context manager (a ``stage``) during a pull made
    with the stream's span current, and closes it during a later pull, resets
    the current context to the stream's when it closes: the consumer would go
    on with the ended stream span current, and its next request would become
    its child. The leaked value is exactly the stream's context object.
    """
    if ctx is not None and _current() is ctx:
        _attach(outer)


def _usage_only(chunk: Any) -> bool:
    """An OpenAI Chat Completions chunk that carries usage and no choice."""
    return getattr(chunk, "usage", None) is not None and not getattr(chunk, "choices", True)


def _measure(chunk: Any, obs: StreamObservation, count: Callable[[Any], int] | None) -> int:
    return reader_for(chunk)(chunk, obs) if count is None else count(chunk)


async def _observe_async(
    source: Any, obs: StreamObservation, count: Callable[[Any], int] | None,
    hide_usage: bool = False,
) -> AsyncGenerator[Any, None]:
    """Pass ``source``'s chunks through, measured. ``hide_usage``: a usage-only
    chunk (no choices) is read but not passed on, for a consumer that did not
    ask for usage (``instrument_client`` asked on its behalf)."""
    capture = obs._content is not None
    obs.start()
    ctx = obs._ctx
    outer = _current()
    src: Any = None
    it: Any = None
    failure: BaseException | None = None
    done = False
    n = 0
    try:
        token = _attach(ctx)  # type: ignore[arg-type]
        try:  # a deferred source issues its request here, inside the measurement
            src, it = await aopen(source)
        finally:
            _detach(token)
        obs._read_from(src)
        nxt = it.__anext__
        while True:  # until the first chunk that carries output, with the span current
            token = _attach(ctx)  # type: ignore[arg-type]
            try:
                chunk = await nxt()
            except StopAsyncIteration:
                done = True
                return
            finally:
                _detach(token)
            k = _measure(chunk, obs, count)
            if k:
                obs.first_token()
                tick = obs._gaps.tick  # type: ignore[union-attr]
                n = k
                if capture:
                    obs.record_output(chunk)
                yield chunk
                break
            if hide_usage and _usage_only(chunk):
                continue
            yield chunk
        if count is not None:
            async for chunk in it:
                k = count(chunk)
                if k:
                    n += k
                    tick()
                if capture:
                    obs.record_output(chunk)
                yield chunk
        elif (chunk.__class__ is str or chunk.__class__ is bytes) and not capture:
            async for chunk in it:  # the hot loop for text: count and pass through
                if chunk:
                    n += 1
                    tick()
                yield chunk
        elif reader_for(chunk) is read_openai_chat and not capture and obs._t_answer is not None:
            cls = chunk.__class__
            async for chunk in it:  # the hot loop for OpenAI chat chunks
                # A plain content delta (the bulk of a stream) is told by five
                # attribute reads; anything else (finish, usage, tool calls,
                # several choices) goes through the full reader.
                if chunk.__class__ is cls and chunk.usage is None:
                    choices = chunk.choices
                    if len(choices) == 1:
                        choice = choices[0]
                        if choice.finish_reason is None and choice.delta.content:
                            n += 1
                            tick()
                            yield chunk
                            continue
                k = reader_for(chunk)(chunk, obs)
                if k:
                    n += k
                    tick()
                if hide_usage and chunk.usage is not None and not chunk.choices:
                    continue
                yield chunk
        else:
            get = readers.get
            thinking = obs._t_answer is None
            async for chunk in it:  # the hot loop for chunk objects
                read: ChunkReader | None = get(chunk.__class__)
                k = (read or reader_for(chunk))(chunk, obs)
                if k:
                    n += k
                    tick()
                    if thinking:  # the model reasoned first: is this the answer?
                        thinking = obs._reasoning_chunk
                        obs._reasoning_chunk = False
                        if not thinking:
                            obs._t_answer = obs._gaps.last  # type: ignore[union-attr]
                    if capture:
                        obs.record_output(chunk)
                elif hide_usage and _usage_only(chunk):
                    continue
                yield chunk
        done = True
    except BaseException as exc:
        failure = exc
        raise
    finally:
        obs._n_tokens = n
        obs.finish(failure)
        _restore(ctx, outer)
        if not done and it is not None:
            await aclose_source(it, src, quiet=failure is not None)


def _observe_sync(
    source: Any, obs: StreamObservation, count: Callable[[Any], int] | None,
    hide_usage: bool = False,
) -> Generator[Any, None, None]:
    """The synchronous :func:`_observe_async`."""
    capture = obs._content is not None
    obs.start()
    ctx = obs._ctx
    outer = _current()
    src: Any = None
    it: Any = None
    failure: BaseException | None = None
    done = False
    n = 0
    try:
        token = _attach(ctx)  # type: ignore[arg-type]
        try:
            src, it = open_sync(source)
        finally:
            _detach(token)
        obs._read_from(src)
        while True:
            token = _attach(ctx)  # type: ignore[arg-type]
            try:
                chunk = next(it)
            except StopIteration:
                done = True
                return
            finally:
                _detach(token)
            k = _measure(chunk, obs, count)
            if k:
                obs.first_token()
                tick = obs._gaps.tick  # type: ignore[union-attr]
                n = k
                if capture:
                    obs.record_output(chunk)
                yield chunk
                break
            if hide_usage and _usage_only(chunk):
                continue
            yield chunk
        if count is not None:
            for chunk in it:
                k = count(chunk)
                if k:
                    n += k
                    tick()
                if capture:
                    obs.record_output(chunk)
                yield chunk
        elif (chunk.__class__ is str or chunk.__class__ is bytes) and not capture:
            for chunk in it:
                if chunk:
                    n += 1
                    tick()
                yield chunk
        elif reader_for(chunk) is read_openai_chat and not capture and obs._t_answer is not None:
            cls = chunk.__class__
            for chunk in it:  # as in _observe_async
                if chunk.__class__ is cls and chunk.usage is None:
                    choices = chunk.choices
                    if len(choices) == 1:
                        choice = choices[0]
                        if choice.finish_reason is None and choice.delta.content:
                            n += 1
                            tick()
                            yield chunk
                            continue
                k = reader_for(chunk)(chunk, obs)
                if k:
                    n += k
                    tick()
                if hide_usage and chunk.usage is not None and not chunk.choices:
                    continue
                yield chunk
        else:
            get = readers.get
            thinking = obs._t_answer is None
            for chunk in it:
                read: ChunkReader | None = get(chunk.__class__)
                k = (read or reader_for(chunk))(chunk, obs)
                if k:
                    n += k
                    tick()
                    if thinking:  # the model reasoned first: is this the answer?
                        thinking = obs._reasoning_chunk
                        obs._reasoning_chunk = False
                        if not thinking:
                            obs._t_answer = obs._gaps.last  # type: ignore[union-attr]
                    if capture:
                        obs.record_output(chunk)
                elif hide_usage and _usage_only(chunk):
                    continue
                yield chunk
        done = True
    except BaseException as exc:
        failure = exc
        raise
    finally:
        obs._n_tokens = n
        obs.finish(failure)
        _restore(ctx, outer)
        if not done and it is not None:
            close_source(it, src, quiet=failure is not None)


_NOT_AWAITED: Final = (
    "observe_stream() and @instrument_stream functions give a stream to iterate, not an "
    "awaitable: use `async for chunk in observe_stream(...)`; pass the un-awaited call "
    "(observe_stream(client.chat.completions.create(..., stream=True))) so that the request "
    "is inside the measurement")


class _AsyncStream(AsyncGenerator[Any, None]):
    """What ``observe_stream`` gives for an async source: the observing async
    generator, with a clear error for ``await`` instead of Python's generic one.
    ``async for`` iterates the generator itself, so it costs nothing per chunk."""

    __slots__ = ("_gen",)

    def __init__(self, gen: AsyncGenerator[Any, None]) -> None:
        self._gen = gen

    def __aiter__(self) -> AsyncGenerator[Any, None]:
        return self._gen

    def __anext__(self) -> Coroutine[Any, Any, Any]:
        return self._gen.__anext__()

    def asend(self, value: None) -> Coroutine[Any, Any, Any]:
        return self._gen.asend(value)

    def athrow(self, *args: Any) -> Coroutine[Any, Any, Any]:
        return self._gen.athrow(*args)

    def aclose(self) -> Coroutine[Any, Any, None]:
        return self._gen.aclose()

    def __await__(self) -> Generator[Any, None, Any]:
        raise TypeError(_NOT_AWAITED)


class _SyncStream(Generator[Any, None, None]):
    """As :class:`_AsyncStream`, for a synchronous source."""

    __slots__ = ("_gen",)

    def __init__(self, gen: Generator[Any, None, None]) -> None:
        self._gen = gen

    def __iter__(self) -> Generator[Any, None, None]:
        return self._gen

    def __next__(self) -> Any:
        return next(self._gen)

    def send(self, value: None) -> Any:
        return self._gen.send(value)

    def throw(self, *args: Any) -> Any:
        return self._gen.throw(*args)

    def close(self) -> None:
        self._gen.close()

    def __await__(self) -> Generator[Any, None, Any]:
        raise TypeError(_NOT_AWAITED)


class _DeferredStream:
    """``observe_stream(factory)``: the factory is called when iteration
    starts, inside the measurement; ``async for`` or ``for`` decides which."""

    __slots__ = ("_count", "_factory", "_gen", "_obs")

    def __init__(self, factory: Callable[[], Any], obs: StreamObservation,
                 count: Callable[[Any], int] | None) -> None:
        self._factory = factory
        self._obs = obs
        self._count = count
        self._gen: Any = None

    def __aiter__(self) -> AsyncGenerator[Any, None]:
        if self._gen is None:
            self._gen = _observe_async(self._factory, self._obs, self._count)
        gen: AsyncGenerator[Any, None] = self._gen
        return gen

    def __iter__(self) -> Generator[Any, None, None]:
        if self._gen is None:
            self._gen = _observe_sync(self._factory, self._obs, self._count)
        gen: Generator[Any, None, None] = self._gen
        return gen

    async def __anext__(self) -> Any:
        return await self.__aiter__().__anext__()

    def __next__(self) -> Any:
        return next(self.__iter__())

    async def aclose(self) -> None:
        if self._gen is not None:
            await self._gen.aclose()

    def close(self) -> None:
        if self._gen is not None:
            self._gen.close()

    def __await__(self) -> Generator[Any, None, Any]:
        raise TypeError(_NOT_AWAITED)


@overload
def observe_stream(
    stream: AsyncIterable[T] | Awaitable[AsyncIterable[T]], *, operation: str = ...,
    model: str | None = ..., provider: str | None = ..., agent: str | None = ...,
    telemetry: Telemetry | None = ..., count_tokens: Callable[[T], int] | None = ...,
) -> AsyncGenerator[T, None]: ...


@overload
def observe_stream(
    stream: Iterable[T], *, operation: str = ..., model: str | None = ...,
    provider: str | None = ..., agent: str | None = ..., telemetry: Telemetry | None = ...,
    count_tokens: Callable[[T], int] | None = ...,
) -> Generator[T, None, None]: ...


@overload
def observe_stream(
    stream: Callable[[], Any], *, operation: str = ..., model: str | None = ...,
    provider: str | None = ..., agent: str | None = ..., telemetry: Telemetry | None = ...,
    count_tokens: Callable[[Any], int] | None = ...,
) -> _DeferredStream: ...


def observe_stream(
    stream: Any,
    *,
    operation: str = "chat",
    model: str | None = None,
    provider: str | None = None,
    agent: str | None = None,
    telemetry: Telemetry | None = None,
    count_tokens: Callable[[Any], int] | None = None,
) -> Any:
    """Wrap ``stream`` so that consuming it records one observed request.

    Outside any other observed stream it is a *turn* (one question answered);
    started while a turn runs, it is one of that turn's LLM calls. ``agent``:
    the turn is that agent's (an ``invoke_agent`` span), never an LLM call.

    ``stream`` is an async iterable (gives an async generator), an iterable
    (gives a generator), an un-awaited call that returns an async iterable
    (``client.chat.completions.create(..., stream=True)``: the request and the
    wait for response headers are then inside the measurement), or a
    zero-argument factory returning any of those (called when iteration
    starts; iterate with ``async for`` or ``for``). Chunks pass through
    unchanged; their usage and metadata are read (see :mod:`ragobs.chunks`).
    Closing the wrapper closes ``stream``, the source object itself included
    (an SDK stream's ``close()``), so the provider's response is released.
    """
    _check_names(operation, model, provider, agent)
    count = _check_count(count_tokens)
    tel = _check_telemetry_arg(telemetry)
    if hasattr(stream, "__aiter__") or (inspect.isawaitable(stream)
                                        and not hasattr(stream, "__iter__")):
        return _AsyncStream(_observe_async(
            stream, _observation(tel, operation, provider, model, agent=agent), count))
    if hasattr(stream, "__iter__"):
        check_streamed(stream)
        return _SyncStream(_observe_sync(
            stream, _observation(tel, operation, provider, model, agent=agent), count))
    if callable(stream):
        return _DeferredStream(
            stream, _observation(tel, operation, provider, model, agent=agent), count)
    raise TypeError("stream must be an iterable, an async iterable, an awaitable of one or a "
                    f"zero-argument factory, got {type(stream).__name__}")


def _check_count(count_tokens: object) -> Callable[[Any], int] | None:
    if count_tokens is None:
        return None
    if not callable(count_tokens):
        raise TypeError(f"count_tokens must be a callable (chunk) -> int >= 0, or None, "
                        f"got {count_tokens!r}")
    return _checked(count_tokens)


def _check_telemetry_arg(telemetry: object) -> Telemetry | None:
    if telemetry is not None and not isinstance(telemetry, Telemetry):
        raise TypeError(f"telemetry must be a ragobs Telemetry or None, got {telemetry!r}")
    return telemetry


@overload
def instrument_stream(fn: F, /) -> F: ...


@overload
def instrument_stream(
    fn: None = None, /, *, operation: str = ..., model: str | None = ...,
    provider: str | None = ..., agent: str | None = ..., telemetry: Telemetry | None = ...,
    count_tokens: Callable[[Any], int] | None = ...,
) -> Callable[[F], F]: ...


def instrument_stream(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    operation: str = "chat",
    model: str | None = None,
    provider: str | None = None,
    agent: str | None = None,
    telemetry: Telemetry | None = None,
    count_tokens: Callable[[Any], int] | None = None,
) -> Any:
    """Decorate an async generator function (or generator function) so that
    every stream it returns is observed like :func:`observe_stream`.

    Usable bare (``@instrument_stream``) or with arguments; the arguments are
    checked when applied. The decorated function keeps its name, docstring
    and signature (also for type checkers).
    """
    _check_names(operation, model, provider, agent)
    count = _check_count(count_tokens)
    tel = _check_telemetry_arg(telemetry)

    def decorate(func: F) -> F:
        if inspect.isasyncgenfunction(func):
            @functools.wraps(func)
            def async_wrapper(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, None]:
                obs = _observation(tel, operation, provider, model, agent=agent)
                return _AsyncStream(_observe_async(func(*args, **kwargs), obs, count))

            return cast(F, async_wrapper)
        if inspect.isgeneratorfunction(func):
            @functools.wraps(func)
            def sync_wrapper(*args: Any, **kwargs: Any) -> Generator[Any, None, None]:
                obs = _observation(tel, operation, provider, model, agent=agent)
                return _SyncStream(_observe_sync(func(*args, **kwargs), obs, count))

            return cast(F, sync_wrapper)
        raise TypeError(
            "instrument_stream decorates async generator or generator functions, got "
            f"{getattr(func, '__qualname__', func)!r}; wrap other iterables with observe_stream()"
        )

    if fn is not None:
        return decorate(fn)
    return decorate
