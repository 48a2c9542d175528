"""``ragobs proxy``: the options of the command, and running it.

``ragobs.cli`` adds the subcommand with :func:`add_proxy_parser` (then its
shared ``--host`` / ``--port`` / ``--service-name`` / ``--log-level``, which
here are the admin surface's) and runs it with :func:`run_command`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from ragobs.proxy._config import CallerLimits, ProxyConfig, Retries, Upstream
from ragobs.proxy._serve import DEFAULT_HOST, DEFAULT_PORT, run_proxy

__all__ = ["add_proxy_parser", "config_from", "run_command"]

DESCRIPTION = (
    "An OpenAI- and Anthropic-compatible streaming reverse proxy that measures every call "
    "as an instrumented client would (TTFT at the first content, provider usage, finish "
    "reasons, cost, spans continuing the caller's traceparent), retries failures before the "
    "first content and limits requests and tokens per API key. An agent in any language "
    "uses it by changing its base URL only: http://HOST:PORT/v1 for the default upstream, "
    "http://HOST:PORT/NAME/v1 for a named one (Anthropic SDKs: without /v1). Its figures "
    "are served on --host/--port (loopback by default), never on the proxy's own port.")


def _upstream(text: str) -> Upstream:
    try:
        return Upstream.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not sep or not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"must be HOST:PORT (port 0..65535), got {text}")
    return host.strip("[]") or DEFAULT_HOST, number


def _count(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an int >= {low}, got {text}")
        return value

    return parse


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text}")
    return value


def add_proxy_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]
                     ) -> argparse.ArgumentParser:
    """Add ``proxy`` to ``ragobs``'s subcommands; returns its parser."""
    p = sub.add_parser("proxy", help="a streaming reverse proxy in front of the provider, "
                                     "measuring agents in any language", description=DESCRIPTION)
    p.add_argument("--upstream", action="append", required=True, type=_upstream,
                   metavar="[NAME=]URL",
                   help="where calls go: URL takes every path (the default upstream), "
                        "NAME=URL the paths under /NAME/ (repeat for several, e.g. "
                        "--upstream openai=https://api.openai.com --upstream "
                        "anthropic=https://api.anthropic.com)")
    p.add_argument("--listen", type=_listen, default=(DEFAULT_HOST, DEFAULT_PORT),
                   metavar="HOST:PORT",
                   help=f"where agents reach the proxy (default {DEFAULT_HOST}:{DEFAULT_PORT}; "
                        "0.0.0.0:8080 for other hosts and containers)")
    p.add_argument("--retries", type=_count(0), default=2,
                   help="retries of a failure before the first content (2; 0: none)")
    p.add_argument("--max-retry-after", type=_seconds, default=20.0,
                   help="longest Retry-After honoured, in seconds (20); a longer one is "
                        "answered to the client at once")
    p.add_argument("--limit-requests", type=_count(1), default=None,
                   help="requests per API key per --limit-window (default: no limit)")
    p.add_argument("--limit-tokens", type=_count(1), default=None,
                   help="provider tokens (input + output) per API key per --limit-window")
    p.add_argument("--limit-window", type=_seconds, default=60.0,
                   help="the limits' window in seconds (60)")
    p.add_argument("--redis-url", default=None,
                   help="share the limits across proxy replicas through this Redis "
                        "(needs: pip install 'ragobs[redis]')")
    p.add_argument("--no-usage", action="store_true",
                   help="never ask Chat Completions streams for usage on the client's behalf")
    p.add_argument("--no-admin", action="store_true",
                   help="do not serve /metrics, /api/summary and the panel")
    return p


def config_from(args: argparse.Namespace) -> ProxyConfig:
    """The :class:`ProxyConfig` the options describe."""
    return ProxyConfig(
        upstreams=tuple(args.upstream),
        retries=Retries(attempts=args.retries + 1, max_retry_after=args.max_retry_after),
        limits=CallerLimits(requests=args.limit_requests, tokens=args.limit_tokens,
                            window=args.limit_window, redis_url=args.redis_url),
        include_usage=not args.no_usage,
    )


async def run_command(args: argparse.Namespace) -> None:
    """Run ``ragobs proxy`` until cancelled."""
    host, port = args.listen
    await run_proxy(config_from(args), host=host, port=port, admin=not args.no_admin,
                    admin_host=args.host, admin_port=args.port,
                    service_name=args.service_name)
