"""What goes into the engine each second and what comes out.

These are plain frozen dataclasses, cheap to build thousands of times a second and safe to share
between threads: an :class:`Observation` of loads in, a :class:`Decision` out. The decision is
meant to be read by people as much as by code, so every action, hot spot and health record
carries a sentence that says why.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from hotshard.routing import RoutingTable

ActionKind = Literal[
    "claim_shard", "migrate", "split", "quarantine", "merge", "release_shard", "refill_pool"
]
Signal = Literal["rate", "cpu", "cpu_per_request", "memory", "latency", "forecast", "calendar"]
HealthState = Literal["ok", "hot", "over", "idle", "missing"]


@dataclass(frozen=True, slots=True)
class PartitionLoad:
    """One virtual partition over the last 1 s bucket."""

    rate: float = 0.0
    """Requests per second."""
    cpu: float = 0.0
    """CPU-seconds per second."""
    memory: float = 0.0
    """Bytes held for the partition's campaigns."""
    latency: float = 0.0
    """Seconds, a mean or a p99; the same statistic every step."""
    queue: float = 0.0
    """Requests waiting."""


@dataclass(frozen=True, slots=True)
class ShardLoad:
    """One shard over the last 1 s bucket; the same fields as :class:`PartitionLoad`."""

    rate: float = 0.0
    cpu: float = 0.0
    memory: float = 0.0
    latency: float = 0.0
    queue: float = 0.0


@dataclass(frozen=True, slots=True)
class CampaignLoad:
    """One entry of a router's or a bidder's top-k: a campaign and what it cost."""

    campaign: str
    partition: int
    rate: float = 0.0
    cpu: float = 0.0


@dataclass(frozen=True, slots=True)
class Observation:
    """Everything the engine knows about one second. ``time`` is in seconds, any epoch."""

    time: float
    partitions: Mapping[int, PartitionLoad]
    shards: Mapping[str, ShardLoad]
    campaigns: Sequence[CampaignLoad] = ()
    age_seconds: float = 0.0
    """How old the newest metric is when the engine sees it."""


@dataclass(frozen=True, slots=True)
class PoolState:
    """Which shards exist per tier, which overflow shards are warm and idle, and which are coming.

    Idle means: in the table's shards but routed nothing.
    """

    base: tuple[str, ...]
    overflow: tuple[str, ...] = ()
    sandbox: tuple[str, ...] = ()
    idle: tuple[str, ...] = ()
    pending: int = 0
    """Shards asked for and not yet ready (pods starting)."""

    @classmethod
    def from_table(cls, table: RoutingTable, *, pending: int = 0) -> PoolState:
        """The pool as the table sees it: idle overflow shards are those routed nothing."""
        used = set(table.owners())
        for s in table.splits:
            used.update(s.shards)
        tiers: dict[str, list[str]] = {"base": [], "overflow": [], "sandbox": []}
        for shard in table.shards:
            tiers[shard.tier].append(shard.name)
        idle = tuple(n for n in tiers["overflow"] if n not in used)
        return cls(
            base=tuple(tiers["base"]),
            overflow=tuple(tiers["overflow"]),
            sandbox=tuple(tiers["sandbox"]),
            idle=idle,
            pending=pending,
        )

    @property
    def size(self) -> int:
        return len(self.base) + len(self.overflow) + len(self.sandbox) + self.pending


@dataclass(frozen=True, slots=True)
class Action:
    """One step of a plan, in the order it must be carried out."""

    kind: ActionKind
    reason: str
    partition: int | None = None
    campaign: str | None = None
    source: tuple[str, ...] = ()
    target: tuple[str, ...] = ()
    cost: float = 0.0
    """Expected cost over the next hour in cost units: a hand-over's price for route changes,
    plus or minus a shard-hour for shards added or released."""


@dataclass(frozen=True, slots=True)
class HotSpot:
    """A partition (or one campaign in it) that is, or is about to be, hot."""

    partition: int
    campaign: str | None
    signal: Signal
    score: float
    """How far over the bar: the signal over its baseline (forecast and calendar: the expected
    load in shards at the target utilisation)."""
    reason: str
    load: float = 0.0
    """The load to place, in shards at full capacity (max of rate and CPU shares)."""


@dataclass(frozen=True, slots=True)
class ShardHealth:
    """One shard's compound health."""

    shard: str
    tier: str
    state: HealthState
    score: float
    """Weighted sum of rate, CPU, memory and latency, each over its capacity; 1.0 is full."""
    utilisation: float
    """The planner's view: the larger of rate and CPU over capacity."""
    reason: str


@dataclass(frozen=True, slots=True)
class CostSummary:
    """What the fleet costs per hour right now, and what this decision adds."""

    shards: int
    shard_cost_per_hour: float
    idle_warm_shards: int
    idle_warm_cost_per_hour: float
    violation_shards: int
    """Shards whose latency is over the budget in this second."""
    violation_cost_per_hour: float
    """What those violations cost if they lasted an hour."""
    action_cost: float
    """The sum of this decision's actions' costs."""
    shard_seconds: float = 0.0
    """Shard-seconds used since the engine started (shards in the table x seconds)."""
    violation_seconds: float = 0.0
    """Shard-seconds over the latency budget since the engine started."""


@dataclass(frozen=True, slots=True)
class Decision:
    """The engine's answer for one second."""

    table: RoutingTable | None
    """The desired next table (version + 1), or ``None`` when the routing stays as it is."""
    actions: tuple[Action, ...]
    hot: tuple[HotSpot, ...]
    health: Mapping[str, ShardHealth]
    reason: str
    cost: CostSummary
    warm_pool_target: int
    notes: tuple[str, ...] = field(default=())
    """Why some hot spots were left alone this round (settling, no capacity, churn limit)."""

    @property
    def held(self) -> bool:
        return self.table is None and not self.actions
