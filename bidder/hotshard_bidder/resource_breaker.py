"""A circuit breaker per campaign that trips on the CPU it asks for, not on errors.

The router's breaker (:mod:`.breaker`) protects against a shard that fails; this one protects a
shard against a campaign that *succeeds* expensively. Tokens already hold a campaign to its CPU
budget one request at a time, but each refusal still costs a parse and a prediction, and a
campaign asking for many times its budget is not going to come within it soon. So the breaker
keeps an exponentially decayed estimate of the campaign's *demanded* CPU rate (measured cost of
the requests that ran plus predicted cost of the ones refused) and trips when that rate exceeds
``trip_cores``. While open, the campaign's requests are refused at once; after ``cooloff``
seconds one probe goes through (half-open). A probe that costs no more than ``probe_limit``
closes the breaker; a dear one opens it again for twice as long (up to ``max_cooloff``), since a
campaign that is still expensive will not be better in one second either.

Pure state with an injected clock, like the router's breaker, so it is tested with numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from hotshard_bidder.breaker import BreakerState


class ResourceBreakerPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    trip_cores: float = Field(
        # NB: three times the default token rate (0.25 core): tokens handle a campaign near its
        # budget; one asking for three budgets is refused wholesale, without a parse each.
        default=0.75,
        gt=0,
        description="Demanded CPU-seconds per second that open the breaker.",
    )
    window_seconds: float = Field(
        # NB: a 1 s time constant matches the metrics' bucket: a burst of a few ms does not trip.
        default=1.0,
        gt=0,
        description="Time constant of the demanded-rate average.",
    )
    cooloff: float = Field(default=1.0, gt=0, description="First open period, in seconds.")
    max_cooloff: float = Field(
        # NB: 8 s: three doublings; past that the engine's sandbox or a rollback has acted.
        default=8.0,
        gt=0,
        description="Longest open period after repeated dear probes.",
    )
    probe_limit_seconds: float = Field(
        # NB: 2 ms is 10-20x a normal bid: a probe under it shows the campaign is cheap again.
        default=0.002,
        gt=0,
        description="A probe costing at most this closes the breaker.",
    )


@dataclass(slots=True)
class ResourceBreaker:
    """One campaign's breaker on this shard."""

    policy: ResourceBreakerPolicy
    state: BreakerState = BreakerState.CLOSED
    demand: float = 0.0
    """Decayed sum of demanded CPU-seconds; ``demand / window`` is the rate."""
    updated: float = 0.0
    opened_at: float = 0.0
    cooloff: float = 0.0
    probing: bool = False
    trips: int = 0

    def rate(self, now: float) -> float:
        """The demanded CPU rate in cores, decayed to ``now``."""
        self._decay(now)
        return self.demand / self.policy.window_seconds

    def _decay(self, now: float) -> None:
        elapsed = now - self.updated
        if elapsed > 0:
            self.demand *= math.exp(-elapsed / self.policy.window_seconds)
            self.updated = now

    def allow(self, now: float) -> bool:
        """Whether the campaign's next request may run; in half-open only one probe may."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN:
            if now - self.opened_at < self.cooloff:
                return False
            self.state = BreakerState.HALF_OPEN
            self.probing = False
        if self.probing:
            return False
        self.probing = True
        return True

    def record(self, now: float, cost: float, *, ran: bool) -> bool:
        """Account a request's cost (measured if it ran, else predicted); ``True`` if it tripped."""
        self._decay(now)
        self.demand += cost
        if self.state is BreakerState.HALF_OPEN and ran and self.probing:
            self.probing = False
            if cost <= self.policy.probe_limit_seconds:
                self.state = BreakerState.CLOSED
                self.cooloff = 0.0
                self.demand = 0.0
                return False
            self._open(now, min(self.policy.max_cooloff, 2 * self.cooloff))
            return False
        if self.state is BreakerState.CLOSED and self.demand > self.policy.trip_cores * (
            self.policy.window_seconds
        ):
            self._open(now, self.policy.cooloff)
            self.trips += 1
            return True
        return False

    def _open(self, now: float, cooloff: float) -> None:
        self.state = BreakerState.OPEN
        self.opened_at = now
        self.cooloff = cooloff

    def retry_in(self, now: float) -> float:
        if self.state is BreakerState.OPEN:
            return max(0.0, self.cooloff - (now - self.opened_at))
        return 0.0
