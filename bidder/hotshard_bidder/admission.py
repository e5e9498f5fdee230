"""Admission control: bounded in-flight work, so overload is refused rather than queued.

A bidder that queues without bound answers every request late once it falls behind, which is
worse than answering some of them "429, try elsewhere" at once. The handler enters the gate on
arrival, yields once to the event loop (so requests already accepted by the server become
visible in the count), then asks whether it is over the limit. The count includes the asking
request, and each request leaves the gate exactly once, in a ``finally``.
"""

from __future__ import annotations

from dataclasses import dataclass

RETRY_AFTER_S = 1
"""HTTP ``Retry-After`` has whole-second resolution; 1 s is the shortest it can say."""


@dataclass(slots=True)
class Admission:
    """Counts requests in progress against ``limit``."""

    limit: int
    inflight: int = 0
    refused: int = 0

    def enter(self) -> None:
        self.inflight += 1

    def leave(self) -> None:
        self.inflight -= 1

    def overloaded(self) -> bool:
        """Whether the current request (already counted) is beyond the limit; counts refusals."""
        if self.inflight > self.limit:
            self.refused += 1
            return True
        return False
