"""Argument checks shared by the resilience wrappers.

Each check names the argument and the accepted range in its error, so a
misconfigured wrapper fails at construction with a message that says what to fix.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import cast

from ragobs._telemetry import Telemetry
from ragobs.clock import SYSTEM_CLOCK, Clock


def _number(arg: str, value: object, rule: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{arg} must be a number {rule}, got {value!r}")
    return float(value)


def _positive(arg: str, value: object, *, allow_inf: bool = False) -> float:
    """``value`` as a float > 0 (finite unless ``allow_inf``)."""
    rule = "> 0" if allow_inf else "> 0 (finite)"
    number = _number(arg, value, rule)
    if not number > 0 or (math.isinf(number) and not allow_inf):
        raise ValueError(f"{arg} must be a number {rule}, got {value!r}")
    return number


def _optional_positive(arg: str, value: object) -> float | None:
    if value is None:
        return None
    rule = "> 0 (finite) or None"
    number = _number(arg, value, rule)
    if not (number > 0 and math.isfinite(number)):
        raise ValueError(f"{arg} must be a number {rule}, got {value!r}")
    return number


def _in_range(arg: str, value: object, low: float, high: float) -> float:
    rule = f"in [{low:g}, {high:g}]"
    number = _number(arg, value, rule)
    if not low <= number <= high:
        raise ValueError(f"{arg} must be a number {rule}, got {value!r}")
    return number


def _exception_filter(on: object) -> Callable[[BaseException], bool] | None:
    """``on=`` as a predicate (``None`` stays ``None``: use the default)."""
    if on is None:
        return None
    if isinstance(on, type) and issubclass(on, BaseException):
        exc_type = on
        return lambda exc: isinstance(exc, exc_type)
    if isinstance(on, tuple) and on and all(
            isinstance(t, type) and issubclass(t, BaseException) for t in on):
        exc_types = on
        return lambda exc: isinstance(exc, exc_types)
    if callable(on) and not isinstance(on, type):
        return cast(Callable[[BaseException], bool], on)
    raise TypeError(
        "on must be an exception type, a non-empty tuple of exception types or a "
        f"predicate taking the exception, got {on!r}"
    )


def _check_clock(clock: object) -> Clock:
    if clock is None:
        return SYSTEM_CLOCK
    if not all(callable(getattr(clock, m, None)) for m in ("now", "sleep", "call_at")):
        raise TypeError(f"clock must be a ragobs.clock.Clock (now, sleep, call_at), got {clock!r}")
    return cast(Clock, clock)


def _check_telemetry(telemetry: object) -> Telemetry | None:
    if telemetry is not None and not isinstance(telemetry, Telemetry):
        raise TypeError(f"telemetry must be a ragobs.Telemetry or None, got {telemetry!r}")
    return telemetry


def _check_name(name: object) -> str | None:
    if name is not None and (not isinstance(name, str) or not name):
        raise ValueError(f"name must be a non-empty str or None, got {name!r}")
    return name


def _describe(exc: BaseException) -> str:
    """``"Type: message"`` for logs; never raises, whatever ``__str__`` does."""
    try:
        text = str(exc)
    except Exception:
        text = "<unprintable>"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _default_name(obj: object, fallback: str) -> str:
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    return name if isinstance(name, str) and name else fallback
