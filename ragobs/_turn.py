"""Turns and their calls: one question answered, and the LLM calls it made.

A *turn* is the outermost observed stream (or ``observe()`` block): what the
user experiences, from the question to the last chunk they receive. An
observed stream that starts while a turn is current is one of its *inference
calls*; stages, tools and retrievals inside a turn are counted on it too. An
LLM stream with nothing around it is a turn of one call.

The current turn is found through context, never through ids the user
passes: the turn's OpenTelemetry context carries it, and that context is
current wherever the turn's code runs with its span current (inside an
``observe()`` block, and while an observed stream's source works towards its
first chunk, as calls, stages and limiter waits do). After a stream's first
chunk its chunks pass through a loop that sets no context (nothing per
chunk), so a call started later finds the turn by the task (or thread) it
runs in instead, when the turn's own source (the agent's generator) is the
code running: :func:`current_turn` looks there. A stream the consumer merely
holds open while it does other work is not running, so nothing joins it.

Where the turn's time to first chunk went is told by *phases*: the time of
each stage, limiter wait and LLM call (up to its first chunk) that runs
directly inside the turn (not inside another phase), clipped to the span from
the turn's start to its first chunk; the rest is ``other``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from contextvars import ContextVar
from typing import Final

from opentelemetry import context as otel_context
from opentelemetry.context import Context

__all__ = ["PHASE_LLM", "PHASE_OTHER", "PHASE_RATELIMIT", "PendingCall", "Turn", "current_turn",
           "in_phase"]

#: The turn an OpenTelemetry context belongs to.
_TURN_KEY: Final = otel_context.create_key("ragobs-turn")
#: Set in the context of a phase (stage, call): what runs inside it is part of it.
_PHASE_KEY: Final = otel_context.create_key("ragobs-phase")

PHASE_LLM: Final = "llm"
PHASE_RATELIMIT: Final = "ratelimit"
PHASE_OTHER: Final = "other"


class Turn:
    """The running figures of one turn, fed by its calls, stages and tools.

    Thread-safe: calls made concurrently (tasks, threads) report under a lock.
    Memory is a few counters and one entry per phase name.
    """

    __slots__ = ("__weakref__", "_lock", "calls", "calls_started", "context", "cost",
                 "failed_calls",
                 "input_tokens",
                 "output_tokens", "phases", "retrievals", "source", "t_first", "t_start",
                 "tool_calls")

    def __init__(self, t_start: float) -> None:
        self._lock = threading.Lock()
        self.t_start = t_start
        #: When the user received the turn's first output chunk (perf_counter).
        self.t_first: float | None = None
        self.calls = 0
        #: LLM calls started (finished or not): a turn with one is no call itself.
        self.calls_started = 0
        self.failed_calls = 0
        self.tool_calls = 0
        self.retrievals = 0
        #: Provider usage summed over the calls (counted chunks where none was reported).
        self.input_tokens: int | None = None
        self.output_tokens = 0
        #: USD summed over the calls that had a cost (None: none had).
        self.cost: float | None = None
        #: phase name -> seconds of the time to first chunk
        self.phases: dict[str, float] = {}
        #: The generator the turn's stream reads from, once opened: code it runs is the turn's.
        self.source: object = None
        #: The turn's own context (its span current, outside any phase), once started.
        self.context: Context | None = None

    def call_started(self) -> None:
        with self._lock:
            self.calls_started += 1

    def call_finished(self, *, failed: bool, input_tokens: int | None,
                      output_tokens: int | None, cost: float | None = None) -> None:
        with self._lock:
            if cost is not None:
                self.cost = (self.cost or 0.0) + cost
            self.calls += 1
            if failed:
                self.failed_calls += 1
            if input_tokens is not None:
                self.input_tokens = (self.input_tokens or 0) + input_tokens
            if output_tokens is not None:
                self.output_tokens += output_tokens

    def tool_called(self) -> None:
        with self._lock:
            self.tool_calls += 1

    def retrieved(self) -> None:
        with self._lock:
            self.retrievals += 1

    def phase(self, name: str, start: float, end: float) -> None:
        """Count ``[start, end]`` of phase ``name`` in the time to first chunk."""
        with self._lock:
            t_first = self.t_first
            if t_first is not None and end > t_first:
                end = t_first
            start = max(start, self.t_start)
            if end > start:
                self.phases[name] = self.phases.get(name, 0.0) + (end - start)

    def breakdown(self, ttft: float) -> dict[str, float]:
        """Seconds per phase adding up to ``ttft``: the phases' own time
        (scaled down in proportion where concurrent phases overlapped), and
        ``other`` for the rest."""
        with self._lock:
            phases = dict(self.phases)
        total = sum(phases.values())
        if total > ttft > 0:
            scale = ttft / total
            phases = {name: seconds * scale for name, seconds in phases.items()}
            total = ttft
        phases[PHASE_OTHER] = phases.get(PHASE_OTHER, 0.0) + max(ttft - total, 0.0)
        return phases


def turn_context(ctx: Context, turn: Turn) -> Context:
    """``ctx`` carrying ``turn``, outside any phase."""
    ctx = otel_context.set_value(_TURN_KEY, turn, ctx)
    return otel_context.set_value(_PHASE_KEY, False, ctx)


def phase_context(ctx: Context, turn: Turn | None = None) -> Context:
    """``ctx`` marked as inside a phase (of ``turn``, when given)."""
    if turn is not None:
        ctx = otel_context.set_value(_TURN_KEY, turn, ctx)
    return otel_context.set_value(_PHASE_KEY, True, ctx)


def in_phase(ctx: Context | None = None) -> bool:
    """Is ``ctx`` (default: the current context) inside a phase of its turn?"""
    return otel_context.get_value(_PHASE_KEY, ctx) is True


def turn_of(ctx: Context) -> Turn | None:
    """The turn ``ctx`` carries, if any."""
    turn = otel_context.get_value(_TURN_KEY, ctx)
    return turn if isinstance(turn, Turn) else None


# -- an LLM call another instrumentation saw start (the LangChain handler) ----

class PendingCall:
    """An LLM call seen starting by an integration that records it when it
    ends (LangChain's callbacks), unless an observed stream inside it (an
    instrumented client) claims it first: that stream is then the call, with
    the context the integration gave it, and the integration records nothing.
    So one LLM call is counted once, however many layers watch it."""

    __slots__ = ("claimed", "context")

    def __init__(self, context: Context) -> None:
        #: Where the call runs: its turn, its parent span, inside a phase or not.
        self.context = context
        self.claimed = False


#: The call the code running now is making, if an integration said so.
pending_call: ContextVar[PendingCall | None] = ContextVar("ragobs-pending-call", default=None)


def claim_pending_call() -> Context | None:
    """The context of the pending call the current code makes, claimed now
    (once); ``None`` when there is none."""
    pending = pending_call.get()
    if pending is None or pending.claimed:
        return None
    pending.claimed = True
    return pending.context


# -- the turns each task (or thread) is running, for calls made after a first chunk ---

_by_task: weakref.WeakKeyDictionary[object, list[Turn]] = weakref.WeakKeyDictionary()
_by_thread = threading.local()


def _owner() -> object | None:
    try:
        return asyncio.current_task()
    except RuntimeError:  # no running loop: a thread
        return None


def enter(turn: Turn) -> list[Turn]:
    """Note that the current task (or thread) runs ``turn``; returns the stack
    to give :func:`leave`."""
    owner = _owner()
    if owner is not None:
        stack = _by_task.setdefault(owner, [])
    else:
        found: list[Turn] | None = getattr(_by_thread, "turns", None)
        if found is None:
            found = _by_thread.turns = []
        stack = found
    stack.append(turn)
    return stack


def leave(turn: Turn, stack: list[Turn]) -> None:
    """Undo :func:`enter`, from any task or thread (once the turn ends)."""
    with contextlib.suppress(ValueError):
        stack.remove(turn)


def current_turn() -> Turn | None:
    """The turn the current code runs in: the one its context carries, else
    the innermost running turn of this task (or thread)."""
    turn = otel_context.get_value(_TURN_KEY)
    if isinstance(turn, Turn):
        return turn
    owner = _owner()
    stack = _by_task.get(owner) if owner is not None else getattr(_by_thread, "turns", None)
    if stack:
        for held in reversed(stack):
            source = held.source
            if getattr(source, "ag_running", False) or getattr(source, "gi_running", False):
                return held
    return None
