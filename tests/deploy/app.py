"""The app the deployment tests (and ``bench/bench_workers.py``) serve with real
gunicorn and uvicorn workers.

``GET /ask?tokens=N`` streams N tokens through ``ragobs.observe_stream``.
``app`` is the aiohttp application (gunicorn's aiohttp worker), ``asgi`` a
bare ASGI application (uvicorn). ``ragobs.setup()`` runs at import, as in a
user's app module: with ``RAGOBS_SIDECAR_URL`` set it pushes to the host
sidecar; with ``--preload`` it runs once in the master before the fork.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web

import ragobs

#: Seconds between tokens, as a model's stream has (bench_workers sets 0.02).
TOKEN_DELAY = float(os.environ.get("TOKEN_DELAY", "0"))

runtime = ragobs.setup(service_name="deploy-test",
                       push_interval=float(os.environ.get("TEST_PUSH_INTERVAL", "0.5")))


async def _tokens(n: int) -> AsyncIterator[str]:
    for i in range(n):
        await asyncio.sleep(TOKEN_DELAY)
        yield f"t{i} "


async def _answer(n: int) -> AsyncIterator[bytes]:
    async for chunk in ragobs.observe_stream(_tokens(n), model="deploy-model"):
        yield chunk.encode()


async def ask(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"X-Worker-Pid": str(os.getpid())})
    await response.prepare(request)
    async for data in _answer(int(request.query.get("tokens", "5"))):
        await response.write(data)
    await response.write_eof()
    return response


async def pid(request: web.Request) -> web.Response:
    return web.Response(text=str(os.getpid()))


app = web.Application()
app.router.add_get("/ask", ask)
app.router.add_get("/pid", pid)


Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                # uvicorn ends a worker by re-raising SIGTERM after its graceful
                # shutdown, which skips atexit: flush here (the README's recipe).
                runtime.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["path"] == "/pid":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(os.getpid()).encode()})
        return
    query = dict(part.split("=", 1) for part in scope["query_string"].decode().split("&")
                 if "=" in part)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"),
                            (b"x-worker-pid", str(os.getpid()).encode())]})
    async for data in _answer(int(query.get("tokens", "5"))):
        await send({"type": "http.response.body", "body": data, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})
