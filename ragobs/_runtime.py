"""One call sets up everything for the common case: :func:`setup`.

It is the only part of ragobs that touches the OpenTelemetry SDK. It honours
the standard ``OTEL_*`` variables (``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``; with the ``[otlp]`` extra installed,
``OTEL_EXPORTER_OTLP_ENDPOINT`` sends spans and metrics by OTLP). An
application that already installed its own SDK providers keeps them: ragobs
records into them, and ``/metrics`` serves the prometheus_client registry
(add a ``PrometheusMetricReader`` to your provider to see ragobs there).
"""

from __future__ import annotations

import atexit
import errno
import logging
import os
import signal
import threading
import time
import uuid
import weakref
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import urlsplit

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import (
    PROCESS_PID,
    SERVICE_INSTANCE_ID,
    SERVICE_NAME,
    Resource,
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from prometheus_client import REGISTRY, CollectorRegistry

from ragobs import semconv
from ragobs._cost import Price, Pricing
from ragobs._exposition import PrometheusReader
from ragobs._labels import DEFAULT_MAX_SERIES, DEFAULT_MAX_VALUES
from ragobs._push import DEFAULT_PUSH_INTERVAL, SIDECAR_URL_ENV, DropCounter, push_reader
from ragobs._report import Reporter
from ragobs._server.app import create_app
from ragobs._server.sidecar import Sidecar, resolve_address
from ragobs._telemetry import ExemplarTable, Telemetry, set_telemetry

logger = logging.getLogger("ragobs")


@dataclass
class Runtime:
    """What :func:`setup` built; :meth:`shutdown` flushes and stops it."""

    telemetry: Telemetry
    registry: CollectorRegistry
    service_name: str
    meter_provider: MeterProvider | None = None
    tracer_provider: TracerProvider | None = None
    sidecar: Sidecar | None = None
    _owned: list[object] = field(default_factory=list)
    #: The host sidecar this process pushes its metrics to, if any.
    pushing_to: str | None = None

    def app_sidecar(self, host: str | None = None, port: int | None = None) -> Sidecar:
        """A sidecar (not started) serving this runtime's registry and reports
        (summary and resilience counts; uptime counted from now)."""
        reporter = Reporter.of(self.telemetry, service=self.service_name,
                               started=time.monotonic())
        return Sidecar(create_app(self.registry, reporter), host, port)

    async def start_server(self, host: str | None = None, port: int | None = None) -> Sidecar:
        """Serve the sidecar inside the running event loop."""
        self.sidecar = await self.app_sidecar(host, port).start()
        return self.sidecar

    async def stop_server(self) -> None:
        if self.sidecar is not None:
            await self.sidecar.stop()
            self.sidecar = None

    def handle_sigterm(self) -> bool:
        """Make SIGTERM stop the program as Ctrl-C does, losing nothing.

        SIGTERM is what ``kill``, systemd, supervisord, Kubernetes and Docker
        send; by default it ends Python at once, and every span and metric
        point still queued is lost. This installs a handler (main thread
        only) raising ``SystemExit(143)``: ``finally`` blocks and ``atexit``
        run, and :func:`setup` flushes this runtime at exit. An application
        that installed its own SIGTERM handler keeps it (returns False): call
        :meth:`shutdown` from it. gunicorn and uvicorn workers need neither:
        they stop gracefully on SIGTERM and exit normally, which flushes.
        """
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("handle_sigterm() must be called from the main thread")
        if signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None):
            logger.warning("ragobs: SIGTERM already has a handler; keeping it (call "
                           "runtime.shutdown() from it to flush)")
            return False
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
        return True

    def _shutdown_at_exit(self) -> None:
        try:
            self.shutdown()
        except Exception:  # exit must go on; say why the last figures may be missing
            logger.exception("ragobs: flushing at exit failed")

    def shutdown(self) -> None:
        """Stop a threaded sidecar, flush exporters, release the registry.

        Idempotent; :func:`setup` also calls it at interpreter exit.
        """
        global _current
        atexit.unregister(self._shutdown_at_exit)
        if self.sidecar is not None:
            self.sidecar.stop_thread()
            self.sidecar = None
        for provider in self._owned:
            provider.shutdown()  # type: ignore[attr-defined]
        self._owned.clear()
        with _lock:
            if _current is self:
                _current = None


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


_current: Runtime | None = None
_lock = threading.Lock()
#: Providers ragobs made the process's global ones (OpenTelemetry lets a
#: process set each global provider once).
_installed: weakref.WeakSet[object] = weakref.WeakSet()


def _install(provider: object, existing: object, kind: str) -> bool:
    """Whether ``provider`` may become the global ``kind``; remembers it if so.

    After a runtime that :func:`setup` installed was shut down, its provider
    stays the global one (OpenTelemetry refuses a second): the new runtime
    then keeps its providers to itself, and ragobs's instruments use them.
    """
    if existing in _installed:
        logger.warning(
            "ragobs: setup() after shutdown(): OpenTelemetry's global %s can be set once per "
            "process, so this runtime keeps its own (ragobs's instruments use it; other "
            "libraries still see the one shut down)", kind)
        return False
    _installed.add(provider)
    return True


def _sidecar_url(value: object) -> str | None:
    arg = "sidecar_url"
    if value is None:
        value = os.environ.get(SIDECAR_URL_ENV) or None
        arg = SIDECAR_URL_ENV
        if value is None:
            return None
    if not isinstance(value, str) or urlsplit(value).scheme not in ("http", "https") \
            or not urlsplit(value).hostname:
        raise ValueError(f"{arg} must be an http:// URL of a ragobs host sidecar "
                         f"(e.g. http://127.0.0.1:9464), got {value!r}")
    return value.rstrip("/")


_TRUE: Final = frozenset({"true", "1", "yes", "on"})
_FALSE: Final = frozenset({"false", "0", "no", "off", ""})
#: The GenAI semantic conventions' switch for message content on spans.
CAPTURE_CONTENT_ENV: Final = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"


def _capture_content(value: object) -> bool:
    arg = "capture_content"
    if value is None:
        value = os.environ.get(CAPTURE_CONTENT_ENV, "false")
        arg = CAPTURE_CONTENT_ENV
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
    raise ValueError(f"{arg} must be a bool or one of true/false/1/0/yes/no/on/off, "
                     f"got {value!r}")


def _otlp_enabled(signal: str) -> bool:
    """Whether ``signal`` ("traces" or "metrics") leaves by OTLP: an endpoint is
    set for it (``OTEL_EXPORTER_OTLP_ENDPOINT`` or the signal's own) and
    ``OTEL_<SIGNAL>_EXPORTER`` does not say ``none``."""
    env, upper = os.environ, signal.upper()
    if env.get(f"OTEL_{upper}_EXPORTER", "otlp").strip().lower() == "none":
        return False
    return bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
                or env.get(f"OTEL_EXPORTER_OTLP_{upper}_ENDPOINT"))


def _otlp_metric_reader() -> MetricReader | None:
    try:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    except ImportError:
        logger.warning("an OTLP metrics endpoint is set but the OTLP exporter is not "
                       "installed: pip install 'ragobs[otlp]'")
        return None
    return PeriodicExportingMetricReader(OTLPMetricExporter())


def _otlp_span_processor() -> BatchSpanProcessor | None:
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        logger.warning("an OTLP traces endpoint is set but the OTLP exporter is not "
                       "installed: pip install 'ragobs[otlp]'")
        return None
    return BatchSpanProcessor(OTLPSpanExporter())


def setup(
    *,
    service_name: str | None = None,
    serve: bool = True,
    host: str | None = None,
    port: int | None = None,
    registry: CollectorRegistry | None = None,
    set_global: bool = True,
    max_label_values: int = DEFAULT_MAX_VALUES,
    max_series: int = DEFAULT_MAX_SERIES,
    capture_content: bool | str | None = None,
    handle_sigterm: bool = False,
    sidecar_url: str | None = None,
    push_interval: float = DEFAULT_PUSH_INTERVAL,
    prices: Pricing | dict[str, Price] | None = None,
) -> Runtime:
    """Set up tracing, metrics, Prometheus exposition and (``serve``) the sidecar.

    Args:
        service_name: ``service.name``; else ``OTEL_SERVICE_NAME``, else "ragobs".
        serve: start the sidecar in a background thread (for an async agent,
            pass ``serve=False`` and ``await runtime.start_server()`` instead).
        host, port: sidecar address (see :func:`~ragobs._server.resolve_address`).
        registry: prometheus_client registry (default: the global ``REGISTRY``,
            so the process's own metrics are served too).
        set_global: install the providers and the :class:`Telemetry` as
            process-wide defaults. ``False`` builds an isolated runtime.
        max_label_values: distinct values per attribute before ``_OTHER``.
        max_series: distinct label combinations of the per-stream instruments
            before later ones fold to ``_OTHER`` (see :class:`Telemetry`).
        capture_content: opt in to answer text on spans (see :class:`Telemetry`):
            a bool, or a string as environment variables give them ("true",
            "false", "1", "0", "yes", "no", "on", "off"). ``None`` (default):
            ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT``, else off.
        handle_sigterm: make SIGTERM stop the program like Ctrl-C, so the
            flush at exit runs (see :meth:`Runtime.handle_sigterm`). Off by
            default: a library does not take a process's signals unasked.
        sidecar_url: a host sidecar (``ragobs sidecar``) to push this
            process's metrics to, for several worker processes on one host;
            default ``RAGOBS_SIDECAR_URL``. Then nothing is served here:
            metrics leave by OTLP/HTTP, delta temporality, every
            ``push_interval`` seconds (what a SIGKILLed worker may lose).
        prices: what calls cost beyond genai-prices' snapshot (the ``[cost]``
            extra): a dict of model name -> :class:`~ragobs.Price`, or a
            :class:`~ragobs.Pricing` (see :class:`Telemetry`).

    Calling it again with ``set_global=True`` returns the runtime already set up.
    """
    global _current
    if service_name is not None and (not isinstance(service_name, str) or not service_name):
        raise ValueError(f"service_name must be a non-empty str or None, got {service_name!r}")
    for arg, flag in (("serve", serve), ("set_global", set_global),
                      ("handle_sigterm", handle_sigterm)):
        if not isinstance(flag, bool):
            raise TypeError(f"{arg} must be a bool, got {flag!r}")
    if registry is not None and not isinstance(registry, CollectorRegistry):
        raise TypeError(f"registry must be a prometheus_client CollectorRegistry or None, "
                        f"got {registry!r}")
    capture = _capture_content(capture_content)
    pricing = prices if isinstance(prices, Pricing) else Pricing(prices)
    push_url = _sidecar_url(sidecar_url)
    if push_url is not None:
        serve = False  # the host sidecar serves this process's figures
    if serve:
        resolve_address(host, port)  # bad host / port: fail before building anything
    with _lock:
        if set_global and _current is not None:
            return _current
        attrs: dict[str, str | int] = {SERVICE_NAME: service_name} if service_name else {}
        if push_url is not None:
            # Tells the host sidecar one producer from another (never a label).
            attrs.update({SERVICE_INSTANCE_ID: uuid.uuid4().hex, PROCESS_PID: os.getpid()})
        resource = Resource.create(attrs)
        name = str(resource.attributes.get(SERVICE_NAME) or "ragobs")
        if name.startswith("unknown_service"):
            resource = resource.merge(Resource({SERVICE_NAME: "ragobs"}))
            name = "ragobs"
        registry = registry if registry is not None else REGISTRY
        owned: list[object] = []
        drops = DropCounter()

        existing_meter = metrics.get_meter_provider() if set_global else None
        meter_provider: MeterProvider | None = None
        exemplars: ExemplarTable | None = None
        if isinstance(existing_meter, MeterProvider) and existing_meter not in _installed:
            # Its exemplars stay the SDK's, as the application configured them.
            logger.info("ragobs: keeping the application's MeterProvider")
        else:
            otlp = _otlp_metric_reader() if _otlp_enabled("metrics") else None
            readers: list[MetricReader] = []
            if push_url is not None:
                readers.append(push_reader(push_url, interval=push_interval, dropped=drops))
            elif otlp is None:
                # Prometheus is the only reader: ragobs keeps the stream latency
                # and TTFT exemplars itself (a bisect and a dict store per
                # stream instead of the SDK's reservoir) and the reader shows
                # them. With an OTLP reader the SDK keeps taking them, so that
                # they also leave by OTLP: our table is only seen by /metrics.
                exemplars = ExemplarTable()
            if push_url is None:
                readers.append(PrometheusReader(registry, exemplars=exemplars))
            if otlp is not None:
                readers.append(otlp)
            # ragobs flushes it at exit itself (Runtime.shutdown, once).
            meter_provider = MeterProvider(resource=resource, metric_readers=readers,
                                           shutdown_on_exit=False)
            owned.append(meter_provider)
            if set_global and _install(meter_provider, existing_meter, "MeterProvider"):
                metrics.set_meter_provider(meter_provider)

        existing_tracer = trace.get_tracer_provider() if set_global else None
        tracer_provider: TracerProvider | None = None
        if isinstance(existing_tracer, TracerProvider) and existing_tracer not in _installed:
            logger.info("ragobs: keeping the application's TracerProvider")
        else:
            tracer_provider = TracerProvider(resource=resource, shutdown_on_exit=False)
            if _otlp_enabled("traces"):
                processor = _otlp_span_processor()
                if processor is not None:
                    tracer_provider.add_span_processor(processor)
            owned.append(tracer_provider)
            if set_global and _install(tracer_provider, existing_tracer, "TracerProvider"):
                trace.set_tracer_provider(tracer_provider)

        telemetry = Telemetry(
            # None: the global provider, the application's or the one just installed.
            tracer_provider=None if tracer_provider in _installed else tracer_provider,
            meter_provider=None if meter_provider in _installed else meter_provider,
            max_label_values=max_label_values,
            max_series=max_series,
            capture_content=capture,
            exemplars=exemplars,
            prices=pricing,
        )
        drops.sink = telemetry.counter(semconv.PUSH_DROPPED)
        runtime = Runtime(telemetry, registry, name, meter_provider, tracer_provider,
                          _owned=owned, pushing_to=push_url)
        # Queued spans and metric points leave at exit, however the program ends
        # (return, sys.exit, an exception; SIGTERM with handle_sigterm()).
        atexit.register(runtime._shutdown_at_exit)
        if set_global:
            set_telemetry(telemetry)
            _current = runtime
    if handle_sigterm:
        runtime.handle_sigterm()
    if serve:
        try:
            runtime.sidecar = runtime.app_sidecar(host, port).start_in_thread()
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            # Several workers of one server, each calling setup(): the first
            # one serves; crashing the others would take the app down.
            logger.error("ragobs: %s. This process's figures are not served. For several "
                         "worker processes run `ragobs sidecar` once per host and give the "
                         "workers RAGOBS_SIDECAR_URL=http://127.0.0.1:9464 (see the README, "
                         "'Several workers')", exc.strerror)
        else:
            logger.info("ragobs sidecar serving %s/metrics", runtime.sidecar.url)
    return runtime


def _after_fork_in_child() -> None:
    """A process forked after setup() served in-process (gunicorn --preload,
    a multiprocessing pool): the sidecar thread did not come along, and
    whatever this process records would never be served. Say so, loudly."""
    runtime = _current
    if runtime is None or runtime.sidecar is None:
        return
    runtime.sidecar = None
    logger.error("ragobs: this process was forked after setup() started serving metrics "
                 "(gunicorn --preload?): its figures are not served by the parent. Run "
                 "`ragobs sidecar` and set RAGOBS_SIDECAR_URL before the server starts, or "
                 "call setup() in each worker (see the README, 'Several workers')")


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
