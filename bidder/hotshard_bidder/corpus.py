"""Real OpenRTB request bodies for the load generator, pre-serialised for cheap sending.

The load generator sends the team's corpus of real bid requests (``shared/data/openrtb``: IAB
spec examples and Prebid Server outbound requests), not a synthetic body, so that the bidder's
parsing and validation see real shapes and sizes. Two fields change per request: ``id`` (every
bid request an exchange sends is unique, and the integration tests match answers to requests
by it) and ``user.id`` (the secondary key that spreads a split campaign over its shards, so it
must vary the way real users do). Everything else is sent as it is in the file.

Serialising a whole body per request would cost tens of microseconds of the generator's CPU at
thousands of requests per second, so each body is serialised once with placeholders and cut
into fixed byte pieces; a request is then one ``bytes.join`` of the pieces and its two ids.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from hotshard.datasets import BidRequestSample, openrtb_requests

_ID_MARK = "__hotshard_request_id__"
_USER_MARK = "__hotshard_user_id__"

USER_POPULATION = 100_000
"""Distinct user ids drawn per run by default: far more than the split fan-out (k <= 16), so the
secondary hash spreads a split campaign evenly, and small enough that users repeat like real
frequency-capped traffic does."""


@dataclass(frozen=True)
class BodyTemplate:
    """One corpus request cut around its ``id`` and ``user.id`` values."""

    name: str
    head: bytes
    middle: bytes
    tail: bytes
    id_first: bool
    tmax_ms: int | None

    def render(self, request_id: str, user_id: str) -> bytes:
        """The request body with the given ids (both must be JSON-safe: no quotes, backslashes)."""
        first, second = (request_id, user_id) if self.id_first else (user_id, request_id)
        return b"".join((self.head, first.encode(), self.middle, second.encode(), self.tail))


def make_template(sample: BidRequestSample) -> BodyTemplate:
    """Serialise ``sample`` once with placeholder ids and cut it around them."""
    body: dict[str, Any] = copy.deepcopy(sample.body)
    body["id"] = _ID_MARK
    user = body.get("user")
    # NB: a request without a user object gets one: the secondary key must exist to spread splits.
    body["user"] = {**user, "id": _USER_MARK} if isinstance(user, dict) else {"id": _USER_MARK}
    raw = orjson.dumps(body)
    id_at = raw.index(_ID_MARK.encode())
    user_at = raw.index(_USER_MARK.encode())
    id_first = id_at < user_at
    first_at, first_len = (id_at, len(_ID_MARK)) if id_first else (user_at, len(_USER_MARK))
    second_at, second_len = (user_at, len(_USER_MARK)) if id_first else (id_at, len(_ID_MARK))
    return BodyTemplate(
        name=sample.name,
        head=raw[:first_at],
        middle=raw[first_at + first_len : second_at],
        tail=raw[second_at + second_len :],
        id_first=id_first,
        tmax_ms=sample.tmax,
    )


@dataclass(frozen=True)
class RequestCorpus:
    """Every corpus request as a template, plus seeded draws of which one each request uses."""

    templates: tuple[BodyTemplate, ...]

    @classmethod
    def load(cls, samples: Sequence[BidRequestSample] | None = None) -> RequestCorpus:
        chosen = openrtb_requests() if samples is None else samples
        if not chosen:
            raise ValueError("the OpenRTB corpus is empty")
        return cls(templates=tuple(make_template(s) for s in chosen))

    def __len__(self) -> int:
        return len(self.templates)

    def draw(
        self, count: int, seed: int, users: int = USER_POPULATION
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """Pick a template and a user number for each of ``count`` requests, reproducibly."""
        rng = np.random.default_rng(seed)
        templates = rng.integers(0, len(self.templates), size=count, dtype=np.int64)
        user_numbers = rng.integers(0, users, size=count, dtype=np.int64)
        return templates, user_numbers


def user_id(number: int) -> str:
    """The ``user.id`` for a user number: stable text, so the same user hashes the same."""
    return f"hs-user-{number:06d}"
