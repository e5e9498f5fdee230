"""CPU-token buckets: each campaign's budget on a shard is CPU time, not a number of requests.

A request-count limit treats a 20 ms request like a 0.1 ms one, so an advertiser whose requests
turned 100x more expensive at an unchanged rate would never be limited. Here every campaign has
a bucket that fills at ``rate`` CPU-seconds per second up to ``burst`` CPU-seconds. A request is
admitted when the bucket holds at least its *predicted* cost (0 for a request the shard has no
estimate for, which then needs only a positive balance), and its *measured* cost is taken out
afterwards; the balance may go negative by up to one request, which the refill repays before
the next admission. A refused request gets 429 with a ``Retry-After`` computed from the
deficit, so a well-behaved caller comes back when the budget can pay for it.

A bucket is a few floats updated in place: the admission check is a subtraction, a
multiplication and a comparison, with no allocation, so normal campaigns pay nothing worth
measuring for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field


class TokenPolicy(BaseModel):
    """How big a campaign's CPU budget on one shard is."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rate_cores: float = Field(
        # NB: a quarter core per campaign per shard is ~2.5x what a campaign at election-night
        # peak uses (340 rps x ~300 µs measured under the demo's quotas): a rate spike stays the
        # planner's job, not a throttle's; a campaign whose requests cost 100x runs out at once.
        default=0.25,
        gt=0,
        description="CPU-seconds per second a campaign may spend on one shard.",
    )
    burst_seconds: float = Field(
        # NB: 30 ms holds one worst-case request (20 ms of rules) plus normal jitter; a bigger
        # burst would let a campaign that just turned bad block the event loop for longer.
        default=0.03,
        gt=0,
        description="CPU-seconds a campaign may spend at once, after a quiet spell.",
    )
    max_request_seconds: float = Field(
        # NB: 5 ms is ~50x a normal bid. A request predicted to cost more is refused before it
        # runs whatever the balance: it would hold the shard's event loop (shared by every
        # campaign) for 5 ms on a whole core, and for 33 ms under the demo's 0.15-core quota.
        default=0.005,
        gt=0,
        description="A request predicted to cost more CPU-seconds than this is refused.",
    )
    sandbox_request_seconds: float = Field(
        # NB: 35 ms is the dearest request a shard ever runs: 30 ms of rules in the worker
        # thread plus pricing. The sandbox tier is where expensive requests are allowed; its
        # tight cgroup quota and the tokens bound the total, so there is no per-request bound.
        default=0.035,
        gt=0,
        description="The per-request bound on a sandbox-tier shard.",
    )


@dataclass(slots=True)
class TokenBucket:
    """One campaign's CPU tokens on this shard; all amounts in CPU-seconds."""

    rate: float
    burst: float
    tokens: float
    updated: float
    refused: int = 0
    refused_cost: float = 0.0
    """Predicted CPU-seconds of the requests refused (what was asked and not spent)."""

    @classmethod
    def full(cls, policy: TokenPolicy, now: float) -> TokenBucket:
        return cls(policy.rate_cores, policy.burst_seconds, policy.burst_seconds, now)

    def refill(self, now: float) -> None:
        elapsed = now - self.updated
        if elapsed > 0:
            self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
            self.updated = now

    def admit(self, now: float, predicted: float) -> bool:
        """Whether a request predicted to cost ``predicted`` may run now; counts refusals."""
        self.refill(now)
        if self.tokens > 0 and self.tokens >= predicted:
            return True
        self.refused += 1
        self.refused_cost += predicted
        return False

    def charge(self, cost: float) -> None:
        """Take a finished request's measured cost out; at most one request's worth of debt."""
        self.tokens = max(self.tokens - cost, -self.burst)

    def retry_after(self, predicted: float) -> float:
        """Seconds until the bucket holds ``predicted`` (or any positive balance) again."""
        need = max(predicted, 1e-6) - self.tokens
        return max(0.0, need / self.rate)

    def retry_after_header(self, predicted: float) -> str:
        """``Retry-After`` in whole seconds, as HTTP requires: at least 1."""
        return str(max(1, math.ceil(self.retry_after(predicted))))
