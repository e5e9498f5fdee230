"""Graduated rollout of a campaign's new configuration, and rollback when its cost spikes.

A configuration change is the usual cause of a resource hot spot: the advertiser adds a rule
and every request of the campaign costs 100x. So a change is treated as a hypothesis until its
cost says otherwise:

* **Graduated rollout.** A new version first evaluates ``initial_share`` of the campaign's
  requests (the rest keep the last good version); after each stage of ``stage_seconds`` with at
  least ``min_samples`` requests and a normal cost, the share is multiplied by ``widen_factor``,
  up to all of them; a stage at 100% with normal cost *promotes* the version to last good.
  An ``immediate`` change starts at 100% and is judged the same way.
* **Progressive rollback.** While the new version's cost per request stays above
  ``cost_ratio`` times the reference (the last good version's cost measured side by side during
  a graduated rollout, else what the campaign cost before the change) for ``confirm_seconds``,
  within ``watch_seconds`` of the change, the campaign goes back to the last good version and
  the reason is recorded. The tokens and the breaker hold the damage meanwhile, so the rollback
  can wait for evidence rather than undo an advertiser's change on one slow second. A shard
  that has no cost at all for the campaign (it never served it: the sandbox shard it was just
  moved to) judges against ``fallback_reference_seconds`` instead: a version over 4x that is
  rolled back there too, one under it widens and is promoted as usual.

Pure state and decisions with an injected time, no I/O: the unit tests drive it with numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Kind = Literal["hold", "widen", "promote", "rollback"]
GOLDEN = 0.6180339887498949
"""Steps of the golden ratio spread consecutive requests evenly over [0, 1): a share of 5%
gets every twentieth request or so, without a random number per request."""
MIN_REFERENCE_S = 20e-6
"""No request costs less than ~20 µs (parsing alone); a smaller reference would call any cost a
spike."""


class RolloutPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    initial_share: float = Field(
        # NB: 5% of a campaign's requests: a bad version costs a twentieth of its full damage.
        default=0.05,
        gt=0,
        le=1,
        description="Share of the campaign's requests a graduated change starts with.",
    )
    widen_factor: float = Field(
        # NB: doubling reaches 100% from 5% in five stages: 5, 10, 20, 40, 80, 100.
        default=2.0,
        gt=1,
        description="Share multiplier after a stage with normal cost.",
    )
    stage_seconds: float = Field(
        # NB: two 1 s metric buckets per stage, so a stage's verdict never rests on one.
        default=2.0,
        gt=0,
        description="Shortest stage before the share widens.",
    )
    min_samples: int = Field(
        # NB: five requests: the corpus's cheapest and dearest shapes average out.
        default=5,
        ge=1,
        description="Requests of the new version a stage (or a rollback) needs.",
    )
    cost_ratio: float = Field(
        # NB: normal request shapes differ by ~3x; 4x more per request is the version's doing.
        default=4.0,
        gt=1,
        description="New version's cost over the reference that counts as a spike.",
    )
    confirm_seconds: float = Field(
        # NB: a GC pause or a noisy neighbour lasts well under 2 s; a bad rule does not stop.
        default=2.0,
        ge=0,
        description="How long the spike must last before the version is rolled back.",
    )
    fallback_reference_seconds: float = Field(
        # NB: 1 ms is the profiler's own floor for "expensive" (min_anomaly_seconds), ~10x a
        # normal bid: with the 4x ratio a version is a spike at 4 ms a request.
        default=0.001,
        gt=0,
        description="The reference on a shard that knows no cost for the campaign.",
    )
    watch_seconds: float = Field(
        # NB: a spike two minutes after a change is still most likely its doing; later, other
        # causes (a new traffic mix) are as likely and the engine's sandbox handles them.
        default=120.0,
        gt=0,
        description="A spike this long after a change no longer rolls it back.",
    )


@dataclass(slots=True)
class CostTally:
    """Requests and CPU seconds of one version: in total, and in the current stage."""

    requests: int = 0
    seconds: float = 0.0
    recent: float = 0.0
    """Moving average of the last few requests, which a spike moves at once."""

    def add(self, cost: float, alpha: float = 0.3) -> None:
        self.requests += 1
        self.seconds += cost
        self.recent = cost if self.requests == 1 else self.recent + alpha * (cost - self.recent)

    @property
    def mean(self) -> float:
        return self.seconds / self.requests if self.requests else 0.0


@dataclass(frozen=True, slots=True)
class Judgement:
    kind: Kind
    share: float
    reason: str


@dataclass(slots=True)
class Rollout:
    """One campaign's change in progress: ``current`` replaces ``previous`` (the last good)."""

    previous: int
    current: int
    share: float
    changed_at: float
    reference: float
    """CPU seconds per request the campaign cost before the change, on this shard."""
    stage_started: float = 0.0
    stage_requests: int = 0
    new: CostTally = field(default_factory=CostTally)
    old: CostTally = field(default_factory=CostTally)
    over_since: float | None = None
    promoted: bool = False
    rolled_back: bool = False
    counter: int = 0

    @classmethod
    def start(
        cls,
        previous: int,
        current: int,
        now: float,
        reference: float,
        *,
        graduated: bool,
        policy: RolloutPolicy,
    ) -> Rollout:
        share = policy.initial_share if graduated else 1.0
        return cls(previous, current, share, now, reference, stage_started=now)

    def pick(self) -> int:
        """The version that evaluates the next request, by the current share."""
        if self.rolled_back:
            return self.previous
        if self.share >= 1.0:
            return self.current
        self.counter += 1
        return self.current if (self.counter * GOLDEN) % 1.0 < self.share else self.previous

    def record(self, version: int, cost: float) -> None:
        if version == self.current:
            self.new.add(cost)
            self.stage_requests += 1
        else:
            self.old.add(cost)

    def baseline(self, policy: RolloutPolicy) -> float:
        """The last good version's cost: measured side by side if there is enough, else before."""
        if self.old.requests >= policy.min_samples:
            return self.old.mean
        return self.reference

    def judge(self, now: float, policy: RolloutPolicy) -> Judgement:
        """Widen, promote, roll back, or hold; mutates the state to match the verdict."""
        if self.rolled_back:
            return Judgement("hold", 0.0, "rolled back")
        known = self.baseline(policy)
        base = max(known if known > 0 else policy.fallback_reference_seconds, MIN_REFERENCE_S)
        cost = self.new.recent
        over = self.new.requests >= policy.min_samples and cost > policy.cost_ratio * base
        if over and now - self.changed_at <= policy.watch_seconds:
            self.over_since = self.over_since if self.over_since is not None else now
            lasted = now - self.over_since
            if lasted >= policy.confirm_seconds:
                self.rolled_back = True
                self.share = 0.0
                ratio = cost / base
                against = (
                    f"the {base * 1e6:.0f} µs of version {self.previous}"
                    if known > 0
                    else f"the {base * 1e6:.0f} µs a request may cost before it is expensive "
                    f"(no cost known here for version {self.previous})"
                )
                return Judgement(
                    "rollback",
                    0.0,
                    f"version {self.current} costs {cost * 1e6:.0f} µs per request, "
                    f"{ratio:.0f}x {against}, for {lasted:.1f} s starting "
                    f"{self.over_since - self.changed_at:.1f} s after the change; "
                    f"back to version {self.previous}",
                )
            return Judgement("hold", self.share, f"cost {cost / base:.1f}x; confirming")
        self.over_since = None
        stage_done = now - self.stage_started >= policy.stage_seconds
        if self.promoted or over or not stage_done or self.stage_requests < policy.min_samples:
            return Judgement("hold", self.share, "stage in progress")
        ratio = cost / base
        self.stage_started, self.stage_requests = now, 0
        if self.share < 1.0:
            self.share = min(1.0, self.share * policy.widen_factor)
            return Judgement(
                "widen",
                self.share,
                f"version {self.current} costs {ratio:.1f}x version {self.previous}: "
                f"widened to {self.share:.0%} of requests",
            )
        self.promoted = True
        return Judgement(
            "promote",
            1.0,
            f"version {self.current} served all requests for a stage at {ratio:.1f}x the "
            f"cost of version {self.previous}: it is the last good version now",
        )
