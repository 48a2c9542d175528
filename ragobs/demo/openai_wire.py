"""The demo's simulated provider behind a local OpenAI Chat Completions endpoint.

``ragobs demo --provider openai`` starts an :class:`OpenAIWireServer` in the
demo's event loop and points the real ``openai.AsyncOpenAI`` client at its
:attr:`~OpenAIWireServer.url`, so every LLM call crosses HTTP in the OpenAI
streaming wire format: ``data: {json}`` server-sent events of
``chat.completion.chunk`` objects (a role-only first chunk, content chunks, a
finish chunk, the usage chunk when the request asks for
``stream_options.include_usage``), then ``data: [DONE]``.

What each request gets follows the demo's simulated provider (see
:mod:`ragobs.demo.provider`: the same :func:`~ragobs.demo.provider.plan` as
the in-process one): the routing model (``gpt-4o-mini``) names the source to
search in a few tokens, the answer model (``gpt-4o``) streams words; a slow
start waits before the response headers; a failure is a 429 (with
``retry-after`` / ``retry-after-ms`` and OpenAI's error body), a 503, a
connection reset before the response, or a cut (a reset) mid-stream. Usage
counts tokens as a tokenizer would (about four characters per token), not
content chunks. Each request is recorded in :attr:`~OpenAIWireServer.sent`,
except the client's warm-up (a request with the ``x-ragobs-warmup`` header,
answered at once with a stream of no content).
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import socket
import string
import struct
import time
from types import TracebackType
from typing import Any, Final, Self

from aiohttp import web

from ragobs.demo.agent import WARMUP_HEADER
from ragobs.demo.provider import (
    OPENAI_MODEL,
    OPENAI_ROUTER_MODEL,
    ROUTER_MODELS,
    DemoConfig,
    Plan,
    Sent,
    plan,
)

__all__ = ["RESPONSE_MODELS", "OpenAIWireServer", "Sent", "count_tokens"]

#: The dated model the server says answered, per model asked for.
RESPONSE_MODELS: Final = {
    OPENAI_ROUTER_MODEL: "gpt-4o-mini-2024-07-18",
    OPENAI_MODEL: "gpt-4o-2024-08-06",
}

_SSE_HEADERS: Final = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "openai-version": "2020-10-01",
}
_ERRORS: Final = {
    400: ("invalid_request_error", None, "This demo endpoint only streams: set stream to true."),
    404: ("invalid_request_error", None, "Invalid URL"),
    429: ("requests", "rate_limit_exceeded",
          "Rate limit reached for {model} in organization org-demo on requests per min "
          "(RPM): Limit 500, Used 500, Requested 1. Please try again in 200ms."),
    503: ("server_error", None, "The engine is currently overloaded, please try again later"),
}


def count_tokens(text: str) -> int:
    """Tokens in ``text`` by the usual rule of thumb, about 4 characters per token
    (at least one per word): the demo's words average 1.4 tokens."""
    return sum(max(1, round(len(word) / 4)) for word in text.split())


def _question(body: dict[str, Any]) -> str:
    """The last user message's text."""
    for message in reversed(body.get("messages") or ()):
        if isinstance(message, dict) and message.get("role") == "user":
            return str(message.get("content", ""))
    return ""


def _compact(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def _alnum(rng: random.Random, n: int) -> str:
    return "".join(rng.choices(string.ascii_letters + string.digits, k=n))


def _reset(request: web.Request) -> None:
    """Abort the connection with a TCP reset (no final chunk, no close handshake)."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class OpenAIWireServer:
    """``POST /v1/chat/completions`` (streamed) on 127.0.0.1, in the running event loop.

    Use ``async with OpenAIWireServer(config) as server:`` (or :meth:`start` /
    :meth:`stop`); :attr:`url` is the ``base_url`` for the OpenAI client.
    """

    def __init__(self, config: DemoConfig | None = None, *, seed: int | None = None) -> None:
        self.config = config or DemoConfig()
        #: Every request received, in the order they arrived.
        self.sent: list[Sent] = []
        self._rng = random.Random(seed)
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT/v1``, once started."""
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        await web.SockSite(runner, sock).start()
        self._runner = runner

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()

    def _gap(self) -> float:
        return self._rng.uniform(*self.config.token_gap_seconds) * self.config.time_scale

    def _error(self, status: int, headers: dict[str, str] | None = None,
               model: object = OPENAI_MODEL) -> web.Response:
        kind, code, message = _ERRORS[status]
        body = {"error": {"message": message.format(model=model), "type": kind, "param": None,
                          "code": code}}
        # OpenAI pretty-prints its error bodies, four spaces and a final newline.
        return web.Response(status=status, text=json.dumps(body, indent=4) + "\n",
                            content_type="application/json", headers=headers)

    async def _not_found(self, request: web.Request) -> web.Response:
        return self._error(404)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or body.get("stream") is not True:
            return self._error(400)
        t_received = time.perf_counter()
        cfg, rng = self.config, self._rng
        model = str(body.get("model"))
        if request.headers.get(WARMUP_HEADER):  # no part of the simulation, not recorded
            todo, sent = Plan(None, 0.0, (), -1), Sent("chatcmpl-warmup", model=model)
        else:  # the plan, drawn before any wait: the rules of the in-process provider
            todo = plan(rng, cfg, model, _question(body))
            sent = Sent(f"chatcmpl-{_alnum(rng, 29)}", todo.failure, model)
            self.sent.append(sent)
        request_id = f"req_{rng.getrandbits(128):032x}"
        if todo.failure == "rate_limited":
            wait = 0.2 * cfg.time_scale
            return self._error(429, {"retry-after": str(math.ceil(wait)),
                                     "retry-after-ms": str(max(1, round(wait * 1000))),
                                     "x-request-id": request_id}, model)
        if todo.failure == "unavailable":
            return self._error(503, {"x-request-id": request_id})
        if todo.failure == "reset":
            await asyncio.sleep(self._gap())
            _reset(request)
            return web.Response()  # never sent: the connection is gone
        if todo.delay:  # queued: the response headers wait
            await asyncio.sleep(todo.delay)
        response = web.StreamResponse(headers={
            **_SSE_HEADERS,
            "openai-processing-ms": str(round((time.perf_counter() - t_received) * 1000)),
            "x-request-id": request_id,
        })
        try:
            await response.prepare(request)
            await self._stream(request, response, body, sent=sent, todo=todo)
        except ConnectionError:  # the client went away (a deadline closed the stream)
            pass
        return response

    async def _stream(self, request: web.Request, response: web.StreamResponse,
                      body: dict[str, Any], *, sent: Sent, todo: Plan) -> None:
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        model = str(body.get("model"))
        head: dict[str, Any] = {
            "id": sent.response_id, "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": RESPONSE_MODELS.get(model, model),
            "service_tier": "default", "system_fingerprint": "fp_560af6e559",
        }
        # A routing answer's pieces make one word; an answer's are words.
        pieces = (list(todo.pieces) if model in ROUTER_MODELS else
                  [word if i == 0 else " " + word for i, word in enumerate(todo.pieces)])

        async def write(choices: list[Any], usage: Any = None) -> None:
            chunk = {**head, "choices": choices, **({"usage": usage} if include_usage else {})}
            await response.write(f"data: {_compact(chunk)}\n\n".encode())

        def choice(delta: dict[str, Any], finish_reason: str | None = None) -> list[Any]:
            return [{"index": 0, "delta": delta, "logprobs": None,
                     "finish_reason": finish_reason}]

        await write(choice({"role": "assistant", "content": "", "refusal": None}))
        for i, piece in enumerate(pieces):
            await asyncio.sleep(self._gap())
            if i == todo.cut_at:
                _reset(request)
                return
            await write(choice({"content": piece}))
            sent.content_chunks += 1
        await write(choice({}, "stop"))
        if include_usage:
            prompt = sum(count_tokens(str(m.get("content", ""))) + 4
                         for m in body.get("messages") or () if isinstance(m, dict)) + 3
            completion = count_tokens("".join(pieces))
            await write([], {
                "prompt_tokens": prompt, "completion_tokens": completion,
                "total_tokens": prompt + completion,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {
                    "reasoning_tokens": 0, "audio_tokens": 0,
                    "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0,
                },
            })
            sent.prompt_tokens, sent.completion_tokens = prompt, completion
        await response.write(b"data: [DONE]\n\n")
        sent.done = True
        await response.write_eof()
