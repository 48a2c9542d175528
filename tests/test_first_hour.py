"""What a new user meets first: instrumenting must not change their loop.

Over the real ``openai`` and ``anthropic`` clients and the local provider server.
"""

from __future__ import annotations

from typing import Any

import openai
import pytest

import ragobs
from ragobs import semconv
from tests.conftest import OTelHarness
from tests.provider_server import ANTHROPIC_MODEL, OPENAI_MODEL, ProviderServer, Reply
from tests.test_clients import (
    anthropic_args,
    anthropic_client,
    chat_args,
    only_span,
    openai_client,
)

REQUESTS = semconv.REQUESTS.name
USAGE = semconv.TOKEN_USAGE.name
ERRORS = semconv.ERRORS.name


# --- the usage chunk ragobs asked for is ragobs' own ----------------------------


async def test_the_usual_openai_loop_runs_unchanged_after_instrument_client(
        provider_server: ProviderServer, otel: OTelHarness) -> None:
    client = ragobs.instrument_client(openai_client(provider_server), telemetry=otel.telemetry)
    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True)
    answer = ""
    async for chunk in stream:                      # the loop almost every user has, verbatim
        answer += chunk.choices[0].delta.content or ""
    assert answer == Reply().text
    # ragobs asked for usage, read it, and kept it to itself: the figures are the provider's.
    assert provider_server.requests[0].body["stream_options"] == {"include_usage": True}
    assert otel.value(REQUESTS, ragobs__outcome="ok") == 1
    assert otel.total(USAGE, gen_ai__token__type="output") == 20
    assert otel.total(USAGE, gen_ai__token__type="input") == 17
    assert (only_span(otel).attributes or {})[semconv.USAGE_SOURCE] == "provider"


def test_the_usual_sync_loop_runs_unchanged_too(
        threaded_provider_server: Any, otel: OTelHarness) -> None:
    client = ragobs.instrument_client(openai_client(threaded_provider_server, sync=True),
                                      telemetry=otel.telemetry)
    answer = ""
    for chunk in client.chat.completions.create(**chat_args()):
        answer += chunk.choices[0].delta.content or ""
    assert answer == Reply().text
    assert otel.value(REQUESTS, ragobs__outcome="ok") == 1
    assert otel.total(USAGE, gen_ai__token__type="output") == 20


async def test_an_empty_answer_hides_the_usage_chunk_as_well(
        provider_server: ProviderServer, otel: OTelHarness) -> None:
    provider_server.script(Reply(pieces=()))
    client = ragobs.instrument_client(openai_client(provider_server), telemetry=otel.telemetry)
    chunks = [c async for c in await client.chat.completions.create(**chat_args())]
    assert chunks and all(c.choices for c in chunks)
    assert otel.total(USAGE, gen_ai__token__type="output") == 20


async def test_a_caller_who_asked_for_usage_still_gets_the_usage_chunk(
        provider_server: ProviderServer, otel: OTelHarness) -> None:
    client = ragobs.instrument_client(openai_client(provider_server), telemetry=otel.telemetry)
    stream = await client.chat.completions.create(
        **chat_args(stream_options={"include_usage": True}))
    chunks = [c async for c in stream]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 20
    assert otel.total(USAGE, gen_ai__token__type="output") == 20


async def test_with_content_capture_the_usage_chunk_is_hidden_too(
        provider_server: ProviderServer) -> None:
    rec = ragobs.testing.recording_telemetry(capture_content=True)
    try:
        client = ragobs.instrument_client(openai_client(provider_server),
                                          telemetry=rec.telemetry)
        chunks = [c async for c in await client.chat.completions.create(**chat_args())]
        assert all(c.choices for c in chunks)
    finally:
        rec.shutdown()


# --- a failure in the consumer's own code -------------------------------------------


async def test_the_consumers_failure_inside_async_with_is_outcome_error(
        provider_server: ProviderServer, otel: OTelHarness) -> None:
    provider_server.script(Reply(pieces=("a", "b", "c", "d"), chunk_delay=0.05))
    client = ragobs.instrument_client(openai_client(provider_server), telemetry=otel.telemetry)
    stream = await client.chat.completions.create(**chat_args())
    seen = 0
    with pytest.raises(KeyError):
        async with stream:
            async for chunk in stream:
                if chunk.choices[0].delta.content:
                    seen += 1
                if seen == 2:
                    raise KeyError("the consumer's own bug")
    assert otel.value(REQUESTS, ragobs__outcome="error") == 1
    assert otel.value(ERRORS, error__type="KeyError") == 1
    span = only_span(otel)
    assert (span.attributes or {})[semconv.ERROR_TYPE] == "KeyError"
    assert not provider_server.requests[0].completed  # the response was released


def test_the_consumers_failure_inside_with_is_outcome_error(
        threaded_provider_server: Any, otel: OTelHarness) -> None:
    client = ragobs.instrument_client(openai_client(threaded_provider_server, sync=True),
                                      telemetry=otel.telemetry)
    stream = client.chat.completions.create(**chat_args())
    with pytest.raises(ZeroDivisionError), stream:
        for _chunk in stream:
            _ = 1 / 0
    assert otel.value(REQUESTS, ragobs__outcome="error") == 1
    assert otel.value(ERRORS, error__type="ZeroDivisionError") == 1


async def test_a_break_inside_async_with_is_still_cancelled(
        provider_server: ProviderServer, otel: OTelHarness) -> None:
    client = ragobs.instrument_client(openai_client(provider_server), telemetry=otel.telemetry)
    async with await client.chat.completions.create(**chat_args()) as stream:
        async for _chunk in stream:
            break
    assert otel.value(REQUESTS, ragobs__outcome="cancelled") == 1
    assert otel.value(ERRORS) == 0


# --- instrument_client on what users pass it ------------------------------------------


async def test_instrument_client_takes_one_resource_of_a_client(
        provider_server: ProviderServer, otel: OTelHarness) -> None:
    client = openai_client(provider_server)
    completions = ragobs.instrument_client(client.chat.completions, telemetry=otel.telemetry)
    assert completions is client.chat.completions
    async for _chunk in await client.chat.completions.create(**chat_args()):
        pass
    assert otel.value(REQUESTS, ragobs__outcome="ok") == 1
    assert otel.total(USAGE, gen_ai__token__type="output") == 20
    # Only that resource: the Responses API of the same client is not observed.
    async for _event in await client.responses.create(model="gpt-4o-mini", input="hi",
                                                      stream=True):
        pass
    assert otel.value(REQUESTS) == 1


@pytest.mark.parametrize("wrong", [openai, "openai", object()])
def test_instrument_client_names_what_to_pass(wrong: object) -> None:
    with pytest.raises(TypeError, match="client must be an openai or anthropic client"):
        ragobs.instrument_client(wrong)


async def test_a_resource_of_another_kind_names_the_resources_it_takes(
        provider_server: ProviderServer) -> None:
    client = openai_client(provider_server)
    with pytest.raises(TypeError, match=r"client\.chat\.completions, client\.responses"):
        ragobs.instrument_client(client.models)


# --- observe_stream: what the chunks say, and what was meant ---------------------------


async def test_observe_stream_over_a_call_labels_the_model_and_provider_the_chunks_name(
        provider_server: ProviderServer, otel: OTelHarness) -> None:
    client = openai_client(provider_server)
    async for _chunk in ragobs.observe_stream(
            client.chat.completions.create(**chat_args()), telemetry=otel.telemetry):
        pass
    assert otel.value(REQUESTS, gen_ai__request__model=OPENAI_MODEL,
                      gen_ai__provider__name="openai", ragobs__outcome="ok") == 1
    assert otel.count(semconv.OPERATION_DURATION.name, gen_ai__request__model=OPENAI_MODEL,
                      gen_ai__provider__name="openai") == 1
    span = only_span(otel)
    assert span.name == f"chat {OPENAI_MODEL}"
    assert (span.attributes or {})[semconv.PROVIDER_NAME] == "openai"


async def test_observe_stream_over_anthropic_labels_it_anthropic(
        provider_server: ProviderServer, otel: OTelHarness) -> None:
    client = anthropic_client(provider_server)
    async for _event in ragobs.observe_stream(client.messages.create(**anthropic_args()),
                                              telemetry=otel.telemetry):
        pass
    assert otel.value(REQUESTS, gen_ai__request__model=ANTHROPIC_MODEL,
                      gen_ai__provider__name="anthropic") == 1


async def test_names_given_are_kept_over_what_the_chunks_say(
        provider_server: ProviderServer, otel: OTelHarness) -> None:
    client = openai_client(provider_server)
    async for _chunk in ragobs.observe_stream(client.chat.completions.create(**chat_args()),
                                              model="gpt-4o-mini", telemetry=otel.telemetry):
        pass
    assert otel.value(REQUESTS, gen_ai__request__model="gpt-4o-mini",
                      gen_ai__provider__name="openai") == 1
    assert otel.value(semconv.REQUESTS_ACTIVE.name) == 0


async def test_awaiting_observe_stream_says_to_iterate_it(
        provider_server: ProviderServer, otel: OTelHarness) -> None:
    client = openai_client(provider_server)
    call = client.chat.completions.create(**chat_args())
    with pytest.raises(TypeError, match="async for chunk in observe_stream"):
        await ragobs.observe_stream(call, telemetry=otel.telemetry)  # type: ignore[misc]
    await call  # (the un-awaited call was the user's)

    @ragobs.instrument_stream(telemetry=otel.telemetry)
    async def agent() -> Any:
        yield "x"

    with pytest.raises(TypeError, match="not an awaitable"):
        await agent()  # type: ignore[misc]
    assert otel.value(REQUESTS) == 0


async def test_observe_stream_over_a_non_streamed_call_says_stream_true(
        provider_server: ProviderServer, otel: OTelHarness) -> None:
    client = openai_client(provider_server)
    call = client.chat.completions.create(**chat_args(stream=False))
    with pytest.raises(TypeError, match=r"complete ChatCompletion.*stream=True"):
        async for _chunk in ragobs.observe_stream(call, telemetry=otel.telemetry):
            pass


def test_a_sync_non_streamed_response_is_refused_at_once(
        threaded_provider_server: Any, otel: OTelHarness) -> None:
    client = openai_client(threaded_provider_server, sync=True)
    completion = client.chat.completions.create(**chat_args(stream=False))
    with pytest.raises(TypeError, match="stream=True"):
        ragobs.observe_stream(completion, telemetry=otel.telemetry)
    assert otel.value(REQUESTS) == 0
