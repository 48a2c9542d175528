"""Event plumbing: how a protective action is reported.

A resilience wrapper builds one frozen :class:`Event` and calls :func:`emit`,
which adds it as an event on the current span, logs it on the ``ragobs``
logger and hands it to each registered hook. The wrapper records its metrics
itself, on the instruments of :mod:`ragobs.semconv`.

Hooks are plain callables in the spirit of stamina's instrumentation hooks;
a hook that raises is logged and skipped, never allowed to break a request.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from opentelemetry import trace
from opentelemetry.util.types import AttributeValue

from ragobs import semconv
from ragobs._classify import error_type

logger = logging.getLogger("ragobs")


@dataclass(frozen=True, slots=True)
class Event:
    """One protective action.

    Attributes:
        kind: the span event name, e.g. ``"ratelimit.wait"``, ``"retry"``,
            ``"timeout"``, ``"fallback"`` (see :mod:`ragobs.semconv`).
        name: the name of the wrapper instance that acted.
        attributes: details (wait seconds, attempt number, deadline kind...).
        error: the exception that caused it, if any.
        trace_id: hex trace id of the span current when it happened, or "".
    """

    kind: str
    name: str
    attributes: Mapping[str, AttributeValue] = field(default_factory=dict)
    error: BaseException | None = None
    trace_id: str = ""


Hook = Callable[[Event], None]

_hooks: tuple[Hook, ...] = ()
_hooks_lock = threading.Lock()


def add_hook(hook: Hook) -> None:
    """Register ``hook`` to receive every :class:`Event` (idempotent)."""
    global _hooks
    if not callable(hook):
        raise TypeError(f"hook must be callable, got {type(hook).__name__}")
    with _hooks_lock:
        if hook not in _hooks:
            _hooks = (*_hooks, hook)


def remove_hook(hook: Hook) -> None:
    """Unregister ``hook``; unknown hooks are ignored."""
    global _hooks
    with _hooks_lock:
        _hooks = tuple(h for h in _hooks if h is not hook)


def emit(
    kind: str,
    name: str,
    attributes: Mapping[str, AttributeValue] | None = None,
    *,
    error: BaseException | None = None,
    level: int = logging.INFO,
    message: str | None = None,
    details: bool = True,
) -> Event:
    """Report one protective action on the span, the log and the hooks.

    The log line is ``message`` followed, unless ``details`` is False, by the
    attributes; the record always carries ``ragobs_event``, ``trace_id`` and
    ``ragobs_attributes`` for structured handlers.
    """
    attrs = dict(attributes or {})
    span = trace.get_current_span()
    span_ctx = span.get_span_context()
    trace_id = format(span_ctx.trace_id, "032x") if span_ctx.is_valid else ""
    event = Event(kind, name, attrs, error, trace_id)
    if span.is_recording():
        span_attrs: dict[str, AttributeValue] = {semconv.EVENT_NAME: name, **attrs}
        if error is not None:
            span_attrs[semconv.EVENT_ERROR_TYPE] = error_type(error)
        span.add_event(kind, span_attrs)
    if logger.isEnabledFor(level):
        text = message or f"{kind} {name}"
        shown = " ".join(f"{k}={v}" for k, v in attrs.items()) if details else ""
        logger.log(
            level,
            "%s%s%s",
            text,
            f" ({shown})" if shown else "",
            f" trace_id={trace_id}" if trace_id and details else "",
            exc_info=error if error is not None and level >= logging.ERROR else None,
            extra={"ragobs_event": kind, "trace_id": trace_id, "ragobs_attributes": attrs},
        )
    for hook in _hooks:
        try:
            hook(event)
        except Exception:  # a broken hook must not break the request
            logger.exception("ragobs hook %r failed on %s event", hook, kind)
    return event
