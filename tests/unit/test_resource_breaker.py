"""The resource breaker trips on demanded CPU rate, probes back in, and backs off on dear probes."""

from __future__ import annotations

import pytest

from hotshard_bidder.breaker import BreakerState
from hotshard_bidder.resource_breaker import ResourceBreaker, ResourceBreakerPolicy

POLICY = ResourceBreakerPolicy(trip_cores=0.3, window_seconds=1.0, cooloff=1.0, max_cooloff=8.0)


def test_a_campaign_within_the_rate_never_trips() -> None:
    b = ResourceBreaker(POLICY)
    # 100 requests a second at 1 ms each: 0.1 core, steady state demand 0.1 core-second.
    for i in range(1000):
        assert not b.record(i / 100, 0.001, ran=True)
    assert b.state is BreakerState.CLOSED
    assert b.rate(10.0) == pytest.approx(0.1, rel=0.05)


def test_demand_over_the_rate_trips_and_refuses_for_the_cooloff() -> None:
    b = ResourceBreaker(POLICY)
    tripped_at = None
    # 50 requests a second at 20 ms each: asks for a whole core.
    for i in range(100):
        if b.record(i / 50, 0.02, ran=True):
            tripped_at = i / 50
            break
    # Demand after n requests is 0.02 (1 - e^-0.02n) / (1 - e^-0.02): over 0.3 from n = 18.
    assert tripped_at == pytest.approx(0.34)
    assert b.trips == 1
    assert not b.allow(tripped_at + 0.5)
    assert b.retry_in(tripped_at + 0.5) == pytest.approx(0.5)


def test_a_cheap_probe_closes_and_a_dear_probe_doubles_the_cooloff() -> None:
    b = ResourceBreaker(POLICY)
    b.record(0.0, 0.5, ran=True)  # one huge request trips it at once
    assert b.state is BreakerState.OPEN
    assert b.allow(1.0)  # cool-off over: the probe
    assert not b.allow(1.0)  # only one
    b.record(1.0, 0.02, ran=True)  # still dear
    assert b.state is BreakerState.OPEN
    assert b.cooloff == 2.0
    assert not b.allow(2.5)
    assert b.allow(3.0)
    b.record(3.0, 0.0002, ran=True)
    assert b.state is BreakerState.CLOSED
    assert b.rate(3.0) == 0.0


def test_refused_demand_counts_toward_the_trip() -> None:
    b = ResourceBreaker(POLICY)
    # Nothing runs, but 20 refusals predicted at 20 ms each in 0.2 s ask for 0.4 core-seconds.
    tripped = [b.record(i * 0.01, 0.02, ran=False) for i in range(20)]
    # 0.02 (1 - e^-0.01n) / (1 - e^-0.01) passes 0.3 at n = 17: the 17th refusal trips it.
    assert tripped.index(True) == 16
