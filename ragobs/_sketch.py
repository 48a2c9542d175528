"""A bounded-memory quantile sketch with a relative-error guarantee."""

from __future__ import annotations

import math

DEFAULT_RELATIVE_ACCURACY = 0.01
_MIN_VALUE = 1e-9  # values at or below this (and zero) share one bucket


class QuantileSketch:
    """Log-bucketed histogram (the DDSketch idea) over non-negative values.

    Any quantile it returns is within ``relative_accuracy`` of a true sample
    value at that rank. Memory is one counter per occupied bucket: at 1 %
    accuracy a span of values from 1 µs to one day needs under 1,300 buckets,
    however many values are added.
    """

    __slots__ = ("_alpha", "_buckets", "_count", "_gamma_log", "_zeros")

    def __init__(self, relative_accuracy: float = DEFAULT_RELATIVE_ACCURACY) -> None:
        if not 0.0 < relative_accuracy < 1.0:
            raise ValueError(
                f"relative_accuracy must be in the open range (0, 1), got {relative_accuracy!r}"
            )
        self._alpha = relative_accuracy
        gamma = (1 + relative_accuracy) / (1 - relative_accuracy)
        self._gamma_log = math.log(gamma)
        self._buckets: dict[int, int] = {}
        self._zeros = 0
        self._count = 0

    @property
    def count(self) -> int:
        return self._count

    def add(self, value: float) -> None:
        self._count += 1
        if value <= _MIN_VALUE:
            self._zeros += 1
            return
        key = math.ceil(math.log(value) / self._gamma_log)
        self._buckets[key] = self._buckets.get(key, 0) + 1

    def quantile(self, q: float) -> float | None:
        """The ``q``-quantile (0 ≤ q ≤ 1), or ``None`` when empty."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"q must be in the range [0, 1], got {q!r}")
        if self._count == 0:
            return None
        rank = q * (self._count - 1)
        seen = self._zeros
        if rank < seen:
            return 0.0
        for key in sorted(self._buckets):
            seen += self._buckets[key]
            if rank < seen:
                # The bucket (gamma^(k-1), gamma^k] is represented by the value
                # whose relative distance to both ends is alpha.
                return 2.0 * math.exp(key * self._gamma_log) / (1 + math.exp(self._gamma_log))
        top = max(self._buckets)
        return 2.0 * math.exp(top * self._gamma_log) / (1 + math.exp(self._gamma_log))

    @property
    def size(self) -> int:
        """Number of occupied buckets (the memory it holds)."""
        return len(self._buckets) + (1 if self._zeros else 0)
