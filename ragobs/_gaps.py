"""The gaps between a stream's output chunks, counted into its own buckets.

The conventions' ``gen_ai.client.operation.time_per_output_chunk`` is one
value per output chunk after the first. Recording each into the shared
histogram would take its lock and find its series per chunk; instead a stream
counts its gaps into a bucket array of its own (an increment per chunk) and
adds the array to the histogram once, when it ends: exactly the histogram a
record per chunk would give (bucket counts, count, sum, min and max).
"""

from __future__ import annotations

import time
from bisect import bisect_left
from typing import Final

from ragobs import semconv

__all__ = ["NO_GAPS", "ChunkGaps"]

_perf = time.perf_counter
#: The boundaries of the histogram the gaps go to.
BOUNDS: Final = semconv.TIME_PER_OUTPUT_CHUNK_BUCKETS


class ChunkGaps:
    """Counts of the gaps between consecutive output chunks, per bucket of
    :data:`BOUNDS` (as the SDK buckets a value: ``bisect_left``), with their
    sums, minimum and maximum. A few hundred bytes per stream, whatever its length."""

    __slots__ = ("counts", "last", "maximum", "minimum", "sums")

    def __init__(self, t_first: float) -> None:
        #: When the last output chunk arrived (perf_counter).
        self.last = t_first
        self.counts = [0] * (len(BOUNDS) + 1)
        self.sums = [0.0] * (len(BOUNDS) + 1)
        self.minimum = float("inf")
        self.maximum = float("-inf")

    def tick(self) -> None:
        """An output chunk arrived now."""
        t = _perf()
        gap = t - self.last
        self.last = t
        i = bisect_left(BOUNDS, gap)
        self.counts[i] += 1
        self.sums[i] += gap
        if gap > self.maximum:  # noqa: PLR1730 (a compare costs less than max())
            self.maximum = gap
        if gap < self.minimum:  # noqa: PLR1730
            self.minimum = gap

    def without_minimum(self) -> ChunkGaps:
        """The same gaps less one of the smallest (which was recorded apart)."""
        rest = ChunkGaps(self.last)
        rest.counts = list(self.counts)
        rest.sums = list(self.sums)
        i = bisect_left(BOUNDS, self.minimum)
        rest.counts[i] -= 1
        rest.sums[i] -= self.minimum
        rest.minimum, rest.maximum = self.minimum, self.maximum
        return rest


class _Untimed(ChunkGaps):
    """Gaps nobody records (a turn that is not an LLM call itself): ticks cost a no-op."""

    __slots__ = ()

    def tick(self) -> None:
        """Nothing: this stream's gaps are no figure."""


#: The gaps of every stream whose gaps are no figure (shared: it never changes).
NO_GAPS: Final = _Untimed(0.0)
