"""Memory does not grow with the number of sessions served.

Runs StreamingMetrics sessions (with the real SDK recording spans and
metrics) and compares, after 10^4 and after 10^6 sessions, the process's
resident memory (VmRSS) and its number of live GC-tracked objects. (The
tracemalloc figure would be exact but slows the run tenfold.)

    python -m bench.bench_memory [--sessions 1000000]
"""

from __future__ import annotations

import argparse
import gc
import random

from bench._harness import production_like
from ragobs._summary import StreamingMetrics


def run_sessions(metrics: StreamingMetrics, n: int, rng: random.Random) -> None:
    for i in range(n):
        session = metrics.start_session()
        metrics.record_first_token(session)
        session["token_count"] = rng.randint(1, 500)
        if i % 20 == 0:
            session["error"] = "simulated"
        metrics.finish_session(session)


def rss_bytes() -> int:
    gc.collect()
    with open("/proc/self/status") as status:
        for row in status:
            if row.startswith("VmRSS:"):
                return int(row.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def live_objects() -> int:
    gc.collect()
    return len(gc.get_objects())


def main(sessions: int = 1_000_000, warmup: int = 10_000) -> dict[str, float]:
    telemetry, _, meter_provider = production_like()
    metrics = StreamingMetrics(telemetry=telemetry, model="bench")
    rng = random.Random(1)
    run_sessions(metrics, warmup, rng)
    meter_provider.force_flush()
    small, small_objects = rss_bytes(), live_objects()
    run_sessions(metrics, sessions - warmup, rng)
    meter_provider.force_flush()
    large, large_objects = rss_bytes(), live_objects()
    ratio = large / small
    print(f"{f'memory (RSS) after {sessions:,} sessions':<44} {large / 1e6:9.1f} MB      "
          f"baseline {warmup:,} sessions {small / 1e6:5.1f} MB      ratio {ratio:5.2f}x   "
          f"(target <= 1.05x)")
    print(f"{'live objects after / before':<44} {large_objects:9,d}         "
          f"baseline {small_objects:,}            ratio {large_objects / small_objects:5.2f}x")
    return {"memory_small_mb": small / 1e6, "memory_large_mb": large / 1e6,
            "memory_ratio": ratio, "objects_ratio": large_objects / small_objects,
            "sessions": float(sessions)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=1_000_000)
    args = parser.parse_args()
    main(args.sessions)
