"""The ``ragobs`` command: ``demo``, ``serve`` and ``sidecar``."""

from __future__ import annotations

import argparse
import asyncio
import errno
import importlib
import inspect
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Sequence

from ragobs import semconv
from ragobs._runtime import setup
from ragobs._server import Sidecar, resolve_address
from ragobs._version import __version__
from ragobs.demo.agent import DemoConfig, import_openai
from ragobs.demo.runner import PROVIDERS, RunOptions, run_demo
from ragobs.demo.stack import Protection
from ragobs.proxy._command import add_proxy_parser


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


def _add_server_args(p: argparse.ArgumentParser, *, log_default: str, log_help: str) -> None:
    p.add_argument("--host", default=None,
                   help="sidecar bind address (default $RAGOBS_HOST or 127.0.0.1)")
    p.add_argument("--port", type=int, default=None,
                   help="sidecar port (default $RAGOBS_PORT or 9464; 0 = any free port)")
    p.add_argument("--service-name", default=None,
                   help="service.name (default $OTEL_SERVICE_NAME or 'ragobs')")
    p.add_argument("--log-level", default=log_default,
                   choices=["debug", "info", "warning", "error", "critical"],
                   help=f"{log_help} (default {log_default})")


DESCRIPTION = ("Observability for streaming LLM and RAG agents: /metrics for Prometheus, "
               "/api/summary and a live panel. 'demo' shows it on a simulated agent; 'serve' "
               "serves one process, your function running in it; 'sidecar' serves a host of "
               "several worker processes, which push to it; 'proxy' puts a measuring proxy "
               "in front of the provider, for agents in any language.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ragobs", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"ragobs {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo", help="run a simulated streaming RAG agent, measured live",
        description="Run a simulated streaming RAG agent (each answer a turn of a routing "
                    "call, a retrieval, a tool on some questions and the streamed answer "
                    "call) through the recommended resilience stack (rate limit, retry, "
                    "timeouts, fallback), measured live: the "
                    "dashboard every --summary-every requests, /metrics and the live panel "
                    "while it runs.")
    _add_server_args(
        demo, log_default="error",
        log_help="what ragobs logs: 'warning' (or lower) adds a line for each rate-limit "
                 "wait, retry, timeout and fallback, which the dashboard counts anyway")
    demo.add_argument("--provider", choices=PROVIDERS, default="simulated",
                      help="where the agent's LLM calls go: 'simulated' streams str tokens "
                           "in-process (default; models 'sim-router-1' and 'sim-rag-1'); "
                           "'openai' runs the same simulated provider behind a local "
                           "OpenAI-compatible endpoint and streams it over HTTP through the "
                           "real openai client (AsyncOpenAI chunks, provider usage; "
                           "gen_ai.provider.name 'openai', models 'gpt-4o-mini' to route and "
                           "'gpt-4o' to answer). Needs: pip install 'ragobs[openai]'")
    demo.add_argument("--requests", type=int, default=200,
                      help="requests to send; 0 = until stopped (default 200)")
    demo.add_argument("--duration", type=_positive_float, default=None,
                      help="stop after this many seconds")
    demo.add_argument("--concurrency", type=int, default=8, help="concurrent requests (8)")
    demo.add_argument("--failure-rate", type=_rate, default=0.05,
                      help="share of failing LLM requests, 0..1 (0.05)")
    demo.add_argument("--slow-rate", type=_rate, default=0.10,
                      help="share of slow retrievals, 0..1 (0.10)")
    demo.add_argument("--time-scale", type=_positive_float, default=1.0,
                      help="multiply every simulated delay (0.1 = 10x faster; default 1)")
    demo.add_argument("--summary-every", type=int, default=20,
                      help="print the dashboard every N requests (20; 0 = only at the end)")
    demo.add_argument("--rate-limit", type=_positive_int, default=36,
                      help="provider rate limit: LLM requests per --rate-window (36)")
    demo.add_argument("--rate-window", type=_positive_float, default=5.0,
                      help="rate-limit window in seconds, scaled by --time-scale (5)")
    demo.add_argument("--seed", type=int, default=None, help="random seed, for repeatable runs")
    demo.add_argument("--linger", type=_non_negative_float, default=0.0,
                      help="keep serving /metrics this many seconds after the traffic ends")

    serve = sub.add_parser(
        "serve", help="one process: serve its metrics, with your function (--run) running in it",
        description="Serve this process's /metrics, /healthz, /readyz, /api/summary, "
                    "/api/history and live panel (the in-process sidecar setup() starts) and "
                    "call --run MODULE:CALLABLE in the same process, so the streams of its "
                    "instrumented clients are measured; without --run, serve until stopped. "
                    "Several worker processes: see 'ragobs sidecar'.")
    _add_server_args(
        serve, log_default="warning",
        log_help="what ragobs logs: 'warning' shows each rate-limit wait, retry and timeout "
                 "of the resilience wrappers the function uses; 'error' hides them")
    serve.add_argument("--run", metavar="MODULE:CALLABLE", default=None,
                       help="call this (sync or async) function with the sidecar serving "
                            "(CALLABLE defaults to main)")

    host = sub.add_parser(
        "sidecar", help="one per host, a process of its own: merge and serve the metrics "
                        "every worker process pushes",
        description="The host sidecar, a process of its own: receives the metrics every "
                    "worker pushes (OTLP/HTTP on POST /v1/metrics; workers push when "
                    "RAGOBS_SIDECAR_URL is set), merges them and serves /metrics, /healthz, "
                    "/readyz, /api/summary, /api/history and the live panel for the host. "
                    "Any OpenTelemetry SDK's GenAI metrics are welcome too. "
                    "Pushes are taken from this host only, whatever --host says (so "
                    "--host 0.0.0.0 opens scraping, not ingest). "
                    "Needs: pip install 'ragobs[otlp]'")
    _add_server_args(
        host, log_default="warning",
        log_help="what the host sidecar logs: 'warning' shows points dropped from a push "
                 "and series limits reached; 'debug' also each refused push")
    host.add_argument("--ingest-from-network", action="store_true",
                      help="also take pushes from other hosts; each push (from anywhere) "
                           "must then carry the token in $RAGOBS_SIDECAR_TOKEN (at least 16 "
                           "characters; workers send it from the same variable)")
    proxy = add_proxy_parser(sub)
    _add_server_args(
        proxy, log_default="warning",
        log_help="what the proxy logs: 'warning' shows each retry before the first content "
                 "and each stream its upstream cut; 'info' also each refusal by a limit")
    return parser


async def _bind(start: Awaitable[Sidecar], host: str | None, port: int | None) -> Sidecar:
    """The sidecar ``start`` starts; failing to bind is one line: the address and why."""
    try:
        return await start
    except OSError as exc:
        bound_host, bound_port = resolve_address(host, port)
        if ":" in bound_host:  # IPv6
            bound_host = f"[{bound_host}]"
        cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
        reason = (os.strerror(exc.errno) if exc.errno and exc.errno > 0
                  else cause.strerror or str(cause))
        if exc.errno == errno.EADDRINUSE:
            reason += " (another sidecar there? --port 0 picks a free port)"
        raise OSError(exc.errno, f"cannot bind {bound_host}:{bound_port}: {reason}") from exc


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
    sidecar = await _bind(runtime.start_server(args.host, args.port), args.host, args.port)
    print(f"ragobs demo: metrics at {sidecar.url}/metrics, live panel at {sidecar.url}/",
          flush=True)
    try:
        done = await run_demo(
            runtime,
            DemoConfig(failure_rate=args.failure_rate, slow_rate=args.slow_rate,
                       time_scale=args.time_scale),
            RunOptions(requests=args.requests, duration=args.duration,
                       concurrency=args.concurrency, summary_every=args.summary_every),
            protection=Protection(rate_limit=args.rate_limit, rate_window=args.rate_window),
            seed=args.seed,
            provider=args.provider,
        )
        print(_finished(args, done, sidecar.url), flush=True)
        if args.linger > 0:
            await asyncio.sleep(args.linger)
    finally:
        await runtime.stop_server()
        runtime.shutdown()


async def _proxy(args: argparse.Namespace) -> None:
    _stop_on_sigterm()
    from ragobs.proxy._command import run_command

    await run_command(args)


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
        raise ImportError(f"the sidecar command needs the OTLP packages ({exc.name}): "
                          "pip install 'ragobs[otlp]'") from None
    from prometheus_client import CollectorRegistry

    from ragobs._history import History
    from ragobs._server.app import create_app

    merged = HostMetrics()
    registry = CollectorRegistry()
    registry.register(HostCollector(merged))
    reporter = HostReporter(merged, service=args.service_name or "ragobs-host",
                            started=time.monotonic())
    app = create_app(registry, reporter, history=History(HostHistorySource(merged)))
    token = os.environ.get("RAGOBS_SIDECAR_TOKEN") or None
    if args.ingest_from_network and token is None:
        raise SystemExit("ragobs sidecar: --ingest-from-network needs a token in "
                         "RAGOBS_SIDECAR_TOKEN (never on the command line)")
    add_otlp_routes(app, merged, token=token, allow_remote=args.ingest_from_network)
    sidecar = await _bind(Sidecar(app, args.host, args.port).start(), args.host, args.port)
    print(f"ragobs host sidecar: {sidecar.url}/metrics, panel at {sidecar.url}/, workers "
          f"push with RAGOBS_SIDECAR_URL={sidecar.url}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await sidecar.stop()


async def _serve(args: argparse.Namespace) -> None:
    _stop_on_sigterm()
    runtime = setup(service_name=args.service_name, serve=False)
    sidecar = await _bind(runtime.start_server(args.host, args.port), args.host, args.port)
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


def _finished(args: argparse.Namespace, done: int, url: str) -> str:
    """The line that says the demo ended by itself, and what happens to the sidecar."""
    if args.requests and done >= args.requests:
        after = f"{done} requests"
    else:
        after = f"{args.duration:g} s ({done} requests)"
    stops = (f"stays up {args.linger:g} s more, then stops" if args.linger > 0
             else "stops now")
    if args.duration is None:
        hint = "--requests 0 runs until Ctrl-C"
    elif args.requests:
        hint = "--requests 0 without --duration runs until Ctrl-C"
    else:
        hint = "without --duration it runs until Ctrl-C"
    return f"ragobs demo: finished after {after}; the sidecar on {url} {stops} ({hint})"


def _hide_instant_waits(record: logging.LogRecord) -> bool:
    """Drop the notice of a rate-limit wait too short to show ("Waiting 0.0s..."):
    it is still counted and timed (ragobs_ratelimit_wait_duration_seconds)."""
    if getattr(record, "ragobs_event", None) != semconv.EVENT_RATELIMIT_WAIT:
        return True
    wait = getattr(record, "ragobs_attributes", {}).get(semconv.RATELIMIT_WAIT_S)
    return not (isinstance(wait, (int, float)) and wait < 0.05)


def _configure_logging(level: str) -> None:
    """One line per record on stderr, unless logging is configured already (embedded)."""
    terminal = logging.StreamHandler()
    terminal.setFormatter(logging.Formatter("%(message)s"))
    terminal.addFilter(_hide_instant_waits)
    logging.basicConfig(level=level.upper(), handlers=[terminal])


def _error_text(exc: BaseException) -> str:
    """What follows "ragobs: error: ": no errno prefix, no second "ragobs"."""
    if isinstance(exc, OSError) and exc.strerror and exc.filename is None:
        text = exc.strerror
    else:
        text = str(exc)
    return text.removeprefix("ragobs: ").removeprefix("ragobs ")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(args.log_level)
    try:
        RunOptions(requests=getattr(args, "requests", 0), concurrency=getattr(
            args, "concurrency", 1))
    except ValueError as exc:
        print(f"ragobs: error: {exc}", file=sys.stderr)
        return 2
    runner = {"demo": _demo, "serve": _serve, "sidecar": _host, "proxy": _proxy}[args.command]
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
        print(f"ragobs: error: {_error_text(exc)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
