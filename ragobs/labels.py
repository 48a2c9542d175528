"""Bounded attribute values, so no label can grow with the traffic served."""

from __future__ import annotations

import threading

from ragobs.semconv import OTHER

DEFAULT_MAX_VALUES = 64


class LabelGuard:
    """Caps how many distinct values each attribute key may take.

    The first ``max_values`` distinct values of a key pass through unchanged;
    any later new value becomes ``"_OTHER"``. Values seen once stay admitted,
    so a series never changes its labels mid-life.
    """

    __slots__ = ("_lock", "_max_values", "_seen")

    def __init__(self, max_values: int = DEFAULT_MAX_VALUES) -> None:
        if not isinstance(max_values, int) or isinstance(max_values, bool) or max_values < 1:
            raise ValueError(f"max_values must be an int >= 1, got {max_values!r}")
        self._max_values = max_values
        self._seen: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    def bound(self, key: str, value: str) -> str:
        """Return ``value`` if admitted for ``key``, else ``"_OTHER"``."""
        seen = self._seen.get(key)
        if seen is not None and value in seen:
            return value
        with self._lock:
            seen = self._seen.setdefault(key, set())
            if value in seen:
                return value
            if len(seen) >= self._max_values:
                return OTHER
            seen.add(value)
            return value
