"""Which upstream a request goes to, at which URL, and which API it speaks.

``/<name>/rest`` goes to the upstream named ``name`` as ``<its url>/rest``;
any other path goes to the default (unnamed) upstream as it is. The API is
told by the path's end, as the SDKs build it: ``.../chat/completions`` (also
Azure's ``/openai/deployments/<d>/chat/completions``), ``.../responses`` and
``.../messages``, with ``POST``. Everything else is passed through unread.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from ragobs import semconv
from ragobs.proxy._config import Upstream

__all__ = ["Api", "Route", "Router"]


class Api(StrEnum):
    """The wire formats the proxy reads."""

    CHAT = "chat"
    RESPONSES = "responses"
    MESSAGES = "messages"


_SUFFIXES: Final = (("/chat/completions", Api.CHAT), ("/responses", Api.RESPONSES),
                    ("/messages", Api.MESSAGES))
_PROVIDERS: Final = {Api.CHAT: "openai", Api.RESPONSES: "openai", Api.MESSAGES: "anthropic"}


@dataclass(frozen=True, slots=True)
class Route:
    """Where one request goes."""

    upstream: Upstream
    #: The upstream URL, path and query as the client encoded them.
    url: str
    #: The API read, or None: passed through unread.
    api: Api | None
    #: ``gen_ai.provider.name`` of the call (None when not read).
    provider: str | None


class Router:
    """Routes of one proxy (see the module docstring)."""

    __slots__ = ("_default", "_named")

    def __init__(self, upstreams: tuple[Upstream, ...]) -> None:
        self._named = {u.name: u for u in upstreams if u.name is not None}
        self._default = next((u for u in upstreams if u.name is None), None)

    def route(self, method: str, raw_path: str) -> Route | None:
        """The route of ``raw_path`` (path and query, as received), or None
        when no upstream takes it."""
        upstream = self._default
        rest = raw_path
        if self._named and raw_path.startswith("/"):
            end = raw_path.find("/", 1)
            head = raw_path[1:] if end < 0 else raw_path[1:end]
            head = head.partition("?")[0]
            found = self._named.get(head)
            if found is not None:
                upstream = found
                rest = raw_path[1 + len(head):] or "/"
                if rest.startswith("?"):
                    rest = "/" + rest
        if upstream is None:
            return None
        path = rest.partition("?")[0]
        api = None
        if method == "POST":
            for suffix, kind in _SUFFIXES:
                if path.endswith(suffix):
                    api = kind
                    break
        provider = None
        if api is not None:
            provider = upstream.provider or (
                semconv.PROVIDER_AZURE_OPENAI if "/deployments/" in path
                else _PROVIDERS[api])
        return Route(upstream, upstream.url.rstrip("/") + rest, api, provider)

    def prefixes(self) -> list[str]:
        """The path prefixes served, for error messages."""
        found = [f"/{name}/" for name in self._named]
        if self._default is not None:
            found.append("/ (default)")
        return found
