"""The circuit breaker's state machine, on a fake clock."""

from __future__ import annotations

from hotshard_bidder.breaker import BreakerState, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_consecutive_failures_only() -> None:
    b = CircuitBreaker(failures=3, cooloff=1.0, clock=Clock())
    b.record_failure()
    b.record_failure()
    b.record_success()  # the run of failures is broken
    b.record_failure()
    b.record_failure()
    assert b.state is BreakerState.CLOSED
    assert b.allow()
    b.record_failure()
    assert b.state is BreakerState.OPEN
    assert not b.allow()


def test_half_open_lets_exactly_one_probe_through_after_the_cooloff() -> None:
    clock = Clock()
    b = CircuitBreaker(failures=1, cooloff=2.0, clock=clock)
    b.record_failure()
    clock.now = 1.5
    assert not b.allow()
    assert b.retry_in() == 0.5
    clock.now = 2.0
    assert b.allow()
    assert b.state is BreakerState.HALF_OPEN
    assert not b.allow()  # a second request while the probe is out is refused
    b.record_success()
    assert b.state is BreakerState.CLOSED
    assert b.allow()
    assert b.allow()


def test_a_failed_probe_reopens_for_a_full_cooloff() -> None:
    clock = Clock()
    b = CircuitBreaker(failures=5, cooloff=1.0, clock=clock)
    for _ in range(5):
        b.record_failure()
    clock.now = 1.0
    assert b.allow()
    clock.now = 1.2
    b.record_failure()
    assert b.state is BreakerState.OPEN
    assert b.opened_at == 1.2
    clock.now = 2.1
    assert not b.allow()
    clock.now = 2.2
    assert b.allow()


def test_an_abandoned_probe_frees_the_slot_for_another() -> None:
    clock = Clock()
    b = CircuitBreaker(failures=1, cooloff=1.0, clock=clock)
    b.record_failure()
    clock.now = 1.0
    assert b.allow()
    b.release()
    assert b.allow()
    assert b.is_open
