"""Label combinations stay under the SDK's series limit, and counts stay exact.

Each attribute is capped (64 values), but combinations multiply: 100 models x
100 error types drive the real OpenTelemetry SDK past its 2,000 series per
instrument, whose overflow series drops every label, the outcome included.
ragobs bounds the combinations itself and folds the rest to ``_OTHER``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from ragobs import semconv
from ragobs._exposition import render
from ragobs._labels import DEFAULT_MAX_SERIES
from ragobs._runtime import setup
from ragobs._stream import observe_stream

MODELS = 100
ERROR_TYPES = 100


class Failure(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"status {status}")
        self.status_code = status


def _fail(status: int) -> object:
    def gen() -> object:
        yield "t"
        raise Failure(status)

    return gen()


def test_combinations_past_the_sdk_limit_fold_and_counts_stay_exact() -> None:
    runtime = setup(serve=False, set_global=False, registry=CollectorRegistry())
    tel = runtime.telemetry
    ok = failed = 0
    try:
        for m in range(MODELS):
            for e in range(ERROR_TYPES):
                model = f"model-{m}"
                if e % 10 == 0:
                    list(observe_stream(["a", "b"], model=model, telemetry=tel))
                    ok += 1
                else:
                    try:
                        list(observe_stream(_fail(400 + e), model=model,  # type: ignore[call-overload]
                                            telemetry=tel))
                    except Failure:
                        failed += 1
        body, _ = render(runtime.registry, None)
        text = body.decode()
    finally:
        runtime.shutdown()

    assert "otel_metric_overflow" not in text  # the SDK never had to drop labels
    families = {f.name: f for f in text_string_to_metric_families(text)}
    requests = [s for s in families["ragobs_requests"].samples if s.name.endswith("_total")]
    by_outcome: dict[str, float] = {}
    for sample in requests:
        outcome = sample.labels["ragobs_outcome"]
        by_outcome[outcome] = by_outcome.get(outcome, 0) + sample.value
    assert by_outcome == {"ok": ok, "error": failed}
    summary = tel.summary.snapshot()
    assert (summary.successful, summary.failed) == (ok, failed)

    # The bound: at most max_series label combinations (plus the reserved,
    # fully folded ones, one per outcome) per instrument.
    assert len(requests) <= DEFAULT_MAX_SERIES + 4
    duration = families["gen_ai_client_operation_duration_seconds"]
    series = [s for s in duration.samples if s.name.endswith("_count")]
    assert len(series) <= DEFAULT_MAX_SERIES + 4
    assert sum(s.value for s in series) == ok + failed
    folded = [s for s in requests if s.labels.get("gen_ai_request_model") == semconv.OTHER
              or s.labels.get("error_type") == semconv.OTHER]
    assert folded, "nothing was folded: the test did not reach the bound"
    # Worst case stays scrapeable: a few MB at the default bound.
    assert len(body) < 8_000_000, len(body)
