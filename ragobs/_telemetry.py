"""Where instrumented code writes: a tracer, the instruments and the summary.

A :class:`Telemetry` is built on the OpenTelemetry *API* only. By default it
uses the global tracer and meter providers (whatever the application or
:func:`ragobs.setup` installed); tests and multi-tenant apps pass providers
of their own. Instruments are created once, from :mod:`ragobs.semconv`.
"""

from __future__ import annotations

import threading
import weakref
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from time import time_ns
from typing import TYPE_CHECKING, Any, NamedTuple

from opentelemetry import metrics, trace
from opentelemetry.context import Context
from opentelemetry.metrics import CallbackOptions, Histogram, Observation

from ragobs import semconv
from ragobs._cost import Price, Pricing
from ragobs._gaps import BOUNDS, ChunkGaps
from ragobs._labels import DEFAULT_MAX_SERIES, DEFAULT_MAX_VALUES, LabelGuard, SeriesGuard
from ragobs._summary_stats import CallStats, SummaryStats
from ragobs._version import __version__
from ragobs.semconv import InstrumentSpec, Kind

if TYPE_CHECKING:  # owned by ragobs._stream, which imports this module
    from ragobs._stream import _LabelSet

#: An empty context: records that offer no exemplar to the SDK's reservoir.
_NO_CONTEXT = Context()
#: The SDK's series key function, once a provider of the SDK is seen (False:
#: the SDK's internals are not the ones the fast path knows).
_sdk_series_key: Any = None

Attributes = Mapping[str, str]
_AttrKey = tuple[tuple[str, str], ...]

SCOPE_NAME = "ragobs"


class Tally:
    """A count kept by one single-threaded owner, without a lock.

    For hot paths bound to one event loop (a rate limiter's acquisitions):
    ``tally.value += 1`` costs a few tens of nanoseconds. The table it belongs
    to adds it to every snapshot, and folds it in when its owner is collected,
    so nothing counted is ever lost.
    """

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0


class CounterTable:
    """Exact cumulative counts (or sums of seconds) per attribute set, read by an
    observable instrument.

    Adding is a locked dict update (sub-microsecond), so per-request counters
    cost far less than a synchronous SDK ``Counter.add``; the SDK reads the
    table only when metrics are collected. Memory is bounded by the number of
    attribute sets, which :class:`~ragobs._labels.LabelGuard` bounds, plus one
    :class:`Tally` per live owner.
    """

    __slots__ = ("_counts", "_lock", "_tallies")

    def __init__(self) -> None:
        self._counts: dict[_AttrKey, int] = {}
        self._lock = threading.Lock()
        self._tallies: dict[int, tuple[_AttrKey, Tally]] = {}

    def add(self, amount: int, attributes: Attributes) -> None:
        """Same call shape as ``Counter.add``; key order does not matter."""
        self.add_key(tuple(sorted(attributes.items())), amount)

    def add_key(self, key: _AttrKey, amount: int = 1) -> None:
        """Fast path for callers that keep a pre-built sorted key."""
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + amount

    def tally(self, key: _AttrKey, owner: object) -> Tally:
        """A lock-free :class:`Tally` counting under ``key`` while ``owner`` lives.

        Only ``owner``'s thread may increment it.
        """
        tally = Tally()
        with self._lock:
            self._tallies[id(tally)] = (key, tally)
        weakref.finalize(owner, self._fold, id(tally))
        return tally

    def _fold(self, ident: int) -> None:
        with self._lock:
            key, tally = self._tallies.pop(ident)
            if tally.value:
                self._counts[key] = self._counts.get(key, 0) + tally.value

    def get(self, key: _AttrKey) -> int:
        return self.snapshot().get(key, 0)

    def snapshot(self) -> dict[_AttrKey, int]:
        with self._lock:
            counts = dict(self._counts)
            for key, tally in self._tallies.values():
                if tally.value:
                    counts[key] = counts.get(key, 0) + tally.value
        return counts

    def total(self, **match: str) -> int:
        """Sum over attribute sets containing ``match`` (``__`` stands for ``.``)."""
        wanted = {(k.replace("__", "."), v) for k, v in match.items()}
        return sum(v for key, v in self.snapshot().items() if wanted.issubset(key))

    def totals_by(self, attribute: str) -> dict[str, int]:
        """Sums per value of ``attribute`` (attribute sets without it are left
        out), from one snapshot."""
        sums: dict[str, int] = {}
        for key, value in self.snapshot().items():
            for name, label in key:
                if name == attribute:
                    sums[label] = sums.get(label, 0) + value
        return sums

    def observe(self, _options: CallbackOptions) -> Iterable[Observation]:
        for key, value in self.snapshot().items():
            yield Observation(value, dict(key))


class SampledExemplar(NamedTuple):
    """One traced measurement, as an OpenMetrics exemplar shows it."""

    trace_id: int
    span_id: int
    value: float
    timestamp: float  # Unix seconds


class ExemplarSeries:
    """The latest traced measurement per bucket of one histogram series.

    Offering is a bisect and one dict store of a plain tuple (atomic under
    the GIL, so no lock): a fraction of what the SDK's exemplar reservoir
    costs per record.
    """

    __slots__ = ("bounds", "latest")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        #: bucket index (``bisect_left`` over ``bounds``, as the SDK counts
        #: buckets) -> (trace_id, span_id, value, timestamp), as SampledExemplar
        self.latest: dict[int, tuple[int, int, float, float]] = {}

    def offer(self, value: float, trace_id: int, span_id: int, timestamp: float) -> None:
        self.latest[bisect_left(self.bounds, value)] = (trace_id, span_id, value, timestamp)


class ExemplarTable:
    """Exemplars ragobs keeps itself, per histogram series, for OpenMetrics.

    :func:`ragobs.setup` gives one to its :class:`~ragobs._exposition.PrometheusReader`
    and to its :class:`Telemetry` when Prometheus is the only reader of the
    meter provider it builds: the per-stream latency and TTFT histograms then
    record without the SDK's exemplar reservoir, and the reader attaches these
    exemplars when it renders. An exemplar stays until a later measurement
    in the same bucket replaces it (as in prometheus_client). Memory is one
    entry per bucket of each series, which the label guard bounds.

    Trade-off: only ``/metrics`` reads this table, so those two histograms'
    exemplars would not leave by OTLP; ``setup()`` leaves them to the SDK
    whenever it adds an OTLP reader.
    """

    __slots__ = ("_series",)

    def __init__(self) -> None:
        self._series: dict[tuple[str, _AttrKey], ExemplarSeries] = {}

    def series(self, name: str, key: _AttrKey, bounds: Sequence[float]) -> ExemplarSeries:
        """The series of instrument ``name`` for the sorted attribute ``key``."""
        found = self._series.get((name, key))
        if found is None:
            # setdefault: two threads creating one series get the same object.
            found = self._series.setdefault((name, key), ExemplarSeries(bounds))
        return found

    def get(self, name: str, attributes: Mapping[str, Any]) -> list[SampledExemplar]:
        """The exemplars held for one data point (empty when none)."""
        found = self._series.get((name, tuple(sorted(attributes.items()))))
        if found is None:
            return []
        return [SampledExemplar(*held) for held in list(found.latest.values())]


class Telemetry:
    """The tracer, instruments, label guard and summary of one instrumented app.

    Args:
        tracer_provider: defaults to the global one.
        meter_provider: defaults to the global one.
        summary: the running summary fed by every finished request; a new
            :class:`~ragobs._summary_stats.SummaryStats` by default.
        max_label_values: distinct values allowed per attribute before the
            rest are reported as ``_OTHER``.
        max_series: distinct label combinations (operation, provider, model,
            outcome, error type) of the per-stream instruments; later ones are
            folded to ``_OTHER`` (error type first, the outcome never), so
            counts stay exact and each instrument stays far under the SDK's
            2,000-series limit.
        capture_content: opt in to put the answer text of instrumented streams
            on their spans (``gen_ai.output.messages``, at most 64 Ki characters;
            str or bytes chunks). Off by default; ragobs never puts text in
            metrics or labels, and never records prompts itself.
        exemplars: where latency and TTFT exemplars go instead of the SDK's
            reservoir (see :class:`ExemplarTable`). ``None`` (the default, and
            always for an application's own providers): the SDK takes them.
        prices: what inference calls cost: a :class:`~ragobs.Pricing`, or a dict
            of model name -> :class:`~ragobs.Price` (USD per million tokens) that
            come before genai-prices' snapshot (used when the ``[cost]`` extra is
            installed). ``None``: genai-prices alone, if installed.
    """

    def __init__(
        self,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        summary: SummaryStats | None = None,
        max_label_values: int = DEFAULT_MAX_VALUES,
        max_series: int = DEFAULT_MAX_SERIES,
        capture_content: bool = False,
        exemplars: ExemplarTable | None = None,
        prices: Pricing | dict[str, Price] | None = None,
    ) -> None:
        _check_provider("tracer_provider", tracer_provider, trace.TracerProvider)
        _check_provider("meter_provider", meter_provider, metrics.MeterProvider)
        if summary is not None and not isinstance(summary, SummaryStats):
            raise TypeError(f"summary must be a SummaryStats or None, got {summary!r}")
        if not isinstance(capture_content, bool):
            raise TypeError(f"capture_content must be a bool, got {capture_content!r}")
        if exemplars is not None and not isinstance(exemplars, ExemplarTable):
            raise TypeError(f"exemplars must be an ExemplarTable or None, got {exemplars!r}")
        self.tracer = trace.get_tracer(SCOPE_NAME, __version__, tracer_provider)
        if (not isinstance(max_label_values, int) or isinstance(max_label_values, bool)
                or max_label_values < 1):
            raise ValueError(f"max_label_values must be an int >= 1, got {max_label_values!r}")
        self.labels = LabelGuard(max_label_values)
        self.series = SeriesGuard(max_series)
        self.summary = summary if summary is not None else SummaryStats()
        #: The LLM calls per provider and model, beside the summary of turns.
        self.calls = CallStats(max_series)
        self.capture_content = capture_content
        self.exemplars = exemplars
        #: What calls cost (see :mod:`ragobs._cost`).
        self.pricing = prices if isinstance(prices, Pricing) else Pricing(prices)
        #: The stream module's memo of attribute dicts per (operation,
        #: provider, model); it caps the size.
        self.label_sets: dict[tuple[str, str | None, str | None, str | None], _LabelSet] = {}
        shared = _instruments_for(meter_provider)
        self._instruments = shared.instruments
        self._tables = shared.tables
        self.requests = self.counter(semconv.REQUESTS)
        self.errors = self.counter(semconv.ERRORS)
        self.active = self.counter(semconv.REQUESTS_ACTIVE)
        self.operation_duration: Histogram = self.histogram(semconv.OPERATION_DURATION)
        self.time_to_first_chunk: Histogram = self.histogram(semconv.TIME_TO_FIRST_CHUNK)
        self.time_per_output_chunk: Histogram = self.histogram(semconv.TIME_PER_OUTPUT_CHUNK)
        self.time_to_first_answer_chunk: Histogram = self.histogram(
            semconv.TIME_TO_FIRST_ANSWER_CHUNK)
        self.token_usage: Histogram = self.histogram(semconv.TOKEN_USAGE)
        self.operation_cost: Histogram = self.histogram(semconv.OPERATION_COST)
        #: USD, not counts: the table adds whatever number it is given.
        self.spend = self.counter(semconv.SPEND)
        self.unpriced = self.counter(semconv.UNPRICED_CALLS)
        self.finish_reasons = self.counter(semconv.FINISH_REASONS)
        self.usage_tokens = self.counter(semconv.USAGE_TOKENS)
        self.output_token_rate: Histogram = self.histogram(semconv.OUTPUT_TOKEN_RATE)
        self.stage_duration: Histogram = self.histogram(semconv.STAGE_DURATION)
        self.turn_duration: Histogram = self.histogram(semconv.TURN_DURATION)
        self.turn_time_to_first_chunk: Histogram = self.histogram(
            semconv.TURN_TIME_TO_FIRST_CHUNK)
        self.turn_token_usage: Histogram = self.histogram(semconv.TURN_TOKEN_USAGE)
        self.turn_output_token_rate: Histogram = self.histogram(semconv.TURN_OUTPUT_TOKEN_RATE)
        self.turn_inference_calls: Histogram = self.histogram(semconv.TURN_INFERENCE_CALLS)
        self.turn_tool_calls: Histogram = self.histogram(semconv.TURN_TOOL_CALLS)
        self.turn_cost: Histogram = self.histogram(semconv.TURN_COST)
        #: Sums of seconds, not counts: the table adds whatever number it is given.
        self.ttft_phases = self.counter(semconv.TURN_TTFT_PHASES)

    def histogram(self, spec: InstrumentSpec) -> Histogram:
        """The histogram declared by ``spec`` (see :mod:`ragobs.semconv`)."""
        if spec.kind is not Kind.HISTOGRAM:
            raise ValueError(f"spec must be a histogram spec, got {spec.name} ({spec.kind.value})")
        inst: Histogram = self._instruments[spec.name]
        return inst

    def counter(self, spec: InstrumentSpec) -> CounterTable:
        """The table behind the counter (or up-down counter) declared by ``spec``.

        ``counter(spec).add(1, {...})`` has the shape of ``Counter.add``.
        """
        table = self._tables.get(spec.name)
        if table is None:
            raise ValueError(f"spec must be a counter spec, got {spec.name} ({spec.kind.value})")
        return table

    def bound(self, key: str, value: str) -> str:
        """``value`` capped by this telemetry's label guard."""
        return self.labels.bound(key, value)


def _check_provider(arg: str, value: object, kind: type) -> None:
    if value is not None and not isinstance(value, kind):
        raise TypeError(f"{arg} must be an OpenTelemetry {kind.__name__} or None, "
                        f"got {value!r}")


class _SharedInstruments:
    """The instruments and counter tables of one meter provider.

    The SDK returns the first instrument registered under a name, so every
    :class:`Telemetry` on one provider must share them (and the tables its
    observable counters read) or later ones would count into the void.
    """

    def __init__(self, meter_provider: metrics.MeterProvider | None) -> None:
        meter = metrics.get_meter(SCOPE_NAME, __version__, meter_provider)
        self.tables: dict[str, CounterTable] = {}
        self.instruments: dict[str, Any] = {
            spec.name: _create(meter, spec, self.tables) for spec in semconv.ALL_INSTRUMENTS
        }


class _GlobalProvider:
    """Stands for "the global meter provider" as a weak-referenceable key."""


_GLOBAL = _GlobalProvider()
_shared: weakref.WeakKeyDictionary[object, _SharedInstruments] = weakref.WeakKeyDictionary()
_shared_lock = threading.Lock()


def _instruments_for(meter_provider: metrics.MeterProvider | None) -> _SharedInstruments:
    key: object = meter_provider if meter_provider is not None else _GLOBAL
    with _shared_lock:
        found = _shared.get(key)
        if found is None:
            found = _shared[key] = _SharedInstruments(meter_provider)
        return found


def _create(meter: metrics.Meter, spec: InstrumentSpec, tables: dict[str, CounterTable]) -> Any:
    if spec.kind is Kind.HISTOGRAM:
        return meter.create_histogram(
            spec.name,
            unit=spec.unit,
            description=spec.description,
            explicit_bucket_boundaries_advisory=list(spec.buckets or ()),
        )
    # Counters are exact in-process tables observed at collection time:
    # adding is ~0.3 µs instead of the SDK's ~10 µs per synchronous add.
    table = tables[spec.name] = CounterTable()
    if spec.kind is Kind.COUNTER:
        return meter.create_observable_counter(
            spec.name, [table.observe], unit=spec.unit, description=spec.description
        )
    return meter.create_observable_up_down_counter(
        spec.name, [table.observe], unit=spec.unit, description=spec.description
    )



_default: Telemetry | None = None
_default_lock = threading.Lock()


def get_telemetry() -> Telemetry:
    """The process-wide default :class:`Telemetry`, created on first use."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = Telemetry()
    return _default


def set_telemetry(telemetry: Telemetry | None) -> None:
    """Replace the process-wide default (``None`` recreates it lazily)."""
    global _default
    with _default_lock:
        _default = telemetry


class BoundHistogram:
    """One histogram series (instrument + attribute set), recorded cheaply.

    The SDK's ``Histogram.record`` spends 8-13 µs per call copying, filtering
    and hashing the attributes to find the series' aggregation, which is the
    same object every time. For the per-stream histograms, whose attribute
    sets are few and fixed, this finds those aggregations once and feeds them
    directly (under 1 µs). It does so only where that is exactly what the SDK
    would do: the SDK's own synchronous measurement path, cumulative readers
    (their aggregations live as long as the provider), no view filtering the
    attributes, and no exemplar to offer. Otherwise, and until the series
    exists (its first record goes the SDK's way and creates it), and whenever
    the provider's readers change, each record is a plain ``record()`` call.
    The figures are the SDK's either way (a test compares them).
    """

    __slots__ = ("_attributes", "_consumer", "_histogram", "_storages", "_targets")

    def __init__(self, histogram: Histogram, attributes: Mapping[str, Any]) -> None:
        self._histogram = histogram
        self._attributes = attributes
        self._consumer = getattr(histogram, "_measurement_consumer", None)
        self._storages: object = None
        self._targets: tuple[Any, ...] = ()

    def _fast(self) -> tuple[Any, ...]:
        """The series' aggregations when the fast path applies, else ()."""
        consumer = self._consumer
        if consumer is None:
            return ()
        storages = getattr(consumer, "_reader_storages", None)
        if storages is not self._storages or not self._targets:
            self._targets = _aggregations(self._histogram, storages, self._attributes)
            self._storages = storages
        return self._targets

    def record(self, value: float) -> None:
        targets = self._fast()
        if targets:
            point = _Point(value, time_ns(), self._histogram)
            for aggregation in targets:
                aggregation.aggregate(point, False)
            return
        self._histogram.record(value, self._attributes, context=_NO_CONTEXT)

    def merge(self, gaps: ChunkGaps) -> None:
        """Add every value ``gaps`` counted, exactly as if each had been
        recorded, into the series' aggregations at once. The series' first
        value goes the SDK's way (which creates the series): the smallest gap,
        a real one. Where the fast path does not apply, each bucket's mean is
        recorded as often as it counted (the same bucket counts, count and sum)."""
        targets = self._fast()
        if not targets:
            self._histogram.record(gaps.minimum, self._attributes, context=_NO_CONTEXT)
            gaps = gaps.without_minimum()
            targets = self._fast()
        if targets and all(getattr(a, "_boundaries", None) == BOUNDS for a in targets):
            total = sum(gaps.sums)
            for aggregation in targets:
                _add_counts(aggregation, gaps, total)
            return
        for count, seconds in zip(gaps.counts, gaps.sums, strict=True):
            if count:
                mean = seconds / count
                for _ in range(count):
                    self.record(mean)


def _add_counts(aggregation: Any, gaps: ChunkGaps, total: float) -> None:
    """What the SDK's explicit-bucket ``aggregate`` does for each value, for all at once."""
    with aggregation._lock:
        if aggregation._value is None:
            aggregation._value = aggregation._get_empty_bucket_counts()
        value = aggregation._value
        for i, count in enumerate(gaps.counts):
            if count:
                value[i] += count
        aggregation._sum += total
        if aggregation._record_min_max:
            aggregation._min = min(aggregation._min, gaps.minimum)
            aggregation._max = max(aggregation._max, gaps.maximum)


class _Point:
    """A measurement as an SDK aggregation reads it when it offers no exemplar.

    The fields of the SDK's ``Measurement`` (an aggregation reads only
    ``value`` then), without what its constructor does on every record:
    a frozen dataclass's per-field ``object.__setattr__`` and a cleaning
    of the attributes (2.7 µs against 0.2 µs here). The series is already
    chosen, so the point needs no attributes.
    """

    __slots__ = ("attributes", "context", "instrument", "time_unix_nano", "value")

    def __init__(self, value: float, time_unix_nano: int, instrument: Any) -> None:
        self.value = value
        self.time_unix_nano = time_unix_nano
        self.instrument = instrument
        self.context = _NO_CONTEXT
        self.attributes = None


def _sdk_internals() -> Any:
    """The SDK's series key function if its measurement still has exactly the
    fields :class:`_Point` mimics, else False (records then take the SDK's path)."""
    try:  # only here, where an SDK provider exists: importing ragobs stays light
        from dataclasses import fields

        from opentelemetry.sdk.metrics._internal._view_instrument_match import (
            _hash_attributes,
        )
        from opentelemetry.sdk.metrics._internal.measurement import Measurement
    except ImportError:  # pragma: no cover - SDK internals changed: plain records
        return False
    if {field.name for field in fields(Measurement)} != set(_Point.__slots__):
        return False  # pragma: no cover - SDK internals changed: plain records
    return _hash_attributes


def _aggregations(histogram: Histogram, storages: Any,  # noqa: PLR0911
                  attributes: Mapping[str, Any]) -> tuple[Any, ...]:
    """The aggregations of ``attributes``' series in every reader storage, or
    () where the fast path would not do exactly what the SDK does."""
    global _sdk_series_key
    if not storages:
        return ()
    if _sdk_series_key is None:
        _sdk_series_key = _sdk_internals()
    if _sdk_series_key is False:
        return ()
    found = []
    try:
        key = _sdk_series_key(dict(attributes))
        for storage in storages.values():
            matches = storage._instrument_view_instrument_matches.get(histogram)
            if not matches or len(matches) != 1:
                return ()
            match = matches[0]
            if match._reset_on_collect or match._view._attribute_keys is not None:
                return ()  # delta temporality, or a view that filters attributes
            aggregation = match._attributes_aggregation.get(key)
            if aggregation is None:
                return ()  # not created yet: the SDK's path creates it
            found.append(aggregation)
    except (AttributeError, TypeError):  # pragma: no cover - SDK internals changed
        return ()
    return tuple(found)
