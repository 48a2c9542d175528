"""Azure OpenAI clients, and servers that reject ``stream_options``, over HTTP.

The real ``openai.AzureOpenAI`` / ``AsyncAzureOpenAI`` talk to
:class:`tests.provider_server.ProviderServer` on Azure's deployment paths.
Older Azure API versions answer ``stream_options`` with a 400; the call must
still answer, and the refusal must cost no failed call.
"""

from __future__ import annotations

import logging
from typing import Any

import openai
import pytest

import ragobs
from ragobs import semconv
from ragobs._report import Reporter, as_json
from tests.conftest import OTelHarness
from tests.provider_server import ProviderServer, Reply, Seen, ThreadedProviderServer
from tests.test_clients import chat_args, only_span, openai_client

CALLS = semconv.OPERATION_DURATION.name
REQUESTS = semconv.REQUESTS.name
ERRORS = semconv.ERRORS.name
RETRIES = semconv.RETRY_ATTEMPTS.name
AZURE = "azure.ai.openai"
API_VERSION = "2024-02-01"
DEPLOYMENT = "gpt-4o-mini-dep"
REJECTED = "stream_options.rejected"
#: What Azure answers an API version that does not know ``stream_options``.
STREAM_OPTIONS_400 = Reply(status=400, error_body={"error": {
    "message": "Unrecognized request argument supplied: stream_options",
    "type": "invalid_request_error", "param": None, "code": None}})
ANSWER = Reply().text


def azure_client(server: ProviderServer | ThreadedProviderServer, *, sync: bool = False,
                 **options: Any) -> Any:
    cls = openai.AzureOpenAI if sync else openai.AsyncAzureOpenAI
    return cls(azure_endpoint=server.azure_url, azure_deployment=DEPLOYMENT,
               api_version=API_VERSION, api_key="test", **options)


async def read(stream: Any) -> str:
    return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])


def rejections(otel: OTelHarness) -> list[Any]:
    return [e for s in otel.spans() for e in s.events if e.name == REJECTED]


def assert_dropped(first: Seen, second: Seen) -> None:
    """The probe carried ragobs' stream_options, the request sent again did not."""
    assert first.body["stream_options"] == {"include_usage": True}
    assert "stream_options" not in second.body
    assert {k: v for k, v in first.body.items() if k != "stream_options"} == second.body


def assert_one_ok_call(otel: OTelHarness, provider: str = AZURE) -> None:
    assert otel.value(REQUESTS) == otel.value(REQUESTS, ragobs__outcome="ok") == 1
    assert otel.value(ERRORS) == 0
    assert otel.count(CALLS) == otel.count(CALLS, gen_ai__provider__name=provider) == 1
    assert otel.count(CALLS, ragobs__outcome="ok") == 1


# --- the label --------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["azure_endpoint", "base_url", "resource"])
async def test_azure_clients_are_labelled_azure_ai_openai(
        provider_server: ProviderServer, otel: OTelHarness, form: str) -> None:
    if form == "base_url":  # the SDK puts /deployments/{model} in the path
        client = openai.AsyncAzureOpenAI(base_url=f"{provider_server.azure_url}/openai",
                                         api_version=API_VERSION, api_key="test")
        path = "/openai/deployments/gpt-4o-mini/chat/completions"
    else:
        client = azure_client(provider_server)
        path = f"/openai/deployments/{DEPLOYMENT}/chat/completions"
    target = client.chat.completions if form == "resource" else client
    ragobs.instrument_client(target, telemetry=otel.telemetry)
    assert await read(await client.chat.completions.create(**chat_args())) == ANSWER
    [seen] = provider_server.requests
    assert (seen.path, seen.api, seen.query) == (path, "chat", {"api-version": API_VERSION})
    assert seen.body["stream_options"] == {"include_usage": True}
    assert_one_ok_call(otel)
    attrs = only_span(otel).attributes or {}
    assert attrs[semconv.PROVIDER_NAME] == AZURE
    assert attrs[semconv.USAGE_SOURCE] == "provider"


async def test_plain_openai_clients_keep_the_openai_label(
        provider_server: ProviderServer, otel: OTelHarness) -> None:
    client = ragobs.instrument_client(openai_client(provider_server), telemetry=otel.telemetry)
    await read(await client.chat.completions.create(**chat_args()))
    assert (only_span(otel).attributes or {})[semconv.PROVIDER_NAME] == "openai"


# --- a server that rejects stream_options -----------------------------------------------


@pytest.mark.parametrize("make", [azure_client, openai_client], ids=["azure", "openai"])
async def test_a_rejected_stream_options_is_dropped_and_the_call_answered(
        provider_server: ProviderServer, otel: OTelHarness, caplog: pytest.LogCaptureFixture,
        make: Any) -> None:
    provider = AZURE if make is azure_client else "openai"
    provider_server.script(STREAM_OPTIONS_400)
    client = ragobs.instrument_client(make(provider_server), telemetry=otel.telemetry)
    with caplog.at_level(logging.INFO, logger="ragobs"):
        assert await read(await client.chat.completions.create(**chat_args())) == ANSWER
    probe, answered = provider_server.requests
    assert (probe.reply.status, answered.reply.status) == (400, 200)
    assert_dropped(probe, answered)
    assert_one_ok_call(otel, provider)
    span = only_span(otel)
    attrs = span.attributes or {}
    assert attrs[semconv.USAGE_SOURCE] == "counted"
    assert attrs[semconv.USAGE_OUTPUT_TOKENS] == len(Reply().pieces)
    [event] = [e for e in span.events if e.name == REJECTED]
    assert (event.attributes or {})[semconv.EVENT_ERROR_TYPE] == "400"
    [record] = [r for r in caplog.records if "stream_options" in r.getMessage()]
    assert record.levelno == logging.INFO

    # The client remembers: one request, no stream_options, no second report.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ragobs"):
        assert await read(await client.chat.completions.create(**chat_args())) == ANSWER
    assert len(provider_server.requests) == 3
    assert "stream_options" not in provider_server.requests[2].body
    assert len(rejections(otel)) == 1
    assert not [r for r in caplog.records if "stream_options" in r.getMessage()]
    assert otel.value(REQUESTS, ragobs__outcome="ok") == 2
    assert otel.value(ERRORS) == 0


async def test_the_probe_is_no_failed_call_of_an_agents_turn_under_retry(
        provider_server: ProviderServer, otel: OTelHarness) -> None:
    # The probe, then a real failure of the request sent again: retry_stream retries
    # that (through the client without SDK retries), not the probe.
    provider_server.script(STREAM_OPTIONS_400, Reply(status=500), Reply())
    client = ragobs.instrument_client(azure_client(provider_server), telemetry=otel.telemetry)

    @ragobs.instrument_stream(agent="azure-agent", telemetry=otel.telemetry)
    async def agent() -> Any:
        async for chunk in ragobs.retry_stream(
                lambda: client.chat.completions.create(**chat_args()),
                attempts=3, initial=0.01, jitter=0.0, name="llm", telemetry=otel.telemetry):
            yield chunk

    assert await read(agent()) == ANSWER
    probe, failed, answered = provider_server.requests
    assert_dropped(probe, failed)
    assert "stream_options" not in answered.body
    assert otel.value(RETRIES, ragobs__name="llm", error__type="500") == 1
    assert otel.value(RETRIES) == 1
    assert otel.value(REQUESTS) == otel.value(REQUESTS, ragobs__outcome="ok") == 1
    assert otel.count(CALLS, ragobs__outcome="error", error__type="500") == 1
    assert otel.count(CALLS, ragobs__outcome="ok") == 1
    assert otel.count(CALLS) == 2
    turn = next(s for s in otel.spans() if s.name == "invoke_agent azure-agent")
    assert (turn.attributes or {})[semconv.FAILED_CALLS] == 1  # the 500, not the probe
    summary = as_json(Reporter.of(otel.telemetry).report())
    assert summary["calls"][0]["calls"] == 2 and summary["calls"][0]["failed"] == 1  # type: ignore[index]
    assert len(rejections(otel)) == 1


async def test_a_failure_after_the_probe_does_not_chain_the_400(
        provider_server: ProviderServer, otel: OTelHarness) -> None:
    provider_server.script(STREAM_OPTIONS_400, Reply(status=500))
    client = ragobs.instrument_client(azure_client(provider_server, max_retries=0),
                                      telemetry=otel.telemetry)
    with pytest.raises(openai.InternalServerError) as raised:
        await client.chat.completions.create(**chat_args())
    chain: list[BaseException] = []
    exc: BaseException | None = raised.value
    while exc is not None:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    assert not [e for e in chain if isinstance(e, openai.BadRequestError)], chain
    assert len(provider_server.requests) == 2
    assert otel.value(REQUESTS, ragobs__outcome="error", error__type="500") == 1
    assert otel.value(ERRORS) == otel.value(ERRORS, error__type="500") == 1


async def test_a_400_for_another_reason_fails_the_call(
        provider_server: ProviderServer, otel: OTelHarness) -> None:
    provider_server.script(Reply(status=400))
    client = ragobs.instrument_client(azure_client(provider_server), telemetry=otel.telemetry)
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(**chat_args())
    assert len(provider_server.requests) == 1
    assert otel.value(REQUESTS, ragobs__outcome="error", error__type="400") == 1
    assert otel.value(ERRORS, error__type="400") == 1
    assert rejections(otel) == []
    await read(await client.chat.completions.create(**chat_args()))
    assert provider_server.requests[1].body["stream_options"] == {"include_usage": True}


async def test_the_users_own_stream_options_rejected_propagates(
        provider_server: ProviderServer, otel: OTelHarness) -> None:
    provider_server.script(STREAM_OPTIONS_400)
    client = ragobs.instrument_client(azure_client(provider_server), telemetry=otel.telemetry)
    with pytest.raises(openai.BadRequestError, match="stream_options"):
        await client.chat.completions.create(
            **chat_args(stream_options={"include_usage": True}))
    assert len(provider_server.requests) == 1
    assert otel.value(REQUESTS, ragobs__outcome="error", error__type="400") == 1
    assert rejections(otel) == []
    # Not learnt from the user's own request: ragobs still asks for usage.
    await read(await client.chat.completions.create(**chat_args()))
    assert provider_server.requests[1].body["stream_options"] == {"include_usage": True}


def test_sync_azure_client_drops_a_rejected_stream_options(
        threaded_provider_server: ThreadedProviderServer, otel: OTelHarness) -> None:
    server = threaded_provider_server
    server.script(STREAM_OPTIONS_400)
    client = ragobs.instrument_client(azure_client(server, sync=True),
                                      telemetry=otel.telemetry)
    text = "".join(c.choices[0].delta.content or ""
                   for c in client.chat.completions.create(**chat_args()) if c.choices)
    assert text == ANSWER
    probe, answered = (server.wait_done(s) for s in server.requests)
    assert_dropped(probe, answered)
    assert_one_ok_call(otel)
    assert (only_span(otel).attributes or {})[semconv.USAGE_SOURCE] == "counted"
    assert len(rejections(otel)) == 1
    with client.chat.completions.create(**chat_args()) as stream:
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == ANSWER
    assert len(server.requests) == 3
    assert "stream_options" not in server.wait_done(server.requests[2]).body
