"""Shedding a hot campaign's excess at the router, before it swamps the shard it shares.

A campaign that jumps 1000x lands on one shard, and for the second or two before the control
loop splits it away, every other campaign on that shard queues behind it. The router sees the
jump first: its heavy-hitter sketch counts every campaign in the current 1 s window. Once a
campaign's guaranteed count (the sketch's lower bound) runs well ahead of ``limit x ways`` per
second -- ``ways`` being how many shards serve it, so a split raises its allowance -- the router
gives it a token bucket at that rate and answers its excess with 429 and ``Retry-After``
itself, cheaply, without a trip to the shard. The bar is the campaign's pace within the window
so far, so a 1000x jump is caught within tens of milliseconds, not after a second's worth of it
got through. Everyone else keeps their latency; the hot campaign gets explicit
answers, never silence; and the router's sketch still reports the campaign's full demand, so the
engine sizes its split for what was asked, not for what got through.

Campaigns under the bar pay one dictionary look-up per request.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from hotshard_bidder.heavy_hitters import WindowedTopK

BURST_SECONDS = 0.05
"""A throttled campaign may burst 50 ms of its allowance: enough to absorb jitter in arrivals,
too little to stall a shard (at 200 rps that is 10 requests)."""
MIN_EVIDENCE = 20
"""A campaign is judged on its pace only after 20 requests in the window: fewer is noise at the
start of a window, when a handful of requests can look like a huge rate."""
PACE_SLACK = 1.5
"""A campaign is flagged when its pace runs 1.5x over its allowance: arrivals are bursty, and a
campaign just under its limit often looks over it early in a window."""
RELEASE_WINDOWS = 3
"""A throttled campaign is released after 3 whole windows under its limit, so one quiet second
in a ragged spike does not let the next burst through unthrottled."""


@dataclass(slots=True)
class _Bucket:
    tokens: float
    stamp: float
    window_end: float
    quiet_windows: int = 0


class HotKeyShedder:
    """Per-campaign token buckets for the campaigns the sketch shows over their allowance."""

    def __init__(self, limit_rps: float, sketch: WindowedTopK) -> None:
        self.limit_rps = limit_rps
        self.sketch = sketch
        self.buckets: dict[str, _Bucket] = {}

    @property
    def enabled(self) -> bool:
        return self.limit_rps > 0

    def allow(self, campaign: str, ways_of: Callable[[], int], now: float) -> bool:
        """Whether this request of ``campaign`` may go on to a shard (call after counting it).

        ``ways_of`` says how many shards serve the campaign; it is called only for campaigns
        already over the one-shard limit, so the common case costs a look-up and a compare.
        """
        bucket = self.buckets.get(campaign)
        if bucket is None:
            seen = self.sketch.current_lower_bound(campaign)
            if seen <= MIN_EVIDENCE:
                return True
            # NB: judge the pace so far, not the count: waiting for a whole window's allowance
            # would let a 1000x campaign send it in the window's first tenth, a burst at ten
            # times the allowance that stalls the shard before the bucket exists.
            elapsed = max(now - self.sketch.current_window_start, MIN_EVIDENCE / self.limit_rps)
            if seen <= self.limit_rps * min(1.0, PACE_SLACK * elapsed):
                return True
            allowance = self.limit_rps * ways_of()
            if seen <= allowance * min(1.0, PACE_SLACK * elapsed):
                return True
            bucket = _Bucket(allowance * BURST_SECONDS, now, self.sketch.current_window_end)
            self.buckets[campaign] = bucket
        else:
            allowance = self.limit_rps * ways_of()  # a split (more ways) widens it at once
            if self._release(campaign, bucket, allowance):
                return True
        bucket.tokens = min(
            allowance * BURST_SECONDS, bucket.tokens + (now - bucket.stamp) * allowance
        )
        bucket.stamp = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return True
        return False

    def _release(self, campaign: str, bucket: _Bucket, allowance: float) -> bool:
        """Count whole windows the campaign spent under its allowance; release it after a few."""
        end = self.sketch.last_end
        if end <= bucket.window_end:
            return False  # no window closed since we last looked
        bucket.window_end = end
        last = next((h for h in self.sketch.last if h.key == campaign), None)
        demand = last.weight if last is not None else 0.0
        bucket.quiet_windows = bucket.quiet_windows + 1 if demand <= allowance else 0
        if bucket.quiet_windows < RELEASE_WINDOWS:
            return False
        del self.buckets[campaign]
        return True

    def throttled(self) -> list[str]:
        """The campaigns being shed right now, sorted."""
        return sorted(self.buckets)
