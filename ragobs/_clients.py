"""One line instruments a client: ``ragobs.instrument_client(client)``.

For ``openai.OpenAI`` / ``AsyncOpenAI`` (Chat Completions and the Responses
API) and ``anthropic.Anthropic`` / ``AsyncAnthropic`` (Messages). Every call
made with ``stream=True`` through *that client object* is observed as by
:func:`~ragobs.observe_stream`, measured from the moment the request is
issued, so the wait for response headers is part of TTFT and latency (as the
GenAI semantic conventions define them). Nothing is patched globally: only
the ``create`` methods of this client's resource objects are replaced, on the
instance. Other calls pass through untouched.

* Azure OpenAI clients (``AzureOpenAI`` / ``AsyncAzureOpenAI``) are labelled
  ``gen_ai.provider.name=azure.ai.openai``, other OpenAI clients ``openai``.
* OpenAI Chat Completions streams ask for usage in the stream
  (``stream_options={"include_usage": True}``) unless the call sets
  ``stream_options`` itself or ``include_usage=False`` was given. A server
  that rejects the field (older Azure API versions, some OpenAI-compatible
  servers: HTTP 400 naming ``stream_options``) costs no failed call: the
  request is sent again at once without it, within the same call, and that
  client stops asking (its token figures are then counted from chunks). The
  refusal is a ``stream_options.rejected`` event on the call's span and the
  hooks, logged at INFO once per client.
* No hidden retries: while a ragobs retry wrapper makes an attempt, the call
  goes through a copy of the client with the SDK's own retries off
  (``with_options(max_retries=0)``), so the provider receives exactly the
  attempts ragobs reports. Elsewhere the SDK retries as configured
  (``sdk_retries=False`` turns them off for every streamed call,
  ``sdk_retries=True`` always leaves them on).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import AsyncGenerator, Callable, Generator, Mapping
from typing import Any, Final, TypeVar

from opentelemetry import context as otel_context

from ragobs import semconv
from ragobs._classify import http_status
from ragobs._events import emit
from ragobs._sources import aclose_source, close_source
from ragobs._stream import (
    StreamObservation,
    _check_telemetry_arg,
    _observation,
    _observe_async,
    _observe_sync,
)
from ragobs._telemetry import Telemetry
from ragobs.resilience._retry import in_retry

__all__ = ["instrument_client"]

C = TypeVar("C")

#: Resources whose ``create`` is observed, by SDK: (path from the client,
#: operation name, whether it takes ``stream_options``).
_RESOURCES: Final = {
    "openai": (("chat.completions", "chat", True), ("responses", "chat", False)),
    "anthropic": (("messages", "chat", False),),
}
_MARK: Final = "_ragobs_instrumented"
#: The classes (anywhere in a client's MRO) of the openai SDK's Azure clients.
_AZURE_CLASSES: Final = frozenset({"BaseAzureClient", "AzureOpenAI", "AsyncAzureOpenAI"})


def instrument_client(
    client: C,
    *,
    include_usage: bool = True,
    sdk_retries: bool | None = None,
    telemetry: Telemetry | None = None,
) -> C:
    """Observe every streamed call of ``client``; returns ``client``.

    Args:
        client: an ``openai`` or ``anthropic`` client, sync or async
            (Azure and other subclasses included).
        include_usage: ask OpenAI Chat Completions streams to report usage
            (``stream_options.include_usage``) unless a call says otherwise;
            given up for this client if its server rejects the field.
        sdk_retries: ``None`` (default): the SDK's own retries are off for
            attempts made inside a ragobs retry wrapper and on elsewhere;
            ``False``: always off for streamed calls; ``True``: always on.
        telemetry: where the figures go; default :func:`~ragobs.get_telemetry`.

    Calling it twice on one client is harmless. A client made from this one
    by ``with_options()`` / ``copy()`` is a new object: instrument it too.
    """
    if not isinstance(include_usage, bool):
        raise TypeError(f"include_usage must be a bool, got {include_usage!r}")
    if sdk_retries is not None and not isinstance(sdk_retries, bool):
        raise TypeError(f"sdk_retries must be a bool or None, got {sdk_retries!r}")
    tel = _check_telemetry_arg(telemetry)
    provider = _provider_of(client)
    if getattr(client, _MARK, False):
        return client
    is_async = type(client).__name__.startswith("Async")
    owner, resources = _targets(client, provider)
    label = semconv.PROVIDER_AZURE_OPENAI if _is_azure(owner) else provider
    sibling = _NoRetrySibling(owner)
    for path, operation, takes_stream_options in resources:
        resource = _resolve(owner, path)
        if resource is None:
            continue
        settings = _Settings(
            original=resource.create, sibling=sibling, path=path, operation=operation,
            provider=label, client_name=type(owner).__name__,
            include_usage=include_usage and takes_stream_options,
            sdk_retries=sdk_retries, telemetry=tel)
        resource.create = _async_create(settings) if is_async else _sync_create(settings)
    setattr(client, _MARK, True)
    return client


def _provider_of(client: object) -> str:
    for cls in type(client).__mro__:
        root = cls.__module__.partition(".")[0]
        if root in _RESOURCES:
            return root
    raise TypeError("client must be an openai or anthropic client (OpenAI, AsyncOpenAI, "
                    f"Anthropic, AsyncAnthropic), got {type(client).__name__}")


def _is_azure(client: object) -> bool:
    return any(cls.__name__ in _AZURE_CLASSES for cls in type(client).__mro__)


def _targets(client: Any, provider: str) -> tuple[Any, tuple[tuple[str, str, bool], ...]]:
    """(the client, the resources to observe): all of them for a client, the one
    passed for a resource of one (``instrument_client(client.chat.completions)``)."""
    known = _RESOURCES[provider]
    if hasattr(client, "with_options"):  # a client; its resources have no with_options
        return client, known
    owner = getattr(client, "_client", None)
    for entry in known:
        if owner is not None and _resolve(owner, entry[0]) is client:
            return owner, (entry,)
    paths = ", ".join(f"client.{path}" for path, _, _ in known)
    raise TypeError(f"client must be an {provider} client or one of its resources ({paths}), "
                    f"got {type(client).__name__}")


def _resolve(obj: Any, path: str) -> Any:
    for name in path.split("."):
        obj = getattr(obj, name, None)
        if obj is None:
            return None
    return obj


class _NoRetrySibling:
    """The client with the SDK's retries off, made once when first needed.

    ``with_options`` shares the parent's HTTP connection pool.
    """

    __slots__ = ("_client", "_copy")

    def __init__(self, client: Any) -> None:
        self._client = weakref.ref(client)
        self._copy: Any = None

    def create(self, path: str) -> Callable[..., Any]:
        if self._copy is None:
            client = self._client()
            if client is None:  # pragma: no cover - the client is calling us
                raise RuntimeError("the instrumented client is gone")
            self._copy = client.with_options(max_retries=0)
        return _resolve(self._copy, path).create  # type: ignore[no-any-return]


class _Settings:
    __slots__ = ("client_name", "include_usage", "operation", "original", "path", "provider",
                 "sdk_retries", "sibling", "telemetry")

    def __init__(self, *, original: Callable[..., Any], sibling: _NoRetrySibling, path: str,
                 operation: str, provider: str, client_name: str, include_usage: bool,
                 sdk_retries: bool | None, telemetry: Telemetry | None) -> None:
        self.original = original
        self.sibling = sibling
        self.path = path
        self.operation = operation
        self.provider = provider
        self.client_name = client_name
        #: Cleared for good when the server rejects ``stream_options``.
        self.include_usage = include_usage
        self.sdk_retries = sdk_retries
        self.telemetry = telemetry

    def begin(self, kwargs: dict[str, Any]
              ) -> tuple[StreamObservation, Callable[..., Any], bool]:
        """The observation of one streamed call, started now, what to call, and
        whether the usage chunk is ragobs' alone (asked for on the caller's behalf)."""
        hide_usage = False
        if self.include_usage and kwargs.get("stream_options") is None:
            kwargs["stream_options"] = {"include_usage": True}
            hide_usage = True
        model = kwargs.get("model")
        obs = _observation(self.telemetry, self.operation, self.provider,
                           model if isinstance(model, str) and model else None)
        obs.start()
        retries = self.sdk_retries
        if retries is None:
            retries = not in_retry.get()
        target = self.original if retries else self.sibling.create(self.path)
        return obs, target, hide_usage

    def drop_usage(self, exc: Exception, kwargs: dict[str, Any]) -> bool:
        """Whether ``exc`` is the server refusing the ``stream_options`` ragobs added.

        If so: take it out of ``kwargs``, stop adding it on this client, and
        report the refusal (on the current span: the call's) -- the caller
        sends the request again. Called only when ragobs added the field.
        """
        if not _rejects_stream_options(exc):
            return False
        del kwargs["stream_options"]
        first, self.include_usage = self.include_usage, False
        emit(semconv.EVENT_STREAM_OPTIONS_REJECTED, self.client_name, error=exc,
             level=logging.INFO if first else logging.DEBUG,
             message=f"{self.client_name}: the server rejects stream_options; streaming "
                     "without it (token figures counted from chunks)")
        return True


def _rejects_stream_options(exc: BaseException) -> bool:
    """An HTTP 400 whose error names ``stream_options`` (its message or ``param``)."""
    if http_status(exc) != 400:
        return False
    body = getattr(exc, "body", None)
    error = body.get("error", body) if isinstance(body, Mapping) else None
    texts = [str(exc)]
    if isinstance(error, Mapping):
        texts += [str(error.get("message")), str(error.get("param"))]
    return any("stream_options" in text for text in texts)


def _streaming(kwargs: dict[str, Any]) -> bool:
    return kwargs.get("stream") is True


def _async_create(settings: _Settings) -> Callable[..., Any]:
    original = settings.original

    async def create(*args: Any, **kwargs: Any) -> Any:
        if not _streaming(kwargs):
            return await original(*args, **kwargs)
        obs, target, hide_usage = settings.begin(kwargs)
        token = otel_context.attach(obs._ctx)  # type: ignore[arg-type]
        try:
            rejected = False
            try:
                stream = await target(*args, **kwargs)
            except Exception as exc:
                if not (hide_usage and settings.drop_usage(exc, kwargs)):
                    raise
                rejected = True
            if rejected:  # sent again outside the handler, so no failure chains the 400
                hide_usage = False
                stream = await target(*args, **kwargs)
        except BaseException as exc:
            obs.finish(exc)
            raise
        finally:
            otel_context.detach(token)
        return ObservedAsyncStream(stream, obs, hide_usage)

    create.__wrapped__ = original  # type: ignore[attr-defined]
    create.__doc__ = getattr(original, "__doc__", None)
    return create


def _sync_create(settings: _Settings) -> Callable[..., Any]:
    original = settings.original

    def create(*args: Any, **kwargs: Any) -> Any:
        if not _streaming(kwargs):
            return original(*args, **kwargs)
        obs, target, hide_usage = settings.begin(kwargs)
        token = otel_context.attach(obs._ctx)  # type: ignore[arg-type]
        try:
            rejected = False
            try:
                stream = target(*args, **kwargs)
            except Exception as exc:
                if not (hide_usage and settings.drop_usage(exc, kwargs)):
                    raise
                rejected = True
            if rejected:  # sent again outside the handler, so no failure chains the 400
                hide_usage = False
                stream = target(*args, **kwargs)
        except BaseException as exc:
            obs.finish(exc)
            raise
        finally:
            otel_context.detach(token)
        return ObservedStream(stream, obs, hide_usage)

    create.__wrapped__ = original  # type: ignore[attr-defined]
    create.__doc__ = getattr(original, "__doc__", None)
    return create


#: What ends a stream that was closed (or dropped) before it was read to the end.
_CLOSED: Final = GeneratorExit()


class ObservedAsyncStream:
    """An SDK ``AsyncStream`` whose consumption is observed.

    Iterate it, use it as ``async with``, ``close()`` it: as the SDK's own
    stream. Other attributes (``response``...) are the SDK stream's. Closing
    it, or dropping it unread, ends the observation (outcome ``cancelled``)
    and closes the SDK stream, releasing the HTTP response. An exception
    leaving ``async with stream:`` ends it with that exception's outcome
    (``error``, for a consumer's own failure). The usage chunk that ragobs
    asked for on the caller's behalf is read, never passed on.
    """

    __slots__ = ("_gen", "_hide_usage", "_obs", "_stream")

    def __init__(self, stream: Any, obs: StreamObservation, hide_usage: bool = False) -> None:
        self._stream = stream
        self._obs = obs
        self._hide_usage = hide_usage
        self._gen: AsyncGenerator[Any, None] | None = None

    def __aiter__(self) -> AsyncGenerator[Any, None]:
        if self._gen is None:
            self._gen = _observe_async(self._stream, self._obs, None, self._hide_usage)
        return self._gen

    async def __anext__(self) -> Any:
        return await self.__aiter__().__anext__()

    async def close(self) -> None:
        """Stop: end the observation and close the SDK stream."""
        if self._gen is not None:
            await self._gen.aclose()
        self._obs.finish(_CLOSED)
        await aclose_source(None, self._stream, quiet=True)

    aclose = close

    async def __aenter__(self) -> ObservedAsyncStream:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: object) -> None:
        if exc is not None:  # the consumer's own code failed: the request failed with it
            if self._gen is None:
                self._obs.finish(exc)
            else:  # at the chunk it stopped on, so the figures so far are kept
                try:
                    await self._gen.athrow(exc)
                except BaseException as raised:
                    if raised is not exc:
                        raise
        await self.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    def __del__(self) -> None:
        if self._gen is None:  # never read: the generator's own finalizer cannot run
            self._obs.finish(_CLOSED)


class ObservedStream:
    """An SDK ``Stream`` (sync client) whose consumption is observed; as
    :class:`ObservedAsyncStream`."""

    __slots__ = ("_gen", "_hide_usage", "_obs", "_stream")

    def __init__(self, stream: Any, obs: StreamObservation, hide_usage: bool = False) -> None:
        self._stream = stream
        self._obs = obs
        self._hide_usage = hide_usage
        self._gen: Generator[Any, None, None] | None = None

    def __iter__(self) -> Generator[Any, None, None]:
        if self._gen is None:
            self._gen = _observe_sync(self._stream, self._obs, None, self._hide_usage)
        return self._gen

    def __next__(self) -> Any:
        return next(self.__iter__())

    def close(self) -> None:
        """Stop: end the observation and close the SDK stream."""
        if self._gen is not None:
            self._gen.close()
        self._obs.finish(_CLOSED)
        close_source(None, self._stream, quiet=True)

    def __enter__(self) -> ObservedStream:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: object) -> None:
        if exc is not None:  # as ObservedAsyncStream.__aexit__
            if self._gen is None:
                self._obs.finish(exc)
            else:
                try:
                    self._gen.throw(exc)
                except BaseException as raised:
                    if raised is not exc:
                        raise
        self.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    def __del__(self) -> None:
        if self._gen is None:
            self._obs.finish(_CLOSED)
