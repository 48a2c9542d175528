"""What an LLM call cost: from the provider when the stream says, else computed.

Computed costs come from prices you give (:class:`Price`, per million
tokens, for your own models and negotiated rates) and, when the ``[cost]``
extra is installed, from pydantic's ``genai-prices``: a snapshot shipped with
the package (no network access at run time) that prices cache reads and
writes at their own rates and knows tiered and dated prices. A model neither
knows gets no cost (never a guess) and is counted as unpriced.

Token figures follow the GenAI conventions: ``input_tokens`` includes the
cache reads and writes, and ``output_tokens`` the reasoning tokens, which are
also given apart (for the rates some models put on them).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

__all__ = ["CURRENCY", "Price", "Pricing"]

#: The currency of every cost ragobs records (genai-prices' and providers').
CURRENCY: Final = "USD"
#: gen_ai.provider.name -> genai-prices provider id, where they differ.
_PROVIDER_IDS: Final = {
    "azure.ai.openai": "azure",
    "aws.bedrock": "aws",
    "gcp.gen_ai": "google",
    "gcp.vertex_ai": "google",
    "gcp.gemini": "google",
    "x_ai": "x-ai",
    "mistral_ai": "mistral",
}
#: (provider, model) lookups remembered; past it a new pair is looked up each time.
_CACHED: Final = 1024
_UNKNOWN: Final = object()


@dataclass(frozen=True, slots=True)
class Price:
    """A model's price in USD per million tokens. ``cache_read`` / ``cache_write``:
    the rates of cached input tokens read and written; ``None`` prices them as
    other input tokens (say so only for a model without a cache discount)."""

    input: float
    output: float
    cache_read: float | None = None
    cache_write: float | None = None

    def __post_init__(self) -> None:
        for arg in ("input", "output", "cache_read", "cache_write"):
            value = getattr(self, arg)
            if value is None and arg in ("cache_read", "cache_write"):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{arg} must be a number >= 0 (USD per million tokens), "
                                 f"got {value!r}")

    def cost(self, input_tokens: int, output_tokens: int, cache_read: int,
             cache_write: int) -> float:
        read_rate = self.input if self.cache_read is None else self.cache_read
        write_rate = self.input if self.cache_write is None else self.cache_write
        uncached = max(input_tokens - cache_read - cache_write, 0)
        return (uncached * self.input + cache_read * read_rate + cache_write * write_rate
                + output_tokens * self.output) / 1_000_000


class Pricing:
    """Prices models: yours first (by response model, then request model), then
    genai-prices' snapshot when installed and ``library`` is true."""

    def __init__(self, prices: dict[str, Price] | None = None, *,
                 library: bool = True) -> None:
        if prices is not None:
            if not isinstance(prices, dict):
                raise TypeError(f"prices must be a dict of model name -> ragobs.Price, "
                                f"got {prices!r}")
            for model, price in prices.items():
                if not isinstance(model, str) or not model or not isinstance(price, Price):
                    raise TypeError(f"prices must map model names (non-empty str) to "
                                    f"ragobs.Price, got {model!r}: {price!r}")
        if not isinstance(library, bool):
            raise TypeError(f"library must be a bool, got {library!r}")
        self._prices = dict(prices or {})
        self._library: Any = _genai_prices() if library else None
        self._found: dict[tuple[str | None, str], Any] = {}
        self._lock = threading.Lock()

    @property
    def library(self) -> bool:
        """Whether genai-prices is in use."""
        return self._library is not None

    def cost(self, provider: str | None, models: tuple[str | None, ...], *,
             input_tokens: int, output_tokens: int, cache_read: int = 0,
             cache_write: int = 0, reasoning: int = 0) -> float | None:
        """USD for this usage of the first of ``models`` that has a price, else None."""
        for model in models:
            if not model:
                continue
            price = self._prices.get(model)
            if price is not None:
                return price.cost(input_tokens, output_tokens, cache_read, cache_write)
            found = self._lookup(provider, model)
            if found is not _UNKNOWN:
                usage = self._library.Usage(input_tokens=input_tokens,
                                            output_tokens=output_tokens,
                                            cache_read_tokens=cache_read,
                                            cache_write_tokens=cache_write,
                                            output_reasoning_tokens=reasoning)
                provider_info, model_info = found
                calc = model_info.calc_price(usage, provider_info,
                                             genai_request_timestamp=datetime.now(UTC))
                return float(calc.total_price)
        return None

    def _lookup(self, provider: str | None, model: str) -> Any:
        if self._library is None:
            return _UNKNOWN
        key = (provider, model)
        found = self._found.get(key)
        if found is not None:
            return found
        snapshot = self._library.data_snapshot.get_snapshot()
        provider_id = _PROVIDER_IDS.get(provider, provider) if provider else None
        try:  # a provider it does not know is unknown: never priced by the model name alone
            found = snapshot.find_provider_model(model, None, provider_id, None)
        except LookupError:
            found = _UNKNOWN
        with self._lock:
            if len(self._found) < _CACHED:
                self._found[key] = found
        return found


def _genai_prices() -> Any:
    """The genai_prices module with its bundled snapshot loaded, or None."""
    try:
        import genai_prices
        from genai_prices import data_snapshot
    except ImportError:
        return None
    data_snapshot.get_snapshot()  # load the bundled data now, not on the first call
    return genai_prices
