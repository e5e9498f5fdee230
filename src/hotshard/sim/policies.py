"""The five strategies as simulated fleets: where each second's traffic goes, and what changes.

Each policy answers two questions every simulated second: :meth:`Policy.layout`, which shard
serves each partition (and each campaign routed on its own) during this second, and
:meth:`Policy.after`, what it does with what it measured. The baselines use the pure rules of
:mod:`hotshard.strategies`; the hotshard policies run the real :class:`Engine` on an
:class:`Observation` built from the model and apply its tables, with a warm pool kept the way
local mode's actuator keeps it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from hotshard.engine.config import CalendarEvent, EngineConfig
from hotshard.engine.core import Engine
from hotshard.engine.model import Decision, Observation, PoolState
from hotshard.routing import RoutingSnapshot, RoutingTable, Shard
from hotshard.routing.table import Tier
from hotshard.sim.config import FleetModel
from hotshard.strategies import BoundedLoadRing, HpaAutoscaler, HpaSettings, Strategy


@dataclass
class Layout:
    """Where traffic goes for one second, by shard index into ``names``."""

    names: list[str]
    owner: np.ndarray
    partition_splits: dict[int, list[int]] = field(default_factory=dict)
    campaign_routes: dict[str, list[int]] = field(default_factory=dict)
    spread: dict[int, dict[int, float]] = field(default_factory=dict)
    """Bounded-load only: a partition's flow by shard, as fractions summing to 1."""
    sheds_hot_keys: bool = False


def even_owner(partitions: int, shards: int) -> np.ndarray:
    """Contiguous even ranges, as ``RoutingTable.even`` lays them out."""
    return (np.arange(partitions, dtype=np.int64) * shards // partitions).astype(np.intp)


class Policy:
    """A strategy's fleet; subclasses override what differs."""

    strategy: Strategy
    reads_partitions = False
    """Whether :meth:`after` reads per-partition loads (only the engine does)."""
    reads_tmax = True
    """Whether the front door gives each request its own deadline from its tmax (hotshard's
    router, which every strategy but bounded-load sends through) or one timeout to all."""

    def __init__(self, model: FleetModel) -> None:
        self.model = model
        self.names = [f"base-{i}" for i in range(model.base_shards)]
        self.owner = even_owner(model.partitions, model.base_shards)
        self.detected_at: float | None = None

    def layout(self, partition_work: np.ndarray) -> Layout:
        return Layout(self.names, self.owner)

    def after(self, second: int, observation: Observation, hot_partitions: set[int]) -> None:
        """React to the second just measured (the baselines mostly do not)."""

    def shard_count(self) -> int:
        """Shards paid for during this second, starting ones included."""
        return len(self.names)


class StaticPolicy(Policy):
    strategy = Strategy.STATIC


class BoundedLoadPolicy(Policy):
    """The proxy spreads a partition past shards over 1.25x the mean; load is CPU in flight."""

    strategy = Strategy.BOUNDED_LOAD
    reads_tmax = False  # NB: HAProxy cannot read a body's tmax (FleetModel.proxy_timeout_s)

    def __init__(self, model: FleetModel) -> None:
        super().__init__(model)
        self.ring = BoundedLoadRing.from_owners(self.names_of(self.owner))

    def names_of(self, owner: np.ndarray) -> list[str]:
        return [self.names[i] for i in owner]

    def layout(self, partition_work: np.ndarray) -> Layout:
        # NB: in-flight requests are arrival rate x time in service (Little), so CPU work is
        # the load a proxy's in-flight counters see; expensive requests count for more.
        per_shard = np.bincount(self.owner, weights=partition_work, minlength=len(self.names))
        limit = self.ring.factor * per_shard.sum() / len(self.names)
        if per_shard.max() <= limit:
            return Layout(self.names, self.owner)
        flows = {int(p): float(w) for p, w in enumerate(partition_work) if w > 0}
        index = {n: i for i, n in enumerate(self.names)}
        spread: dict[int, dict[int, float]] = {}
        for p, share in self.ring.spread(flows).items():
            if len(share) > 1 or next(iter(share)) != self.names[self.owner[p]]:
                spread[p] = {index[s]: f / flows[p] for s, f in share.items()}
        return Layout(self.names, self.owner, spread=spread)


class HpaPolicy(Policy):
    """Uniform scale-out on mean CPU; new replicas join the ring once ready."""

    strategy = Strategy.HPA

    def __init__(self, model: FleetModel, compression: float, max_replicas: int) -> None:
        super().__init__(model)
        settings = HpaSettings(
            # NB: the same fill hotshard aims for: its target of 70 % of its 60 % capacity.
            target_utilisation=0.7 * model.capacity_fraction,
            min_replicas=model.base_shards,
            max_replicas=max_replicas,
            time_compression=compression,
        )
        self.hpa = HpaAutoscaler(settings)
        self.starting: deque[float] = deque()  # ready times of replicas being started
        self.desired = model.base_shards

    def after(self, second: int, observation: Observation, hot_partitions: set[int]) -> None:
        now = float(second + 1)
        while self.starting and self.starting[0] <= now:
            self.starting.popleft()
            self._resize(len(self.names) + 1)
        util = [s.cpu / self.model.cores for s in observation.shards.values()]
        current = len(self.names) + len(self.starting)
        desired = self.hpa.tick(now, current, util)
        if desired > current and self.detected_at is None and hot_partitions:
            self.detected_at = now
        for _ in range(desired - current):
            self.starting.append(now + self.model.shard_start_s)
        if desired < current:
            drop = current - desired
            while drop and self.starting:
                self.starting.pop()
                drop -= 1
            self._resize(len(self.names) - drop)

    def _resize(self, replicas: int) -> None:
        self.names = [f"base-{i}" for i in range(replicas)]
        self.owner = even_owner(self.model.partitions, replicas)

    def shard_count(self) -> int:
        return len(self.names) + len(self.starting)


class HotshardPolicy(Policy):
    """The real engine decides from the model's observation; its tables apply the next second."""

    reads_partitions = True

    def __init__(
        self, model: FleetModel, strategy: Strategy, config: EngineConfig, table: RoutingTable
    ) -> None:
        super().__init__(model)
        self.strategy = strategy
        self.engine = Engine(config)
        self.table = table
        self.starting: dict[str, float] = {}
        self.next_overflow = model.warm_shards
        self.decisions: list[tuple[float, Decision]] = []
        self._compile()

    def _compile(self) -> None:
        snap = RoutingSnapshot(self.table)
        self.names = [s.name for s in self.table.shards]
        index = {n: i for i, n in enumerate(self.names)}
        self.owner = np.array([index[o] for o in snap.owners], dtype=np.intp)
        self._splits = {p: [index[s] for s in ss] for p, ss in snap.partition_splits.items()}
        self._campaigns = {c: [index[s] for s in ss] for (_, c), ss in snap.campaign_splits.items()}

    def layout(self, partition_work: np.ndarray) -> Layout:
        return Layout(
            self.names,
            self.owner,
            partition_splits=self._splits,
            campaign_routes=self._campaigns,
            sheds_hot_keys=True,
        )

    def after(self, second: int, observation: Observation, hot_partitions: set[int]) -> None:
        pool = PoolState.from_table(self.table, pending=len(self.starting))
        decision = self.engine.step(observation, self.table, pool)
        self.decisions.append((observation.time, decision))
        named = {h.partition for h in decision.hot}
        if self.detected_at is None and named & hot_partitions:
            self.detected_at = observation.time
        if decision.table is not None:
            self.table = decision.table
        self._keep_pool(float(second + 1), decision.warm_pool_target)
        self._compile()

    def _keep_pool(self, now: float, warm_target: int) -> None:
        """Local mode's actuator, with start-up delays: refill to the target, drop the surplus."""
        ready = [n for n, at in self.starting.items() if at <= now]
        for n in ready:
            del self.starting[n]
        idle = list(PoolState.from_table(self.table).idle)
        missing = warm_target - len(idle) - len(ready) - len(self.starting)
        for _ in range(max(0, missing)):
            self.starting[f"overflow-{self.next_overflow}"] = now + self.model.shard_start_s
            self.next_overflow += 1
        surplus = len(idle) + len(ready) - warm_target
        removed: set[str] = set()
        if surplus > 0 and not ready:
            removed = set(
                sorted(idle, key=lambda n: int(n.rsplit("-", 1)[1]), reverse=True)[:surplus]
            )
        if not ready and not removed:
            return
        data = self.table.model_dump()
        data["version"] = self.table.version + 1
        data["shards"] = [s for s in data["shards"] if s["name"] not in removed]
        data["shards"] += [_shard(n, "overflow").model_dump() for n in ready]
        self.table = RoutingTable.model_validate(data)

    def shard_count(self) -> int:
        return len(self.table.shards) + len(self.starting)


def _shard(name: str, tier: Tier) -> Shard:
    # NB: the URL is never dialled; the table's schema asks for one.
    return Shard(name=name, tier=tier, url="http://127.0.0.1:9")


def initial_table(model: FleetModel) -> RoutingTable:
    """Base shards owning every partition, the warm pool and the sandbox idle."""
    shards = [_shard(f"base-{i}", "base") for i in range(model.base_shards)]
    shards += [_shard(f"overflow-{i}", "overflow") for i in range(model.warm_shards)]
    shards += [_shard(f"sandbox-{i}", "sandbox") for i in range(model.sandbox_shards)]
    return RoutingTable.even(shards, partitions=model.partitions)


def engine_config(
    model: FleetModel, *, predictive: bool, calendar: tuple[CalendarEvent, ...]
) -> EngineConfig:
    """The demo's engine settings, sized to the model's shards."""
    base = EngineConfig()
    planning = base.planning.model_copy(
        update={
            "cooldown_seconds": model.cooldown_s,
            "settle_seconds": model.settle_s,
            "shard_capacity_rps": model.engine_capacity_rps,
            "shard_capacity_cpu": model.cores,
            "min_warm_pool": model.warm_shards,
            "max_shards": max_shards(model),
        }
    )
    prediction = base.prediction.model_copy(
        update={"enabled": predictive, "calendar": calendar if predictive else ()}
    )
    return base.model_copy(update={"planning": planning, "prediction": prediction})


def max_shards(model: FleetModel) -> int:
    """Every strategy that adds shards may reach the same total: base, sandbox and 64 more."""
    return model.base_shards + model.sandbox_shards + 64
