"""Resilience wrappers that report on themselves.

The recommended stack for one streamed answer, from the provider outwards:
rate limiter → retry → timeout → instrumented stream → fallback (see
:mod:`ragobs.demo.stack`). Each wrapper emits span events, metrics, log lines
and hook calls (:func:`ragobs.add_hook`) for every protective action.
"""

from ragobs.errors import RateLimiterUnavailable, RateLimitTimeout, StreamTimeout
from ragobs.resilience._fallback import DEFAULT_FALLBACK_MESSAGE, fallback, fallback_stream
from ragobs.resilience._ratelimit import RateLimiter, Strategy
from ragobs.resilience._redis_ratelimit import OnUnavailable, RedisRateLimiter
from ragobs.resilience._retry import RetryBudget, is_retryable, retry, retry_stream
from ragobs.resilience._timeout import stream_timeout, timeout, with_timeout

__all__ = [
    "DEFAULT_FALLBACK_MESSAGE",
    "OnUnavailable",
    "RateLimitTimeout",
    "RateLimiter",
    "RateLimiterUnavailable",
    "RedisRateLimiter",
    "RetryBudget",
    "Strategy",
    "StreamTimeout",
    "fallback",
    "fallback_stream",
    "is_retryable",
    "retry",
    "retry_stream",
    "stream_timeout",
    "timeout",
    "with_timeout",
]
