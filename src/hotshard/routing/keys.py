"""Finding a request's campaign key and secondary key.

The router and the bidders must agree on which campaign a request belongs to, or a request
would be routed by one key and served by another. Both use :class:`KeyExtractor` with the same
chain: a header first (cheap, set by the exchange adapter or the load generator), then JSON
pointers into the OpenRTB body. The secondary key, which spreads a split campaign over its
shards, is the user id, then the device's advertising id, then the request id.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

CAMPAIGN_HEADER = "X-Hotshard-Campaign"
DEFAULT_CAMPAIGN_POINTERS = ("/ext/hotshard/campaign", "/imp/0/ext/hotshard/campaign")
DEFAULT_SECONDARY_POINTERS = ("/user/id", "/device/ifa", "/id")


class PointerError(ValueError):
    """A JSON pointer is malformed."""


def parse_pointer(pointer: str) -> tuple[str | int, ...]:
    """Split an RFC 6901 JSON pointer into reference tokens (numbers become list indexes)."""
    if pointer == "":
        return ()
    if not pointer.startswith("/"):
        raise PointerError(f"JSON pointer {pointer!r} must start with '/'")
    parts: list[str | int] = []
    for raw in pointer[1:].split("/"):
        token = raw.replace("~1", "/").replace("~0", "~")
        parts.append(int(token) if token.isdigit() else token)
    return tuple(parts)


def resolve(document: Any, tokens: Sequence[str | int]) -> Any:
    """Follow ``tokens`` into ``document``; ``None`` when any step is missing."""
    node = document
    for token in tokens:
        if isinstance(token, int) and isinstance(node, list):
            if token >= len(node):
                return None
            node = node[token]
        elif isinstance(node, dict):
            node = node.get(str(token))
        else:
            return None
        if node is None:
            return None
    return node


def _as_key(value: Any) -> str | None:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def key_problem(key: str) -> str | None:
    """Why ``key`` cannot serve as a campaign key, or ``None`` when it can.

    A header's bytes that are not UTF-8 arrive as lone surrogates, which cannot be hashed to a
    partition; a control character would forge headers where the key is forwarded to a shard.
    """
    if not key.isprintable():
        return f"campaign key {key!r} is not text or has control characters"
    return None


@dataclass(frozen=True)
class KeyExtractor:
    """Extract the campaign key and the secondary key from a request."""

    header: str = CAMPAIGN_HEADER
    campaign_pointers: tuple[str, ...] = DEFAULT_CAMPAIGN_POINTERS
    secondary_pointers: tuple[str, ...] = DEFAULT_SECONDARY_POINTERS
    _campaign: tuple[tuple[str | int, ...], ...] = field(init=False, repr=False)
    _secondary: tuple[tuple[str | int, ...], ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_campaign", tuple(map(parse_pointer, self.campaign_pointers)))
        object.__setattr__(self, "_secondary", tuple(map(parse_pointer, self.secondary_pointers)))

    def describe(self) -> str:
        return ", ".join([f"header {self.header}", *self.campaign_pointers])

    def campaign(self, headers: Mapping[str, str], body: Any) -> str | None:
        """The campaign key, or ``None`` when neither the header nor any pointer has one."""
        value = headers.get(self.header)
        if value:
            return value
        for tokens in self._campaign:
            key = _as_key(resolve(body, tokens))
            if key is not None:
                return key
        return None

    def secondary(self, body: Any) -> str:
        """The key that picks a shard inside a split; falls back to an empty string."""
        for tokens in self._secondary:
            key = _as_key(resolve(body, tokens))
            if key is not None:
                return key
        return ""
