"""observe_stream over real OpenAI ChatCompletionChunk objects, per token, in ratios.

    python -m bench.bench_chunks

Each stream is what the Chat Completions API sends with
``stream_options={"include_usage": True}``: a role chunk, N content chunks of
one short word, a finish chunk (``finish_reason="stop"``) and a usage chunk
with ``choices: []``, built with ``ChatCompletionChunk.model_validate`` once
and replayed from an async generator (no sleeps).

The baseline is a user's own loop, reading ``choices[0].delta.content``, over
the same source through a bare pass-through generator (so both sides pay one
generator layer, as bench_stream's ``bare``); the instrumented side is
``observe_stream(source, telemetry=...)`` read by the same loop. Per-token
figures are the time of whole streams divided by their content chunks, so
the fixed per-stream cost (span, histograms) is included: short streams run
many to a block. Streams of 100, 1,000 and 10,000 tokens; the same figures
for plain ``str`` chunks, for comparison.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterable, Callable
from typing import Any, TypeVar

from openai.types.chat import ChatCompletionChunk
from prometheus_client import CollectorRegistry

from bench._harness import bare, line, paired
from ragobs._runtime import setup
from ragobs._stream import observe_stream
from ragobs._telemetry import Telemetry

T = TypeVar("T")

SIZES = (100, 1_000, 10_000)
#: Content chunks per timed block (short streams run many to a block): some
#: 30-200 ms a block, long enough that one scheduler hiccup stays small.
BLOCK_TOKENS = {"openai": 100_000, "str": 200_000}
ROUNDS = 15
MODEL = "gpt-4o-mini-2024-07-18"
WORDS = ("The", " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog", ".")


def openai_chunks(n: int) -> list[ChatCompletionChunk]:
    """One stream of ``n`` content chunks, exactly as the API sends it."""
    created = 1_726_000_000

    def chunk(choices: list[dict[str, Any]], usage: dict[str, Any] | None = None
              ) -> ChatCompletionChunk:
        return ChatCompletionChunk.model_validate({
            "id": "chatcmpl-A9bench0000000000000000000", "object": "chat.completion.chunk",
            "created": created, "model": MODEL, "system_fingerprint": "fp_e2bde53e6e",
            "choices": choices, "usage": usage,
        })

    def choice(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}

    chunks = [chunk([choice({"role": "assistant", "content": "", "refusal": None})])]
    chunks += [chunk([choice({"content": WORDS[i % len(WORDS)]})]) for i in range(n)]
    chunks.append(chunk([choice({}, "stop")]))
    chunks.append(chunk([], {
        "prompt_tokens": 42, "completion_tokens": n, "total_tokens": 42 + n,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }))
    return chunks


def str_chunks(n: int) -> list[str]:
    return [WORDS[i % len(WORDS)] for i in range(n)]


async def replay(chunks: list[T]) -> AsyncGenerator[T, None]:
    """A pre-built stream, as fast as the loop goes."""
    for chunk in chunks:
        yield chunk


async def read_openai(stream: AsyncIterable[ChatCompletionChunk]) -> str | None:
    """What a user's own loop does with each chunk."""
    content = None
    async for chunk in stream:
        if chunk.choices:
            content = chunk.choices[0].delta.content
    return content


async def read_str(stream: AsyncIterable[str]) -> str | None:
    content = None
    async for chunk in stream:
        content = chunk
    return content


def per_token(chunks: list[Any], tokens: int, streams: int,
              wrap: Callable[[AsyncIterable[Any]], AsyncIterable[Any]],
              read: Callable[[AsyncIterable[Any]], Any]) -> Callable[[], float]:
    """One block: ``streams`` whole streams of ``tokens`` content chunks, time per token."""

    async def run() -> float:
        t0 = time.perf_counter()
        for _ in range(streams):
            await read(wrap(replay(chunks)))
        return (time.perf_counter() - t0) / (streams * tokens)

    return lambda: asyncio.run(run())


def paired_spread(fn: Callable[[], float], base: Callable[[], float], rounds: int = ROUNDS
                  ) -> tuple[float, float, float, float, float]:
    """``_harness.paired`` (interleaved, medians), plus the min and max of the
    per-round ratios."""
    costs: list[float] = []
    bases: list[float] = []

    def timed_fn() -> float:
        costs.append(fn())
        return costs[-1]

    def timed_base() -> float:
        bases.append(base())
        return bases[-1]

    cost, base_cost, ratio = paired(timed_fn, timed_base, rounds)
    ratios = [c / b for c, b in zip(costs, bases, strict=True)]
    return cost, base_cost, ratio, min(ratios), max(ratios)


def main() -> dict[str, float]:
    runtime = setup(serve=False, set_global=False, registry=CollectorRegistry())
    telemetry: Telemetry = runtime.telemetry

    def observed(stream: AsyncIterable[Any]) -> AsyncIterable[Any]:
        return observe_stream(stream, telemetry=telemetry)

    figures: dict[str, float] = {}
    for kind, build, read in (("openai", openai_chunks, read_openai),
                              ("str", str_chunks, read_str)):
        for tokens in SIZES:
            chunks: list[Any] = build(tokens)
            # one untimed stream each: readers resolved, label sets cached
            asyncio.run(read(observed(replay(chunks))))
            streams = max(1, BLOCK_TOKENS[kind] // tokens)
            cost, base_cost, ratio, lo, hi = paired_spread(
                per_token(chunks, tokens, streams, observed, read),
                per_token(chunks, tokens, streams, bare, read))
            target = "<= 1.30x" if kind == "openai" and tokens == 1_000 else "info"
            name = f"{kind} chunks, {tokens:,}-token streams"
            print(line(name, cost, base_cost, "bare passthrough", target=target, ratio=ratio)
                  + f"   min-max {lo:.2f}-{hi:.2f}x", flush=True)
            key = f"{kind}_{tokens}"
            figures.update({f"{key}_per_token_ns": cost * 1e9,
                            f"{key}_per_token_bare_ns": base_cost * 1e9,
                            f"{key}_ratio": ratio, f"{key}_ratio_min": lo,
                            f"{key}_ratio_max": hi})
    runtime.shutdown()
    return figures


if __name__ == "__main__":
    main()
