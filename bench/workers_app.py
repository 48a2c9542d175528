"""The app ``bench/bench_workers.py`` serves with real gunicorn workers.

The same shape as ``tests/deploy/app.py`` (``ragobs.setup()`` at import,
``GET /ask?tokens=N`` streams N tokens through ``ragobs.observe_stream``,
``GET /pid``), with a pause between tokens as a model's stream has:
``TOKEN_DELAY`` seconds (default 0.02, i.e. 50 tokens/s per answer).
``TEST_PUSH_INTERVAL`` sets the push interval to the host sidecar named by
``RAGOBS_SIDECAR_URL``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

from aiohttp import web

import ragobs

TOKEN_DELAY = float(os.environ.get("TOKEN_DELAY", "0.02"))

runtime = ragobs.setup(service_name="bench-workers",
                       push_interval=float(os.environ.get("TEST_PUSH_INTERVAL", "0.5")))


async def _tokens(n: int) -> AsyncIterator[str]:
    for i in range(n):
        await asyncio.sleep(TOKEN_DELAY)
        yield f"t{i} "


async def _answer(n: int) -> AsyncIterator[bytes]:
    async for chunk in ragobs.observe_stream(_tokens(n), model="bench-model"):
        yield chunk.encode()


async def ask(request: web.Request) -> web.StreamResponse:
    # Which worker served it: the client counts the spread over the workers.
    response = web.StreamResponse(headers={"X-Worker-Pid": str(os.getpid())})
    await response.prepare(request)
    async for data in _answer(int(request.query.get("tokens", "100"))):
        await response.write(data)
    await response.write_eof()
    return response


async def pid(request: web.Request) -> web.Response:
    return web.Response(text=str(os.getpid()))


app = web.Application()
app.router.add_get("/ask", ask)
app.router.add_get("/pid", pid)
