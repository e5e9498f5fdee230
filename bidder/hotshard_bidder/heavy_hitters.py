"""Finding the hottest campaigns in bounded memory: Space-Saving over 1 s windows.

The router sees every request, so it sees a hot campaign first, but it cannot keep a counter
per campaign (there may be millions). Space-Saving (Metwally, Agrawal, El Abbadi, 2005) keeps
``capacity`` counters: a known key is counted exactly from when it entered; an unknown key
replaces the smallest counter and inherits its count as an over-estimate (``error``). Any key
with true weight above ``total / capacity`` is guaranteed to be in the summary, so the top few
of a skewed stream come out right. Weights may be fractional, so the bidders use the same
sketch for CPU seconds. :class:`WindowedTopK` turns the sketch into "top k of the last
complete window", which is what metrics export.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class HeavyHitter:
    """A key with its estimated weight; the true weight is in ``[weight - error, weight]``."""

    key: str
    weight: float
    error: float


class SpaceSaving:
    """The Space-Saving summary with ``capacity`` counters.

    Example:
        >>> s = SpaceSaving(2)
        >>> for key in "aabac":
        ...     s.add(key)
        >>> [(h.key, h.weight) for h in s.top(1)]
        [('a', 3.0)]
    """

    __slots__ = ("_counts", "_errors", "capacity", "total")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.total = 0.0
        self._counts: dict[str, float] = {}
        self._errors: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._counts)

    def add(self, key: str, weight: float = 1.0) -> None:
        """Count ``weight`` more for ``key``."""
        self.total += weight
        counts = self._counts
        if key in counts:
            counts[key] += weight
        elif len(counts) < self.capacity:
            counts[key] = weight
            self._errors[key] = 0.0
        else:
            # NB: a linear scan for the minimum is O(capacity) but only on eviction; with
            # capacity ~100 it costs a few µs and keeps the class simple and obviously right.
            victim = min(counts, key=counts.__getitem__)
            floor = counts.pop(victim)
            del self._errors[victim]
            counts[key] = floor + weight
            self._errors[key] = floor

    def lower_bound(self, key: str) -> float:
        """The weight ``key`` certainly has (its count minus what it inherited); 0 if untracked."""
        count = self._counts.get(key)
        return 0.0 if count is None else count - self._errors[key]

    def top(self, k: int) -> list[HeavyHitter]:
        """The ``k`` heaviest keys, heaviest first (ties broken by key, for stable output)."""
        ranked = sorted(self._counts.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
        return [HeavyHitter(key, weight, self._errors[key]) for key, weight in ranked]


class WindowedTopK:
    """Top-k keys of the last complete window of ``window`` seconds.

    ``add`` rolls the window over when its time is up, and so does ``roll`` (call it from a
    periodic task so that an idle stream still publishes an empty window). ``on_window`` is
    called with each completed window's top k.
    """

    def __init__(
        self,
        k: int,
        *,
        window: float = 1.0,
        capacity: int | None = None,
        clock: Callable[[], float],
        on_window: Callable[[list[HeavyHitter], float], None] | None = None,
    ) -> None:
        self.k = k
        self.window = window
        # NB: 4x the reported k keeps the reported keys' error small under a long Zipf tail.
        self.capacity = capacity if capacity is not None else 4 * k
        self.clock = clock
        self.on_window = on_window
        self.last: list[HeavyHitter] = []
        self.last_total = 0.0
        self.last_end = 0.0
        self._sketch = SpaceSaving(self.capacity)
        self._end = self._window_end(clock())

    def _window_end(self, now: float) -> float:
        return (now // self.window + 1) * self.window

    def add(self, key: str, weight: float = 1.0) -> None:
        if self.clock() >= self._end:
            self.roll()
        self._sketch.add(key, weight)

    def current_lower_bound(self, key: str) -> float:
        """What ``key`` certainly weighs so far in the current, unfinished window."""
        return self._sketch.lower_bound(key)

    @property
    def current_window_end(self) -> float:
        return self._end

    @property
    def current_window_start(self) -> float:
        return self._end - self.window

    def roll(self) -> None:
        """Close the current window if its time is up; publish its top k."""
        now = self.clock()
        if now < self._end:
            return
        # A window that ended long ago closes as it is; the windows skipped were empty.
        self.last = self._sketch.top(self.k)
        self.last_total = self._sketch.total
        self.last_end = self._end
        self._sketch = SpaceSaving(self.capacity)
        self._end = self._window_end(now)
        if self.on_window is not None:
            self.on_window(self.last, self.last_total)
