"""Instrumented streams: every outcome, exact counts, span and metric content."""

from __future__ import annotations

import asyncio
import bisect
import gc
import inspect
import json
import random
import time
from collections.abc import AsyncGenerator, Generator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import StatusCode

from ragobs import semconv
from ragobs._stages import stage
from ragobs._stream import (
    CONTENT_LIMIT,
    error_type,
    instrument_stream,
    observe,
    observe_stream,
)
from ragobs._telemetry import ExemplarTable, Telemetry
from tests.conftest import OTelHarness

DURATION = semconv.OPERATION_DURATION.name
TTFT = semconv.TIME_TO_FIRST_CHUNK.name
TPOC = semconv.TIME_PER_OUTPUT_CHUNK.name
USAGE = semconv.TOKEN_USAGE.name
RATE = semconv.OUTPUT_TOKEN_RATE.name
REQUESTS = semconv.REQUESTS.name
ERRORS = semconv.ERRORS.name
ACTIVE = semconv.REQUESTS_ACTIVE.name


class ProviderError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


async def tokens(n: int, *, fail_at: int | None = None, exc: BaseException | None = None,
                 closed: list[bool] | None = None, leading_empty: int = 0,
                 gap: float = 0.0) -> AsyncGenerator[str, None]:
    try:
        for _ in range(leading_empty):
            yield ""
        for i in range(n):
            if i == fail_at:
                raise exc or RuntimeError("boom")
            if gap:
                await asyncio.sleep(gap)
            yield f"t{i}"
        if fail_at == n:
            raise exc or RuntimeError("boom")
    finally:
        if closed is not None:
            closed.append(True)


def only_span(otel: OTelHarness):  # type: ignore[no-untyped-def]
    spans = otel.spans()
    assert len(spans) == 1, [s.name for s in spans]
    return spans[0]


async def consume(stream: AsyncGenerator[str, None]) -> list[str]:
    return [chunk async for chunk in stream]


async def test_ok_stream_records_span_and_every_histogram(otel: OTelHarness) -> None:
    stream = observe_stream(tokens(5, leading_empty=2, gap=0.001), operation="chat",
                            model="gpt-4o", provider="openai", telemetry=otel.telemetry)
    assert await consume(stream) == ["", "", "t0", "t1", "t2", "t3", "t4"]

    ok = {"ragobs__outcome": "ok", "gen_ai__request__model": "gpt-4o"}
    assert otel.value(REQUESTS, **ok) == 1
    assert otel.value(ERRORS) == 0
    assert otel.value(ACTIVE) == 0
    for name in (DURATION, TTFT, RATE):
        assert otel.count(name, **ok) == 1, name
    assert otel.count(TPOC, **ok) == 4  # one value per output chunk after the first
    assert otel.count(USAGE, gen_ai__token__type="output") == 1
    assert otel.total(USAGE, gen_ai__token__type="output") == 5  # empty chunks are not tokens
    assert otel.total(TTFT) < otel.total(DURATION)
    assert otel.total(TPOC) == pytest.approx(otel.total(DURATION) - otel.total(TTFT), rel=0.5)

    span = only_span(otel)
    assert span.name == "chat gpt-4o"
    assert span.kind.name == "CLIENT"
    assert span.status.status_code is StatusCode.UNSET
    attrs = dict(span.attributes or {})
    assert attrs[semconv.OPERATION_NAME] == "chat"
    assert attrs[semconv.PROVIDER_NAME] == "openai"
    assert attrs[semconv.USAGE_OUTPUT_TOKENS] == 5
    assert attrs[semconv.RESPONSE_TIME_TO_FIRST_CHUNK] == pytest.approx(otel.total(TTFT))
    assert attrs[semconv.OUTCOME] == "ok"
    assert [e.name for e in span.events] == [semconv.EVENT_FIRST_CHUNK]


async def test_mid_stream_error_is_an_error_after_tokens(otel: OTelHarness) -> None:
    stream = observe_stream(tokens(10, fail_at=3, exc=ProviderError(503)), model="m",
                            telemetry=otel.telemetry)
    got: list[str] = []
    with pytest.raises(ProviderError):
        async for chunk in stream:
            got.append(chunk)
    assert got == ["t0", "t1", "t2"]
    assert otel.value(REQUESTS, ragobs__outcome="error", error__type="503") == 1
    assert otel.value(ERRORS, error__type="503") == 1
    assert otel.count(TTFT, ragobs__outcome="error") == 1
    # Semconv: a failed call without provider usage records no token figure.
    assert otel.count(USAGE, ragobs__outcome="error") == 0
    span = only_span(otel)
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes[semconv.ERROR_TYPE] == "503"  # type: ignore[index]
    assert semconv.USAGE_OUTPUT_TOKENS not in span.attributes  # type: ignore[operator]
    assert [e.name for e in span.events] == [semconv.EVENT_FIRST_CHUNK, "exception"]


async def test_error_before_first_token_has_no_ttft(otel: OTelHarness) -> None:
    with pytest.raises(ConnectionResetError):
        await consume(observe_stream(tokens(3, fail_at=0, exc=ConnectionResetError()),
                                     telemetry=otel.telemetry))
    assert otel.value(REQUESTS, ragobs__outcome="error", error__type="ConnectionResetError") == 1
    assert otel.count(TTFT) == 0
    assert otel.count(DURATION, ragobs__outcome="error") == 1
    span = only_span(otel)
    assert span.status.status_code is StatusCode.ERROR
    assert semconv.RESPONSE_TIME_TO_FIRST_CHUNK not in (span.attributes or {})


async def test_break_then_aclose_is_cancelled_and_closes_the_source(otel: OTelHarness) -> None:
    closed: list[bool] = []
    stream = observe_stream(tokens(100, closed=closed), telemetry=otel.telemetry)
    async for chunk in stream:
        if chunk == "t4":
            break
    assert otel.value(REQUESTS) == 0  # still open until closed
    assert otel.value(ACTIVE) == 1
    await stream.aclose()
    assert closed == [True]
    assert otel.value(REQUESTS, ragobs__outcome="cancelled") == 1
    assert otel.value(ERRORS) == 0
    assert otel.value(ACTIVE) == 0
    span = only_span(otel)
    assert span.status.status_code is StatusCode.UNSET
    assert span.attributes[semconv.OUTCOME] == "cancelled"  # type: ignore[index]
    assert span.attributes[semconv.USAGE_OUTPUT_TOKENS] == 5  # type: ignore[index]
    await stream.aclose()  # closing twice records nothing more
    assert otel.value(REQUESTS) == 1


async def test_abandoned_stream_is_recorded_once_when_collected(otel: OTelHarness) -> None:
    closed: list[bool] = []

    async def read_two() -> None:
        async for chunk in observe_stream(tokens(100, closed=closed), telemetry=otel.telemetry):
            if chunk == "t1":
                break  # no aclose(): the generator is dropped

    await read_two()
    gc.collect()
    for _ in range(5):  # asyncio's finalizer hook closes it in a task
        await asyncio.sleep(0)
    assert closed == [True]
    assert otel.value(REQUESTS, ragobs__outcome="cancelled") == 1
    assert len(otel.spans()) == 1


async def test_task_cancellation_is_cancelled_not_error(otel: OTelHarness) -> None:
    started = asyncio.Event()

    async def slow() -> AsyncGenerator[str, None]:
        yield "first"
        started.set()
        await asyncio.sleep(3600)
        yield "never"

    async def consumer() -> None:
        async for _ in observe_stream(slow(), telemetry=otel.telemetry):
            pass

    task = asyncio.create_task(consumer())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert otel.value(REQUESTS, ragobs__outcome="cancelled") == 1
    assert otel.value(ERRORS) == 0
    assert only_span(otel).status.status_code is StatusCode.UNSET


async def test_timeout_from_the_source_is_outcome_timeout(otel: OTelHarness) -> None:
    with pytest.raises(TimeoutError):
        await consume(observe_stream(tokens(5, fail_at=2, exc=TimeoutError("idle")),
                                     telemetry=otel.telemetry))
    assert otel.value(REQUESTS, ragobs__outcome="timeout", error__type="TimeoutError") == 1
    assert otel.value(ERRORS, ragobs__outcome="timeout") == 1
    assert only_span(otel).status.status_code is StatusCode.ERROR


async def test_exact_counts_after_many_concurrent_streams(otel: OTelHarness) -> None:
    rng = random.Random(7)
    plan = [rng.choice(["ok", "error", "early", "timeout"]) for _ in range(400)]
    expected_tokens = 0

    async def one(kind: str) -> None:
        nonlocal expected_tokens
        n = rng.randint(1, 20)
        if kind == "ok":
            expected_tokens += n
            await consume(observe_stream(tokens(n, gap=0.0005), telemetry=otel.telemetry))
        elif kind == "error":
            with pytest.raises(RuntimeError):
                await consume(observe_stream(tokens(n, fail_at=n // 2, gap=0.0005),
                                             telemetry=otel.telemetry))
        elif kind == "timeout":
            with pytest.raises(TimeoutError):
                await consume(observe_stream(tokens(n, fail_at=n, exc=TimeoutError()),
                                             telemetry=otel.telemetry))
        else:
            stream = observe_stream(tokens(n + 1, gap=0.0005), telemetry=otel.telemetry)
            async for _ in stream:
                break
            await stream.aclose()

    await asyncio.gather(*(one(kind) for kind in plan))
    for kind, outcome in (("ok", "ok"), ("error", "error"), ("early", "cancelled"),
                          ("timeout", "timeout")):
        assert otel.value(REQUESTS, ragobs__outcome=outcome) == plan.count(kind), kind
    assert otel.value(ERRORS) == plan.count("error") + plan.count("timeout")
    assert otel.value(ACTIVE) == 0
    assert otel.count(DURATION) == len(plan)
    assert otel.total(USAGE, ragobs__outcome="ok") == expected_tokens
    assert len(otel.spans()) == len(plan)
    summary = otel.telemetry.summary.snapshot()
    assert summary.total_requests == len(plan)
    assert summary.successful == plan.count("ok")
    assert summary.failed == plan.count("error") + plan.count("timeout")
    assert summary.cancelled == plan.count("early")
    assert summary.in_flight == 0
    assert summary.avg_tokens == pytest.approx(expected_tokens / plan.count("ok"))


async def test_decorator_keeps_signature_and_observes_each_call(otel: OTelHarness) -> None:
    @instrument_stream(operation="rag", model="m1", provider="p", telemetry=otel.telemetry)
    async def answer(question: str, *, limit: int = 3) -> AsyncGenerator[str, None]:
        """Answer a question."""
        for i in range(limit):
            yield f"{question}{i}"

    assert answer.__name__ == "answer"
    assert answer.__doc__ == "Answer a question."
    assert list(inspect.signature(answer).parameters) == ["question", "limit"]
    assert await consume(answer("q", limit=2)) == ["q0", "q1"]
    assert await consume(answer("r")) == ["r0", "r1", "r2"]
    assert otel.value(REQUESTS, gen_ai__operation__name="rag") == 2
    assert {s.name for s in otel.spans()} == {"rag m1"}


def test_sync_generators_are_observed_too(otel: OTelHarness) -> None:
    @instrument_stream(model="sync-model", telemetry=otel.telemetry)
    def answer(n: int) -> Generator[str, None, None]:
        yield from (f"w{i}" for i in range(n))

    assert list(answer(4)) == ["w0", "w1", "w2", "w3"]
    gen = observe_stream(iter(["a", "", "b", "c"]), telemetry=otel.telemetry)
    assert next(gen) == "a"
    gen.close()
    assert otel.value(REQUESTS, ragobs__outcome="ok") == 1
    assert otel.value(REQUESTS, ragobs__outcome="cancelled") == 1
    assert otel.total(USAGE, ragobs__outcome="ok") == 4


async def test_hand_written_loop_form(otel: OTelHarness) -> None:
    async with observe(model="manual", telemetry=otel.telemetry) as obs:
        await asyncio.sleep(0.002)
        obs.tokens(3)
        obs.tokens(2)
        obs.set_usage(input_tokens=12)
    with pytest.raises(ValueError, match="bad"):
        with observe(model="manual", telemetry=otel.telemetry) as obs:
            obs.first_token()
            raise ValueError("bad")
    assert otel.value(REQUESTS, ragobs__outcome="ok") == 1
    assert otel.value(REQUESTS, ragobs__outcome="error", error__type="ValueError") == 1
    assert otel.total(USAGE, gen_ai__token__type="output", ragobs__outcome="ok") == 5
    assert otel.total(USAGE, gen_ai__token__type="input") == 12
    assert otel.total(TTFT, ragobs__outcome="ok") >= 0.002


def test_tokens_checks_every_new_value_after_the_fast_path(otel: OTelHarness) -> None:
    """tokens() checks a value once, then takes an identity test for the same
    object; whatever else comes is still checked, and the count stays exact."""
    big = 10**6
    with observe(model="m", telemetry=otel.telemetry) as obs:
        obs.tokens(0)  # no first token yet, nothing remembered
        for _ in range(1000):
            obs.tokens(1)
        for bad in (-1, True, 1.0, "1", None):
            with pytest.raises(ValueError, match="n must be an int >= 0"):
                obs.tokens(bad)  # type: ignore[arg-type]
        obs.tokens(big)
        obs.tokens(big)
        obs.tokens(1)
        with pytest.raises(ValueError, match="n must be an int >= 0"):
            obs.tokens(-big)
        assert obs.token_count == 1000 + 2 * big + 1
    assert otel.total(USAGE, gen_ai__token__type="output") == 1000 + 2 * big + 1
    (span,) = otel.spans()
    assert [e.name for e in span.events] == [semconv.EVENT_FIRST_CHUNK]


def test_bound_histograms_under_a_view_with_another_aggregation() -> None:
    """A view giving the token histogram exponential buckets: the bound series
    still records exactly what the SDK's own record gives (scale, buckets,
    sum, min, max)."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation, View

    reader = InMemoryMetricReader()
    aggregation = ExponentialBucketHistogramAggregation()
    provider = MeterProvider(metric_readers=[reader], views=[
        View(instrument_name=USAGE, aggregation=aggregation),
        View(instrument_name="twin", aggregation=aggregation)])
    tel = Telemetry(tracer_provider=TracerProvider(), meter_provider=provider)
    sizes = [1, 7, 30, 300, 2_000, 7]
    for n in sizes:
        list(observe_stream(["a"] * n, model="m", telemetry=tel))
    (label_set,) = tel.label_sets.values()
    ending = label_set.end(semconv.Outcome.OK, None)
    assert ending.output_tokens._targets  # the fast path was taken
    twin = provider.get_meter("twin").create_histogram("twin")
    for n in sizes:
        twin.record(n, ending.output_attrs)
    data = reader.get_metrics_data()
    assert data is not None
    points = {m.name: m.data.data_points for rm in data.resource_metrics
              for sm in rm.scope_metrics for m in sm.metrics}
    (ours,), (sdk,) = points[USAGE], points["twin"]
    assert (ours.count, ours.sum, ours.min, ours.max, ours.scale) == (
        sdk.count, sdk.sum, sdk.min, sdk.max, sdk.scale)
    assert (ours.positive.offset, list(ours.positive.bucket_counts)) == (
        sdk.positive.offset, list(sdk.positive.bucket_counts))
    provider.shutdown()


async def test_count_tokens_and_provider_usage(otel: OTelHarness) -> None:
    async def words() -> AsyncGenerator[str, None]:
        for text in ("hello big", "", "world"):
            yield text

    await consume(observe_stream(words(), count_tokens=lambda s: len(s.split()),
                                 telemetry=otel.telemetry))
    assert otel.total(USAGE) == 3


async def test_stage_spans_before_the_first_token_are_children(otel: OTelHarness) -> None:
    @instrument_stream(model="m", telemetry=otel.telemetry)
    async def rag() -> AsyncGenerator[str, None]:
        async with stage("route", telemetry=otel.telemetry):
            await asyncio.sleep(0)
        async with stage("retrieve", source="python_docs", telemetry=otel.telemetry):
            await asyncio.sleep(0)
        yield "answer"

    await consume(rag())
    spans = {s.name: s for s in otel.spans()}
    root = spans["chat m"]
    for child in ("route", "retrieve python_docs"):
        assert spans[child].parent is not None
        assert spans[child].parent.span_id == root.context.span_id
        assert spans[child].context.trace_id == root.context.trace_id
    assert otel.count(semconv.STAGE_DURATION.name, ragobs__stage="retrieve",
                      gen_ai__data_source__id="python_docs") == 1


async def test_label_values_are_capped(otel: OTelHarness) -> None:
    from ragobs._telemetry import Telemetry

    tel = Telemetry(tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider,
                    max_label_values=3)
    for i in range(6):
        await consume(observe_stream(tokens(1), model=f"model-{i}", telemetry=tel))
    models = {p.attributes[semconv.REQUEST_MODEL] for p in otel.points(REQUESTS)}
    assert models == {"model-0", "model-1", "model-2", semconv.OTHER}
    assert otel.value(REQUESTS, gen_ai__request__model=semconv.OTHER) == 3


async def test_memory_does_not_grow_with_the_names_served(otel: OTelHarness) -> None:
    """Every stream names a new model and fails with a new error class: the label
    values are capped, and so are the caches keyed by the raw names."""
    tel = Telemetry(tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider,
                    max_label_values=8)

    async def failing(i: int) -> AsyncGenerator[str, None]:
        yield "tok"
        raise type(f"Error{i}", (Exception,), {})()

    for i in range(3000):
        with pytest.raises(Exception, match=r"^$"):
            await consume(observe_stream(failing(i), model=f"model-{i}", telemetry=tel))
    assert len(tel.label_sets) <= 1024
    assert all(len(ls._ends) <= 64 for ls in tel.label_sets.values())
    assert otel.value(REQUESTS) == 3000  # and nothing was lost on the way
    models = {p.attributes[semconv.REQUEST_MODEL] for p in otel.points(REQUESTS)}
    assert len(models) == 9  # 8 real names + _OTHER


async def test_sdk_exemplars_on_an_applications_own_providers(otel: OTelHarness) -> None:
    """Without ragobs' exemplar table (an application's providers), the SDK keeps them."""
    assert otel.telemetry.exemplars is None
    await consume(observe_stream(tokens(3, gap=0.001), model="m", telemetry=otel.telemetry))
    span = only_span(otel)
    # One collection: the SDK's reservoirs hand out their exemplars once.
    data = otel.reader.get_metrics_data()
    assert data is not None
    points = {m.name: list(m.data.data_points) for rm in data.resource_metrics
              for sm in rm.scope_metrics for m in sm.metrics}
    for name in (DURATION, TTFT, semconv.TURN_DURATION.name,
                 semconv.TURN_TIME_TO_FIRST_CHUNK.name):
        (point,) = points[name]
        assert [(e.trace_id, e.span_id) for e in point.exemplars] == [
            (span.context.trace_id, span.context.span_id)], name
        assert point.exemplars[0].value == pytest.approx(point.sum)
    for name in (USAGE, RATE, TPOC):
        assert all(not p.exemplars for p in points[name]), name


async def test_exemplar_table_takes_latency_and_ttft_exemplars(otel: OTelHarness) -> None:
    table = ExemplarTable()
    tel = Telemetry(tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider,
                    exemplars=table)
    await consume(observe_stream(tokens(3, gap=0.001), model="m", telemetry=tel))
    span = only_span(otel)
    attrs = {semconv.OPERATION_NAME: "chat", semconv.REQUEST_MODEL: "m", semconv.OUTCOME: "ok"}
    data = otel.reader.get_metrics_data()  # one collection (see above)
    assert data is not None
    points = {m.name: list(m.data.data_points) for rm in data.resource_metrics
              for sm in rm.scope_metrics for m in sm.metrics}
    for name, bounds in ((DURATION, semconv.DURATION_BUCKETS),
                         (TTFT, semconv.TIME_TO_FIRST_CHUNK_BUCKETS),
                         (semconv.TURN_DURATION.name, semconv.DURATION_BUCKETS),
                         (semconv.TURN_TIME_TO_FIRST_CHUNK.name, semconv.DURATION_BUCKETS)):
        (point,) = points[name]  # a lone stream: its turn's figures too, with exemplars
        assert dict(point.attributes) == attrs
        assert not point.exemplars, name  # not kept twice: the SDK took none
        (ex,) = table.get(name, point.attributes)
        assert (ex.trace_id, ex.span_id) == (span.context.trace_id, span.context.span_id)
        assert ex.value == pytest.approx(point.sum)
        assert abs(ex.timestamp - time.time()) < 60
        # Held in the bucket the SDK counted the value in.
        assert point.bucket_counts[bisect.bisect_left(bounds, ex.value)] == 1

    # The next stream's exemplar is held too; other series are apart.
    await consume(observe_stream(tokens(3, gap=0.001), model="m", telemetry=tel))
    newest = otel.spans()[-1].context
    assert newest.trace_id in {ex.trace_id for ex in table.get(DURATION, attrs)}
    assert table.get(DURATION, {**attrs, semconv.OUTCOME: "error"}) == []


def test_exemplar_series_keeps_the_latest_per_bucket() -> None:
    table = ExemplarTable()
    key = ((semconv.OPERATION_NAME, "chat"),)
    series = table.series(DURATION, key, (0.1, 1.0))
    assert table.series(DURATION, key, (0.1, 1.0)) is series
    series.offer(0.05, 1, 11, 100.0)
    series.offer(0.1, 2, 22, 101.0)  # same bucket (le=0.1): replaces
    series.offer(5.0, 3, 33, 102.0)  # +Inf bucket
    held = sorted(table.get(DURATION, {semconv.OPERATION_NAME: "chat"}))
    assert [(e.trace_id, e.span_id, e.value, e.timestamp) for e in held] == [
        (2, 22, 0.1, 101.0), (3, 33, 5.0, 102.0)]


async def test_no_exemplar_from_an_unsampled_span(otel: OTelHarness) -> None:
    table = ExemplarTable()
    tel = Telemetry(tracer_provider=TracerProvider(sampler=ALWAYS_OFF),
                    meter_provider=otel.meter_provider, exemplars=table)
    await consume(observe_stream(tokens(2), model="m", telemetry=tel))
    (point,) = otel.points(DURATION)
    assert point.count == 1
    assert table.get(DURATION, point.attributes) == []
    assert not point.exemplars


def test_error_type_prefers_http_status() -> None:
    class Response:
        status_code = 429

    class WithResponse(Exception):
        response = Response()

    assert error_type(ProviderError(503)) == "503"
    assert error_type(WithResponse()) == "429"
    assert error_type(KeyError("x")) == "KeyError"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"operation": ""}, "operation must be a non-empty str"),
        ({"operation": 3}, "operation must be a non-empty str"),
        ({"model": ""}, "model must be a non-empty str or None"),
        ({"provider": 1.5}, "provider must be a non-empty str or None"),
    ],
)
def test_bad_names_raise_naming_the_argument(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        observe_stream(iter([]), **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=match):
        instrument_stream(**kwargs)  # type: ignore[arg-type]


def test_bad_stream_arguments() -> None:
    with pytest.raises(TypeError, match="stream must be an iterable"):
        observe_stream(42)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="count_tokens must be a callable"):
        observe_stream(iter([]), count_tokens=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="decorates async generator or generator functions"):
        instrument_stream(lambda: None)
    with pytest.raises(ValueError, match="n must be an int >= 0"):
        observe().tokens(-1)
    with pytest.raises(ValueError, match="input_tokens must be an int >= 0"):
        observe().set_usage(input_tokens=-2)


async def test_answer_text_reaches_spans_only_when_the_user_opts_in(otel: OTelHarness) -> None:
    async def answer() -> AsyncGenerator[str, None]:
        for word in ("The ", "secret ", "answer"):
            yield word

    await consume(observe_stream(answer(), model="m", telemetry=otel.telemetry))
    (plain,) = otel.spans()
    assert semconv.OUTPUT_MESSAGES not in (plain.attributes or {})
    everything = repr(plain.to_json()) + repr(otel.reader.get_metrics_data())
    assert "secret" not in everything

    opted = Telemetry(tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider,
                      capture_content=True)
    await consume(observe_stream(answer(), model="m", telemetry=opted))

    def words() -> Generator[bytes, None, None]:
        yield b"caf\xc3\xa9 "
        yield b"x" * (CONTENT_LIMIT + 10)

    list(observe_stream(words(), model="m", telemetry=opted))
    _, text_span, bytes_span = otel.spans()
    messages = json.loads(str((text_span.attributes or {})[semconv.OUTPUT_MESSAGES]))
    assert messages == [{"role": "assistant",
                         "parts": [{"type": "text", "content": "The secret answer"}]}]
    content = json.loads(str((bytes_span.attributes or {})[semconv.OUTPUT_MESSAGES]))
    text = content[0]["parts"][0]["content"]
    assert text.startswith("café x") and len(text) == CONTENT_LIMIT
    # Metrics never carry text, opted in or not.
    assert "secret" not in repr(otel.reader.get_metrics_data())


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_bad_max_label_values_names_the_argument(bad: object) -> None:
    with pytest.raises(ValueError, match=r"max_label_values must be an int >= 1"):
        Telemetry(max_label_values=bad)  # type: ignore[arg-type]


async def test_a_stage_open_across_yields_does_not_leak_the_stream_span(
        otel: OTelHarness) -> None:
    """The source opens a stage during one pull and closes it during a later
    one; after the stream, the consumer's current span is what it was."""
    from opentelemetry import trace as otel_trace

    async def source() -> AsyncGenerator[str, None]:
        async with stage("generate", telemetry=otel.telemetry):
            for i in range(3):
                yield f"t{i}"

    before = otel_trace.get_current_span()
    for _ in range(2):
        async for _chunk in observe_stream(source(), telemetry=otel.telemetry):
            pass
        assert otel_trace.get_current_span() is before
    streams = [s for s in otel.spans() if s.name == "chat"]
    assert len(streams) == 2
    assert all(s.parent is None for s in streams)  # the second is not the first's child


def test_a_sync_stage_open_across_yields_does_not_leak(otel: OTelHarness) -> None:
    from opentelemetry import trace as otel_trace

    def source() -> Generator[str, None, None]:
        with stage("generate", telemetry=otel.telemetry):
            yield from ("a", "b")

    before = otel_trace.get_current_span()
    list(observe_stream(source(), telemetry=otel.telemetry))
    assert otel_trace.get_current_span() is before


def test_rate_formula_is_exact(otel: OTelHarness) -> None:
    """5 tokens; first at t=1, end at t=3 (from a start at t=0): a window of
    2 s, so 5 / 2 = 2.5 tokens/s. A count set by hand times no chunk: no
    time per output chunk."""
    obs = observe(model="m", telemetry=otel.telemetry)
    obs.start(start_time=100.0)
    obs.first_token(at=101.0)
    obs.set_token_count(5)
    obs.finish(end_time=103.0)
    assert otel.total(DURATION) == 3.0
    assert otel.total(TTFT) == 1.0
    assert otel.total(semconv.OUTPUT_TOKEN_RATE.name) == 2.5
    assert otel.count(semconv.TIME_PER_OUTPUT_CHUNK.name) == 0
    summary = otel.telemetry.summary.snapshot()
    assert summary.avg_tokens_per_second == 2.5


def test_bound_histograms_record_what_the_sdk_would(otel: OTelHarness) -> None:
    """The per-stream histograms skip the SDK's per-call attribute hashing once
    their series exists; the points must be exactly the SDK's, also after a
    reader is added to the provider (its series are found again)."""
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    for i in range(5):
        list(observe_stream(["a"] * (i + 2), model="m", telemetry=otel.telemetry))
    (point,) = otel.points(USAGE)
    assert (point.count, point.sum, point.min, point.max) == (5, 2 + 3 + 4 + 5 + 6, 2, 6)
    # The fast path was taken (the series' aggregation is bound) and gives
    # the buckets the SDK's own record gives for the same values.
    (label_set,) = otel.telemetry.label_sets.values()
    ending = label_set.end(semconv.Outcome.OK, None)
    assert ending.output_tokens._targets
    twin = otel.meter_provider.get_meter("twin").create_histogram(
        "twin", explicit_bucket_boundaries_advisory=list(semconv.TOKEN_USAGE.buckets or ()))
    for value in range(2, 7):
        twin.record(value, ending.output_attrs)
    (twin_point,) = otel.points("twin")
    assert list(point.bucket_counts) == list(twin_point.bucket_counts)
    assert dict(point.attributes) == dict(twin_point.attributes)
    late = InMemoryMetricReader()
    otel.meter_provider.add_metric_reader(late)  # type: ignore[attr-defined]
    for _ in range(3):
        list(observe_stream(["a", "b"], model="m", telemetry=otel.telemetry))
    (point,) = otel.points(USAGE)
    assert (point.count, point.sum) == (8, 20 + 6)
    data = late.get_metrics_data()
    assert data is not None
    late_points = [p for rm in data.resource_metrics for sm in rm.scope_metrics
                   for m in sm.metrics if m.name == USAGE for p in m.data.data_points]
    assert [(p.count, p.sum) for p in late_points] == [(3, 6)]
