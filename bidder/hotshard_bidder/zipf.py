"""Campaign popularity for the load generator: which campaign each request belongs to.

Real bid traffic is skewed: a handful of campaigns take most requests and a long tail takes the
rest, and on a spike one campaign's share jumps. hotshard's detection and splitting only mean
something under that shape, so the load generator never spreads campaigns uniformly. This module
owns the popularity model: a Zipf law with a configurable exponent over ``N`` synthetic
campaign keys, or weights taken from a real key distribution (for instance the most-viewed
Wikipedia articles on the day after the 2016 US election). Draws are seeded and vectorised with
numpy so that a run is reproducible and the per-request cost is one array lookup.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


def to_header_key(name: str) -> str:
    """Make a campaign key safe for an HTTP header (ASCII, no spaces or control characters).

    Real key names (Wikipedia titles) may hold accents or spaces; percent-encoding keeps them
    distinct and stable, and router and bidder read the same header so both see the same key.
    """
    return quote(name, safe="-_.~:()'!,")


@dataclass(frozen=True)
class Popularity:
    """A fixed set of campaign keys, ordered by rank (most popular first), and their shares."""

    keys: tuple[str, ...]
    shares: FloatArray

    def __post_init__(self) -> None:
        if len(self.keys) == 0:
            raise ValueError("a popularity model needs at least one campaign key")
        if len(self.keys) != len(self.shares):
            raise ValueError(f"{len(self.keys)} keys but {len(self.shares)} shares")
        if len(set(self.keys)) != len(self.keys):
            raise ValueError("campaign keys must be unique")
        if np.any(self.shares < 0) or not np.isclose(self.shares.sum(), 1.0):
            raise ValueError("shares must be non-negative and sum to 1")

    @property
    def size(self) -> int:
        return len(self.keys)

    def sample(self, count: int, seed: int) -> IntArray:
        """Draw ``count`` campaign ranks (0 = most popular), reproducibly for a given seed."""
        rng = np.random.default_rng(seed)
        # NB: inverse-CDF on a sorted cumulative array is O(log N) per draw and vectorised;
        # rng.choice(p=...) does the same work but re-validates p on every call.
        cumulative = np.cumsum(self.shares)
        cumulative[-1] = 1.0
        draws = rng.random(count)
        return np.searchsorted(cumulative, draws, side="right").astype(np.int64)

    def top(self, count: int) -> tuple[str, ...]:
        """The ``count`` most popular keys: the "hot" group in reports."""
        return self.keys[: max(0, count)]


def zipf_shares(count: int, skew: float) -> FloatArray:
    """Shares of a Zipf law: rank ``r`` (1-based) gets a weight ``1 / r**skew``, normalised.

    Example:
        >>> zipf_shares(3, 0.0).round(3).tolist()
        [0.333, 0.333, 0.333]
    """
    if count < 1:
        raise ValueError(f"need at least one campaign, got {count}")
    if skew < 0:
        raise ValueError(f"Zipf skew must be >= 0, got {skew}")
    ranks = np.arange(1, count + 1, dtype=np.float64)
    weights = ranks**-skew
    return np.asarray(weights / weights.sum(), dtype=np.float64)


def zipf_popularity(count: int, skew: float, prefix: str = "campaign-") -> Popularity:
    """``count`` synthetic campaign keys ``campaign-1`` .. ``campaign-N`` under a Zipf law."""
    keys = tuple(f"{prefix}{rank}" for rank in range(1, count + 1))
    return Popularity(keys=keys, shares=zipf_shares(count, skew))


def weighted_popularity(pairs: Sequence[tuple[str, int | float]]) -> Popularity:
    """Popularity from real ``(key, weight)`` pairs, e.g. article views; sorted by weight.

    Keys are made header-safe with :func:`to_header_key`; pairs with no weight are left out.
    """
    kept = sorted(((to_header_key(k), float(w)) for k, w in pairs if w > 0), key=lambda p: -p[1])
    if not kept:
        raise ValueError("no key with a positive weight")
    weights = np.array([w for _, w in kept], dtype=np.float64)
    return Popularity(keys=tuple(k for k, _ in kept), shares=weights / weights.sum())


def wikipedia_popularity() -> Popularity:
    """The 100 most-viewed English Wikipedia articles of 2016-11-09 as campaign keys."""
    from hotshard.datasets import wikipedia_top100_election

    return weighted_popularity(wikipedia_top100_election())


def estimate_skew(ranks: IntArray, size: int, fit_ranks: int = 50) -> float:
    """Estimate the Zipf exponent of a sample of ranks by a log-log least-squares fit.

    Only the ``fit_ranks`` most popular ranks are fitted: the tail of a finite sample is mostly
    zeros and ones, which would bias the slope. Used by tests and to label reports.
    """
    counts = np.bincount(ranks, minlength=size)[: min(fit_ranks, size)].astype(np.float64)
    nonzero = counts > 0
    x = np.log(np.arange(1, len(counts) + 1, dtype=np.float64)[nonzero])
    y = np.log(counts[nonzero])
    slope = np.polyfit(x, y, 1)[0]
    return float(-slope)
