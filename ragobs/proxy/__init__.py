"""``ragobs proxy``: a streaming reverse proxy in front of the provider.

An agent in any language (TypeScript, Go, Java, a Python client nobody can
patch) is measured as ``ragobs.instrument_client`` measures a Python one by
changing only its base URL. The proxy speaks the providers' own HTTP APIs;
it reads OpenAI Chat Completions (``/v1/chat/completions``, Azure's
deployment paths too), the Responses API (``/v1/responses``) and Anthropic
Messages (``/v1/messages``), streamed and not, and passes every other path
through untouched.

Routing (:mod:`._routing`). One default upstream takes every path as it is
(``--upstream https://api.openai.com``: base URL ``http://proxy:8080/v1``);
named upstreams take the paths under their name
(``--upstream openai=https://api.openai.com --upstream
anthropic=https://api.anthropic.com``: base URLs
``http://proxy:8080/openai/v1`` and ``http://proxy:8080/anthropic``).
Named prefixes are matched first, then the default.

Transparent streams (:mod:`._streaming`, :mod:`._sse`). Each upstream read
is written to the client as it arrives: no full-body or fixed-size
buffering, keepalive comments pass, ``X-Accel-Buffering: no`` and
``Cache-Control: no-cache`` stop intermediaries from buffering. Events are
split by a parser whose buffer is bounded (``max_line``: a longer event is
passed through unread). A client that goes away cancels its call, which
closes the upstream connection at once.

Measured as in the library (:mod:`._app`). Each call is one
:class:`ragobs.StreamObservation` fed the same parsed events the chunk
readers of :mod:`ragobs.chunks` read, from the moment the request came in:
TTFT at the first content (text, refusal, tool-call arguments or reasoning,
never a role chunk or a lifecycle event), the provider's usage, finish
reasons, response model, cost; the same metric names and labels, and a span
that is the child of the client's ``traceparent`` and the parent of the
upstream request. Non-streamed calls are measured too (no TTFT). What the
proxy adds is a figure of its own: ``ragobs.proxy.overhead``
(:mod:`._instruments`).

Usage without breaking clients (:mod:`._usage`). Chat Completions streams
are asked for usage when the client did not ask, and the usage chunk is
taken out of what the client reads; an upstream that refuses the field gets
the client's request again at once and is not asked again.

The commit point (:mod:`._streaming`, :mod:`._attempts`). The status line
and the opening events (role chunk, ``message_start``, ``response.created``,
pings) are held until the first content. Before it, a failure (connection
error, 429 / 5xx, an error event, a cut) is retried under ragobs' retry rules
(``Retry-After`` honoured up to a cap, counted in ``ragobs.retry.*``) or
answered with a clean HTTP error: the upstream's status, body and headers.
After it nothing is retried and nothing is turned into a ``200`` error
event: the client's stream is cut and the call counted interrupted
(``ragobs.proxy.interrupted``).

Limits per caller (:mod:`._limits`). Requests and tokens per API key
(``ragobs.RateLimiter``, or ``ragobs.RedisRateLimiter`` shared by replicas),
answered ``429`` with ``Retry-After`` and ``x-ratelimit-*``; a key is never
a label and never logged, only a digest of it is kept.

The proxy's figures are served as any ragobs process's (:mod:`._serve`):
``/metrics``, ``/api/summary``, the panel, on a listener of their own,
loopback by default.

::

    from ragobs.proxy import ProxyConfig, Upstream, start_proxy

    proxy = await start_proxy(ProxyConfig(upstreams=(Upstream("https://api.openai.com"),)))
    # agents: OpenAI(base_url=f"{proxy.url}/v1")
"""

from ragobs.proxy._app import create_proxy_app
from ragobs.proxy._config import CallerLimits, ProxyConfig, Retries, Upstream
from ragobs.proxy._failures import StreamInterrupted
from ragobs.proxy._serve import RunningProxy, run_proxy, start_proxy

__all__ = [
    "CallerLimits",
    "ProxyConfig",
    "Retries",
    "RunningProxy",
    "StreamInterrupted",
    "Upstream",
    "create_proxy_app",
    "run_proxy",
    "start_proxy",
]
