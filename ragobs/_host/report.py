"""The dashboards' figures for the whole host, from the merged metrics.

:func:`host_summary` computes the same :class:`~ragobs._summary_stats.Summary`
a single process's ``/api/summary`` shows, from the series a
:class:`~ragobs._host.merge.HostMetrics` merged, so the same renderers
(:func:`ragobs._report.as_json`, :func:`ragobs._report.format_text`, the live
panel) work for the host. :class:`HostReporter` builds whole
:class:`~ragobs._report.Report` objects (resilience counts included).

Requests are turns (one question answered, whatever LLM calls it made), as
in a single process. Where each figure comes from, for a ragobs producer (one
that pushes ``ragobs.requests``):

* counts: ``ragobs.requests`` by ``ragobs.outcome`` (exact);
* averages: histogram sum / count over ``ragobs.outcome="ok"`` series of the
  turn instruments ``ragobs.turn.duration``, ``..time_to_first_chunk``,
  ``ragobs.turn.token.usage`` (by ``gen_ai.token.type``),
  ``ragobs.turn.output_tokens``, ``..inference_calls`` and ``..tool_calls``
  (exact: a histogram's sum and count are); the TTFT breakdown is
  ``ragobs.turn.time_to_first_chunk.phase`` by ``ragobs.phase`` over the
  count of successful turns' TTFT;
* percentiles: estimated from the merged buckets of the "ok" series (see
  :func:`histogram_quantile`), so they are as fine as the buckets, where a
  single process's sketch is within 1 %;
* in flight: the sum of ``ragobs.requests.active``;
* the LLM calls' table: the GenAI client instruments
  (``gen_ai.client.operation.duration``, ``..time_to_first_chunk``,
  ``gen_ai.client.token.usage``) by provider and model.

Any other OpenTelemetry agent that records the GenAI semconv metrics (an
agent in another language) counts too: for a service that pushes no
``ragobs.requests``, requests are the ``gen_ai.client.operation.duration``
records, failed when they carry ``error.type`` and successful otherwise
(cancellations, timeouts and in-flight requests are then unknown: zero), and
their figures come from the GenAI instruments.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from ragobs import semconv
from ragobs._host.merge import HistogramValue, HostMetrics, HostSnapshot, SeriesSnapshot
from ragobs._report import Report, ResilienceCounts
from ragobs._summary_stats import (
    QUANTILES,
    CallSummary,
    CallTotals,
    Percentiles,
    Summary,
    call_summaries,
)
from ragobs.semconv import Outcome

__all__ = [
    "HostFigures",
    "HostReporter",
    "histogram_quantile",
    "host_figures",
    "host_resilience",
    "host_summary",
]

OUTCOMES: Final = tuple(o.value for o in Outcome)


def histogram_quantile(q: float, bounds: Sequence[float], counts: Sequence[int]) -> float | None:
    """The ``q``-quantile of a histogram, as Prometheus's ``histogram_quantile``.

    ``bounds`` are the explicit upper bounds, ``counts`` the per-bucket (not
    cumulative) counts, one more than ``bounds`` (the last for ``+Inf``). The
    quantile is interpolated linearly inside the bucket where the rank falls
    (the first bucket starts at 0 when its bound is positive); a rank in the
    ``+Inf`` bucket gives the largest finite bound. ``None`` when the
    histogram is empty or has no finite bound.
    """
    if len(counts) != len(bounds) + 1:
        raise ValueError("counts must have one more entry than bounds")
    if not 0 <= q <= 1:
        raise ValueError(f"q must be in [0, 1], got {q!r}")
    total = sum(counts)
    if total == 0 or not bounds:
        return None
    rank = q * total
    index, previous, cumulative = 0, 0, 0
    for index, count in enumerate(counts):  # noqa: B007 - the bucket the rank falls in
        previous, cumulative = cumulative, cumulative + count
        if cumulative >= rank:
            break
    if index == len(bounds):
        return float(bounds[-1])
    upper = float(bounds[index])
    if index == 0:
        if upper <= 0:
            return upper
        lower = 0.0
    else:
        lower = float(bounds[index - 1])
    in_bucket = cumulative - previous
    if in_bucket == 0:  # q == 0 and empty leading buckets
        return lower
    return lower + (upper - lower) * ((rank - previous) / in_bucket)


def _merge(parts: Sequence[HistogramValue],
           bounds: tuple[float, ...] | None = None) -> HistogramValue | None:
    """One histogram from ``parts``, on ``bounds`` (default: the bounds with
    the most counts). Parts with other bounds are re-bucketed by their upper
    bounds (an upper estimate)."""
    if bounds is None:
        if not parts:
            return None
        weight: dict[tuple[float, ...], int] = {}
        for part in parts:
            weight[part.bounds] = weight.get(part.bounds, 0) + part.count
        bounds = max(weight, key=lambda b: weight[b])
    counts = [0] * (len(bounds) + 1)
    total = 0.0
    n = 0
    for part in parts:
        n += part.count
        total += part.sum
        if part.bounds == bounds:
            for i, c in enumerate(part.counts):
                counts[i] += c
        else:
            for i, c in enumerate(part.counts):
                upper = part.bounds[i] if i < len(part.bounds) else math.inf
                counts[len(bounds) if upper == math.inf else bisect_left(bounds, upper)] += c
    return HistogramValue(bounds, tuple(counts), n, total)


def _series(snapshot: HostSnapshot, name: str) -> list[SeriesSnapshot]:
    return [s for m in snapshot.find(name) for s in m.series]


def _numbers(snapshot: HostSnapshot, name: str) -> list[SeriesSnapshot]:
    return [s for s in _series(snapshot, name) if not isinstance(s.value, HistogramValue)]


def _mean(merged: HistogramValue | None) -> float | None:
    return merged.sum / merged.count if merged is not None and merged.count else None


def _percentiles(merged: HistogramValue | None) -> Percentiles:
    if merged is None:
        return Percentiles(None, None, None)
    return Percentiles(*(histogram_quantile(q, merged.bounds, merged.counts)
                         for q in QUANTILES))


def _ragobs_services(snapshot: HostSnapshot) -> set[str | None]:
    return {s.service for s in _numbers(snapshot, semconv.REQUESTS.name)}


@dataclass(frozen=True, slots=True)
class HostFigures:
    """The host-wide totals behind :func:`host_summary` and the history charts.

    Histograms are over successful requests (turns; "ok": ``ragobs.outcome="ok"``
    for ragobs producers, no ``error.type`` for other agents), merged into one.
    """

    #: finished requests by outcome (every Outcome value)
    requests: Mapping[str, int]
    #: finished requests by (``gen_ai.request.model`` or ``None``, outcome)
    by_model: Mapping[tuple[str | None, str], int]
    duration: HistogramValue | None
    ttft: HistogramValue | None
    #: output tokens per successful request (``gen_ai.token.type="output"``)
    output_tokens: HistogramValue | None
    #: per-request output tokens/s
    rate: HistogramValue | None
    in_flight: int
    #: RAG stage -> (runs, total seconds), every outcome
    stages: Mapping[str, tuple[int, float]] = field(default_factory=dict)
    #: input tokens per successful request
    input_tokens: HistogramValue | None = None
    #: LLM calls and tool calls per successful request
    inference_calls: HistogramValue | None = None
    tool_calls: HistogramValue | None = None
    #: ``ragobs.phase`` -> seconds of the successful requests' time to first chunk
    phases: Mapping[str, float] = field(default_factory=dict)
    #: the LLM calls per (provider, model)
    calls: tuple[CallSummary, ...] = ()
    #: what successful turns with a priced call cost, in USD
    turn_cost: HistogramValue | None = None


def host_figures(source: HostMetrics | HostSnapshot, *, declared_bounds: bool = False
                 ) -> HostFigures:
    """The :class:`HostFigures` of the host now.

    ``declared_bounds``: merge latency and TTFT onto ragobs's declared
    buckets (stable from one call to the next, so that two results can be
    subtracted) rather than onto the most counted bounds.
    """
    snapshot = source.snapshot() if isinstance(source, HostMetrics) else source
    ragobs_services = _ragobs_services(snapshot)

    def ragobs(series: SeriesSnapshot) -> bool:
        return series.service in ragobs_services

    def ok(series: SeriesSnapshot) -> bool:
        if ragobs(series):
            return series.attributes.get(semconv.OUTCOME) == Outcome.OK.value
        return semconv.ERROR_TYPE not in series.attributes

    def failed(series: SeriesSnapshot) -> bool:
        if ragobs(series):
            return series.attributes.get(semconv.OUTCOME) in (
                Outcome.ERROR.value, Outcome.TIMEOUT.value)
        return semconv.ERROR_TYPE in series.attributes

    def output(series: SeriesSnapshot) -> bool:
        return series.attributes.get(semconv.TOKEN_TYPE) == semconv.TokenType.OUTPUT.value

    def model(series: SeriesSnapshot) -> str | None:
        value = series.attributes.get(semconv.REQUEST_MODEL)
        return value if isinstance(value, str) else None

    def histograms(name: str, keep: Callable[[SeriesSnapshot], bool] = ok
                   ) -> list[HistogramValue]:
        return [s.value for s in _series(snapshot, name)
                if isinstance(s.value, HistogramValue) and keep(s)]

    def turns(turn: str, call: str | None = None,
              keep: Callable[[SeriesSnapshot], bool] = ok) -> list[HistogramValue]:
        """Successful turns of ragobs producers; other agents' calls are their turns."""
        found = histograms(turn, lambda s: ragobs(s) and keep(s))
        if call is not None:
            found += histograms(call, lambda s: not ragobs(s) and keep(s))
        return found

    by_model: dict[tuple[str | None, str], int] = {}
    for series in _numbers(snapshot, semconv.REQUESTS.name):
        outcome = series.attributes.get(semconv.OUTCOME)
        if isinstance(outcome, str) and outcome in OUTCOMES:
            key = (model(series), outcome)
            by_model[key] = by_model.get(key, 0) + round(series.value)  # type: ignore[arg-type]
    for series in _series(snapshot, semconv.OPERATION_DURATION.name):
        if series.service not in ragobs_services and isinstance(series.value, HistogramValue):
            key = (model(series), Outcome.OK.value if ok(series) else Outcome.ERROR.value)
            by_model[key] = by_model.get(key, 0) + series.value.count
    requests = dict.fromkeys(OUTCOMES, 0)
    for (_, outcome), n in by_model.items():
        requests[outcome] += n

    stages: dict[str, tuple[int, float]] = {}
    for series in _series(snapshot, semconv.STAGE_DURATION.name):
        name = series.attributes.get(semconv.STAGE)
        if isinstance(name, str) and isinstance(series.value, HistogramValue):
            runs, seconds = stages.get(name, (0, 0.0))
            stages[name] = (runs + series.value.count, seconds + series.value.sum)

    phases: dict[str, float] = {}
    for series in _numbers(snapshot, semconv.TURN_TTFT_PHASES.name):
        name = series.attributes.get(semconv.PHASE)
        if isinstance(name, str) and ok(series):
            phases[name] = phases.get(name, 0.0) + series.value  # type: ignore[operator]

    in_flight = sum(s.value for s in _numbers(snapshot, semconv.REQUESTS_ACTIVE.name)
                    if not isinstance(s.value, HistogramValue))
    return HostFigures(
        requests=requests,
        by_model=by_model,
        duration=_merge(turns(semconv.TURN_DURATION.name, semconv.OPERATION_DURATION.name),
                        semconv.DURATION_BUCKETS if declared_bounds else None),
        ttft=_merge(turns(semconv.TURN_TIME_TO_FIRST_CHUNK.name,
                          semconv.TIME_TO_FIRST_CHUNK.name),
                    semconv.DURATION_BUCKETS if declared_bounds else None),
        output_tokens=_merge(turns(semconv.TURN_TOKEN_USAGE.name, semconv.TOKEN_USAGE.name,
                                   lambda s: ok(s) and output(s))),
        rate=_merge(turns(semconv.TURN_OUTPUT_TOKEN_RATE.name)),
        in_flight=round(in_flight),
        stages=stages,
        input_tokens=_merge(turns(
            semconv.TURN_TOKEN_USAGE.name, semconv.TOKEN_USAGE.name,
            lambda s: ok(s) and s.attributes.get(semconv.TOKEN_TYPE)
            == semconv.TokenType.INPUT.value)),
        inference_calls=_merge(turns(semconv.TURN_INFERENCE_CALLS.name)),
        tool_calls=_merge(turns(semconv.TURN_TOOL_CALLS.name)),
        phases=dict(sorted(phases.items())),
        # In a ragobs service, only ragobs's call series: another GenAI instrumentation
        # beside it (the official OpenAI one) records the same calls again, without ragobs.outcome.
        calls=_calls(snapshot, ok, failed, output,
                     lambda s: not ragobs(s) or semconv.OUTCOME in s.attributes),
        turn_cost=_merge(turns(semconv.TURN_COST.name)),
    )


def _calls(snapshot: HostSnapshot, ok: Callable[[SeriesSnapshot], bool],
           failed: Callable[[SeriesSnapshot], bool],
           output: Callable[[SeriesSnapshot], bool],
           mine: Callable[[SeriesSnapshot], bool]) -> tuple[CallSummary, ...]:
    """The LLM calls per (provider, model), from the GenAI client instruments of the
    series ``mine`` keeps, as :class:`ragobs._summary_stats.CallStats` counts them."""
    rows: dict[tuple[str | None, str | None], CallTotals] = {}

    def series_of(name: str) -> list[SeriesSnapshot]:
        return [s for s in _series(snapshot, name) if mine(s)]

    def row(series: SeriesSnapshot) -> CallTotals:
        attrs = series.attributes
        provider, model = (attrs.get(semconv.PROVIDER_NAME), attrs.get(semconv.REQUEST_MODEL))
        key = (provider if isinstance(provider, str) else None,
               model if isinstance(model, str) else None)
        found = rows.get(key)
        if found is None:
            found = rows[key] = CallTotals()
        return found

    for series in series_of(semconv.OPERATION_DURATION.name):
        value = series.value
        if isinstance(value, HistogramValue):
            held = row(series)
            held.calls += value.count
            if failed(series):
                held.failed += value.count
            elif ok(series):
                held.ok += value.count
                held.latency_sum += value.sum
    for series in series_of(semconv.TIME_TO_FIRST_CHUNK.name):
        value = series.value
        if isinstance(value, HistogramValue) and ok(series):
            held = row(series)
            held.ttft_sum += value.sum
            held.ttft_n += value.count
    for series in series_of(semconv.TOKEN_USAGE.name):
        value = series.value
        if isinstance(value, HistogramValue):
            held = row(series)
            if output(series):
                held.output_tokens += round(value.sum)
            else:
                held.input_tokens += round(value.sum)
    for series in series_of(semconv.OPERATION_COST.name):  # any producer's
        if isinstance(series.value, HistogramValue):
            row(series).cost += series.value.sum
    for series in _numbers(snapshot, semconv.UNPRICED_CALLS.name):
        row(series).unpriced += round(series.value)  # type: ignore[arg-type]
    return call_summaries(rows)


def host_summary(source: HostMetrics | HostSnapshot) -> Summary:
    """The host's :class:`~ragobs._summary_stats.Summary` (see the module docstring)."""
    figures = host_figures(source)
    ttft_n = figures.ttft.count if figures.ttft is not None else 0
    return Summary.of(
        {outcome: figures.requests[outcome.value] for outcome in Outcome},
        avg_ttft_seconds=_mean(figures.ttft),
        avg_latency_seconds=_mean(figures.duration),
        avg_tokens=_mean(figures.output_tokens),
        avg_tokens_per_second=_mean(figures.rate),
        ttft_seconds=_percentiles(figures.ttft),
        latency_seconds=_percentiles(figures.duration),
        in_flight=figures.in_flight,
        avg_input_tokens=_mean(figures.input_tokens),
        avg_inference_calls=_mean(figures.inference_calls),
        avg_tool_calls=_mean(figures.tool_calls),
        ttft_breakdown={name: seconds / ttft_n for name, seconds in figures.phases.items()}
        if ttft_n else {},
        calls=figures.calls,
        avg_cost_usd=_mean(figures.turn_cost),
    )


def _total(snapshot: HostSnapshot, name: str, attribute: str | None = None,
           value: str | None = None) -> int:
    return round(sum(s.value for s in _numbers(snapshot, name)  # type: ignore[misc]
                     if attribute is None or s.attributes.get(attribute) == value))


def host_resilience(source: HostMetrics | HostSnapshot) -> ResilienceCounts | None:
    """What the ragobs producers' resilience wrappers did, summed over the host;
    ``None`` when no producer pushes ragobs's metrics."""
    snapshot = source.snapshot() if isinstance(source, HostMetrics) else source
    if not _ragobs_services(snapshot):
        return None
    kind = semconv.TIMEOUT_KIND
    return ResilienceCounts(
        ratelimit_acquisitions=_total(snapshot, semconv.RATELIMIT_ACQUISITIONS.name),
        ratelimit_waits=_total(snapshot, semconv.RATELIMIT_ACQUISITIONS.name,
                               semconv.RATELIMIT_WAITED, "true"),
        ratelimit_rejections=_total(snapshot, semconv.RATELIMIT_REJECTIONS.name),
        retries=_total(snapshot, semconv.RETRY_ATTEMPTS.name),
        retries_exhausted=_total(snapshot, semconv.RETRY_EXHAUSTED.name),
        timeouts=_total(snapshot, semconv.TIMEOUTS.name),
        timeouts_first_token=_total(snapshot, semconv.TIMEOUTS.name, kind, "first_token"),
        timeouts_idle=_total(snapshot, semconv.TIMEOUTS.name, kind, "idle"),
        timeouts_total=_total(snapshot, semconv.TIMEOUTS.name, kind, "total"),
        fallbacks=_total(snapshot, semconv.FALLBACKS.name),
    )


@dataclass(frozen=True, slots=True)
class HostReporter:
    """Reports of the whole host, for ``/api/summary`` and the live panel.

    Has :meth:`report` like :class:`ragobs._report.Reporter`.

    Args:
        host: the merged metrics.
        service: the name the host sidecar reports (e.g. "ragobs-host").
        started: ``time.monotonic()`` when serving started; ``None``: no uptime.
    """

    host: HostMetrics
    service: str | None = None
    started: float | None = None

    def report(self) -> Report:
        snapshot = self.host.snapshot()  # one snapshot: the figures agree
        return Report(
            summary=host_summary(snapshot),
            resilience=host_resilience(snapshot),
            service=self.service,
            uptime_seconds=None if self.started is None else time.monotonic() - self.started,
        )
