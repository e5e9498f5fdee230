"""Bounded-load consistent hashing: the hot-key answer a proxy offers today.

Envoy (``hash_balance_factor`` on the ring-hash and Maglev policies) and HAProxy
(``hash-balance-factor`` with ``hash-type consistent``) implement "consistent hashing with bounded
loads" (Mirrokni, Thorup and Zadimoghaddam): a key goes to its owner on the ring unless that
shard already carries more than ``factor`` times the average load, in which case it walks on
round the ring to the first shard that does not. The benchmark and the simulation use this
module as that baseline; it owns the placement rule only, with no I/O and no clock.

The ring is hotshard's own: virtual partition ``p`` is ring position ``p`` and its owner comes
from the routing table, so "the next shard on the ring" is the owner of the next run of
partitions that belongs to a shard not yet tried. Placement is deterministic given the ring
and the current loads.

Two forms of the same rule:

- :meth:`BoundedLoadRing.pick` decides for one request, given every shard's current load
  (in-flight requests, as the proxies count it);
- :meth:`BoundedLoadRing.spread` places whole flows (requests per second per partition), for
  the time-stepped simulation, filling each shard up to the bound before spilling onward.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

DEFAULT_FACTOR = 1.25
"""Mirrokni et al.'s worked value and the one the issue asks for: at most 25 % over the mean.
(Envoy's own example is 150, HAProxy's is 150; 1.25 is the tighter and kinder baseline.)"""


@dataclass(frozen=True, slots=True)
class BoundedLoadRing:
    """A ring of virtual partitions, each owned by one shard, with a load bound.

    Example:
        >>> ring = BoundedLoadRing.from_owners(["a", "a", "b", "c"])
        >>> ring.pick(0, {"a": 0, "b": 0, "c": 0})
        'a'
        >>> ring.pick(0, {"a": 5, "b": 0, "c": 1})
        'b'
    """

    run_starts: tuple[int, ...]
    run_shards: tuple[str, ...]
    positions: int
    factor: float = DEFAULT_FACTOR

    @classmethod
    def from_owners(cls, owners: Sequence[str], factor: float = DEFAULT_FACTOR) -> BoundedLoadRing:
        """Build the ring from a per-partition owner list (``RoutingTable.owners()``)."""
        if not owners:
            raise ValueError("a ring needs at least one partition")
        if factor < 1.0:
            raise ValueError(f"the balance factor must be at least 1.0, got {factor}")
        starts = [0]
        shards = [owners[0]]
        for i in range(1, len(owners)):
            if owners[i] != shards[-1]:
                starts.append(i)
                shards.append(owners[i])
        return cls(tuple(starts), tuple(shards), len(owners), factor)

    @property
    def shards(self) -> list[str]:
        """Every shard on the ring, once, in ring order of first appearance."""
        return list(dict.fromkeys(self.run_shards))

    def successors(self, position: int) -> Iterator[str]:
        """Distinct shards in ring order starting with the owner of ``position``."""
        run = _run_index(self.run_starts, position % self.positions)
        seen: set[str] = set()
        runs = len(self.run_shards)
        for step in range(runs):
            shard = self.run_shards[(run + step) % runs]
            if shard not in seen:
                seen.add(shard)
                yield shard

    def bound(self, total_load: float, shard_count: int, unit: float = 1.0) -> float:
        """The most one shard may carry once ``unit`` more load joins ``total_load``."""
        return self.factor * (total_load + unit) / shard_count

    def pick(self, position: int, loads: Mapping[str, float], unit: float = 1.0) -> str:
        """The shard for one request at ring ``position`` given each shard's current load.

        A shard is eligible when adding ``unit`` keeps it within the bound, HAProxy's test; if
        none is (only possible when every shard is at the bound), the owner takes it.
        """
        shards = self.shards
        total = sum(loads.get(s, 0.0) for s in shards)
        limit = self.bound(total, len(shards), unit)
        first = None
        for shard in self.successors(position):
            first = first or shard
            if loads.get(shard, 0.0) + unit <= limit + 1e-9:
                return shard
        assert first is not None
        return first

    def spread(self, flows: Mapping[int, float]) -> dict[int, dict[str, float]]:
        """Place each partition's flow, spilling past shards that reached the bound.

        The bound is ``factor`` times the mean of the total flow; partitions are placed in
        ring order, which is the order a proxy would see them if requests arrived evenly
        interleaved. Returns, per partition, the flow each shard takes.
        """
        shards = self.shards
        limit = self.factor * sum(flows.values()) / len(shards)
        carried = dict.fromkeys(shards, 0.0)
        placed: dict[int, dict[str, float]] = {}
        for position in sorted(flows):
            remaining = flows[position]
            share: dict[str, float] = {}
            owner = None
            for shard in self.successors(position):
                owner = owner or shard
                room = limit - carried[shard]
                if room <= 0:
                    continue
                take = min(room, remaining)
                carried[shard] += take
                share[shard] = share.get(shard, 0.0) + take
                remaining -= take
                if remaining <= 1e-12:
                    break
            if remaining > 1e-12 and owner is not None:
                carried[owner] += remaining
                share[owner] = share.get(owner, 0.0) + remaining
            placed[position] = share
        return placed


def _run_index(starts: Sequence[int], position: int) -> int:
    """Index of the run that holds ``position`` (binary search over run starts)."""
    lo, hi = 0, len(starts) - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if starts[mid] <= position:
            lo = mid
        else:
            hi = mid - 1
    return lo
