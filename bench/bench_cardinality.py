"""The worst-case exposition: size and render time at the series bound.

    python -m bench.bench_cardinality

Drives 100 models x 100 error types (10,000 label combinations asked for)
through one runtime, so every per-stream instrument sits at the bound
(``max_series``, default 200, plus the reserved fully folded series), and
times ``/metrics`` rendering against a baseline measured in the same run: the
exposition of one realistic label set (one model, ok and two error types).
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry

from ragobs._exposition import render
from ragobs._labels import DEFAULT_MAX_SERIES
from ragobs._runtime import Runtime, setup
from ragobs._stream import observe_stream

MODELS = 100
ERROR_TYPES = 100
ROUNDS = 7


class _Failure(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status_code = status


def _failing(status: int) -> Iterator[str]:
    yield "t"
    raise _Failure(status)


def _drive(runtime: Runtime, models: int, error_types: int) -> None:
    tel = runtime.telemetry
    for m in range(models):
        for e in range(error_types):
            with contextlib.suppress(_Failure):
                list(observe_stream(_failing(400 + e), model=f"model-{m}", telemetry=tel))
        list(observe_stream(["a", "b"], model=f"model-{m}", telemetry=tel))


def _render_times(runtime: Runtime) -> tuple[int, list[float]]:
    times = []
    size = 0
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        body, _ = render(runtime.registry, None)
        times.append(time.perf_counter() - t0)
        size = len(body)
    return size, times


def main() -> dict[str, float]:
    small = setup(serve=False, set_global=False, registry=CollectorRegistry())
    full = setup(serve=False, set_global=False, registry=CollectorRegistry())
    try:
        _drive(small, 1, 2)
        _drive(full, MODELS, ERROR_TYPES)
        small_size, small_times = _render_times(small)
        full_size, full_times = _render_times(full)
    finally:
        small.shutdown()
        full.shutdown()
    small_t, full_t = statistics.median(small_times), statistics.median(full_times)
    print(f"   baseline (1 model, 3 outcomes/error types): {small_size / 1e3:,.0f} kB, "
          f"render {small_t * 1e3:.1f} ms")
    print(f"   at the bound ({MODELS}x{ERROR_TYPES} combinations asked, max_series="
          f"{DEFAULT_MAX_SERIES}): {full_size / 1e6:.2f} MB, render {full_t * 1e3:.0f} ms "
          f"(min {min(full_times) * 1e3:.0f}, max {max(full_times) * 1e3:.0f}); "
          f"{full_size / small_size:.0f}x the size, {full_t / small_t:.0f}x the time")
    return {"bytes_at_bound": float(full_size), "render_seconds_at_bound": full_t,
            "bytes_baseline": float(small_size), "render_seconds_baseline": small_t}


if __name__ == "__main__":
    main()
