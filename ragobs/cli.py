"""``ragobs demo`` and ``ragobs serve``."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import logging
import signal
import sys
import threading
import time
from collections.abc import Sequence

from ragobs._runtime import setup
from ragobs.demo.agent import DemoConfig, import_openai
from ragobs.demo.runner import PROVIDERS, RunOptions, run_demo
from ragobs.demo.stack import Protection


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number >= 0 (seconds), got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an int >= 1, got {text}")
    return value


def _rate(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def _add_server_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default=None,
                   help="sidecar bind address (default $RAGOBS_HOST or 127.0.0.1)")
    p.add_argument("--port", type=int, default=None,
                   help="sidecar port (default $RAGOBS_PORT or 9464; 0 = any free port)")
    p.add_argument("--service-name", default=None,
                   help="service.name (default $OTEL_SERVICE_NAME or 'ragobs')")
    p.add_argument("--log-level", default="warning",
                   choices=["debug", "info", "warning", "error", "critical"],
                   help="what the resilience wrappers log: 'warning' shows every rate-limit "
                        "wait, retry and timeout; 'error' only fallbacks (default warning)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ragobs", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo", help="run a simulated streaming RAG agent, measured live",
        description="Run a simulated streaming RAG agent through the recommended resilience "
                    "stack (rate limit, retry, timeouts, fallback), measured live.")
    _add_server_args(demo)
    demo.add_argument("--provider", choices=PROVIDERS, default="simulated",
                      help="where answers come from: 'simulated' streams str tokens "
                           "in-process (default); 'openai' runs the same simulated provider "
                           "behind a local OpenAI-compatible endpoint and streams it over HTTP "
                           "through the real openai client (AsyncOpenAI chunks, provider "
                           "usage; gen_ai.provider.name 'openai', model 'gpt-4o-mini'). "
                           "Needs: pip install 'ragobs[openai]'")
    demo.add_argument("--requests", type=int, default=200,
                      help="requests to send; 0 = until stopped (default 200)")
    demo.add_argument("--duration", type=_positive_float, default=None,
                      help="stop after this many seconds")
    demo.add_argument("--concurrency", type=int, default=8, help="concurrent requests (8)")
    demo.add_argument("--failure-rate", type=_rate, default=0.05, help="0..1 (0.05)")
    demo.add_argument("--slow-rate", type=_rate, default=0.10,
                      help="share of slow retrievals, 0..1 (0.10)")
    demo.add_argument("--time-scale", type=_positive_float, default=1.0,
                      help="multiply every simulated delay (0.1 = 10x faster; default 1)")
    demo.add_argument("--summary-every", type=int, default=20,
                      help="print the dashboard every N requests (20; 0 = only at the end)")
    demo.add_argument("--rate-limit", type=_positive_int, default=24,
                      help="provider rate limit: requests per --rate-window (24)")
    demo.add_argument("--rate-window", type=_positive_float, default=5.0,
                      help="rate-limit window in seconds, scaled by --time-scale (5)")
    demo.add_argument("--seed", type=int, default=None, help="random seed, for repeatable runs")
    demo.add_argument("--linger", type=_non_negative_float, default=0.0,
                      help="keep serving /metrics this many seconds after the traffic ends")

    host = sub.add_parser(
        "sidecar", help="serve a whole host: merge what every worker process pushes",
        description="The host sidecar, a process of its own: receives the metrics every "
                    "worker pushes (OTLP/HTTP on POST /v1/metrics; workers push when "
                    "RAGOBS_SIDECAR_URL is set), merges them and serves /metrics, /healthz, "
                    "/readyz, /api/summary, /api/history and the live panel for the host. "
                    "Any OpenTelemetry SDK's GenAI metrics are welcome too. "
                    "Needs: pip install 'ragobs[otlp]'")
    _add_server_args(host)

    serve = sub.add_parser("serve", help="run the sidecar standalone")
    _add_server_args(serve)
    serve.add_argument("--run", metavar="MODULE:CALLABLE", default=None,
                       help="call this (sync or async) function with the sidecar serving")
    return parser


def _stop_on_sigterm() -> None:
    """SIGTERM (kill, systemd, Kubernetes, Docker) cancels the main task, as
    Ctrl-C does: ``finally`` blocks print the last summary and flush."""
    task = asyncio.current_task()
    if task is None or threading.current_thread() is not threading.main_thread():
        # Only the main thread may take signals (embedded runs, tests).
        logging.getLogger(__name__).debug(
            "ragobs: not in the main thread's task; SIGTERM keeps its default")
        return

    def terminate() -> None:
        _received.append(signal.SIGTERM)
        task.cancel()

    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGTERM, terminate)
    except NotImplementedError:  # Windows event loops: a plain handler, run on the loop
        signal.signal(signal.SIGTERM, lambda _sig, _frame: loop.call_soon_threadsafe(terminate))


#: Signals that stopped the command (read by main for the exit code).
_received: list[int] = []


async def _demo(args: argparse.Namespace) -> None:
    _stop_on_sigterm()
    if args.provider == "openai":
        import_openai()  # before serving anything: a missing extra is a clear error
    runtime = setup(service_name=args.service_name, serve=False)
    sidecar = await runtime.start_server(args.host, args.port)
    print(f"ragobs demo: metrics at {sidecar.url}/metrics, live panel at {sidecar.url}/",
          flush=True)
    try:
        await run_demo(
            runtime,
            DemoConfig(failure_rate=args.failure_rate, slow_rate=args.slow_rate,
                       time_scale=args.time_scale),
            RunOptions(requests=args.requests, duration=args.duration,
                       concurrency=args.concurrency, summary_every=args.summary_every),
            protection=Protection(rate_limit=args.rate_limit, rate_window=args.rate_window),
            seed=args.seed,
            provider=args.provider,
        )
        if args.linger > 0:
            await asyncio.sleep(args.linger)
    finally:
        await runtime.stop_server()
        runtime.shutdown()


async def _host(args: argparse.Namespace) -> None:
    _stop_on_sigterm()
    try:
        from ragobs._host import (
            HostCollector,
            HostHistorySource,
            HostMetrics,
            HostReporter,
            add_otlp_routes,
        )
    except ImportError as exc:
        raise ImportError(f"ragobs sidecar needs the OTLP packages ({exc.name}): "
                          "pip install 'ragobs[otlp]'") from None
    from prometheus_client import CollectorRegistry

    from ragobs._history import History
    from ragobs._server.app import create_app
    from ragobs._server.sidecar import Sidecar

    merged = HostMetrics()
    registry = CollectorRegistry()
    registry.register(HostCollector(merged))
    reporter = HostReporter(merged, service=args.service_name or "ragobs-host",
                            started=time.monotonic())
    app = create_app(registry, reporter, history=History(HostHistorySource(merged)))
    add_otlp_routes(app, merged)
    sidecar = await Sidecar(app, args.host, args.port).start()
    print(f"ragobs host sidecar: {sidecar.url}/metrics, panel at {sidecar.url}/, workers "
          f"push with RAGOBS_SIDECAR_URL={sidecar.url}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await sidecar.stop()


async def _serve(args: argparse.Namespace) -> None:
    _stop_on_sigterm()
    runtime = setup(service_name=args.service_name, serve=False)
    sidecar = await runtime.start_server(args.host, args.port)
    print(f"ragobs sidecar: {sidecar.url}/metrics", flush=True)
    try:
        if args.run:
            module_name, _, attr = args.run.partition(":")
            target = getattr(importlib.import_module(module_name), attr or "main")
            result = target()
            if inspect.isawaitable(result):
                await result
        else:
            await asyncio.Event().wait()
    finally:
        await runtime.stop_server()
        runtime.shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(message)s")
    try:
        RunOptions(requests=getattr(args, "requests", 0), concurrency=getattr(
            args, "concurrency", 1))
    except ValueError as exc:
        print(f"ragobs: error: {exc}", file=sys.stderr)
        return 2
    runner = {"demo": _demo, "sidecar": _host, "serve": _serve}[args.command]
    try:
        asyncio.run(runner(args))
    except KeyboardInterrupt:
        print("\nragobs: stopped", file=sys.stderr)
        return 130
    except asyncio.CancelledError:
        if not _received:
            raise
        print("\nragobs: stopped (SIGTERM)", file=sys.stderr)
        return 128 + signal.SIGTERM
    except (ValueError, OSError, ImportError) as exc:
        print(f"ragobs: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
