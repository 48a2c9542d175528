"""observe_stream over a real openai AsyncStream, per token, in ratios.

    python -m bench.bench_sdk_stream

What a user of the OpenAI client pays: the SDK decodes SSE bytes and builds a
``ChatCompletionChunk`` per event, then ragobs reads it. The SSE body is the
wire format the API sends (role chunk, content chunks, finish chunk, usage
chunk, ``[DONE]``), served to the real ``openai.AsyncOpenAI`` by an in-memory
HTTP transport (``httpx2.MockTransport``), so no socket time hides either
side. Baseline: the same stream read by the user's own loop
(``choices[0].delta.content``); instrumented: the same loop over
``observe_stream(stream)``. Answers of 100, 1,000 and 3,000 tokens.
"""

from __future__ import annotations

import asyncio
import gc
import json
import time
from typing import Any

import httpx2
import openai
from prometheus_client import CollectorRegistry

from bench._harness import line, paired
from ragobs._runtime import setup
from ragobs._stream import observe_stream
from ragobs._telemetry import Telemetry

SIZES = (100, 1_000, 3_000)
ROUNDS = 7
BLOCK_TOKENS = 20_000


def _body(n: int) -> bytes:
    base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1,
            "model": "gpt-4o-mini-2024-07-18", "system_fingerprint": "fp_bench",
            "usage": None}

    def event(choices: list[dict[str, Any]], **extra: Any) -> str:
        return f"data: {json.dumps({**base, 'choices': choices, **extra})}\n\n"

    parts = [event([{"index": 0, "delta": {"role": "assistant", "content": "",
                                           "refusal": None},
                     "logprobs": None, "finish_reason": None}])]
    parts += [event([{"index": 0, "delta": {"content": " tok"}, "logprobs": None,
                      "finish_reason": None}]) for _ in range(n)]
    parts.append(event([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]))
    parts.append(event([], usage={"prompt_tokens": 12, "completion_tokens": n,
                                  "total_tokens": n + 12}))
    parts.append("data: [DONE]\n\n")
    return "".join(parts).encode()


def _client(body: bytes) -> openai.AsyncOpenAI:
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "text/event-stream"},
                               content=body)

    return openai.AsyncOpenAI(api_key="bench", base_url="http://bench.invalid/v1",
                              http_client=httpx2.AsyncClient(
                                  transport=httpx2.MockTransport(handler)))


async def _one(client: openai.AsyncOpenAI, telemetry: Telemetry | None) -> None:
    stream: Any = await client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True,
        stream_options={"include_usage": True})
    if telemetry is not None:
        stream = observe_stream(stream, model="gpt-4o-mini", telemetry=telemetry)
    async for chunk in stream:
        if chunk.choices:
            _ = chunk.choices[0].delta.content


def main() -> dict[str, float]:
    runtime = setup(serve=False, set_global=False, registry=CollectorRegistry())
    telemetry = runtime.telemetry
    figures: dict[str, float] = {}
    loop = asyncio.new_event_loop()
    try:
        for n in SIZES:
            client = _client(_body(n))
            streams = max(1, BLOCK_TOKENS // n)

            def block(tel: Telemetry | None, client: openai.AsyncOpenAI = client,
                      streams: int = streams, n: int = n) -> float:
                async def run() -> None:
                    for _ in range(streams):
                        await _one(client, tel)

                t0 = time.perf_counter()
                loop.run_until_complete(run())
                return (time.perf_counter() - t0) / (streams * n)

            cost, base, ratio = paired(lambda: block(telemetry), lambda: block(None),
                                       rounds=ROUNDS)
            print(line(f"openai AsyncStream, {n:,}-token answers", cost, base,
                       "SDK stream alone", target="info", ratio=ratio))
            figures[f"sdk_stream_ratio_{n}"] = ratio
            gc.collect()  # the SDK's stream generators are finalized here, not mid-block
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
        runtime.shutdown()
    return figures


if __name__ == "__main__":
    main()
