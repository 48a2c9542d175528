"""A whole (non-streamed) answer, read by the same chunk readers as a stream.

:mod:`ragobs.chunks` reads the stream shapes; a whole answer carries the
same facts in the shape of the stream's closing event, so it is handed to
the readers as that event: a Responses API ``response`` as its
``response.completed``, an Anthropic ``message`` as its ``message_start``
(model, id, usage) and ``message_delta`` (stop reason). A Chat Completions
``chat.completion`` is read as it is (usage, model, id, finish reasons).
Nothing in it counts as streamed output: a whole answer has no time to
first chunk.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ragobs._stream import StreamObservation
from ragobs.proxy._routing import Api

__all__ = ["read_answer"]


def read_answer(api: Api, answer: Mapping[str, Any], obs: StreamObservation) -> None:
    """Note what ``answer`` says (usage, model, id, finish reasons) on ``obs``."""
    if api is Api.CHAT:
        choices = answer.get("choices")
        # A whole completion has ``message`` where a chunk has ``delta``: no output.
        obs.chunk({k: v for k, v in answer.items() if k != "choices"} | {
            "choices": [{"index": c.get("index", 0), "finish_reason": c.get("finish_reason")}
                        for c in choices if isinstance(c, Mapping)]
            if isinstance(choices, list) else []})
    elif api is Api.RESPONSES:
        obs.chunk({"type": "response.completed", "response": answer})
    else:
        obs.chunk({"type": "message_start", "message": answer})
        reason = answer.get("stop_reason")
        if reason:
            obs.chunk({"type": "message_delta", "delta": {"stop_reason": reason}})
