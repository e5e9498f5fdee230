"""Per-shard allowance at the router: when a shard is overrun, shed the campaign that overran it.

The per-campaign shedder (:mod:`hotshard_bidder.shedding`) judges a campaign by its pace in
the heavy-hitter window, so it needs a few dozen of the surge's requests before it acts; in a
1000x spike those first requests arrive within milliseconds and all land on the one shard the
hot campaign shares with everyone else, and for that first second every campaign on the shard
queues behind them. This module closes that gap by watching the *shard* instead of the
campaign: the router knows how many requests each shard has in flight, and a shard with more
than ``inflight_limit`` in flight is queueing. While it is, the requests of the campaign with
the largest share of that shard's recent requests -- if that share is at least ``shed_share``
(of this 100 ms bucket, or of it and the one before) -- are answered 429 by the router at
once; every other campaign's requests still pass. So a
surge is cut from its first requests, calm campaigns keep their latency, and a shard that is
merely busy with many ordinary campaigns (no campaign dominating) is left to its own admission
control (the bidder's 429), never starved by the router.

Only a *surge* is cut: the campaign must also be sending at least ``SURGE_FACTOR`` times its own
usual rate at this shard (a 5 s moving average per 100 ms bucket). A campaign that always holds
most of a lightly loaded shard is not shed when an ordinary burst briefly puts 4 requests in
flight; a 1000x jump is, from its first requests, for about the first second -- by then the
average has caught up, and the per-campaign shedder and the engine's split have taken over.
For the same reason nothing is cut in a shard's first 5 s of traffic at this router, while the
usual rates are learnt.

"Recent" is the current 100 ms bucket plus the previous one, so a surge dominates the share
within a few of its requests, while one quiet bucket does not reset what the router knows.
All of it is a few dictionary operations per request (and one pass over the shard's campaigns
per bucket) and pure state: unit-tested with a fake clock.
"""

from __future__ import annotations

import math
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
SURGE_FACTOR = 3.0
"""A campaign is a surge at 3x its usual rate: ordinary traffic wanders well within that from
one 100 ms bucket to the next at the rates a shard serves; a spike is 10x to 1000x."""
USUAL_HORIZON_S = 5.0
"""The usual rate is a moving average over about 5 s: long enough that a surge stays a surge
for its first second or so (until the per-campaign shedder and the split act), short enough to
learn a campaign's new normal at this shard after a split moved some of it."""
_DECAY = math.exp(-BUCKET_S / USUAL_HORIZON_S)
_FORGET = 0.02
"""A campaign whose usual count per bucket falls under 0.02 (one request per 5 s) is dropped."""
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
        # NB: a quarter: enough to name the campaign that overran the shard (a 1000x surge
        # holds nearly all of it within milliseconds) while an ordinary campaign, which also
        # must be at 3x its usual rate to be cut, rarely gets there by chance.
        default=0.25,
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
    started: float
    current: dict[str, int] = field(default_factory=dict)
    previous: dict[str, int] = field(default_factory=dict)
    total: int = 0
    """Requests in both buckets."""
    previous_total: int = 0
    top: int = 0
    """The largest count of any campaign over both buckets (an upper bound between rolls)."""
    inflight: int = 0
    usual: dict[str, float] = field(default_factory=dict)
    """Each campaign's moving average of requests per bucket, over ``USUAL_HORIZON_S``."""

    def roll(self, now: float) -> None:
        if now < self.bucket_end:
            return
        # NB: step the end forward rather than recompute it from ``now // BUCKET_S``: floor
        # division of floats wobbles at bucket edges (101.2 // 0.1 == 1011.0) and a recomputed
        # end can land at ``now``, rolling again on the next request and emptying the window.
        passed = 1 + int((now - self.bucket_end) / BUCKET_S)
        self.bucket_end += passed * BUCKET_S
        while self.bucket_end <= now:
            self.bucket_end += BUCKET_S
        self._learn(self.current, passed)
        skipped = passed > 1  # a whole bucket passed without a request
        self.previous = {} if skipped else self.current
        self.previous_total = 0 if skipped else self.total - self.previous_total
        self.current = {}
        self.total = self.previous_total
        self.top = max(self.previous.values(), default=0)

    def _learn(self, closed: dict[str, int], buckets: int) -> None:
        """Fold the bucket that closed into the averages; ``buckets`` have passed since."""
        usual = self.usual
        decay = _DECAY**buckets
        fresh = (1.0 - _DECAY) * _DECAY ** (buckets - 1)
        for campaign in list(usual):
            usual[campaign] *= decay
        for campaign, count in closed.items():
            usual[campaign] = usual.get(campaign, 0.0) + fresh * count
        for campaign in [c for c, mean in usual.items() if mean < _FORGET]:
            del usual[campaign]

    def add(self, campaign: str) -> tuple[int, int]:
        """Count one request of ``campaign``; its count in this bucket and over both."""
        current = self.current.get(campaign, 0) + 1
        self.current[campaign] = current
        self.total += 1
        count = current + self.previous.get(campaign, 0)
        if count > self.top:
            self.top = count
        return current, count

    def share_at_least(self, current: int, count: int, share: float) -> bool:
        """Whether the campaign holds ``share`` of this bucket or of both: this bucket alone
        shows a surge that began in it before the calm requests of the last one are outweighed."""
        return count >= share * self.total or current >= share * (self.total - self.previous_total)


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
            window = self.shards[shard] = _ShardWindow(now + BUCKET_S, now)
        window.roll(now)
        current, count = window.add(campaign)
        if window.inflight < self.inflight_limit or count < MIN_EVIDENCE:
            return True
        if now - window.started < USUAL_HORIZON_S:
            return True  # the usual rates are still being learnt: every campaign looks new
        if count < TOP_FRACTION * window.top:
            return True  # a calm campaign on a busy shard: not the one to cut
        if not window.share_at_least(current, count, self.shed_share):
            return True
        if count < SURGE_FACTOR * 2 * window.usual.get(campaign, 0.0):
            return True  # its usual share of a busy shard, not a surge: the shard's own 429s
        self.shed += 1
        return False

    def sent(self, shard: str) -> None:
        self.shards[shard].inflight += 1

    def answered(self, shard: str) -> None:
        self.shards[shard].inflight -= 1

    def inflight(self, shard: str) -> int:
        window = self.shards.get(shard)
        return window.inflight if window is not None else 0
