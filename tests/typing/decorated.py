"""Checked by mypy --strict in tests/test_typing.py: decorated functions keep their types."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import assert_type

import ragobs


@ragobs.instrument_stream(operation="chat", provider="openai", model="gpt-4o")
async def answer(question: str, *, k: int = 3) -> AsyncIterator[str]:
    yield question * k


@ragobs.instrument_stream
def sync_answer(question: str) -> Iterator[str]:
    yield question


@ragobs.retry(attempts=3)
async def complete(prompt: str) -> int:
    return len(prompt)


@ragobs.retry
def complete_sync(prompt: str) -> int:
    return len(prompt)


@ragobs.fallback(message="sorry")
async def guarded(prompt: str) -> str:
    return prompt


@ragobs.stream_timeout(first_token=1.0)
async def timed(prompt: str) -> AsyncIterator[str]:
    yield prompt


async def use() -> None:
    assert_type(answer("q", k=2), AsyncIterator[str])
    assert_type(sync_answer("q"), Iterator[str])
    assert_type(await complete("p"), int)
    assert_type(complete_sync("p"), int)
    assert_type(await guarded("p"), str)
    assert_type(timed("p"), AsyncIterator[str])
    async for chunk in ragobs.observe_stream(answer("q")):
        assert_type(chunk, str)
    for item in ragobs.observe_stream(["a", "b"]):
        assert_type(item, str)
