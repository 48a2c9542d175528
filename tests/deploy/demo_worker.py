"""One worker process running the demo's agent, for ``tests/test_workers.py``.

``python -m tests.deploy.demo_worker SEED TURNS``: with ``RAGOBS_SIDECAR_URL``
set, ``ragobs.setup()`` pushes this process's metrics to the host sidecar
(every ``TEST_PUSH_INTERVAL`` seconds). The worker answers TURNS questions
with the simulated demo agent through its stack (each turn a routing call, a
retrieval, a tool on some questions and the answer call; failures, retries
and fallbacks on the way), shuts down (the exit flush pushes the rest) and
prints its own ``/api/summary`` as one line of JSON.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys

import ragobs
from ragobs._report import Reporter, as_json
from ragobs.demo.provider import DemoConfig
from ragobs.demo.runner import RunOptions, run_demo
from ragobs.demo.stack import Protection


def main(seed: int, turns: int) -> None:
    runtime = ragobs.setup(service_name="demo-workers",
                           push_interval=float(os.environ.get("TEST_PUSH_INTERVAL", "0.2")))
    config = DemoConfig(failure_rate=0.3, slow_rate=0.2, slow_call_rate=0.2, time_scale=0.02)
    asyncio.run(run_demo(runtime, config,
                         RunOptions(requests=turns, concurrency=4, summary_every=0),
                         protection=Protection(rate_limit=8, rate_window=2.0,
                                               first_token_timeout=1.0),
                         seed=seed, out=io.StringIO()))
    summary = as_json(Reporter.of(runtime.telemetry).report())
    runtime.shutdown()
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
