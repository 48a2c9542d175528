"""Run every benchmark; each prints ratios against a baseline measured in the same run.

    python -m bench.run            # everything (the memory run takes a few minutes)
    python -m bench.run --quick    # 10^5 sessions for the memory run
    python -m bench.run --workers  # also bench_workers: 3 gunicorn workers x 200 streams,
                                   # a warm-up and three 30 s runs (about 2.5 minutes)
    python -m bench.run --proxy    # also bench_proxy: ragobs proxy against calling the
                                   # upstream directly and a bare relay (several minutes)
"""

from __future__ import annotations

import argparse
import importlib
import json
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="shorter memory run")
    parser.add_argument("--workers", action="store_true",
                        help="also run bench_workers (real gunicorn workers and the host "
                             "sidecar under load; about 2.5 minutes)")
    parser.add_argument("--proxy", action="store_true",
                        help="also run bench_proxy (three processes on loopback; several "
                             "minutes, 10,000 streams for the memory figure)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args()
    figures: dict[str, dict[str, float]] = {}
    for name in ("bench_stream", "bench_forms", "bench_turn", "bench_chunk_gaps", "bench_chunks",
                 "bench_sdk_stream", "bench_cardinality", "bench_ratelimit", "bench_retry"):
        module = importlib.import_module(f"bench.{name}")
        print(f"== {name}")
        t0 = time.perf_counter()
        figures[name] = module.main()
        print(f"   ({time.perf_counter() - t0:.0f} s)")
    print("== bench_memory")
    from bench import bench_memory

    figures["bench_memory"] = bench_memory.main(100_000 if args.quick else 1_000_000)
    if args.workers:
        print("== bench_workers")
        from bench import bench_workers

        t0 = time.perf_counter()
        figures["bench_workers"] = bench_workers.main()
        print(f"   ({time.perf_counter() - t0:.0f} s)")
    if args.proxy:
        print("== bench_proxy")
        from bench import bench_proxy

        t0 = time.perf_counter()
        figures["bench_proxy"] = bench_proxy.main(
            quick=args.quick, memory_streams=1_000 if args.quick else 10_000)
        print(f"   ({time.perf_counter() - t0:.0f} s)")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(figures, out, indent=2)


if __name__ == "__main__":
    main()
