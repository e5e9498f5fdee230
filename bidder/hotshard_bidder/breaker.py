"""A circuit breaker per shard: stop sending to a shard that keeps failing, probe it back in.

Without a breaker, a dead shard costs every request routed to it a connection attempt or a
full timeout; with one, after ``failures`` consecutive connection failures or timeouts the
router answers those requests with an immediate, explicit 503 for ``cooloff`` seconds, then
lets exactly one request through as a probe (half-open). The probe's success closes the
breaker; its failure opens it for another cool-off. Answers from the shard, even 4xx/5xx,
count as success: the shard is reachable and talking. Pure state, no I/O, so it is unit-tested
with a fake clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import StrEnum


class BreakerState(StrEnum):
    CLOSED = "closed"
    """Requests flow; consecutive failures are counted."""
    OPEN = "open"
    """Requests are refused at once until the cool-off ends."""
    HALF_OPEN = "half_open"
    """One probe is in flight; everything else is refused until it reports."""


class CircuitBreaker:
    """The breaker of one shard.

    Call :meth:`allow` before sending; if it returns ``True`` the caller must report the
    attempt with exactly one of :meth:`record_success` or :meth:`record_failure` (or
    :meth:`release` if the attempt was abandoned without an answer either way).
    """

    __slots__ = ("_probing", "clock", "consecutive", "cooloff", "failures", "opened_at", "state")

    def __init__(
        self, failures: int = 5, cooloff: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.failures = failures
        self.cooloff = cooloff
        self.clock = clock
        self.state = BreakerState.CLOSED
        self.consecutive = 0
        self.opened_at = 0.0
        self._probing = False

    def allow(self) -> bool:
        """Whether a request may be sent now (in half-open, only the single probe may)."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN:
            if self.clock() - self.opened_at < self.cooloff:
                return False
            self.state = BreakerState.HALF_OPEN
            self._probing = False
        if self._probing:
            return False
        self._probing = True
        return True

    def record_success(self) -> None:
        self.state = BreakerState.CLOSED
        self.consecutive = 0
        self._probing = False

    def record_failure(self) -> None:
        self.consecutive += 1
        if self.state is BreakerState.HALF_OPEN or self.consecutive >= self.failures:
            self.state = BreakerState.OPEN
            self.opened_at = self.clock()
        self._probing = False

    def release(self) -> None:
        """The attempt ended with no verdict (cancelled): let another probe through."""
        self._probing = False

    @property
    def is_open(self) -> bool:
        """Open or half-open: requests are (mostly) being refused."""
        return self.state is not BreakerState.CLOSED

    def retry_in(self) -> float:
        """Seconds until the next probe may go, for a Retry-After hint."""
        if self.state is BreakerState.OPEN:
            return max(0.0, self.cooloff - (self.clock() - self.opened_at))
        return 0.0
