"""The planner's workspace: a mutable copy of the routes and of each shard's projected load.

Every placement is checked against the destination's load *plus* the load being moved, so no
destination ends above its target utilisation (no cascading hot spots). Destinations come from
pools in order of preference: hot spots go to the overflow tier (idle warm shards first, claimed
lowest ordinal first, then overflow shards already serving), ordinary partitions to base shards
first. A churn limit caps the routing changes per round, and a route that just changed settles
before it may change again.

Hot spots are placed by :mod:`hotshard.engine.relief`; giving capacity back, relieving full
shards and tending the pool live in :mod:`hotshard.engine.capacity`. All share the workspace.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from hotshard.engine.config import CostConfig, PlanningConfig
from hotshard.engine.detection import shard_units
from hotshard.engine.model import Action
from hotshard.routing import RoutingTable, Split

RouteKey = tuple[int, str | None]


def ordinal(name: str) -> tuple[int, str]:
    """Sort key by the trailing number of a shard name (``overflow-10`` after ``overflow-9``)."""
    match = re.search(r"(\d+)$", name)
    return (int(match.group(1)) if match else -1, name)


def lease_budget(total_micros: int, k: int) -> list[int]:
    """Split a campaign's budget, in micro-units of currency, into ``k`` leases summing to it.

    Integers, not floats: ``0.02`` summed 35 times is ``0.7000000000000001``, which would be an
    overspend. The remainder of the division goes one micro-unit each to the first shards.

    Example:
        >>> lease_budget(10_000_000, 3)
        [3333334, 3333333, 3333333]
    """
    if k < 1:
        raise ValueError(f"a budget is leased to at least one shard, not {k}")
    if total_micros <= 0:
        return [0] * k
    each, rest = divmod(total_micros, k)
    return [each + 1 if i < rest else each for i in range(k)]


@dataclass(slots=True)
class PlanMemory:
    """What the planner remembers between rounds."""

    home: list[str] = field(default_factory=list)
    """Each partition's base-tier owner, where scale-down sends it back."""
    settled_until: dict[RouteKey, float] = field(default_factory=dict)
    settled_route: dict[RouteKey, tuple[str, ...]] = field(default_factory=dict)
    """The route each settling change asked for: a change the table never got does not settle."""
    calm_since: dict[RouteKey, float] = field(default_factory=dict)
    idle_since: dict[str, float] = field(default_factory=dict)
    demand: list[int] = field(default_factory=list)
    """Shards claimed per round that claimed any, the warm-pool recommender's history."""
    merged_at: dict[RouteKey, float] = field(default_factory=dict)
    """When a route was last merged back or sent home: no surge isolation for a cooldown."""


class Workspace:
    """Routes and projected shard loads for one round of planning."""

    def __init__(
        self,
        table: RoutingTable,
        idle: Iterable[str],
        shard_rate: Mapping[str, float],
        shard_cpu: Mapping[str, float],
        planning: PlanningConfig,
        cost: CostConfig,
        memory: PlanMemory,
        now: float,
        latest: tuple[Mapping[str, float], Mapping[str, float]] | None = None,
    ) -> None:
        self.table = table
        self.planning = planning
        self.cost = cost
        self.memory = memory
        self.now = now
        self.owners = table.owners()
        self.initial_owners = list(self.owners)
        self.splits: dict[RouteKey, tuple[str, ...]] = {
            (s.partition, s.campaign): s.shards for s in table.splits
        }
        self.initial_splits = dict(self.splits)
        self.changed: set[RouteKey] = set()
        self.order = {s.name: i for i, s in enumerate(table.shards)}
        self.tier = {s.name: s.tier for s in table.shards}
        self.rate = {n: float(shard_rate.get(n, 0.0)) for n in self.order}
        self.cpu = {n: float(shard_cpu.get(n, 0.0)) for n in self.order}
        # The peak view: the larger of the sustain-period mean and the latest bucket. A hot spot
        # and its destinations are judged on it; a spike is no average.
        last_rate, last_cpu = latest if latest is not None else (shard_rate, shard_cpu)
        self.peak_rate = {n: max(self.rate[n], float(last_rate.get(n, 0.0))) for n in self.order}
        self.peak_cpu = {n: max(self.cpu[n], float(last_cpu.get(n, 0.0))) for n in self.order}
        self.idle = sorted((n for n in idle if self.tier.get(n) == "overflow"), key=ordinal)
        self.released: list[str] = []
        self.actions: list[Action] = []
        self.notes: list[str] = []
        self.changes = 0
        self.claimed = 0
        self.shortfall = 0
        """Warm shards hot spots lacked this round, beyond the idle ones: the pool asks for them."""

    # -- loads ----------------------------------------------------------------------------

    def util(self, name: str, rate: float = 0.0, cpu: float = 0.0) -> float:
        """Utilisation over the sustain period, plus ``rate`` and ``cpu``."""
        return shard_units(self.rate[name] + rate, self.cpu[name] + cpu, self.planning)

    def peak(self, name: str, rate: float = 0.0, cpu: float = 0.0) -> float:
        """Utilisation at its recent peak (mean or latest bucket), plus ``rate`` and ``cpu``."""
        return shard_units(self.peak_rate[name] + rate, self.peak_cpu[name] + cpu, self.planning)

    def units(self, rate: float, cpu: float) -> float:
        """A load in shards at full capacity."""
        return shard_units(rate, cpu, self.planning)

    def shift(
        self,
        source: Iterable[str],
        target: Iterable[str],
        rate: float,
        cpu: float,
        into: tuple[float, float] | None = None,
    ) -> None:
        """Take ``rate``/``cpu`` evenly off ``source``; put ``into`` (default the same) evenly
        on ``target``. A hot spot reserves its planned growth on its new shards this way."""
        in_rate, in_cpu = into if into is not None else (rate, cpu)
        for group, r, c in ((tuple(source), -rate, -cpu), (tuple(target), in_rate, in_cpu)):
            for name in group:
                for loads, value in (
                    (self.rate, r),
                    (self.cpu, c),
                    (self.peak_rate, r),
                    (self.peak_cpu, c),
                ):
                    loads[name] = max(0.0, loads[name] + value / len(group))

    def serving(self, tier: str | None = None) -> list[str]:
        """Base and overflow shards (or those of ``tier``) that serve something, least loaded
        first."""
        idle = set(self.idle)
        names = [
            n
            for n in self.order
            if self.tier[n] != "sandbox" and n not in idle and tier in (None, self.tier[n])
        ]
        return sorted(names, key=lambda n: (self.peak(n), self.order[n]))

    # -- routes ---------------------------------------------------------------------------

    def route(self, partition: int, campaign: str | None = None) -> tuple[str, ...]:
        if campaign is not None and (partition, campaign) in self.splits:
            return self.splits[(partition, campaign)]
        return self.splits.get((partition, None), (self.owners[partition],))

    def settling(self, partition: int, campaign: str | None) -> bool:
        """Whether a change to this route (or its partition's) is younger than the settle time
        and made it into the table; a plan whose write was lost (a conflict, a rollback, a
        loop that only observes) is planned again rather than waited out."""
        memory = self.memory
        for key in {(partition, campaign), (partition, None)}:
            if memory.settled_until.get(key, -math.inf) <= self.now:
                continue
            wanted = memory.settled_route.get(key)
            if key in self.changed or wanted is None or wanted == self.initial_route(key):
                return True
        return False

    def initial_route(self, key: RouteKey) -> tuple[str, ...]:
        """The route of ``key`` in the table this round started from."""
        p, campaign = key
        if campaign is not None and key in self.initial_splits:
            return self.initial_splits[key]
        return self.initial_splits.get((p, None), (self.initial_owners[p],))

    def can_change(self) -> bool:
        return self.changes < self.planning.churn_limit

    def record(self, action: Action) -> None:
        self.actions.append(action)
        if action.kind in ("migrate", "split", "quarantine", "merge"):
            self.changes += 1
            key = (action.partition if action.partition is not None else -1, action.campaign)
            self.memory.settled_until[key] = self.now + self.planning.settle_seconds
            self.memory.settled_route[key] = action.target
            self.changed.add(key)

    # -- placement ------------------------------------------------------------------------

    def claim(self, name: str, why: str) -> None:
        """Take the warm idle overflow shard ``name`` into service."""
        self.idle.remove(name)
        self.claimed += 1
        self.record(Action("claim_shard", f"claim warm shard {name}: {why}", target=(name,)))

    def choose(
        self, rate: float, cpu: float, k: int, pools: Iterable[Iterable[str]], exclude: set[str]
    ) -> list[str]:
        """Up to ``k`` distinct shards, taken from ``pools`` in order, that each stay at or under
        target (at their peak) after taking ``rate`` and ``cpu``. Claims nothing."""
        target = self.planning.target_utilisation
        chosen: list[str] = []
        for pool in pools:
            for name in pool:
                if len(chosen) == k:
                    return chosen
                if name in exclude or name in chosen:
                    continue
                if self.peak(name, rate, cpu) <= target + 1e-9:
                    chosen.append(name)
        return chosen

    def hot_pools(self, any_tier: bool) -> list[list[str]]:
        """Where hot load goes: idle warm shards (lowest ordinal first), then serving overflow
        shards; with ``any_tier``, then any serving shard, least loaded first."""
        pools = [list(self.idle), self.serving("overflow")]
        return [*pools, self.serving()] if any_tier else pools

    def ordinary_pools(self) -> list[list[str]]:
        """Where ordinary load goes: base shards, then serving overflow shards, then warm ones."""
        return [self.serving("base"), self.serving("overflow"), list(self.idle)]

    def place(self, rate: float, cpu: float, exclude: set[str], why: str, k: int = 1) -> list[str]:
        """``k`` shards for ordinary (not hot) load, each staying under target with its share,
        from :meth:`ordinary_pools`; claims the warm shards it takes."""
        chosen = self.choose(rate / k, cpu / k, k, self.ordinary_pools(), exclude)
        if len(chosen) < k:
            return []
        for name in chosen:
            if name in self.idle:
                self.claim(name, why)
        return chosen

    def ways(self, units: float) -> int:
        """``k = ceil(load / (capacity x target))``, at least one."""
        return max(1, math.ceil(units / self.planning.target_utilisation - 1e-9))

    # -- building -------------------------------------------------------------------------

    def build(self) -> RoutingTable | None:
        """The next table, or ``None`` when nothing in the routing changed."""
        splits = tuple(
            Split(partition=p, campaign=c, shards=shards)
            for (p, c), shards in sorted(
                self.splits.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")
            )
        )
        shards = tuple(s for s in self.table.shards if s.name not in self.released)
        same = (
            self.owners == self.table.owners()
            and splits
            == tuple(sorted(self.table.splits, key=lambda s: (s.partition, s.campaign or "")))
            and len(shards) == len(self.table.shards)
        )
        if same:
            return None
        return self.table.with_owners(
            self.owners, version=self.table.version + 1, splits=splits, shards=shards
        )
