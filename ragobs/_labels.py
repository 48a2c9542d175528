"""Bounded attribute values, so no label can grow with the traffic served."""

from __future__ import annotations

import threading

from ragobs.semconv import OTHER

DEFAULT_MAX_VALUES = 64
#: Distinct label combinations of the per-stream instruments (operation,
#: provider, model, outcome, error type). Each is one series per histogram
#: (two for token usage, input and output): far under the SDK's 2,000
#: series per instrument, and an exposition Prometheus scrapes in well under
#: a second (see bench/bench_cardinality.py).
DEFAULT_MAX_SERIES = 200


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


class SeriesGuard:
    """Caps the distinct attribute combinations of a family of instruments.

    Per-attribute caps alone multiply: 64 models x 64 error types is 4,096
    combinations, past the OpenTelemetry SDK's 2,000 series per instrument,
    whose overflow series loses every label, the outcome included. Here the
    first ``max_series`` combinations are admitted and stay admitted; a later
    one must be folded by the caller (values replaced by ``_OTHER``) until it
    fits. A combination whose every folded value is ``_OTHER`` is always
    admitted (reserved; at most a few: one per outcome), so a fully folded
    request keeps its outcome and is still counted.
    """

    __slots__ = ("_admitted", "_lock", "_max_series")

    def __init__(self, max_series: int = DEFAULT_MAX_SERIES) -> None:
        if (not isinstance(max_series, int) or isinstance(max_series, bool)
                or not 1 <= max_series <= 100_000):
            raise ValueError(f"max_series must be an int in 1..100000, got {max_series!r}")
        self._max_series = max_series
        self._admitted: set[tuple[tuple[str, str], ...]] = set()
        self._lock = threading.Lock()

    @property
    def max_series(self) -> int:
        return self._max_series

    def admit(self, key: tuple[tuple[str, str], ...], *, reserved: bool = False) -> bool:
        """Whether the combination ``key`` (sorted attribute items) may be a series."""
        if key in self._admitted:
            return True
        with self._lock:
            if key in self._admitted:
                return True
            if len(self._admitted) >= self._max_series and not reserved:
                return False
            self._admitted.add(key)
            return True
