"""What a proxy is told: its upstreams, retries, per-caller limits and bounds.

Frozen dataclasses, checked when built: each error names the argument, the
allowed range and the value it got. Change one with :func:`dataclasses.replace`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import urlsplit

from ragobs.clock import Clock

__all__ = ["CallerLimits", "ProxyConfig", "Retries", "Upstream"]

#: What an upstream's name may be: it is the first segment of the proxy's paths.
_NAME: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
#: Names that would shadow the APIs' own first path segment on a default upstream
#: (a name ``openai`` shadows Azure's ``/openai/deployments/...`` paths there: name
#: the Azure upstream instead).
_RESERVED: Final = frozenset({"v1", "v1beta"})


def _number(arg: str, value: object) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{arg} must be a number, got {value!r}")
    return float(value)


def _positive(arg: str, value: object, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    number = _number(arg, value)
    if not (number > 0 and math.isfinite(number)):
        rule = "> 0 (finite)" + (" or None" if allow_none else "")
        raise ValueError(f"{arg} must be a number {rule}, got {value!r}")


def _count(arg: str, value: object, low: int, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        rule = f"an int >= {low}" + (" or None" if allow_none else "")
        raise ValueError(f"{arg} must be {rule}, got {value!r}")


@dataclass(frozen=True, slots=True)
class Upstream:
    """One provider endpoint the proxy forwards to.

    Args:
        url: its base URL, ``http(s)://host[:port][/path]``; a request's path
            (after the name prefix, if any) is appended to it, so
            ``https://api.openai.com`` takes ``/v1/chat/completions`` and
            ``https://openrouter.ai/api`` takes the same path under ``/api``.
        name: ``None`` for the default upstream (requests are forwarded with
            their path as it is); a name (``[a-z0-9][a-z0-9_-]*``, at most 32
            characters) for an upstream reached under ``/<name>/...``.
        provider: ``gen_ai.provider.name`` of its calls; default the wire
            format's (``openai`` for Chat Completions and Responses,
            ``azure.ai.openai`` for Azure deployment paths, ``anthropic`` for
            Messages).
    """

    url: str
    name: str | None = None
    provider: str | None = None

    def __post_init__(self) -> None:
        parts = urlsplit(self.url) if isinstance(self.url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname \
                or parts.query or parts.fragment:
            raise ValueError(f"url must be an http:// or https:// base URL without query "
                             f"(e.g. https://api.openai.com), got {self.url!r}")
        if self.name is not None and (not isinstance(self.name, str)
                                      or not _NAME.fullmatch(self.name)
                                      or self.name in _RESERVED):
            raise ValueError(f"name must be None (the default upstream) or 1-32 characters "
                             f"of a-z, 0-9, '_' and '-' other than {sorted(_RESERVED)}, "
                             f"got {self.name!r}")
        if self.provider is not None and (not isinstance(self.provider, str)
                                          or not self.provider):
            raise ValueError(f"provider must be a non-empty str or None, got {self.provider!r}")

    @classmethod
    def parse(cls, text: str) -> Upstream:
        """``URL`` (the default upstream) or ``NAME=URL``, as ``--upstream`` takes it."""
        name, sep, url = text.partition("=")
        if sep and "://" not in name:
            return cls(url=url.strip(), name=name.strip())
        return cls(url=text.strip())

    @property
    def label(self) -> str:
        """Its name on metrics and in logs (``default`` for the default upstream)."""
        return self.name or "default"


@dataclass(frozen=True, slots=True)
class Retries:
    """Retries before the commit point (see :mod:`ragobs.proxy`), with
    :func:`ragobs.retry`'s schedule and rules: exponential backoff with jitter,
    only failures :func:`ragobs.resilience.is_retryable` accepts, the server's
    ``Retry-After`` honoured up to ``max_retry_after`` (a longer one is answered
    at once, with the upstream's status and headers).

    Args:
        attempts: attempts in all, >= 1 (1: never retry).
        initial: first backoff wait in seconds.
        max_delay: cap on any backoff wait in seconds.
        max_retry_after: the longest ``Retry-After`` honoured, in seconds.
        jitter: relative spread of each wait, in [0, 1].
    """

    attempts: int = 3
    initial: float = 0.25
    max_delay: float = 4.0
    max_retry_after: float = 20.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        _count("attempts", self.attempts, 1)
        _positive("initial", self.initial)
        _positive("max_delay", self.max_delay)
        _positive("max_retry_after", self.max_retry_after)
        if self.max_delay < self.initial:
            raise ValueError(f"max_delay must be >= initial ({self.initial:g}), "
                             f"got {self.max_delay!r}")
        if not 0 <= _number("jitter", self.jitter) <= 1:
            raise ValueError(f"jitter must be a number in [0, 1], got {self.jitter!r}")


@dataclass(frozen=True, slots=True)
class CallerLimits:
    """Requests and tokens per caller (API key) per window.

    Args:
        requests: requests per ``window`` per key, or None (no limit).
        tokens: provider-reported tokens (input + output) per ``window`` per
            key, or None. Charged when a call ends; a caller past it is
            refused until the window has room again.
        window: the window in seconds.
        redis_url: share the windows across proxy replicas through this Redis
            (``ragobs.RedisRateLimiter``, the ``[redis]`` extra); None: the
            windows of this process (``ragobs.RateLimiter``).
        max_callers: callers whose windows are kept (least recently seen
            dropped first); a dropped caller starts afresh.
    """

    requests: int | None = None
    tokens: int | None = None
    window: float = 60.0
    redis_url: str | None = None
    max_callers: int = 100_000

    def __post_init__(self) -> None:
        _count("requests", self.requests, 1, allow_none=True)
        _count("tokens", self.tokens, 1, allow_none=True)
        _positive("window", self.window)
        _count("max_callers", self.max_callers, 1)
        if self.redis_url is not None and (
                not isinstance(self.redis_url, str)
                or urlsplit(self.redis_url).scheme not in ("redis", "rediss", "unix")):
            raise ValueError(f"redis_url must be a redis://, rediss:// or unix:// URL or None, "
                             f"got {self.redis_url!r}")

    @property
    def enabled(self) -> bool:
        return self.requests is not None or self.tokens is not None


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    """Everything a proxy app is built from.

    Args:
        upstreams: at least one; at most one default (unnamed), names unique.
        retries: retries before the commit point.
        limits: per-caller limits (none by default).
        include_usage: ask Chat Completions streams for usage when the client
            did not (and take the usage chunk out of what the client gets).
        max_line: longest SSE line parsed, in bytes; a longer one is passed
            through unread (its event is not measured).
        max_hold: longest wait for the first content, in seconds, before the
            status line and the opening events are sent anyway (a stream
            committed so is no longer retried).
        max_hold_bytes: most bytes held back before the first content; past
            it the stream is committed.
        max_body: largest request body, and largest non-streamed answer that
            is read whole to be measured (a larger answer is passed through
            unmeasured), in bytes.
        connect_timeout: seconds to connect to an upstream.
        read_timeout: longest silence of an upstream between two reads, in
            seconds, or None (no limit).
        max_connections: open upstream connections at most (0: no limit).
        clock: time source of retries and limits (tests: ``ManualClock``).
    """

    upstreams: tuple[Upstream, ...]
    retries: Retries = field(default_factory=Retries)
    limits: CallerLimits = field(default_factory=CallerLimits)
    include_usage: bool = True
    max_line: int = 1 << 20
    max_hold: float = 30.0
    max_hold_bytes: int = 1 << 20
    max_body: int = 64 << 20
    connect_timeout: float = 10.0
    read_timeout: float | None = 300.0
    max_connections: int = 1000
    clock: Clock | None = None

    def __post_init__(self) -> None:
        if isinstance(self.upstreams, Upstream):
            object.__setattr__(self, "upstreams", (self.upstreams,))
        elif isinstance(self.upstreams, list):
            object.__setattr__(self, "upstreams", tuple(self.upstreams))
        if not isinstance(self.upstreams, tuple) or not self.upstreams or not all(
                isinstance(u, Upstream) for u in self.upstreams):
            raise ValueError(f"upstreams must be a non-empty tuple of Upstream, "
                             f"got {self.upstreams!r}")
        names = [u.name for u in self.upstreams]
        if names.count(None) > 1:
            raise ValueError("upstreams must have at most one default (unnamed) upstream, "
                             f"got {names.count(None)}")
        if len(set(names)) != len(names):
            raise ValueError(f"upstreams must have unique names, got {names}")
        if not isinstance(self.retries, Retries):
            raise TypeError(f"retries must be a Retries, got {self.retries!r}")
        if not isinstance(self.limits, CallerLimits):
            raise TypeError(f"limits must be a CallerLimits, got {self.limits!r}")
        if not isinstance(self.include_usage, bool):
            raise TypeError(f"include_usage must be a bool, got {self.include_usage!r}")
        _count("max_line", self.max_line, 64)
        _positive("max_hold", self.max_hold)
        _count("max_hold_bytes", self.max_hold_bytes, 1)
        _count("max_body", self.max_body, 1024)
        _positive("connect_timeout", self.connect_timeout)
        _positive("read_timeout", self.read_timeout, allow_none=True)
        _count("max_connections", self.max_connections, 0)
