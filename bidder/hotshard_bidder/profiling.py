"""Knowing what a campaign's requests cost: cheap always-on averages, deep looks on a sample.

Every request's CPU time is already measured; this module turns those numbers into three
judgements, each cheap enough for the request path:

* **Is the campaign anomalous?** A fast moving average of its cost per request against a slow
  baseline learnt while it was normal (or, for a campaign too new to have one, the shard-wide
  baseline). A few float operations per request.
* **Should this request be profiled in depth?** One request in ``1 / sample_rate`` normally, and
  every request while the campaign is anomalous. A profiled request has its phases timed
  (targeting rules vs pricing) and teaches the fingerprint model.
* **What will this request cost?** A *fingerprint* hashes the request's shape (site or app,
  page-URL length class, imp count, first media type, device type) with the campaign and the
  configuration version that will evaluate it; :class:`CostModel` keeps a moving average of the
  measured cost per fingerprint. The token check uses the estimate to refuse a request predicted
  to blow the budget before running it. Fingerprints are computed only when the answer matters
  (the campaign's tokens are low, or it is being profiled), so normal campaigns never pay for
  them. They use Python's ``hash`` and so mean something only inside this process.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from hotshard_bidder.openrtb import BidRequestView
from hotshard_bidder.targeting import page_of


class ProfilePolicy(BaseModel):
    """Sampling and anomaly thresholds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sample_every: int = Field(
        # NB: 1 in 100 keeps the deep look's cost (three extra clock reads, a dict update) far
        # under 1% of the path while a campaign at 10 rps still gets a sample every 10 s.
        default=100,
        ge=1,
        description="Profile one request in this many while the campaign is normal.",
    )
    fast_alpha: float = Field(
        # NB: 0.3 per request: three or four expensive requests in a row move the average most
        # of the way, so a change is seen within a second at a few requests per second.
        default=0.3,
        gt=0,
        le=1,
        description="Weight of the newest request in the fast cost average.",
    )
    baseline_alpha: float = Field(
        # NB: ~200 requests of memory: the daily mix of request shapes, not one odd request.
        default=0.005,
        gt=0,
        le=1,
        description="Weight of a normal request in the slow baseline.",
    )
    warmup_requests: int = Field(
        default=20, ge=1, description="Requests before a campaign's own baseline is trusted."
    )
    anomaly_factor: float = Field(
        # NB: the corpus's cheapest and dearest normal requests differ by ~3x; 5x is past that.
        default=5.0,
        gt=1,
        description="Fast average over baseline that makes a campaign anomalous.",
    )
    min_anomaly_seconds: float = Field(
        # NB: under 1 ms per request nothing can hurt a shard at the rates a campaign gets.
        default=0.001,
        ge=0,
        description="A fast average below this is never anomalous, whatever the ratio.",
    )
    max_fingerprints: int = Field(
        default=4096, ge=16, description="Fingerprints remembered per shard (oldest dropped)."
    )


def shape_of(view: BidRequestView) -> tuple[Any, ...]:
    """The parts of a request that decide what evaluating and pricing it costs."""
    doc = view.doc
    device = doc.get("device")
    first = view.imps[0]
    return (
        "site" if "site" in doc else "app",
        len(page_of(doc)).bit_length(),
        len(view.imps),
        first.media[0] if first.media else "",
        device.get("devicetype") if isinstance(device, dict) else None,
    )


def fingerprint(shape: tuple[Any, ...], campaign: str, version: int) -> int:
    """A process-local hash of the request's shape (:func:`shape_of`), its campaign and the
    config version."""
    return hash((campaign, version, shape))


@dataclass(slots=True)
class Estimate:
    mean: float
    count: int = 1


class CostModel:
    """Learned cost per fingerprint, a moving average of measured CPU seconds."""

    def __init__(self, alpha: float = 0.3, capacity: int = 4096) -> None:
        self.alpha = alpha
        self.capacity = capacity
        self._seen: OrderedDict[int, Estimate] = OrderedDict()

    def predict(self, key: int) -> float:
        """The expected CPU seconds of a request with fingerprint ``key``; 0 if never seen."""
        found = self._seen.get(key)
        return found.mean if found is not None else 0.0

    def learn(self, key: int, cost: float) -> None:
        found = self._seen.get(key)
        if found is None:
            self._seen[key] = Estimate(cost)
            if len(self._seen) > self.capacity:
                self._seen.popitem(last=False)
            return
        found.mean += self.alpha * (cost - found.mean)
        found.count += 1

    def __len__(self) -> int:
        return len(self._seen)


@dataclass(slots=True)
class CostProfile:
    """One campaign's cost on this shard, as averages and (for sampled requests) phases."""

    fast: float = 0.0
    baseline: float = 0.0
    seen: int = 0
    normal: int = 0
    """Requests learnt into the baseline (those seen while not anomalous)."""
    anomalous: bool = False
    anomalous_since: float | None = None
    profiled: int = 0
    rules_seconds: float = 0.0
    """Summed over profiled requests: CPU of the targeting rules."""
    total_seconds: float = 0.0
    """Summed over profiled requests: CPU of the whole request."""
    worst: float = 0.0
    worst_shape: tuple[Any, ...] = field(default_factory=tuple)

    def describe(self) -> dict[str, Any]:
        return {
            "fast_us": round(self.fast * 1e6, 1),
            "baseline_us": round(self.baseline * 1e6, 1),
            "anomalous": self.anomalous,
            "anomalous_since": self.anomalous_since,
            "profiled": self.profiled,
            "rules_share": round(self.rules_seconds / self.total_seconds, 3)
            if self.total_seconds
            else None,
            "worst_us": round(self.worst * 1e6, 1),
            "worst_shape": list(self.worst_shape),
        }


class Profiler:
    """Anomaly averages for every campaign and the shard, and the sampling decision."""

    def __init__(self, policy: ProfilePolicy | None = None) -> None:
        self.policy = policy or ProfilePolicy()
        self.shard_baseline = 0.0
        self.shard_seen = 0
        self.costs = CostModel(self.policy.fast_alpha, self.policy.max_fingerprints)

    def should_profile(self, profile: CostProfile) -> bool:
        return profile.anomalous or profile.seen % self.policy.sample_every == 0

    def reference(self, profile: CostProfile) -> float:
        """What a request of this campaign normally costs, as far as this shard knows."""
        if profile.normal >= self.policy.warmup_requests or not self.shard_seen:
            return profile.baseline
        return self.shard_baseline

    def observe(self, profile: CostProfile, cost: float, now: float) -> bool:
        """Account one request; return ``True`` when the campaign just turned anomalous."""
        p = self.policy
        profile.seen += 1
        profile.fast += p.fast_alpha * (cost - profile.fast) if profile.seen > 1 else cost
        reference = self.reference(profile)
        over = profile.fast > max(p.anomaly_factor * reference, p.min_anomaly_seconds)
        turned = over and not profile.anomalous
        if turned:
            profile.anomalous, profile.anomalous_since = True, now
        elif profile.anomalous and profile.fast < 2.0 * reference:
            # NB: hysteresis: back to normal only well under the bar that raised it.
            profile.anomalous, profile.anomalous_since = False, None
        if not profile.anomalous:
            profile.normal += 1
            warm = profile.normal <= p.warmup_requests
            alpha = 1.0 / profile.normal if warm else p.baseline_alpha
            profile.baseline += alpha * (cost - profile.baseline)
            self.shard_seen += 1
            shard_alpha = max(p.baseline_alpha, 1.0 / self.shard_seen)
            self.shard_baseline += shard_alpha * (cost - self.shard_baseline)
        return turned

    def record_sample(
        self, profile: CostProfile, cost: float, rules: float, shape: tuple[Any, ...]
    ) -> None:
        """Keep the deep look of one profiled request."""
        profile.profiled += 1
        profile.rules_seconds += rules
        profile.total_seconds += cost
        if cost > profile.worst:
            profile.worst, profile.worst_shape = cost, shape
