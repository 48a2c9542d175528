"""A non-streamed answer: read whole, measured, then written.

The client cannot use half a JSON document, so reading the answer whole
costs it nothing, and makes the end of the answer the commit point: a
failure while reading (a cut) may still be retried. An answer larger than
``max_body`` is passed on as it comes instead, unmeasured.
"""

from __future__ import annotations

import json
import time

import aiohttp
from aiohttp import web

from ragobs.proxy._answers import read_answer
from ragobs.proxy._call import BeforeCommit, Call
from ragobs.proxy._failures import CLIENT_GONE, UPSTREAM_FAILURES, StreamInterrupted
from ragobs.proxy._headers import for_client
from ragobs.proxy._passthrough import pipe, read_body

__all__ = ["relay_whole"]


async def relay_whole(call: Call, upstream: aiohttp.ClientResponse, *, max_body: int
                      ) -> tuple[web.StreamResponse, float | None, BaseException | None]:
    """Read, measure and write ``upstream``'s answer; (response, overhead, how it
    ended). Raises :class:`BeforeCommit` for a failure while reading it."""
    try:
        raw, complete = await read_body(upstream, max_body)
    except UPSTREAM_FAILURES as exc:
        raise BeforeCommit(exc) from exc
    t_read = time.perf_counter()
    if not complete:
        response, ended = await pipe(call.request, upstream, raw)
        if ended is not None and ended is not CLIENT_GONE:
            failure = StreamInterrupted(f"upstream {call.route.upstream.label!r} failed "
                                        f"midway through a large answer: {ended}")
            failure.__cause__ = ended
            ended = failure
        return response, None, ended
    api = call.route.api
    if api is not None and 200 <= upstream.status < 300:
        try:
            answer = json.loads(raw)
        except ValueError:
            answer = None
        if isinstance(answer, dict):
            read_answer(api, answer, call.obs)
    response = web.Response(status=upstream.status, reason=upstream.reason, body=raw,
                            headers=for_client(upstream.headers, stream=False))
    try:
        await response.prepare(call.request)
        await response.write_eof()
    except ConnectionError:
        return response, None, CLIENT_GONE
    return response, call.overhead(t_read), None
