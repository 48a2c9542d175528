"""Every attribute and instrument ragobs emits, declared in one place.

Names follow the OpenTelemetry GenAI semantic conventions where one exists
(``gen_ai.*``, ``error.type``) and live under ``ragobs.*`` otherwise. The
Prometheus exporter turns dots into underscores, appends the unit
(``_seconds``, ``_per_second``) and ``_total`` for counters; the resulting
Prometheus names are listed in the README.

GenAI metric names that an open change of the conventions renames are in
:data:`PENDING_RENAMES`; ``RAGOBS_GENAI_METRIC_NAMES=proposed`` takes the
proposed names now (default ``current``), and :func:`rewrite_names` moves a
dashboard or rules file to them. A rename is one edit of that table.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

__all__ = [
    "AGENT_NAME",
    "ALL_INSTRUMENTS",
    "CALLS_BUCKETS",
    "COST_BUCKETS",
    "DATA_SOURCE_ID",
    "DURATION_BUCKETS",
    "ERRORS",
    "ERROR_TYPE",
    "EVENT_ERROR_TYPE",
    "EVENT_FALLBACK",
    "EVENT_FIRST_CHUNK",
    "EVENT_NAME",
    "EVENT_RATELIMIT_BACKEND_ERROR",
    "EVENT_RATELIMIT_REJECTED",
    "EVENT_RATELIMIT_WAIT",
    "EVENT_RETRY",
    "EVENT_RETRY_EXHAUSTED",
    "EVENT_STREAM_OPTIONS_REJECTED",
    "EVENT_TIMEOUT",
    "FAILED_CALLS",
    "FALLBACKS",
    "FALLBACK_PARTIAL",
    "FINISH_REASON",
    "FINISH_REASONS",
    "INFERENCE_CALLS",
    "METRIC_NAMES",
    "METRIC_NAMES_ENV",
    "NAME",
    "OPERATION_COST",
    "OPERATION_DURATION",
    "OPERATION_EXECUTE_TOOL",
    "OPERATION_INVOKE_AGENT",
    "OPERATION_NAME",
    "OPERATION_RETRIEVAL",
    "OTHER",
    "OUTCOME",
    "OUTPUT_MESSAGES",
    "OUTPUT_TOKEN_RATE",
    "PENDING_RENAMES",
    "PHASE",
    "PROVIDER_AZURE_OPENAI",
    "PROVIDER_NAME",
    "PROXY_INTERRUPTED",
    "PROXY_LIMIT",
    "PROXY_LIMITED",
    "PROXY_OVERHEAD",
    "PROXY_OVERHEAD_BUCKETS",
    "PROXY_UPSTREAM",
    "PUSH_DROPPED",
    "RATELIMIT_ACQUISITIONS",
    "RATELIMIT_BACKEND_ERRORS",
    "RATELIMIT_BACKEND_MODE",
    "RATELIMIT_COST",
    "RATELIMIT_MAX_REQUESTS",
    "RATELIMIT_REASON",
    "RATELIMIT_REJECTIONS",
    "RATELIMIT_WAIT",
    "RATELIMIT_WAITED",
    "RATELIMIT_WAIT_S",
    "RATELIMIT_WINDOW_S",
    "REQUESTS",
    "REQUESTS_ACTIVE",
    "REQUEST_MODEL",
    "REQUEST_STREAM",
    "RESPONSE_FINISH_REASONS",
    "RESPONSE_ID",
    "RESPONSE_MODEL",
    "RESPONSE_TIME_TO_FIRST_CHUNK",
    "RETRIEVALS",
    "RETRIEVAL_DOCUMENTS",
    "RETRIEVAL_TOP_K",
    "RETRY_AFTER_S",
    "RETRY_ATTEMPT",
    "RETRY_ATTEMPTS",
    "RETRY_ATTEMPTS_MADE",
    "RETRY_DELAY",
    "RETRY_DELAY_S",
    "RETRY_EXHAUSTED",
    "RETRY_GIVE_UP_REASON",
    "RETRY_REASON",
    "SPEND",
    "STAGE",
    "STAGE_DURATION",
    "TIMEOUTS",
    "TIMEOUT_ELAPSED_S",
    "TIMEOUT_KIND",
    "TIMEOUT_LIMIT_S",
    "TIME_PER_OUTPUT_CHUNK",
    "TIME_PER_OUTPUT_CHUNK_BUCKETS",
    "TIME_TO_FIRST_ANSWER_CHUNK",
    "TIME_TO_FIRST_CHUNK",
    "TIME_TO_FIRST_CHUNK_BUCKETS",
    "TOKEN_RATE_BUCKETS",
    "TOKEN_TYPE",
    "TOKEN_USAGE",
    "TOKEN_USAGE_BUCKETS",
    "TOOL_CALLS",
    "TOOL_CALL_ID",
    "TOOL_NAME",
    "TURN_COST",
    "TURN_COST_AMOUNT",
    "TURN_DURATION",
    "TURN_INFERENCE_CALLS",
    "TURN_OUTPUT_TOKEN_RATE",
    "TURN_TIME_TO_FIRST_CHUNK",
    "TURN_TOKEN_USAGE",
    "TURN_TOOL_CALLS",
    "TURN_TTFT_PHASES",
    "UNPRICED_CALLS",
    "USAGE_CACHE_READ_INPUT_TOKENS",
    "USAGE_CACHE_WRITE_INPUT_TOKENS",
    "USAGE_COST_AMOUNT",
    "USAGE_COST_CURRENCY",
    "USAGE_COST_SOURCE",
    "USAGE_INPUT_TOKENS",
    "USAGE_OUTPUT_TOKENS",
    "USAGE_REASONING_OUTPUT_TOKENS",
    "USAGE_SOURCE",
    "USAGE_TOKENS",
    "USAGE_TOKEN_TYPE",
    "WAIT_BUCKETS",
    "InstrumentSpec",
    "Kind",
    "Outcome",
    "RetryGiveUp",
    "TokenType",
    "UsageTokenType",
    "rewrite_names",
]


# --- attribute keys -------------------------------------------------------

OPERATION_NAME: Final = "gen_ai.operation.name"
PROVIDER_NAME: Final = "gen_ai.provider.name"
#: gen_ai.provider.name of Azure OpenAI (the conventions' value).
PROVIDER_AZURE_OPENAI: Final = "azure.ai.openai"
REQUEST_MODEL: Final = "gen_ai.request.model"
TOKEN_TYPE: Final = "gen_ai.token.type"
DATA_SOURCE_ID: Final = "gen_ai.data_source.id"
ERROR_TYPE: Final = "error.type"
USAGE_OUTPUT_TOKENS: Final = "gen_ai.usage.output_tokens"
USAGE_INPUT_TOKENS: Final = "gen_ai.usage.input_tokens"
RESPONSE_TIME_TO_FIRST_CHUNK: Final = "gen_ai.response.time_to_first_chunk"
#: Cost of one inference call (the open proposal open-telemetry/semantic-conventions-genai#443).
USAGE_COST_AMOUNT: Final = "gen_ai.usage.cost.amount"
USAGE_COST_CURRENCY: Final = "gen_ai.usage.cost.currency"
#: ``provider`` (the response said it) or ``local`` (ragobs computed it).
USAGE_COST_SOURCE: Final = "gen_ai.usage.cost.source"
#: ragobs' own, on an agent's turn span: its calls' cost summed (the proposal keeps
#: gen_ai.usage.cost.* to inference spans, so that nothing is counted twice).
TURN_COST_AMOUNT: Final = "ragobs.turn.cost.amount"
#: ragobs' own: the time to the first chunk of the answer, after any reasoning output.
RESPONSE_TIME_TO_FIRST_ANSWER_CHUNK: Final = "ragobs.response.time_to_first_answer_chunk"
USAGE_CACHE_READ_INPUT_TOKENS: Final = "gen_ai.usage.cache_read.input_tokens"
#: Tokens written to the provider's prompt cache (was ``cache_creation``; renamed upstream).
USAGE_CACHE_WRITE_INPUT_TOKENS: Final = "gen_ai.usage.cache_write.input_tokens"
USAGE_REASONING_OUTPUT_TOKENS: Final = "gen_ai.usage.reasoning.output_tokens"
REQUEST_STREAM: Final = "gen_ai.request.stream"
RESPONSE_MODEL: Final = "gen_ai.response.model"
RESPONSE_ID: Final = "gen_ai.response.id"
RESPONSE_FINISH_REASONS: Final = "gen_ai.response.finish_reasons"
#: Opt-in only (``capture_content=True``): the answer text, as GenAI semconv messages.
OUTPUT_MESSAGES: Final = "gen_ai.output.messages"

#: Turns that are agents: ``invoke_agent {gen_ai.agent.name}`` spans.
AGENT_NAME: Final = "gen_ai.agent.name"
TOOL_NAME: Final = "gen_ai.tool.name"
TOOL_CALL_ID: Final = "gen_ai.tool.call.id"
RETRIEVAL_TOP_K: Final = "gen_ai.retrieval.top_k"
#: Documents a retrieval returned (the conventions have no attribute for the count).
RETRIEVAL_DOCUMENTS: Final = "ragobs.retrieval.documents"
#: On a turn's span: the inference calls, tool calls and retrievals it made.
INFERENCE_CALLS: Final = "ragobs.turn.inference_calls"
TOOL_CALLS: Final = "ragobs.turn.tool_calls"
RETRIEVALS: Final = "ragobs.turn.retrievals"
FAILED_CALLS: Final = "ragobs.turn.failed_calls"
#: Where a turn's time to first chunk went: a stage name, ``ratelimit``,
#: ``llm`` (LLM requests up to their first chunk) or ``other``.
PHASE: Final = "ragobs.phase"
#: One finish reason of one choice (``stop``, ``length``, ``tool_calls``, ...), on
#: ragobs.finish_reasons (gen_ai.response.finish_reasons is an array: spans only).
FINISH_REASON: Final = "ragobs.finish_reason"
#: The part of the provider's usage ragobs.usage.tokens counts.
USAGE_TOKEN_TYPE: Final = "ragobs.token.type"

#: gen_ai.operation.name values of the agent conventions.
OPERATION_INVOKE_AGENT: Final = "invoke_agent"
OPERATION_EXECUTE_TOOL: Final = "execute_tool"
OPERATION_RETRIEVAL: Final = "retrieval"

OUTCOME: Final = "ragobs.outcome"
#: Where a stream's token figures came from: ``provider`` (the usage the
#: stream reported) or ``counted`` (chunks that carried output).
USAGE_SOURCE: Final = "ragobs.usage.source"
STAGE: Final = "ragobs.stage"
NAME: Final = "ragobs.name"
RATELIMIT_REASON: Final = "ragobs.ratelimit.reason"
RATELIMIT_WAITED: Final = "ragobs.ratelimit.waited"
RATELIMIT_BACKEND_MODE: Final = "ragobs.ratelimit.backend_mode"
TIMEOUT_KIND: Final = "ragobs.timeout.kind"
RETRY_REASON: Final = "ragobs.retry.reason"

#: The value an attribute takes once its cardinality cap is reached.
OTHER: Final = "_OTHER"


class Outcome(StrEnum):
    """How a request ended. Exactly one per request."""

    OK = "ok"
    ERROR = "error"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"


class TokenType(StrEnum):
    INPUT = "input"
    OUTPUT = "output"


class UsageTokenType(StrEnum):
    """The parts of the provider's usage ragobs.usage.tokens counts."""

    CACHE_READ = "cache_read"  # part of the input tokens
    CACHE_WRITE = "cache_write"  # part of the input tokens
    REASONING = "reasoning"  # part of the output tokens


# --- span event names ------------------------------------------------------

EVENT_FIRST_CHUNK: Final = "gen_ai.first_chunk"
#: The server refused the ``stream_options`` ragobs added to ask for usage (sent again without).
EVENT_STREAM_OPTIONS_REJECTED: Final = "stream_options.rejected"
EVENT_RATELIMIT_WAIT: Final = "ratelimit.wait"
EVENT_RATELIMIT_REJECTED: Final = "ratelimit.rejected"
#: An acquisition decided without the shared limiter's backend (Redis).
EVENT_RATELIMIT_BACKEND_ERROR: Final = "ratelimit.backend_error"
EVENT_RETRY: Final = "retry"
EVENT_RETRY_EXHAUSTED: Final = "retry.exhausted"
EVENT_TIMEOUT: Final = "timeout"
EVENT_FALLBACK: Final = "fallback"

# --- span event attribute keys (also on log records and hook events) --------

EVENT_NAME: Final = NAME                      # the acting wrapper's name, on every event
EVENT_ERROR_TYPE: Final = ERROR_TYPE          # the cause's error.type, when there is one
RETRY_ATTEMPT: Final = "retry.attempt"        # the attempt about to start (2: first retry)
RETRY_DELAY_S: Final = "retry.delay_s"
RETRY_AFTER_S: Final = "retry.retry_after_s"  # the server's hint, when it gave one
RETRY_ATTEMPTS_MADE: Final = "retry.attempts"
RETRY_GIVE_UP_REASON: Final = "retry.reason"
TIMEOUT_LIMIT_S: Final = "timeout.limit_s"
TIMEOUT_ELAPSED_S: Final = "timeout.elapsed_s"
FALLBACK_PARTIAL: Final = "fallback.partial"  # output had been served before the failure
RATELIMIT_WAIT_S: Final = "ratelimit.wait_s"
RATELIMIT_COST: Final = "ratelimit.cost"
RATELIMIT_MAX_REQUESTS: Final = "ratelimit.max_requests"
RATELIMIT_WINDOW_S: Final = "ratelimit.window_s"


class RetryGiveUp(StrEnum):
    """Why a retryable failure was not retried (``ragobs.retry.reason``)."""

    ATTEMPTS = "attempts"
    DEADLINE = "deadline"
    BUDGET = "budget"
    OUTPUT_STARTED = "output_started"
    RETRY_AFTER = "retry_after"


# --- bucket boundaries (seconds unless stated) -----------------------------

#: GenAI semconv advice for gen_ai.client.operation.duration.
DURATION_BUCKETS: Final = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
)
#: GenAI semconv advice for the *client's* gen_ai.client.operation.time_to_first_chunk:
#: the duration buckets (a reasoning model's 30 s first chunk lands in a finite
#: bucket; the server metrics' advice stops at 10 s).
TIME_TO_FIRST_CHUNK_BUCKETS: Final = DURATION_BUCKETS
#: GenAI semconv advice for gen_ai.client.operation.time_per_output_chunk (the same).
TIME_PER_OUTPUT_CHUNK_BUCKETS: Final = DURATION_BUCKETS
#: GenAI semconv advice for gen_ai.client.token.usage ({token}).
TOKEN_USAGE_BUCKETS: Final = (
    1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864,
)
#: GenAI semconv advice for gen_ai.invoke_agent.inference_calls / tool_calls.
CALLS_BUCKETS: Final = (1, 2, 4, 8, 16, 32, 64, 128)
#: Output tokens per second ({token}/s); 20/s is the seed's target.
TOKEN_RATE_BUCKETS: Final = (1, 2, 5, 10, 15, 20, 30, 50, 75, 100, 150, 200, 500, 1000)
#: USD per call: a hundredth of a cent to ten dollars.
COST_BUCKETS: Final = (
    0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0,
)
#: Waits in front of a rate limiter, up to the usual one-minute window.
WAIT_BUCKETS: Final = (
    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
)


class Kind(StrEnum):
    HISTOGRAM = "histogram"
    COUNTER = "counter"
    UP_DOWN_COUNTER = "up_down_counter"


@dataclass(frozen=True, slots=True)
class InstrumentSpec:
    """Name, kind, unit, description and buckets of one instrument."""

    name: str
    kind: Kind
    unit: str
    description: str
    buckets: tuple[float, ...] | None = None
    prometheus_name: str = ""


# --- streaming / GenAI instruments -----------------------------------------

OPERATION_DURATION = InstrumentSpec(
    "gen_ai.client.operation.duration", Kind.HISTOGRAM, "s",
    "GenAI operation duration, whatever its outcome.",
    DURATION_BUCKETS, "gen_ai_client_operation_duration_seconds",
)
TIME_TO_FIRST_CHUNK = InstrumentSpec(
    "gen_ai.client.operation.time_to_first_chunk", Kind.HISTOGRAM, "s",
    "Time from the start of a streamed operation to its first non-empty chunk.",
    TIME_TO_FIRST_CHUNK_BUCKETS, "gen_ai_client_operation_time_to_first_chunk_seconds",
)
TIME_PER_OUTPUT_CHUNK = InstrumentSpec(
    "gen_ai.client.operation.time_per_output_chunk", Kind.HISTOGRAM, "s",
    "Time between consecutive output chunks of a stream, one value per chunk after the first.",
    TIME_PER_OUTPUT_CHUNK_BUCKETS, "gen_ai_client_operation_time_per_output_chunk_seconds",
)

#: GenAI metric names an open change of the conventions renames: today's -> proposed
#: (open-telemetry/semantic-conventions-genai#521: inference metrics under
#: gen_ai.client.inference.*). The token usage counters of #374 change the instrument
#: kind as well, so they are not a rename and are not here.
PENDING_RENAMES: Final = {
    "gen_ai.client.operation.duration": "gen_ai.client.inference.duration",
    "gen_ai.client.operation.time_to_first_chunk": "gen_ai.client.inference.time_to_first_chunk",
    "gen_ai.client.operation.time_per_output_chunk":
        "gen_ai.client.inference.time_per_output_chunk",
}
#: The environment variable that chooses the names: ``current`` or ``proposed``.
METRIC_NAMES_ENV: Final = "RAGOBS_GENAI_METRIC_NAMES"


def _metric_names() -> str:
    value = os.environ.get(METRIC_NAMES_ENV, "current").strip().lower() or "current"
    if value not in ("current", "proposed"):
        raise ValueError(f"{METRIC_NAMES_ENV} must be 'current' or 'proposed', got {value!r}")
    return value


#: ``current`` (the conventions as released) or ``proposed`` (:data:`PENDING_RENAMES`).
METRIC_NAMES: Final = _metric_names()


def _prometheus(otel_name: str) -> str:
    return otel_name.replace(".", "_")


def _named(spec: InstrumentSpec) -> InstrumentSpec:
    """``spec`` under the names :data:`METRIC_NAMES` chooses."""
    new = PENDING_RENAMES.get(spec.name)
    if METRIC_NAMES != "proposed" or new is None:
        return spec
    return dataclasses.replace(spec, name=new, prometheus_name=spec.prometheus_name.replace(
        _prometheus(spec.name), _prometheus(new), 1))


def rewrite_names(text: str, to: str = "proposed") -> str:
    """``text`` (a dashboard, rules, queries) with the Prometheus names of
    :data:`PENDING_RENAMES` moved ``to`` the proposed (or back to the current) names."""
    if to not in ("current", "proposed"):
        raise ValueError(f"to must be 'current' or 'proposed', got {to!r}")
    for current, proposed in PENDING_RENAMES.items():
        old, new = _prometheus(current), _prometheus(proposed)
        text = text.replace(*((old, new) if to == "proposed" else (new, old)))
    return text


OPERATION_DURATION = _named(OPERATION_DURATION)
TIME_TO_FIRST_CHUNK = _named(TIME_TO_FIRST_CHUNK)
TIME_PER_OUTPUT_CHUNK = _named(TIME_PER_OUTPUT_CHUNK)

TIME_TO_FIRST_ANSWER_CHUNK = InstrumentSpec(
    "ragobs.stream.time_to_first_answer_chunk", Kind.HISTOGRAM, "s",
    "Time from the start of a streamed operation to its first chunk of the answer itself "
    "(text, refusal or tool call), after any reasoning output; equal to the time to first "
    "chunk when the model streams no reasoning.",
    DURATION_BUCKETS, "ragobs_stream_time_to_first_answer_chunk_seconds",
)
OPERATION_COST = InstrumentSpec(
    "gen_ai.client.operation.cost", Kind.HISTOGRAM, "usd",
    "Cost of one inference call in USD: the provider's when the response said, else "
    "computed from its usage (proposal semantic-conventions-genai#443).",
    COST_BUCKETS, "gen_ai_client_operation_cost_usd",
)
SPEND = InstrumentSpec(
    "ragobs.spend", Kind.COUNTER, "usd",
    "What the inference calls cost, in USD, by provider and model.",
    None, "ragobs_spend_usd_total",
)
UNPRICED_CALLS = InstrumentSpec(
    "ragobs.unpriced_calls", Kind.COUNTER, "{call}",
    "Inference calls with provider usage but no price: a model neither your prices nor "
    "genai-prices know (never guessed).",
    None, "ragobs_unpriced_calls_total",
)
FINISH_REASONS = InstrumentSpec(
    "ragobs.finish_reasons", Kind.COUNTER, "{choice}",
    "Finish reasons of the inference calls, one per choice, by ragobs.finish_reason "
    "(the share cut off by length is length over all).",
    None, "ragobs_finish_reasons_total",
)
USAGE_TOKENS = InstrumentSpec(
    "ragobs.usage.tokens", Kind.COUNTER, "{token}",
    "Parts of the provider's usage by ragobs.token.type: cache_read and cache_write (parts of "
    "the input tokens), reasoning (part of the output tokens).",
    None, "ragobs_usage_tokens_total",
)
TOKEN_USAGE = InstrumentSpec(
    "gen_ai.client.token.usage", Kind.HISTOGRAM, "{token}",
    "Tokens used per operation, by gen_ai.token.type.",
    TOKEN_USAGE_BUCKETS, "gen_ai_client_token_usage",
)
OUTPUT_TOKEN_RATE = InstrumentSpec(
    "ragobs.stream.output_tokens", Kind.HISTOGRAM, "{token}/s",
    "Output tokens per second of one LLM call, over the time from its first to its last chunk.",
    TOKEN_RATE_BUCKETS, "ragobs_stream_output_tokens_per_second",
)

# --- turns: one question answered (the seed's "request") ------------------------

REQUESTS = InstrumentSpec(
    "ragobs.requests", Kind.COUNTER, "{request}",
    "Finished turns (questions answered, whatever LLM calls each made) by ragobs.outcome "
    "(ok, error, timeout, cancelled).",
    None, "ragobs_requests_total",
)
ERRORS = InstrumentSpec(
    "ragobs.errors", Kind.COUNTER, "{error}",
    "Failed turns (outcome error or timeout) by error.type.",
    None, "ragobs_errors_total",
)
REQUESTS_ACTIVE = InstrumentSpec(
    "ragobs.requests.active", Kind.UP_DOWN_COUNTER, "{request}",
    "Turns in flight.",
    None, "ragobs_requests_active",
)
TURN_DURATION = InstrumentSpec(
    "ragobs.turn.duration", Kind.HISTOGRAM, "s",
    "Time from the question to the turn's last chunk, whatever its outcome.",
    DURATION_BUCKETS, "ragobs_turn_duration_seconds",
)
TURN_TIME_TO_FIRST_CHUNK = InstrumentSpec(
    "ragobs.turn.time_to_first_chunk", Kind.HISTOGRAM, "s",
    "Time from the question to the first output chunk the user received.",
    DURATION_BUCKETS, "ragobs_turn_time_to_first_chunk_seconds",
)
TURN_TOKEN_USAGE = InstrumentSpec(
    "ragobs.turn.token.usage", Kind.HISTOGRAM, "{token}",
    "Tokens one turn cost, summed over its LLM calls (provider usage), by gen_ai.token.type.",
    TOKEN_USAGE_BUCKETS, "ragobs_turn_token_usage",
)
TURN_OUTPUT_TOKEN_RATE = InstrumentSpec(
    "ragobs.turn.output_tokens", Kind.HISTOGRAM, "{token}/s",
    "Output tokens per second the user received in one turn, from its first to its last chunk.",
    TOKEN_RATE_BUCKETS, "ragobs_turn_output_tokens_per_second",
)
TURN_INFERENCE_CALLS = InstrumentSpec(
    "ragobs.turn.inference_calls", Kind.HISTOGRAM, "{call}",
    "LLM calls made by one turn (as gen_ai.invoke_agent.inference_calls, for every turn).",
    CALLS_BUCKETS, "ragobs_turn_inference_calls",
)
TURN_TOOL_CALLS = InstrumentSpec(
    "ragobs.turn.tool_calls", Kind.HISTOGRAM, "{call}",
    "Tool calls made by one turn (as gen_ai.invoke_agent.tool_calls, for every turn).",
    CALLS_BUCKETS, "ragobs_turn_tool_calls",
)
TURN_COST = InstrumentSpec(
    "ragobs.turn.cost", Kind.HISTOGRAM, "usd",
    "What one turn's priced LLM calls cost in all, in USD (turns with at least one priced call).",
    COST_BUCKETS, "ragobs_turn_cost_usd",
)
TURN_TTFT_PHASES = InstrumentSpec(
    "ragobs.turn.time_to_first_chunk.phase", Kind.COUNTER, "s",
    "Where successful turns' time to first chunk went, by ragobs.phase (a stage, ratelimit, "
    "llm, other); divide by the turns' TTFT count for the mean per turn.",
    None, "ragobs_turn_time_to_first_chunk_phase_seconds_total",
)
STAGE_DURATION = InstrumentSpec(
    "ragobs.stage.duration", Kind.HISTOGRAM, "s",
    "Duration of one RAG pipeline stage (route, retrieve, generate, ...).",
    DURATION_BUCKETS, "ragobs_stage_duration_seconds",
)

# --- resilience instruments --------------------------------------------------

RATELIMIT_WAIT = InstrumentSpec(
    "ragobs.ratelimit.wait.duration", Kind.HISTOGRAM, "s",
    "Time an acquire() waited for rate-limit capacity; only acquisitions that waited.",
    WAIT_BUCKETS, "ragobs_ratelimit_wait_duration_seconds",
)
RATELIMIT_ACQUISITIONS = InstrumentSpec(
    "ragobs.ratelimit.acquisitions", Kind.COUNTER, "{acquisition}",
    "Successful rate-limit acquisitions, by whether they had to wait.",
    None, "ragobs_ratelimit_acquisitions_total",
)
RATELIMIT_REJECTIONS = InstrumentSpec(
    "ragobs.ratelimit.rejections", Kind.COUNTER, "{rejection}",
    "Acquisitions refused or abandoned, by ragobs.ratelimit.reason (no_capacity, cancelled, "
    "timeout, too_large, backend_unavailable).",
    None, "ragobs_ratelimit_rejections_total",
)
RATELIMIT_BACKEND_ERRORS = InstrumentSpec(
    "ragobs.ratelimit.backend.errors", Kind.COUNTER, "{error}",
    "Shared limiter backend (Redis) failures, by the fail-open / fail-closed mode applied.",
    None, "ragobs_ratelimit_backend_errors_total",
)
RETRY_ATTEMPTS = InstrumentSpec(
    "ragobs.retry.attempts", Kind.COUNTER, "{attempt}",
    "Retries scheduled after a retryable failure, by error.type.",
    None, "ragobs_retry_attempts_total",
)
RETRY_DELAY = InstrumentSpec(
    "ragobs.retry.delay", Kind.HISTOGRAM, "s",
    "Backoff delay before each retry.",
    WAIT_BUCKETS, "ragobs_retry_delay_seconds",
)
RETRY_EXHAUSTED = InstrumentSpec(
    "ragobs.retry.exhausted", Kind.COUNTER, "{call}",
    "Retryable failures not retried, by ragobs.retry.reason (attempts, deadline, budget, "
    "output_started) and error.type.",
    None, "ragobs_retry_exhausted_total",
)
TIMEOUTS = InstrumentSpec(
    "ragobs.timeouts", Kind.COUNTER, "{timeout}",
    "Deadlines that fired, by ragobs.timeout.kind (total, first_token, idle).",
    None, "ragobs_timeouts_total",
)
FALLBACKS = InstrumentSpec(
    "ragobs.fallbacks", Kind.COUNTER, "{fallback}",
    "Fallback answers served in place of a failed request, by error.type.",
    None, "ragobs_fallbacks_total",
)

PUSH_DROPPED = InstrumentSpec(
    "ragobs.push.dropped", Kind.COUNTER, "{batch}",
    "Metric batches a worker dropped while the host sidecar was unreachable for longer "
    "than its queue holds.",
    None, "ragobs_push_dropped_total",
)

# --- the proxy (`ragobs proxy`): what it adds, what it cut, whom it refused ------------

#: The upstream a proxied request went to (its name; ``default`` for the unnamed one).
PROXY_UPSTREAM: Final = "ragobs.proxy.upstream"
#: Which per-caller limit refused a request: ``requests`` or ``tokens``.
PROXY_LIMIT: Final = "ragobs.proxy.limit"
#: Loopback proxies add tens of microseconds; a busy host, milliseconds.
PROXY_OVERHEAD_BUCKETS: Final = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
)
PROXY_OVERHEAD = InstrumentSpec(
    "ragobs.proxy.overhead", Kind.HISTOGRAM, "s",
    "Time the proxy added to a call: from receiving the request to sending it upstream, "
    "plus from reading the first content (or the whole answer) to having written it to "
    "the client. Waits for the upstream and retry back-offs are not included.",
    PROXY_OVERHEAD_BUCKETS, "ragobs_proxy_overhead_seconds",
)
PROXY_INTERRUPTED = InstrumentSpec(
    "ragobs.proxy.interrupted", Kind.COUNTER, "{stream}",
    "Streams the upstream failed after their first content reached the client: cut, "
    "never retried, never turned into a 200 with an error event.",
    None, "ragobs_proxy_interrupted_total",
)
PROXY_LIMITED = InstrumentSpec(
    "ragobs.proxy.limited", Kind.COUNTER, "{request}",
    "Requests the proxy answered 429 because their caller (API key) was over a limit, by "
    "ragobs.proxy.limit (requests, tokens).",
    None, "ragobs_proxy_limited_total",
)


ALL_INSTRUMENTS: Final = (
    OPERATION_DURATION, TIME_TO_FIRST_CHUNK, TIME_PER_OUTPUT_CHUNK, TIME_TO_FIRST_ANSWER_CHUNK,
    OPERATION_COST, SPEND, UNPRICED_CALLS, FINISH_REASONS, USAGE_TOKENS, TOKEN_USAGE,
    OUTPUT_TOKEN_RATE, REQUESTS, ERRORS, REQUESTS_ACTIVE, TURN_DURATION,
    TURN_TIME_TO_FIRST_CHUNK, TURN_TOKEN_USAGE, TURN_OUTPUT_TOKEN_RATE, TURN_INFERENCE_CALLS,
    TURN_TOOL_CALLS, TURN_TTFT_PHASES, TURN_COST, STAGE_DURATION,
    RATELIMIT_WAIT, RATELIMIT_ACQUISITIONS, RATELIMIT_REJECTIONS, RATELIMIT_BACKEND_ERRORS,
    RETRY_ATTEMPTS, RETRY_DELAY, RETRY_EXHAUSTED, TIMEOUTS, FALLBACKS, PUSH_DROPPED,
    PROXY_OVERHEAD, PROXY_INTERRUPTED, PROXY_LIMITED,
)
