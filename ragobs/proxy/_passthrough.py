"""Paths the proxy does not read: forwarded untouched, both ways, as they come.

Method, path and query, headers (but the hop-by-hop ones and ``Host``), body
and status go through unchanged; the request body is streamed up and the
answer down as each read arrives (compressed answers stay compressed).
:func:`pipe` is also what carries an answer the proxy cannot read (too
large, or compressed although it asked for identity).
"""

from __future__ import annotations

import aiohttp
from aiohttp import web
from yarl import URL

from ragobs.proxy._failures import CLIENT_GONE, UPSTREAM_FAILURES
from ragobs.proxy._headers import for_client, for_upstream

__all__ = ["passthrough", "pipe", "read_body"]


async def read_body(upstream: aiohttp.ClientResponse, limit: int) -> tuple[bytes, bool]:
    """The answer's body, read up to a little more than ``limit`` bytes;
    (bytes, whether that is all of it)."""
    parts: list[bytes] = []
    size = 0
    read = upstream.content.readany
    while True:
        data = await read()
        if not data:
            return b"".join(parts), True
        parts.append(data)
        size += len(data)
        if size > limit:
            return b"".join(parts), False


async def pipe(request: web.Request, upstream: aiohttp.ClientResponse, head: bytes = b""
               ) -> tuple[web.StreamResponse, BaseException | None]:
    """Send ``upstream``'s status and headers, ``head`` (bytes already read)
    and the rest of its body as it comes; (the response, how it ended: None,
    :data:`CLIENT_GONE`, or the upstream's failure midway, which cuts the
    client's connection so that its body ends too early)."""
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason,
                                  headers=for_client(upstream.headers, stream=False,
                                                     reframed=False))
    await response.prepare(request)
    read = upstream.content.readany
    data = head
    while True:
        if data:
            try:
                await response.write(data)
            except ConnectionError:  # the client went away
                return response, CLIENT_GONE
        try:
            data = await read()
        except UPSTREAM_FAILURES as exc:
            transport = request.transport
            if transport is not None:
                transport.close()  # after what was written: no final chunk
            return response, exc
        if not data:
            break
    try:
        await response.write_eof()
    except ConnectionError:
        return response, CLIENT_GONE
    return response, None


async def passthrough(request: web.Request, session: aiohttp.ClientSession, url: str,
                      body: bytes | None = None) -> web.StreamResponse:
    """Forward ``request`` to ``url`` untouched (``body``: already read)."""
    data: object = body if body is not None else (
        request.content if request.body_exists else None)
    async with session.request(request.method, URL(url, encoded=True),
                               headers=for_upstream(request.headers, read=False),
                               data=data, allow_redirects=False) as upstream:
        response, _ = await pipe(request, upstream)
        return response
