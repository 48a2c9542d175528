"""A local stand-in for the OpenAI and Anthropic APIs, for tests with the real SDKs.

:class:`ProviderServer` is an aiohttp server on 127.0.0.1 that answers

* ``POST /v1/chat/completions`` (OpenAI Chat Completions),
* ``POST /v1/responses`` (OpenAI Responses),
* ``POST /v1/messages`` (Anthropic Messages),
* ``POST /openai/deployments/{deployment}/chat/completions`` (Azure OpenAI's path for
  Chat Completions, answered as ``/v1/chat/completions``; ``azure_url`` is the
  ``azure_endpoint`` to give ``openai.AsyncAzureOpenAI``),

streamed (``"stream": true``) or not, in the providers' own wire formats: the same
headers, SSE framing, event order, JSON shapes (compact, field for field) and error
bodies, so ``openai.AsyncOpenAI(base_url=server.openai_url, api_key="test")``,
``anthropic.AsyncAnthropic(base_url=server.anthropic_url, api_key="test")`` and
``langchain_openai.ChatOpenAI(base_url=server.openai_url, ...)`` talk to it over
HTTP with nothing mocked.

Each request takes the next :class:`Reply` queued with :meth:`ProviderServer.script`
(``Reply()`` when the queue is empty); a reply scripts delays, keepalives, errors
and a connection cut. Each request is recorded as a :class:`Seen`, with
``time.perf_counter()`` stamps comparable with the test's own. Every wait is slept
in slices of at most 10 ms that check whether the client went away, so
``Seen.t_disconnect`` is within about 10 ms of the moment it did.

Two ways to run it:

* :class:`ProviderServer` runs in the current event loop (``async with``, or the
  ``provider_server`` fixture): for the async SDK clients in the same loop.
* :class:`ThreadedProviderServer` runs one in a background thread with its own
  loop (plain ``with``, or the ``threaded_provider_server`` fixture): for the sync
  SDK clients, which would block the test's loop. Same attributes; its
  ``wait_disconnect`` / ``wait_done`` are plain (blocking) methods, and a
  :class:`Seen` may still be filling in when the client returns: ``wait_done`` first.

Use the fixtures from another test module by importing them::

    from tests.provider_server import Reply, provider_server  # noqa: F401 (fixture)
"""

from __future__ import annotations

import abc
import asyncio
import json
import random
import re
import socket
import string
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Self

import pytest
import pytest_asyncio
from aiohttp import web
from multidict import CIMultiDict

__all__ = [
    "ANTHROPIC_MODEL",
    "OPENAI_MODEL",
    "ProviderServer",
    "Reply",
    "Seen",
    "ThreadedProviderServer",
    "provider_server",
    "threaded_provider_server",
]

#: Longest sleep between two checks for a client that went away.
SLICE = 0.01

Api = Literal["chat", "responses", "anthropic"]
_PATHS: dict[str, Api] = {
    "/v1/chat/completions": "chat",
    "/v1/responses": "responses",
    "/v1/messages": "anthropic",
}
#: Azure OpenAI: ``/openai/deployments/{deployment}`` + the OpenAI path without ``/v1``.
_AZURE_PATH = re.compile(r"/openai/deployments/[^/]+(/chat/completions)")


def _api_of(path: str) -> Api | None:
    azure = _AZURE_PATH.fullmatch(path)
    return _PATHS.get("/v1" + azure.group(1) if azure else path)


class _DefaultModel(str):
    """The default ``Reply.model``: the OpenAI model, or :data:`ANTHROPIC_MODEL` there."""

    __slots__ = ()


OPENAI_MODEL: str = _DefaultModel("gpt-4o-mini-2024-07-18")
ANTHROPIC_MODEL = "claude-sonnet-4-5-20250929"

#: OpenAI ``finish_reason`` → Anthropic ``stop_reason`` (other values pass as they are).
_STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
}


@dataclass
class Reply:
    """How the server answers one request (whatever the endpoint).

    A non-stream request (``"stream"`` absent or false) is answered with the whole
    JSON after ``header_delay + first_content_delay + chunk_delay * (len(pieces) - 1)``,
    the time the stream would have taken.
    """

    #: Not 200: an error reply, in the provider's JSON error format, after ``header_delay``.
    status: int = 200
    #: Extra response headers (``retry-after``, ``retry-after-ms``, ``x-should-retry``, ...).
    headers: dict[str, str] = field(default_factory=dict)
    #: Seconds before the response headers are sent.
    header_delay: float = 0.0
    #: Seconds between the opening events (role chunk / message_start, content_block_start,
    #: ping / response.created .. content_part.added) and the first content delta.
    first_content_delay: float = 0.0
    #: Seconds between later content deltas.
    chunk_delay: float = 0.0
    #: The content deltas, in order.
    pieces: tuple[str, ...] = ("Hello", " world", "!")
    input_tokens: int = 17
    #: Output tokens in the provider's usage (deliberately not ``len(pieces)``).
    output_tokens: int = 20
    #: Before each content delta (written before that delta's delay) and before the
    #: closing events: an SSE comment ``: keepalive`` (OpenAI) or an ``event: ping``
    #: (Anthropic, which also sends its usual ping after content_block_start anyway).
    keepalive: bool = False
    #: Abort the TCP connection after this many content deltas (0: right after the
    #: opening events): no finish, no usage, no ``[DONE]``. Non-stream: abort instead
    #: of answering.
    cut_after: int | None = None
    #: Response model; the default reads :data:`ANTHROPIC_MODEL` on ``/v1/messages``.
    model: str = OPENAI_MODEL
    #: OpenAI finish reason; Anthropic maps it to a ``stop_reason`` (``stop`` →
    #: ``end_turn``, ``length`` → ``max_tokens``, ``tool_calls`` → ``tool_use``,
    #: ``content_filter`` → ``refusal``; anything else is sent as it is). Responses:
    #: ``length`` / ``content_filter`` end with ``response.incomplete``.
    finish_reason: str = "stop"
    #: OpenAI (chat and Responses): the pieces are a refusal, not content.
    refusal: bool = False
    #: The pieces are the arguments of one tool call (they should join into JSON).
    #: Chat: ``tool_calls[0].function.arguments`` deltas, the role chunk carrying the
    #: call's id and name as the real API does, finish reason ``tool_calls``.
    #: Responses: a ``function_call`` item. Anthropic: a ``tool_use`` block with
    #: ``input_json_delta`` deltas, stop reason ``tool_use``.
    tool_call: bool = False
    #: ``completion_tokens_details.reasoning_tokens`` / ``output_tokens_details``.
    reasoning_tokens: int = 0
    #: ``prompt_tokens_details.cached_tokens`` / ``input_tokens_details.cached_tokens``
    #: (Anthropic: ``cache_read_input_tokens``).
    cached_tokens: int = 0
    #: Anthropic ``cache_creation_input_tokens`` (input tokens written to the prompt cache).
    cache_write_tokens: int = 0
    #: Chat Completions: ``usage.cost`` in USD, as OpenRouter and gateways report it.
    cost: float | None = None
    #: Reasoning streamed before the pieces (stream only): Anthropic a ``thinking`` block
    #: (``thinking_delta``s, then its ``signature_delta``), Chat Completions
    #: ``delta.reasoning_content`` (as DeepSeek and vLLM stream it). The first of them
    #: comes after ``first_content_delay``, the first piece after ``answer_delay``.
    thinking: tuple[str, ...] = ()
    answer_delay: float = 0.0
    #: Chat Completions (stream only): the number of choices (``n``); every piece is sent
    #: for each, one chunk per choice, and each ends with its own finish chunk.
    choices: int = 1
    #: Chat Completions: the finish reason of each choice (default: ``finish_reason`` for all).
    choice_finish_reasons: tuple[str, ...] = ()
    #: Error replies: this JSON object instead of the provider's standard error body.
    error_body: dict[str, Any] | None = None

    def model_for(self, api: Api) -> str:
        """The response model on ``api``."""
        if api == "anthropic" and isinstance(self.model, _DefaultModel):
            return ANTHROPIC_MODEL
        return str(self.model)

    @property
    def text(self) -> str:
        """The content the pieces add up to."""
        return "".join(self.pieces)


@dataclass
class Seen:
    """One request the server received, and what it did with it.

    Times are ``time.perf_counter()`` values; None when it did not happen.
    """

    path: str
    method: str
    #: Request headers, names in lower case.
    headers: dict[str, str]
    #: The parsed JSON body (None when it was not JSON).
    body: Any
    reply: Reply
    #: The ``x-request-id`` (OpenAI) / ``request-id`` (Anthropic) sent back.
    request_id: str
    t_received: float
    #: ``chat`` / ``responses`` / ``anthropic``; None for an unknown path (answered 404).
    api: Api | None = None
    stream: bool = False
    t_headers_sent: float | None = None
    #: Just after the first content delta was written and drained (non-stream: the body).
    t_first_content_sent: float | None = None
    #: Just after the last write.
    t_last_sent: float | None = None
    #: When the server saw the client go away before it had sent everything.
    t_disconnect: float | None = None
    #: Content deltas written.
    deltas_sent: int = 0
    #: Everything was sent (final chunk of the chunked body included).
    completed: bool = False
    #: The server cut the connection (``Reply.cut_after``, or :meth:`ProviderServer.stop`
    #: while it was answering).
    aborted: bool = False
    #: The server is through with the request, whatever the outcome (set last).
    done: bool = False
    #: The query parameters (Azure's ``api-version``...).
    query: dict[str, str] = field(default_factory=dict)


class _Disconnected(Exception):
    """The client went away."""


def _now() -> float:
    return time.perf_counter()


def _alnum(n: int) -> str:
    return "".join(random.choices(string.ascii_letters + string.digits, k=n))


def _hex(n: int) -> str:
    return "".join(random.choices("0123456789abcdef", k=n))


def _compact(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def _data(obj: Any) -> bytes:
    """An OpenAI chat SSE event: a ``data:`` line only."""
    return f"data: {_compact(obj)}\n\n".encode()


def _event(name: str, obj: Any) -> bytes:
    """A named SSE event (Responses, Anthropic)."""
    return f"event: {name}\ndata: {_compact(obj)}\n\n".encode()


_OPENAI_KEEPALIVE = b": keepalive\n\n"
# Anthropic's ping, with the space after the colon the real API sends.
_ANTHROPIC_PING = b'event: ping\ndata: {"type": "ping"}\n\n'
_SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}


def _tool_name(api: Api, body: Any) -> str:
    """The first tool the request offers (``get_weather`` when it offers none)."""
    try:
        tool = body["tools"][0]
        name = tool["function"]["name"] if api == "chat" else tool["name"]
    except (KeyError, IndexError, TypeError):
        return "get_weather"
    return str(name)


def _tool_input(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return {}


def _openai_error(status: int) -> dict[str, Any]:
    kind, code, message = {
        400: ("invalid_request_error", None, "Invalid request."),
        401: ("invalid_request_error", "invalid_api_key",
              "Incorrect API key provided: test. You can find your API key at "
              "https://platform.openai.com/account/api-keys."),
        403: ("invalid_request_error", "unsupported_country_region_territory",
              "Country, region, or territory not supported"),
        404: ("invalid_request_error", "model_not_found",
              "The model does not exist or you do not have access to it."),
        429: ("requests", "rate_limit_exceeded",
              "Rate limit reached for gpt-4o-mini in organization org-test on requests per "
              "min (RPM): Limit 3, Used 3, Requested 1. Please try again in 20s."),
        503: ("server_error", None, "The engine is currently overloaded, please try again later"),
    }.get(status, ("server_error", None,
                   "The server had an error while processing your request. Sorry about that!"))
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _anthropic_error(status: int, request_id: str) -> dict[str, Any]:
    kind, message = {
        400: ("invalid_request_error", "Invalid request."),
        401: ("authentication_error", "invalid x-api-key"),
        403: ("permission_error", "Your API key does not have permission to use the "
                                  "specified resource."),
        404: ("not_found_error", "The requested resource could not be found."),
        413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
        429: ("rate_limit_error", "This request would exceed the rate limit for your "
                                  "organization of 50 requests per minute."),
        504: ("timeout_error", "Request timed out."),
        529: ("overloaded_error", "Overloaded"),
    }.get(status, ("api_error", "Internal server error"))
    return {"type": "error", "error": {"type": kind, "message": message},
            "request_id": request_id}


class _Exchange:
    """Writes one response: timing stamps, disconnect checks, the cut."""

    def __init__(self, request: web.Request, seen: Seen) -> None:
        self.request = request
        self.seen = seen
        self.reply = seen.reply
        self.response: web.StreamResponse | None = None

    def gone(self) -> bool:
        """Whether the client went away (noting when, the first time)."""
        transport = self.request.transport
        if transport is None or transport.is_closing():
            self._mark_gone()
            return True
        return False

    def _mark_gone(self) -> None:
        if self.seen.t_disconnect is None and not self.seen.completed and not self.seen.aborted:
            self.seen.t_disconnect = _now()

    async def sleep(self, seconds: float) -> None:
        """Sleep in slices of at most :data:`SLICE`; raises when the client goes away."""
        deadline = _now() + seconds
        while True:
            if self.gone():
                raise _Disconnected
            left = deadline - _now()
            if left <= 0:
                return
            await asyncio.sleep(min(left, SLICE))

    async def start(self, headers: CIMultiDict[str]) -> web.StreamResponse:
        """Send the status line and headers (a chunked body follows)."""
        if self.gone():
            raise _Disconnected
        response = web.StreamResponse(status=200, headers=headers)
        self.response = response
        try:
            await response.prepare(self.request)
        except ConnectionError as exc:
            self._mark_gone()
            raise _Disconnected from exc
        self.seen.t_headers_sent = self.seen.t_last_sent = _now()
        return response

    async def send(self, data: bytes) -> None:
        """Write and drain ``data``; raises when the client is gone."""
        assert self.response is not None
        if self.gone():
            raise _Disconnected
        try:
            await self.response.write(data)
            await self.request.writer.drain()
        except ConnectionError as exc:
            self._mark_gone()
            raise _Disconnected from exc
        self.seen.t_last_sent = _now()

    async def content(self, data: bytes) -> None:
        """Write one content delta."""
        await self.send(data)
        if self.seen.deltas_sent == 0:
            self.seen.t_first_content_sent = self.seen.t_last_sent
        self.seen.deltas_sent += 1

    def cut(self) -> None:
        """Abort the connection (no final chunk: the client sees a broken body)."""
        if self.seen.completed:
            return
        self.seen.aborted = True
        transport = self.request.transport
        if transport is not None:
            transport.abort()

    async def finish(self) -> None:
        assert self.response is not None
        try:
            await self.response.write_eof()
        except ConnectionError as exc:
            self._mark_gone()
            raise _Disconnected from exc
        self.seen.t_last_sent = _now()
        self.seen.completed = True

    async def stream(self, head: list[bytes], deltas: list[bytes], tail: list[bytes],
                     keepalive: bytes) -> None:
        """Opening events, content deltas (with delays, keepalives, the cut), closing events."""
        reply = self.reply
        for event in head:
            await self.send(event)
        if reply.cut_after is not None and reply.cut_after <= 0:
            self.cut()
            return
        answer_at = len(reply.thinking) if self.seen.api in ("chat", "anthropic") else -1
        for index, delta in enumerate(deltas):
            if reply.keepalive:
                await self.send(keepalive)
            await self.sleep(reply.first_content_delay if index == 0 else
                             reply.answer_delay if index == answer_at else reply.chunk_delay)
            await self.content(delta)
            if reply.cut_after is not None and index + 1 >= reply.cut_after:
                self.cut()
                return
        if not deltas:
            await self.sleep(reply.first_content_delay)
        if reply.keepalive:
            await self.send(keepalive)
        for event in tail:
            await self.send(event)
        await self.finish()

    async def json_body(self, status: int, body: bytes, headers: CIMultiDict[str]) -> None:
        """A whole JSON response (a non-stream answer or an error)."""
        headers.setdefault("Content-Type", "application/json")
        response = web.Response(status=status, body=body, headers=headers)
        self.response = response
        if self.gone():
            raise _Disconnected
        try:
            await response.prepare(self.request)
            await response.write_eof()
        except ConnectionError as exc:
            self._mark_gone()
            raise _Disconnected from exc
        seen = self.seen
        seen.t_headers_sent = seen.t_last_sent = _now()
        if status == 200:
            seen.t_first_content_sent = seen.t_last_sent
        seen.completed = True


class ProviderServer:
    """OpenAI and Anthropic look-alike on 127.0.0.1, in the running event loop.

    ``openai_url`` (``http://127.0.0.1:PORT/v1``), ``anthropic_url`` and
    ``azure_url`` (``http://127.0.0.1:PORT``) are set by :meth:`start`.
    """

    def __init__(self) -> None:
        self.requests: list[Seen] = []
        self._queue: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._runner: web.AppRunner | None = None
        self._active: set[_Exchange] = set()
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_url(self) -> str:
        return f"{self.base_url}/v1"

    @property
    def anthropic_url(self) -> str:
        return self.base_url

    @property
    def azure_url(self) -> str:
        """The ``azure_endpoint`` of an Azure OpenAI client."""
        return self.base_url

    def script(self, *replies: Reply) -> None:
        """Queue replies: each request (any endpoint) takes the next; then ``Reply()``."""
        with self._lock:
            self._queue.extend(replies)

    def _next_reply(self) -> Reply:
        with self._lock:
            return self._queue.popleft() if self._queue else Reply()

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()

    async def stop(self) -> None:
        """Cut the connections of requests still being answered, then close."""
        for exchange in list(self._active):
            exchange.cut()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()

    async def wait_disconnect(self, seen: Seen, timeout: float = 1.0) -> float:  # noqa: ASYNC109
        """``seen.t_disconnect``, once set; TimeoutError after ``timeout`` seconds."""
        deadline = _now() + timeout
        while seen.t_disconnect is None:
            if _now() >= deadline:
                raise TimeoutError(f"no disconnect seen on {seen.path} within {timeout}s")
            await asyncio.sleep(0.002)
        return seen.t_disconnect

    async def wait_done(self, seen: Seen, timeout: float = 1.0) -> Seen:  # noqa: ASYNC109
        """``seen`` once the server is through with it; TimeoutError after ``timeout``."""
        deadline = _now() + timeout
        while not seen.done:
            if _now() >= deadline:
                raise TimeoutError(f"{seen.path} still being answered after {timeout}s")
            await asyncio.sleep(0.002)
        return seen

    # -- requests ------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        t_received = _now()
        api = _api_of(request.path) if request.method == "POST" else None
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        reply = self._next_reply() if api is not None else Reply(status=404)
        request_id = f"req_011CV{_alnum(19)}" if api == "anthropic" else f"req_{_hex(32)}"
        seen = Seen(
            path=request.path, method=request.method,
            headers={k.lower(): v for k, v in request.headers.items()},
            body=body, reply=reply, request_id=request_id, t_received=t_received, api=api,
            stream=isinstance(body, dict) and body.get("stream") is True,
            query=dict(request.query),
        )
        self.requests.append(seen)
        exchange = _Exchange(request, seen)
        self._active.add(exchange)
        try:
            await exchange.sleep(reply.header_delay)
            if reply.status != 200 or api is None:
                await self._error(exchange, api)
            elif api == "chat":
                await _Chat(exchange, body).run()
            elif api == "responses":
                await _Responses(exchange, body).run()
            else:
                await _Anthropic(exchange, body).run()
        except _Disconnected:
            pass
        finally:
            self._active.discard(exchange)
            seen.done = True
        # Returned after a cut or a disconnect too: aiohttp's own final write then
        # fails with a ConnectionError, which it swallows.
        return exchange.response or web.Response(status=499)

    async def _error(self, exchange: _Exchange, api: Api | None) -> None:
        seen, reply = exchange.seen, exchange.reply
        headers = self._headers(api, seen)
        headers.update(reply.headers)
        if reply.error_body is not None:
            error: dict[str, Any] = reply.error_body
        elif api == "anthropic":
            error = _anthropic_error(reply.status, seen.request_id)
        else:
            error = _openai_error(reply.status)
            if api is None:
                error["error"].update(message=f"Invalid URL ({seen.method} {seen.path})",
                                      code=None)
        # OpenAI pretty-prints its errors (four spaces, a final newline); Anthropic does not.
        body = _compact(error) if api == "anthropic" else json.dumps(error, indent=4) + "\n"
        await exchange.json_body(reply.status, body.encode(), headers)

    @staticmethod
    def _headers(api: Api | None, seen: Seen) -> CIMultiDict[str]:
        """The response headers the provider sends (without content-type)."""
        if api == "anthropic":
            return CIMultiDict({
                "request-id": seen.request_id,
                "anthropic-organization-id": "00000000-0000-4000-8000-000000000000",
                "anthropic-ratelimit-requests-limit": "50",
                "anthropic-ratelimit-requests-remaining": "49",
                "via": "1.1 google",
                "cf-cache-status": "DYNAMIC",
                "x-robots-tag": "none",
                "Server": "cloudflare",
            })
        return CIMultiDict({
            "access-control-expose-headers": "X-Request-ID",
            "openai-organization": "user-test",
            "openai-processing-ms": str(max(0, round((_now() - seen.t_received) * 1000))),
            "openai-project": "proj_test",
            "openai-version": "2020-10-01",
            "x-ratelimit-limit-requests": "10000",
            "x-ratelimit-limit-tokens": "200000",
            "x-ratelimit-remaining-requests": "9999",
            "x-ratelimit-remaining-tokens": "199990",
            "x-ratelimit-reset-requests": "8.64s",
            "x-ratelimit-reset-tokens": "3ms",
            "x-request-id": seen.request_id,
            "cf-cache-status": "DYNAMIC",
            "Server": "cloudflare",
        })


class _Api(abc.ABC):
    """One endpoint's answer to one request; each API's subclass writes its events."""

    api: Api
    keepalive = _OPENAI_KEEPALIVE

    def __init__(self, exchange: _Exchange, body: Any) -> None:
        self.exchange = exchange
        self.reply = exchange.reply
        self.body = body if isinstance(body, dict) else {}
        self.model = self.reply.model_for(self.api)
        self.created = int(time.time())

    async def run(self) -> None:
        exchange, reply = self.exchange, self.reply
        headers = ProviderServer._headers(self.api, exchange.seen)
        if exchange.seen.stream:
            headers.update(_SSE_HEADERS)
            headers.update(reply.headers)
            await exchange.start(headers)
            await exchange.stream(*self.events(), keepalive=self.keepalive)
            return
        n = len(reply.pieces)
        await exchange.sleep(reply.first_content_delay + reply.chunk_delay * max(0, n - 1))
        if reply.cut_after is not None:
            exchange.cut()
            return
        headers.update(reply.headers)
        await exchange.json_body(200, self.whole(), headers)

    @abc.abstractmethod
    def events(self) -> tuple[list[bytes], list[bytes], list[bytes]]:
        """Opening events, one event per content delta, closing events."""

    @abc.abstractmethod
    def whole(self) -> bytes:
        """The non-stream JSON body."""


class _Chat(_Api):
    api: Api = "chat"

    def __init__(self, exchange: _Exchange, body: Any) -> None:
        super().__init__(exchange, body)
        self.id = f"chatcmpl-{_alnum(29)}"
        self.fingerprint = f"fp_{_hex(10)}"
        options = self.body.get("stream_options") or {}
        self.include_usage = bool(options.get("include_usage"))
        self.obfuscation = options.get("include_obfuscation", True) is not False
        self.tool_id = f"call_{_alnum(24)}"
        self.finish_reason = "tool_calls" if self.reply.tool_call and \
            self.reply.finish_reason == "stop" else self.reply.finish_reason

    def usage(self) -> dict[str, Any]:
        r = self.reply
        usage: dict[str, Any] = {
            "prompt_tokens": r.input_tokens,
            "completion_tokens": r.output_tokens,
            "total_tokens": r.input_tokens + r.output_tokens,
            "prompt_tokens_details": {"cached_tokens": r.cached_tokens, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": r.reasoning_tokens, "audio_tokens": 0,
                "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0,
            },
        }
        if r.cost is not None:
            usage["cost"] = r.cost
        return usage

    def chunk(self, choices: list[dict[str, Any]], usage: Any = None) -> bytes:
        obj: dict[str, Any] = {
            "id": self.id, "object": "chat.completion.chunk", "created": self.created,
            "model": self.model, "service_tier": "default",
            "system_fingerprint": self.fingerprint, "choices": choices,
        }
        if self.include_usage:
            obj["usage"] = usage
        if self.obfuscation:
            obj["obfuscation"] = _alnum(random.randint(1, 12))
        return _data(obj)

    def choice(self, delta: dict[str, Any], finish_reason: str | None = None,
               index: int = 0) -> bytes:
        return self.chunk([{"index": index, "delta": delta, "logprobs": None,
                            "finish_reason": finish_reason}])

    def each_choice(self, delta: dict[str, Any]) -> bytes:
        """``delta`` once per choice (``Reply.choices``), as consecutive chunks."""
        return b"".join(self.choice(delta, index=i) for i in range(self.reply.choices))

    def events(self) -> tuple[list[bytes], list[bytes], list[bytes]]:
        r = self.reply
        if r.tool_call:
            role: dict[str, Any] = {
                "role": "assistant", "content": None,
                "tool_calls": [{"index": 0, "id": self.tool_id, "type": "function",
                                "function": {"name": _tool_name("chat", self.body),
                                             "arguments": ""}}],
                "refusal": None,
            }
            deltas: list[dict[str, Any]] = [
                {"tool_calls": [{"index": 0, "function": {"arguments": p}}]} for p in r.pieces]
        elif r.refusal:
            role = {"role": "assistant", "content": None, "refusal": ""}
            deltas = [{"refusal": p} for p in r.pieces]
        else:
            role = {"role": "assistant", "content": "", "refusal": None}
            deltas = [{"reasoning_content": p} for p in r.thinking]
            deltas += [{"content": p} for p in r.pieces]
        reasons = r.choice_finish_reasons or (self.finish_reason,) * r.choices
        tail = [self.choice({}, reason, index=i) for i, reason in enumerate(reasons)]
        if self.include_usage:
            tail.append(self.chunk([], self.usage()))
        tail.append(b"data: [DONE]\n\n")
        return [self.each_choice(role)], [self.each_choice(d) for d in deltas], tail

    def whole(self) -> bytes:
        r = self.reply
        message: dict[str, Any] = {"role": "assistant", "content": r.text, "refusal": None,
                                   "annotations": []}
        if r.tool_call:
            message["content"] = None
            message["tool_calls"] = [{
                "id": self.tool_id, "type": "function",
                "function": {"name": _tool_name("chat", self.body), "arguments": r.text},
            }]
        elif r.refusal:
            message["content"], message["refusal"] = None, r.text
        obj = {
            "id": self.id, "object": "chat.completion", "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": self.finish_reason}],
            "usage": self.usage(), "service_tier": "default",
            "system_fingerprint": self.fingerprint,
        }
        return json.dumps(obj, indent=2, ensure_ascii=False).encode()


class _Responses(_Api):
    api: Api = "responses"

    def __init__(self, exchange: _Exchange, body: Any) -> None:
        super().__init__(exchange, body)
        self.id = f"resp_{_hex(48)}"
        self.item_id = f"{'fc' if self.reply.tool_call else 'msg'}_{_hex(48)}"
        self.call_id = f"call_{_alnum(24)}"
        self.sequence = 0
        options = self.body.get("stream_options") or {}
        self.obfuscation = options.get("include_obfuscation", True) is not False

    def usage(self) -> dict[str, Any]:
        r = self.reply
        return {
            "input_tokens": r.input_tokens,
            "input_tokens_details": {"cache_write_tokens": 0, "cached_tokens": r.cached_tokens},
            "output_tokens": r.output_tokens,
            "output_tokens_details": {"reasoning_tokens": r.reasoning_tokens},
            "total_tokens": r.input_tokens + r.output_tokens,
        }

    def status(self) -> tuple[str, dict[str, str] | None]:
        reason = {"length": "max_output_tokens", "content_filter": "content_filter"}
        if self.reply.finish_reason in reason:
            return "incomplete", {"reason": reason[self.reply.finish_reason]}
        return "completed", None

    def response(self, status: str, output: list[Any], *, done: bool) -> dict[str, Any]:
        b = self.body
        incomplete = self.status()[1] if done else None
        obj: dict[str, Any] = {
            "id": self.id, "object": "response", "created_at": self.created,
            "status": status, "background": False, "billing": {"payer": "developer"},
        }
        if done and status == "completed":
            obj["completed_at"] = int(time.time())
        obj.update({
            "error": None, "incomplete_details": incomplete,
            "instructions": b.get("instructions"),
            "max_output_tokens": b.get("max_output_tokens"), "max_tool_calls": None,
            "model": self.model, "output": output, "parallel_tool_calls": True,
            "previous_response_id": b.get("previous_response_id"), "prompt_cache_key": None,
            "prompt_cache_retention": None, "reasoning": {"effort": None, "summary": None},
            "safety_identifier": None, "service_tier": "default" if done else "auto",
            "store": b.get("store", True), "temperature": b.get("temperature", 1.0),
            "text": {"format": {"type": "text"}, "verbosity": "medium"},
            "tool_choice": b.get("tool_choice", "auto"), "tools": b.get("tools", []),
            "top_logprobs": 0, "top_p": b.get("top_p", 1.0), "truncation": "disabled",
            "usage": self.usage() if done else None, "user": None,
            "metadata": b.get("metadata", {}),
        })
        return obj

    def part(self, text: str) -> dict[str, Any]:
        if self.reply.refusal:
            return {"type": "refusal", "refusal": text}
        return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}

    def item(self, status: str, text: str) -> dict[str, Any]:
        if self.reply.tool_call:
            return {"id": self.item_id, "type": "function_call", "status": status,
                    "arguments": text, "call_id": self.call_id,
                    "name": _tool_name("responses", self.body)}
        content = [self.part(text)] if status == "completed" else []
        return {"id": self.item_id, "type": "message", "status": status,
                "content": content, "role": "assistant"}

    def ev(self, kind: str, **fields: Any) -> bytes:
        obj = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return _event(kind, obj)

    def delta(self, piece: str) -> bytes:
        where: dict[str, Any] = {"item_id": self.item_id, "output_index": 0}
        if self.reply.tool_call:
            fields: dict[str, Any] = {**where, "delta": piece}
            kind = "response.function_call_arguments.delta"
        elif self.reply.refusal:
            fields = {**where, "content_index": 0, "delta": piece}
            kind = "response.refusal.delta"
        else:
            fields = {**where, "content_index": 0, "delta": piece, "logprobs": []}
            kind = "response.output_text.delta"
        if self.obfuscation:
            fields["obfuscation"] = _alnum(random.randint(1, 12))
        return self.ev(kind, **fields)

    def events(self) -> tuple[list[bytes], list[bytes], list[bytes]]:
        r, text = self.reply, self.reply.text
        where: dict[str, Any] = {"item_id": self.item_id, "output_index": 0}
        head = [
            self.ev("response.created", response=self.response("in_progress", [], done=False)),
            self.ev("response.in_progress",
                    response=self.response("in_progress", [], done=False)),
            self.ev("response.output_item.added", output_index=0,
                    item=self.item("in_progress", "")),
        ]
        if not r.tool_call:
            head.append(self.ev("response.content_part.added", **where, content_index=0,
                                part=self.part("")))
        deltas = [self.delta(p) for p in r.pieces]
        if r.tool_call:
            tail = [self.ev("response.function_call_arguments.done", **where, arguments=text)]
        elif r.refusal:
            tail = [self.ev("response.refusal.done", **where, content_index=0, refusal=text)]
        else:
            tail = [self.ev("response.output_text.done", **where, content_index=0, text=text,
                            logprobs=[])]
        if not r.tool_call:
            tail.append(self.ev("response.content_part.done", **where, content_index=0,
                                part=self.part(text)))
        done_item = self.item("completed", text)
        tail.append(self.ev("response.output_item.done", output_index=0, item=done_item))
        status = self.status()[0]
        tail.append(self.ev(f"response.{status}",
                            response=self.response(status, [done_item], done=True)))
        return head, deltas, tail

    def whole(self) -> bytes:
        status = self.status()[0]
        obj = self.response(status, [self.item("completed", self.reply.text)], done=True)
        return json.dumps(obj, indent=2, ensure_ascii=False).encode()


class _Anthropic(_Api):
    api: Api = "anthropic"
    keepalive = _ANTHROPIC_PING

    def __init__(self, exchange: _Exchange, body: Any) -> None:
        super().__init__(exchange, body)
        self.id = f"msg_01{_alnum(22)}"
        self.tool_id = f"toolu_01{_alnum(22)}"
        reason = self.reply.finish_reason
        if self.reply.tool_call and reason == "stop":
            reason = "tool_calls"
        self.stop_reason = _STOP_REASONS.get(reason, reason)

    def usage(self, output_tokens: int) -> dict[str, Any]:
        r = self.reply
        return {
            "input_tokens": r.input_tokens, "cache_creation_input_tokens": r.cache_write_tokens,
            "cache_read_input_tokens": r.cached_tokens,
            "cache_creation": {"ephemeral_5m_input_tokens": r.cache_write_tokens,
                               "ephemeral_1h_input_tokens": 0},
            "output_tokens": output_tokens, "service_tier": "standard",
        }

    def message(self, content: list[Any], stop_reason: str | None,
                output_tokens: int) -> dict[str, Any]:
        return {"model": self.model, "id": self.id, "type": "message", "role": "assistant",
                "content": content, "stop_reason": stop_reason, "stop_sequence": None,
                "usage": self.usage(output_tokens)}

    def block(self, text: str) -> dict[str, Any]:
        if self.reply.tool_call:
            return {"type": "tool_use", "id": self.tool_id,
                    "name": _tool_name("anthropic", self.body),
                    "input": _tool_input(text) if text else {}}
        return {"type": "text", "text": text}

    def events(self) -> tuple[list[bytes], list[bytes], list[bytes]]:
        r = self.reply
        thinking = bool(r.thinking)
        answer = 1 if thinking else 0  # the index of the answer's content block
        answer_start = _event("content_block_start", {"type": "content_block_start",
                                                       "index": answer,
                                                       "content_block": self.block("")})
        head = [
            _event("message_start", {"type": "message_start",
                                     "message": self.message([], None, 1)}),
            _event("content_block_start", {
                "type": "content_block_start", "index": 0,
                "content_block": {"type": "thinking", "thinking": "", "signature": ""},
            }) if thinking else answer_start,
            _ANTHROPIC_PING,
        ]
        if r.tool_call:
            deltas = [{"type": "input_json_delta", "partial_json": p} for p in r.pieces]
        else:
            deltas = [{"type": "text_delta", "text": p} for p in r.pieces]
        events = [_event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                 "delta": {"type": "thinking_delta",
                                                           "thinking": p}})
                  for p in r.thinking]
        answers = [_event("content_block_delta", {"type": "content_block_delta",
                                                  "index": answer, "delta": d}) for d in deltas]
        if thinking and answers:  # the thinking block closes as the answer's opens
            answers[0] = b"".join((
                _event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                               "delta": {"type": "signature_delta",
                                                         "signature": _alnum(40)}}),
                _event("content_block_stop", {"type": "content_block_stop", "index": 0}),
                answer_start, answers[0]))
        usage = {"input_tokens": r.input_tokens,
                 "cache_creation_input_tokens": r.cache_write_tokens,
                 "cache_read_input_tokens": r.cached_tokens, "output_tokens": r.output_tokens}
        tail = [
            _event("content_block_stop", {"type": "content_block_stop", "index": answer}),
            _event("message_delta", {"type": "message_delta",
                                     "delta": {"stop_reason": self.stop_reason,
                                               "stop_sequence": None},
                                     "usage": usage}),
            _event("message_stop", {"type": "message_stop"}),
        ]
        return head, events + answers, tail

    def whole(self) -> bytes:
        r = self.reply
        return _compact(self.message([self.block(r.text)], self.stop_reason,
                                     r.output_tokens)).encode()


class ThreadedProviderServer:
    """A :class:`ProviderServer` in a background thread with its own event loop.

    For the sync SDK clients (``openai.OpenAI``, ``anthropic.Anthropic``), which
    would block a server in the test's own loop. A plain context manager; ``script``
    and ``requests`` are those of the inner server (the queue is locked, the list
    only appended to); :meth:`wait_disconnect` and :meth:`wait_done` block.

    The server thread records a :class:`Seen` while the client runs: call
    :meth:`wait_done` before asserting on it. Its time stamps share the GIL with
    the client thread, so they can lag by up to ``sys.getswitchinterval()`` (5 ms):
    use :class:`ProviderServer` for tight timing assertions.
    """

    def __init__(self) -> None:
        self.server = ProviderServer()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def openai_url(self) -> str:
        return self.server.openai_url

    @property
    def anthropic_url(self) -> str:
        return self.server.anthropic_url

    @property
    def azure_url(self) -> str:
        return self.server.azure_url

    @property
    def requests(self) -> list[Seen]:
        return self.server.requests

    def script(self, *replies: Reply) -> None:
        self.server.script(*replies)

    def start(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="provider-server",
                                        daemon=True)
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.server.start(), loop).result(timeout=10)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self._loop = self._thread = None
        try:
            asyncio.run_coroutine_threadsafe(self.server.stop(), loop).result(timeout=10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            loop.close()

    def wait_disconnect(self, seen: Seen, timeout: float = 1.0) -> float:
        """``seen.t_disconnect``, once set; TimeoutError after ``timeout`` seconds."""
        deadline = _now() + timeout
        while seen.t_disconnect is None:
            if _now() >= deadline:
                raise TimeoutError(f"no disconnect seen on {seen.path} within {timeout}s")
            time.sleep(0.002)
        return seen.t_disconnect

    def wait_done(self, seen: Seen, timeout: float = 1.0) -> Seen:
        """``seen`` once the server is through with it; TimeoutError after ``timeout``.

        The client can finish reading before the server thread has noted
        ``completed``: wait for this before asserting on the server's side.
        """
        deadline = _now() + timeout
        while not seen.done:
            if _now() >= deadline:
                raise TimeoutError(f"{seen.path} still being answered after {timeout}s")
            time.sleep(0.002)
        return seen

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None,
                 exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


@pytest_asyncio.fixture
async def provider_server() -> AsyncIterator[ProviderServer]:
    """A started :class:`ProviderServer` in the test's event loop."""
    async with ProviderServer() as server:
        yield server


@pytest.fixture
def threaded_provider_server() -> Iterator[ThreadedProviderServer]:
    """A started :class:`ThreadedProviderServer` (for the sync SDK clients)."""
    with ThreadedProviderServer() as server:
        yield server
