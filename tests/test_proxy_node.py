"""A Node agent (the real ``openai`` npm package) measured through ``ragobs proxy``.

The package is installed with ``npm`` into a temporary directory at the
version pinned below; ``tests/node/stream_chat.mjs`` streams through the proxy
by changing only its base URL. Under ``./scripts/test`` (or
``RAGOBS_REQUIRE_COMPONENTS=1``) a missing ``node`` / ``npm``, or an install
that fails, is a failure, never a skip.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.provider_server import Reply
from tests.support import missing, require_binary
from tests.test_proxy import Env, make_env, sample_sum, sent  # noqa: F401 (fixtures)

#: The openai npm package the test installs (6.x runs on Node 20; 7.x needs 22).
OPENAI_NPM = "openai@6.30.1"
SCRIPT = Path(__file__).parent / "node" / "stream_chat.mjs"


@pytest.fixture(scope="module")
def node_agent(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """(node's path, the script copied next to an installed ``openai`` package)."""
    node = require_binary("node")
    npm = require_binary("npm")
    where = tmp_path_factory.mktemp("node-agent")
    (where / "package.json").write_text('{"private": true, "type": "module"}\n')
    done = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--loglevel=error",
                           OPENAI_NPM], cwd=where, capture_output=True, text=True,
                          timeout=300)
    if done.returncode != 0:
        missing(f"npm install {OPENAI_NPM} failed: {done.stderr.strip()[-500:]}")
    script = where / SCRIPT.name
    script.write_text(SCRIPT.read_text())
    return node, script


async def run_agent(node: str, script: Path, base_url: str, count: int) -> dict[str, Any]:
    process = await asyncio.create_subprocess_exec(
        node, str(script), base_url, str(count), cwd=script.parent,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, err.decode()
    found: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return found


async def test_a_node_agent_shows_up_as_an_instrumented_python_one(
        make_env: Any, node_agent: tuple[str, Path]) -> None:  # noqa: F811
    env: Env = await make_env()
    env.server.script(Reply(first_content_delay=0.2, input_tokens=17, output_tokens=20),
                      Reply(tool_call=False, input_tokens=5, output_tokens=9,
                            pieces=("a", "b", "c", "d")),
                      Reply(input_tokens=7, output_tokens=11, finish_reason="length"),
                      Reply(input_tokens=3, output_tokens=4))
    node, script = node_agent
    got = await run_agent(node, script, f"{env.url}/v1", 3)
    streams = got["streams"]
    assert [s["text"] for s in streams] == ["Hello world!", "abcd", "Hello world!"]
    # The usage chunk the proxy asked for never reached the agent.
    assert [s["usageChunks"] for s in streams] == [0, 0, 0]
    assert got["whole"] == {"text": "Hello world!", "usage": {
        "prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                      "accepted_prediction_tokens": 0,
                                      "rejected_prediction_tokens": 0}}}
    await env.settled(4)
    metrics = await env.metrics()
    assert sample_sum(metrics, "ragobs_requests_total", ragobs_outcome="ok",
                      gen_ai_provider_name="openai", gen_ai_request_model="gpt-4o-mini") == 4
    assert sample_sum(metrics, "gen_ai_client_token_usage_sum",
                      gen_ai_token_type="output") == 20 + 9 + 11 + 4
    assert sample_sum(metrics, "gen_ai_client_token_usage_sum",
                      gen_ai_token_type="input") == 17 + 5 + 7 + 3
    assert sample_sum(metrics, "gen_ai_client_operation_time_to_first_chunk_seconds_count") == 3
    assert sample_sum(metrics, "ragobs_finish_reasons_total",
                      ragobs_finish_reason="length") == 1
    # TTFT at the first content (after the 0.2 s stall), as the agent saw it.
    ttft = sample_sum(metrics, "gen_ai_client_operation_time_to_first_chunk_seconds_bucket",
                      le="0.16")
    assert ttft == 2  # the two answers without a stall; the first one is above 0.2 s
    assert streams[0]["ttftMs"] >= 200
    summary = await env.summary()
    assert summary["total_requests"] == 4 and summary["successful"] == 4
