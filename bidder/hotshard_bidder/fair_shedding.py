"""Per-shard allowance at the router: when a shard is overrun, shed the campaign that overran it.

The per-campaign shedder (:mod:`hotshard_bidder.shedding`) judges a campaign by its pace in
the heavy-hitter window, so it needs a few dozen of the surge's requests before it acts; in a
1000x spike those first requests arrive within milliseconds and all land on the one shard the
hot campaign shares with everyone else, and for that first second every campaign on the shard
queues behind them. This module closes that gap by watching the *shard* instead of the
campaign: the router knows how many requests each shard has in flight, and a shard with more
than ``inflight_limit`` in flight is queueing. While it is, the requests of the campaign with
the largest share of that shard's recent requests -- if that share is at least ``shed_share``
-- are answered 429 by the router at once; every other campaign's requests still pass. So a
surge is cut from its first requests, calm campaigns keep their latency, and a shard that is
merely busy with many ordinary campaigns (no campaign dominating) is left to its own admission
control (the bidder's 429), never starved by the router.

"Recent" is the current 100 ms bucket plus the previous one, so a surge dominates the share
within a few of its requests, while one quiet bucket does not reset what the router knows.
All of it is a few dictionary operations per request and pure state: unit-tested with a fake
clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

RECOMMENDED_INFLIGHT_LIMIT = 4
"""4 queued requests are ~1 ms of a full-core shard's work and ~7 ms of one under local mode's
0.15-core quota: a calm request waits behind about that many while a surge is being cut."""
BUCKET_S = 0.1
"""Share is measured over this bucket and the one before: short enough that a surge dominates
it within milliseconds, long enough (at 100+ req/s per shard) to hold more than noise."""
MIN_EVIDENCE = 3
"""A campaign is shed only with 3 requests in the recent window: one or two can look like a big
share of a shard that had a quiet moment, and waiting for more would let a surge's first
requests fill the shard (each one admitted is one more a calm request waits behind)."""
TOP_FRACTION = 0.5
"""Campaigns within half of the top campaign's count are shed alike, so two hot campaigns on
one shard are both cut, not only whichever happens to be ahead by a request."""


class ShardAllowanceSettings(BaseSettings):
    """The per-shard allowance. Env prefix ``HOTSHARD_ROUTER_``, like the router's settings."""

    model_config = SettingsConfigDict(env_prefix="HOTSHARD_ROUTER_")

    shard_inflight_limit: int = Field(
        # NB: off by default, like --hot-key-limit-rps: a shard serving one campaign has it at
        # 100% share, so tests and small fleets would see 429s they did not ask for. 4 is the
        # value to set (RECOMMENDED_INFLIGHT_LIMIT).
        default=0,
        ge=0,
        description="Requests in flight to one shard beyond which its dominant campaign is "
        "shed (0: off).",
    )
    shard_shed_share: float = Field(
        # NB: half: in ordinary Zipf traffic the top campaign holds about a quarter of its
        # shard (1,000 campaigns, skew 1, 2 shards); a 1000x surge holds nearly all of it.
        default=0.5,
        gt=0,
        le=1,
        description="Share of a shard's recent requests a campaign must hold to be shed there.",
    )

    def build(self) -> ShardAllowance:
        return ShardAllowance(self.shard_inflight_limit, self.shard_shed_share)


@dataclass(slots=True)
class _ShardWindow:
    """Requests per campaign sent to one shard in the current and the previous bucket."""

    bucket_end: float
    current: dict[str, int] = field(default_factory=dict)
    previous: dict[str, int] = field(default_factory=dict)
    total: int = 0
    """Requests in both buckets."""
    previous_total: int = 0
    top: int = 0
    """The largest count of any campaign over both buckets (an upper bound between rolls)."""
    inflight: int = 0

    def roll(self, now: float) -> None:
        if now < self.bucket_end:
            return
        skipped = now >= self.bucket_end + BUCKET_S  # a whole bucket passed without a request
        self.previous = {} if skipped else self.current
        self.previous_total = 0 if skipped else self.total - self.previous_total
        self.current = {}
        self.total = self.previous_total
        self.top = max(self.previous.values(), default=0)
        self.bucket_end = (now // BUCKET_S + 1) * BUCKET_S

    def add(self, campaign: str) -> int:
        """Count one request of ``campaign``; its count over both buckets."""
        current = self.current.get(campaign, 0) + 1
        self.current[campaign] = current
        self.total += 1
        count = current + self.previous.get(campaign, 0)
        if count > self.top:
            self.top = count
        return count


class ShardAllowance:
    """Decides, per request, whether its shard's allowance lets it through."""

    def __init__(self, inflight_limit: int, shed_share: float) -> None:
        self.inflight_limit = inflight_limit
        self.shed_share = shed_share
        self.shards: dict[str, _ShardWindow] = {}
        self.shed = 0

    @property
    def enabled(self) -> bool:
        return self.inflight_limit > 0

    def admit(self, shard: str, campaign: str, now: float) -> bool:
        """Count this request of ``campaign`` to ``shard``; whether it may be sent.

        A request that is admitted must be bracketed by :meth:`sent` and :meth:`answered`.
        """
        window = self.shards.get(shard)
        if window is None:
            window = self.shards[shard] = _ShardWindow((now // BUCKET_S + 1) * BUCKET_S)
        window.roll(now)
        count = window.add(campaign)
        if window.inflight < self.inflight_limit or count < MIN_EVIDENCE:
            return True
        if count < self.shed_share * window.total or count < TOP_FRACTION * window.top:
            return True  # a calm campaign on a busy shard: not the one to cut
        self.shed += 1
        return False

    def sent(self, shard: str) -> None:
        self.shards[shard].inflight += 1

    def answered(self, shard: str) -> None:
        self.shards[shard].inflight -= 1

    def inflight(self, shard: str) -> int:
        window = self.shards.get(shard)
        return window.inflight if window is not None else 0
