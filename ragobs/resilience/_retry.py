"""Retry with exponential backoff and jitter, for coroutines and for streams.

One entry point::

    @retry(attempts=4, deadline=30)
    async def complete(prompt): ...

    @retry
    async def answer(question):          # an async generator function
        async for chunk in llm.stream(question):
            yield chunk

    async for chunk in retry_stream(lambda: llm.stream(q), budget=BUDGET): ...

Defaults reproduce the seed's schedule: up to 4 attempts, waiting about 1 s,
2 s and 4 s between them. Only failures worth retrying are retried (see
:func:`is_retryable`); a server's ``Retry-After`` is honoured; an optional
``deadline`` bounds the whole call and a shared :class:`RetryBudget` bounds
the extra load retries may add across calls.

When it gives up, ``retry`` re-raises the last attempt's own exception,
with a note (PEP 678) saying why; there is no wrapper exception.

Every retry is reported through :func:`ragobs._events.emit` (``retry``, and
``retry.exhausted`` when giving up after a retryable failure) and counted in
``ragobs.retry.attempts``, ``ragobs.retry.delay`` and
``ragobs.retry.exhausted``.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import math
import random
import threading
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Iterator,
)
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import Any, Final, TypeVar, cast, overload

from opentelemetry.util.types import AttributeValue

from ragobs import semconv
from ragobs._classify import error_type, is_retryable, retry_after
from ragobs._events import emit
from ragobs._sources import aclose_source, aopen, close_source, open_sync
from ragobs._telemetry import Telemetry, get_telemetry
from ragobs.chunks import carries_output
from ragobs.clock import Clock
from ragobs.resilience._checks import (
    _check_clock,
    _check_name,
    _check_telemetry,
    _default_name,
    _describe,
    _exception_filter,
    _in_range,
    _number,
    _optional_positive,
    _positive,
)
from ragobs.semconv import RetryGiveUp as GiveUp

__all__ = ["RetryBudget", "is_retryable", "retry", "retry_stream"]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

#: A filter: exception types, or a predicate taking the exception.
ExceptionFilter = (
    type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]
)


#: The longest server-asked wait that is honoured (as the OpenAI SDK): above
#: it, the retry gives up at once (reason ``retry_after``) instead of sleeping.
DEFAULT_MAX_RETRY_AFTER: Final = 120.0

#: True while a ragobs retry wrapper makes an attempt: a client instrumented
#: by :func:`ragobs.instrument_client` then turns the SDK's own retries off,
#: so every request the provider receives is an attempt ragobs reports.
in_retry: ContextVar[bool] = ContextVar("ragobs_in_retry", default=False)


# --- the budget ------------------------------------------------------------


class RetryBudget:
    """Caps retries at a fraction of calls, for every wrapper that shares it.

    Finagle-style: calls through the wrappers given this budget earn
    retries, and retries spend them. Guarantee: a retry is granted only if,
    counting the last ``window`` seconds (kept in 10 slots, so the window
    slides in steps of ``window / 10``), the retries granted including this
    one are at most ``ratio * calls + min_per_second * window``. The floor
    lets a quiet service still retry; under a burst of failures the extra
    load stays a ``ratio`` of the traffic. A denied retry makes the call give
    up with its error (reason ``budget``).

    Thread-safe; share one budget per downstream dependency.

    Args:
        ratio: retries allowed per call, a number >= 0 (0.2: at most 20 %
            extra load).
        min_per_second: retries always allowed per second, a number >= 0.
        window: seconds over which calls and retries are counted, > 0.
        clock: time source (default: the monotonic clock).
    """

    __slots__ = ("_calls", "_clock", "_epochs", "_floor", "_lock", "_ratio", "_retries",
                 "_width")

    _SLOTS = 10

    def __init__(self, *, ratio: float = 0.2, min_per_second: float = 1.0,
                 window: float = 10.0, clock: Clock | None = None) -> None:
        ratio = _number("ratio", ratio, ">= 0")
        if not (ratio >= 0 and math.isfinite(ratio)):
            raise ValueError(f"ratio must be a number >= 0, got {ratio!r}")
        min_per_second = _number("min_per_second", min_per_second, ">= 0")
        if not (min_per_second >= 0 and math.isfinite(min_per_second)):
            raise ValueError(f"min_per_second must be a number >= 0, got {min_per_second!r}")
        window = _positive("window", window)
        self._ratio = ratio
        self._floor = min_per_second * window
        self._width = window / self._SLOTS
        self._clock = _check_clock(clock)
        self._calls = [0] * self._SLOTS
        self._retries = [0] * self._SLOTS
        self._epochs = [-1] * self._SLOTS
        self._lock = threading.Lock()

    def _slot(self) -> tuple[int, int]:
        epoch = int(self._clock.now() // self._width)
        slot = epoch % self._SLOTS
        if self._epochs[slot] != epoch:
            self._epochs[slot] = epoch
            self._calls[slot] = 0
            self._retries[slot] = 0
        return epoch, slot

    def _totals(self, epoch: int) -> tuple[int, int]:
        calls = retries = 0
        oldest = epoch - self._SLOTS
        for i in range(self._SLOTS):
            if self._epochs[i] > oldest:
                calls += self._calls[i]
                retries += self._retries[i]
        return calls, retries

    def record_call(self) -> None:
        """Count one call (its first attempt); wrappers do this for you."""
        with self._lock:
            self._calls[self._slot()[1]] += 1

    def try_retry(self) -> bool:
        """Take one retry if the budget allows it now; False (and nothing taken) if not."""
        with self._lock:
            epoch, slot = self._slot()
            calls, retries = self._totals(epoch)
            if retries + 1 > self._ratio * calls + self._floor + 1e-9:
                return False
            self._retries[slot] += 1
            return True

    def snapshot(self) -> tuple[int, int]:
        """(calls, retries) counted in the current window."""
        with self._lock:
            return self._totals(self._slot()[0])

    def __repr__(self) -> str:
        calls, retries = self.snapshot()
        return (f"RetryBudget(ratio={self._ratio:g}, floor={self._floor:g}, "
                f"window={self._width * self._SLOTS:g}, calls={calls}, retries={retries})")


# --- the policy ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Policy:
    """Validated settings of one wrapper, and the decision after a failure."""

    attempts: int
    initial: float
    multiplier: float
    max_delay: float
    jitter: float
    retryable: Callable[[BaseException], bool]
    deadline: float | None
    budget: RetryBudget | None
    name: str | None
    clock: Clock
    telemetry: Telemetry | None
    rng: Callable[[], float]
    max_retry_after: float

    @classmethod
    def checked(cls, *, attempts: object, initial: object, multiplier: object,
                max_delay: object, jitter: object, on: object, deadline: object,
                budget: object, name: object, clock: object, telemetry: object,
                rng: object, max_retry_after: object = DEFAULT_MAX_RETRY_AFTER) -> _Policy:
        """The settings, each argument checked (naming it and its range)."""
        if not isinstance(attempts, int) or isinstance(attempts, bool):
            raise TypeError(f"attempts must be an int >= 1, got {attempts!r}")
        if attempts < 1:
            raise ValueError(f"attempts must be an int >= 1, got {attempts!r}")
        first = _positive("initial", initial)
        growth = _number("multiplier", multiplier, ">= 1 (finite)")
        if not (growth >= 1 and math.isfinite(growth)):
            raise ValueError(f"multiplier must be a number >= 1 (finite), got {multiplier!r}")
        cap = _positive("max_delay", max_delay, allow_inf=True)
        if cap < first:
            raise ValueError(f"max_delay must be >= initial ({first:g}), got {max_delay!r}")
        if budget is not None and not isinstance(budget, RetryBudget):
            raise TypeError(f"budget must be a RetryBudget or None, got {budget!r}")
        if rng is None:
            rng = random.random
        if not callable(rng):
            raise TypeError(f"rng must be a callable returning a float in [0, 1), got {rng!r}")
        return cls(
            attempts=attempts, initial=first, multiplier=growth, max_delay=cap,
            jitter=_in_range("jitter", jitter, 0.0, 1.0),
            retryable=_exception_filter(on) or is_retryable,
            deadline=_optional_positive("deadline", deadline), budget=budget,
            name=_check_name(name), clock=_check_clock(clock),
            telemetry=_check_telemetry(telemetry), rng=rng,
            max_retry_after=_positive("max_retry_after", max_retry_after, allow_inf=True),
        )

    def named(self, name: str) -> _Policy:
        """These settings, with ``name`` filled in unless one was given."""
        return self if self.name is not None else replace(self, name=name)

    def delay(self, attempt: int, exc: BaseException) -> tuple[float, float | None]:
        """(wait before attempt ``attempt + 1``, the server's Retry-After if any)."""
        try:
            base = self.initial * self.multiplier ** (attempt - 1)
        except OverflowError:
            base = math.inf
        wait = min(self.max_delay, base)
        if self.jitter:
            wait = min(self.max_delay, wait * (1.0 + self.jitter * (2.0 * self.rng() - 1.0)))
        server = retry_after(exc)
        if server is not None and server > wait:
            wait = server
        return wait, server

    def decide(self, exc: BaseException, attempt: int, start: float) -> float | None:
        """After attempt number ``attempt`` failed with ``exc``: the wait before
        the next one (reported), or None to give up (reported when it was
        retryable)."""
        if not self.retryable(exc):
            return None
        if attempt >= self.attempts:
            self.give_up(exc, attempt, GiveUp.ATTEMPTS)
            return None
        wait, server = self.delay(attempt, exc)
        if server is not None and server > self.max_retry_after:
            self.give_up(exc, attempt, GiveUp.RETRY_AFTER)
            return None
        if self.deadline is not None and self.clock.now() + wait > start + self.deadline:
            self.give_up(exc, attempt, GiveUp.DEADLINE)
            return None
        if self.budget is not None and not self.budget.try_retry():
            self.give_up(exc, attempt, GiveUp.BUDGET)
            return None
        self._report_retry(exc, attempt + 1, wait, server)
        return wait

    async def pause(self, exc: BaseException, attempt: int, start: float) -> bool:
        """:meth:`decide`, then wait: True to try again."""
        wait = self.decide(exc, attempt, start)
        if wait is None:
            return False
        await self.clock.sleep(wait)
        return True

    def pause_sync(self, exc: BaseException, attempt: int, start: float) -> bool:
        """:meth:`pause` for the synchronous wrappers: blocks the thread."""
        wait = self.decide(exc, attempt, start)
        if wait is None:
            return False
        sleep = getattr(self.clock, "sleep_sync", None)
        if sleep is None:
            time.sleep(wait)
        else:
            sleep(wait)
        return True

    def output_started(self, exc: BaseException, attempt: int) -> None:
        """A stream failed after yielding: report it if a retry was otherwise possible."""
        if isinstance(exc, Exception) and self.retryable(exc):
            self.give_up(exc, attempt, GiveUp.OUTPUT_STARTED)

    def _report_retry(self, exc: BaseException, attempt: int, wait: float,
                      server: float | None) -> None:
        name = cast(str, self.name)
        tel = self.telemetry or get_telemetry()
        etype = tel.bound(semconv.ERROR_TYPE, error_type(exc))
        bounded = tel.bound(semconv.NAME, name)
        tel.counter(semconv.RETRY_ATTEMPTS).add(
            1, {semconv.NAME: bounded, semconv.ERROR_TYPE: etype})
        tel.histogram(semconv.RETRY_DELAY).record(wait, {semconv.NAME: bounded})
        attrs: dict[str, AttributeValue] = {semconv.RETRY_ATTEMPT: attempt,
                                            semconv.RETRY_DELAY_S: wait}
        if server is not None:
            attrs[semconv.RETRY_AFTER_S] = server
        emit(semconv.EVENT_RETRY, name, attrs, error=exc, level=logging.WARNING,
             message=f"retry {name} after {_describe(exc)}")

    def give_up(self, exc: BaseException, attempts_made: int, reason: GiveUp) -> None:
        name = cast(str, self.name)
        tel = self.telemetry or get_telemetry()
        etype = tel.bound(semconv.ERROR_TYPE, error_type(exc))
        tel.counter(semconv.RETRY_EXHAUSTED).add(1, {
            semconv.NAME: tel.bound(semconv.NAME, name),
            semconv.ERROR_TYPE: etype,
            semconv.RETRY_REASON: reason.value,
        })
        emit(semconv.EVENT_RETRY_EXHAUSTED, name,
             {semconv.RETRY_ATTEMPTS_MADE: attempts_made,
              semconv.RETRY_GIVE_UP_REASON: reason.value},
             error=exc, level=logging.WARNING,
             message=f"retry {name} gave up ({reason.value}) after {_describe(exc)}")
        with contextlib.suppress(Exception):
            exc.add_note(f"ragobs retry {name!r}: not retried ({reason.value}) after "
                         f"{attempts_made} attempt(s)")


# --- the wrappers ----------------------------------------------------------


def _coroutine_wrapper(fn: Callable[..., Awaitable[T]],
                       policy: _Policy) -> Callable[..., Awaitable[T]]:
    budget = policy.budget
    clock = policy.clock
    timed = policy.deadline is not None

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> T:
        if budget is not None:
            budget.record_call()
        start = clock.now() if timed else 0.0
        flag = in_retry.set(True)
        try:
            try:  # the first attempt, kept lean: most calls succeed here
                return await fn(*args, **kwargs)
            except Exception as exc:
                failure: Exception = exc
            attempt = 1
            while await policy.pause(failure, attempt, start):
                attempt += 1
                try:
                    return await fn(*args, **kwargs)
                except Exception as exc:
                    failure = exc
            raise failure
        finally:
            in_retry.reset(flag)

    return wrapper


async def _open(factory: Callable[[], Any]) -> tuple[Any, AsyncIterator[Any]]:
    flag = in_retry.set(True)
    try:
        return await aopen(factory)
    finally:
        in_retry.reset(flag)


def _sync_wrapper(fn: Callable[..., T], policy: _Policy) -> Callable[..., T]:
    budget = policy.budget
    clock = policy.clock

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        if budget is not None:
            budget.record_call()
        start = clock.now() if policy.deadline is not None else 0.0
        flag = in_retry.set(True)
        try:
            attempt = 1
            while True:
                try:
                    return fn(*args, **kwargs)
                except Exception as exc:
                    failure: Exception = exc
                if not policy.pause_sync(failure, attempt, start):
                    raise failure
                del failure
                attempt += 1
        finally:
            in_retry.reset(flag)

    return wrapper


#: Chunks that carry no output (an OpenAI role chunk, an Anthropic
#: message_start) held back before the first output chunk, so that a failure
#: there can still be retried without repeating anything; past this many the
#: stream counts as started.
_HELD_BEFORE_OUTPUT: Final = 64


async def _retry_stream(factory: Callable[[], Any], policy: _Policy) -> AsyncGenerator[Any, None]:
    if policy.budget is not None:
        policy.budget.record_call()
    start = policy.clock.now() if policy.deadline is not None else 0.0
    attempt = 1
    held: list[Any] = []
    while True:  # attempts, until one gives its first output chunk
        source: Any = None
        iterator: AsyncIterator[Any] | None = None
        held.clear()
        try:
            source, iterator = await _open(factory)
            while True:
                chunk = await iterator.__anext__()
                held.append(chunk)
                if len(held) >= _HELD_BEFORE_OUTPUT or carries_output(chunk):
                    break
            break
        except StopAsyncIteration:
            break
        except Exception as exc:
            failure: Exception = exc
        except BaseException:  # cancelled while opening: still close what was opened
            await aclose_source(iterator, source, quiet=True)
            raise
        await aclose_source(iterator, source, quiet=True)
        if not await policy.pause(failure, attempt, start):
            raise failure
        del failure
        attempt += 1
    finished = False
    try:
        for chunk in held:
            yield chunk
        held.clear()
        if iterator is not None:
            async for chunk in iterator:
                yield chunk
        finished = True
    except Exception as exc:
        # Output has reached the consumer: restarting would repeat it.
        policy.output_started(exc, attempt)
        raise
    finally:
        if not finished:
            await aclose_source(iterator, source, quiet=True)


def _retry_sync_stream(factory: Callable[[], Any], policy: _Policy
                       ) -> Generator[Any, None, None]:
    """:func:`_retry_stream` for iterators (sync generator functions)."""
    if policy.budget is not None:
        policy.budget.record_call()
    start = policy.clock.now() if policy.deadline is not None else 0.0
    attempt = 1
    held: list[Any] = []
    while True:
        source: Any = None
        iterator: Iterator[Any] | None = None
        held.clear()
        flag = in_retry.set(True)
        try:
            source, iterator = open_sync(factory)
            while True:
                chunk = next(iterator)
                held.append(chunk)
                if len(held) >= _HELD_BEFORE_OUTPUT or carries_output(chunk):
                    break
            break
        except StopIteration:
            break
        except Exception as exc:
            failure: Exception = exc
        except BaseException:
            close_source(iterator, source, quiet=True)
            raise
        finally:
            in_retry.reset(flag)
        close_source(iterator, source, quiet=True)
        if not policy.pause_sync(failure, attempt, start):
            raise failure
        del failure
        attempt += 1
    finished = False
    try:
        yield from held
        held.clear()
        if iterator is not None:
            yield from iterator
        finished = True
    except Exception as exc:
        policy.output_started(exc, attempt)
        raise
    finally:
        if not finished:
            close_source(iterator, source, quiet=True)


@overload
def retry(fn: F, /) -> F: ...


@overload
def retry(
    fn: None = None, /, *, attempts: int = 4, initial: float = 1.0, multiplier: float = 2.0,
    max_delay: float = 30.0, jitter: float = 0.2, on: ExceptionFilter | None = None,
    deadline: float | None = None, budget: RetryBudget | None = None, name: str | None = None,
    clock: Clock | None = None, telemetry: Telemetry | None = None,
    rng: Callable[[], float] | None = None,
    max_retry_after: float = DEFAULT_MAX_RETRY_AFTER,
) -> Callable[[F], F]: ...


def retry(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    attempts: int = 4,
    initial: float = 1.0,
    multiplier: float = 2.0,
    max_delay: float = 30.0,
    jitter: float = 0.2,
    on: ExceptionFilter | None = None,
    deadline: float | None = None,
    budget: RetryBudget | None = None,
    name: str | None = None,
    clock: Clock | None = None,
    telemetry: Telemetry | None = None,
    rng: Callable[[], float] | None = None,
    max_retry_after: float = DEFAULT_MAX_RETRY_AFTER,
) -> Any:
    """Retry a function or a generator function (async or sync) on failure.

    Synchronous functions and generator functions wait between attempts by
    blocking their thread (``clock.sleep_sync`` when the clock has one, else
    :func:`time.sleep`).

    Usable bare (``@retry``) or with arguments (``@retry(attempts=3)``); the
    decorated function keeps its name, docstring and signature.

    Schedule: attempt ``n + 1`` starts after a wait of
    ``min(max_delay, initial * multiplier**(n-1))`` scaled by a factor drawn
    uniformly from ``[1 - jitter, 1 + jitter]`` (never more than
    ``max_delay``). With the defaults and ``jitter=0`` that is 1 s, 2 s, 4 s.
    If the failure carries a server's ``Retry-After`` (``exc.retry_after``
    seconds, or a ``Retry-After`` header of ``exc.headers`` /
    ``exc.response.headers``, in seconds or as an HTTP-date), the wait is at
    least that long.

    Giving up: the last attempt's own exception is re-raised, at once when
    it is not retryable, and with a note (PEP 678) saying why when
    ``attempts`` are used up, when the next wait would end past ``deadline``
    (seconds since the call started; the call never sleeps past it, but an
    attempt in progress is not cut short: combine with
    :func:`~ragobs.resilience._timeout.timeout` for that), or when ``budget``
    denies the retry. Cancellation, ``KeyboardInterrupt`` and other
    non-``Exception`` errors are never caught.

    Streams (async generator functions, and :func:`retry_stream`): a failure
    before the first chunk reached the consumer is retried by calling the
    function again. Once any chunk has been yielded the stream is never
    restarted, since that would repeat output: the error propagates as it is,
    and a ``retry.exhausted`` event with reason ``output_started`` records
    that a retryable failure was not retried.

    Reporting: before each retry a ``retry`` event (``retry.attempt``: the
    number of the attempt about to start, so 2 for the first retry;
    ``retry.delay_s``; ``retry.retry_after_s`` when the server asked),
    ``ragobs.retry.attempts`` by ``error.type`` and the wait in
    ``ragobs.retry.delay``. On giving up after a retryable failure a
    ``retry.exhausted`` event (``retry.reason``: ``attempts``, ``deadline``,
    ``budget`` or ``output_started``) and ``ragobs.retry.exhausted``.

    Args:
        attempts: attempts in all, an int >= 1 (1 disables retrying).
        initial: first wait in seconds, > 0.
        multiplier: growth of the wait per retry, >= 1.
        max_delay: cap on any backoff wait in seconds, >= initial (may be inf).
        jitter: relative spread of each wait, in [0, 1]; 0 for an exact schedule.
        on: what to retry: an exception type, a tuple of them, or a predicate
            taking the exception. Default :func:`is_retryable`.
        deadline: seconds for the whole call across attempts and waits, or None.
        budget: a :class:`RetryBudget` shared across calls, or None.
        name: reported as ``ragobs.name``; default the function's qualified name.
        clock: time source for waits and the deadline (tests: ManualClock).
        telemetry: where metrics go; default :func:`~ragobs.get_telemetry` at use.
        rng: a callable returning floats in [0, 1) for jitter; default
            :func:`random.random`.
        max_retry_after: the longest server-asked wait honoured, in seconds
            > 0 (may be inf); a longer ``Retry-After`` gives up at once with
            reason ``retry_after``. Default 120, as the OpenAI SDK.
    """
    policy = _Policy.checked(attempts=attempts, initial=initial, multiplier=multiplier,
                     max_delay=max_delay, jitter=jitter, on=on, deadline=deadline,
                     budget=budget, name=name, clock=clock, telemetry=telemetry, rng=rng,
                     max_retry_after=max_retry_after)

    def decorate(func: F) -> F:
        named = policy.named(_default_name(func, "retry"))
        if inspect.isasyncgenfunction(func):
            @functools.wraps(func)
            def stream_wrapper(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, None]:
                return _retry_stream(functools.partial(func, *args, **kwargs), named)

            return cast(F, stream_wrapper)
        if inspect.iscoroutinefunction(func):
            return cast(F, _coroutine_wrapper(func, named))
        if inspect.isgeneratorfunction(func):
            @functools.wraps(func)
            def sync_stream_wrapper(*args: Any, **kwargs: Any) -> Generator[Any, None, None]:
                return _retry_sync_stream(functools.partial(func, *args, **kwargs), named)

            return cast(F, sync_stream_wrapper)
        if callable(func):
            return cast(F, _sync_wrapper(func, named))
        raise TypeError(f"retry decorates functions and generator functions (sync or async), "
                        f"got {func!r}")

    if fn is not None:
        return decorate(fn)
    return decorate


def retry_stream(
    factory: Callable[[], AsyncIterable[T] | Awaitable[AsyncIterable[T]]],
    *,
    attempts: int = 4,
    initial: float = 1.0,
    multiplier: float = 2.0,
    max_delay: float = 30.0,
    jitter: float = 0.2,
    on: ExceptionFilter | None = None,
    deadline: float | None = None,
    budget: RetryBudget | None = None,
    name: str | None = None,
    clock: Clock | None = None,
    telemetry: Telemetry | None = None,
    rng: Callable[[], float] | None = None,
    max_retry_after: float = DEFAULT_MAX_RETRY_AFTER,
) -> AsyncGenerator[T, None]:
    """The chunks of ``factory()``, reopened on failures before the first chunk.

    ``factory`` takes no arguments and returns an async iterable, or an
    awaitable of one (``lambda: client.chat.completions.create(stream=True,
    ...)``); it is called once per attempt, when the consumer first asks for a
    chunk. Arguments, schedule, reporting and the no-restart-after-output
    guarantee are those of :func:`retry`. Closing the returned generator closes
    the current source.
    """
    if not callable(factory):
        raise TypeError(f"factory must be a zero-argument callable, got {factory!r}")
    policy = _Policy.checked(attempts=attempts, initial=initial, multiplier=multiplier,
                     max_delay=max_delay, jitter=jitter, on=on, deadline=deadline,
                     budget=budget, name=name, clock=clock, telemetry=telemetry, rng=rng,
                     max_retry_after=max_retry_after)
    return _retry_stream(factory, policy.named(_default_name(factory, "retry_stream")))
