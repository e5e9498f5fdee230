"""The control loop's hands on Kubernetes: the overflow StatefulSet is the warm pool.

:class:`KubernetesActuator` is the cluster counterpart of local mode's bidder processes
(:mod:`hotshard.local.fleet`), behind the same :class:`~hotshard.control.actuator.Actuator`
protocol, and it talks to the API only through the reconciler's
:class:`~hotshard_operator.reconcile.Cluster` seam. The rules:

* **Warm pool.** Overflow pods that are ready and that the routing table lists but routes
  nothing to. A ready overflow pod the table does not list yet is *adopted* (added to the
  table's shards) when the pool is short; claiming a warm shard is then just routing to it,
  which the engine plans and the loop hands over.
* **Refill.** When the pool is still short, scale the overflow StatefulSet up, never beyond
  ``tiers.overflow.maximum`` nor what ``budget.maxShards`` leaves after base and sandbox.
* **Release.** A shard leaves the table first (an idle shard beyond the pool target, or one the
  engine released after its cooldown). Once it has been out of the table for
  :data:`DRAIN_SECONDS` (routers have switched, in-flight bids are done), the StatefulSet is
  shrunk, which removes the highest ordinals: only a run of unlisted pods at the top can go.
* **Shard versions** come from Prometheus (``hotshard_bidder_routing_version{shard}``), since a
  pod's ``/stats`` is not reachable from the operator everywhere (under kwok pod IPs are fake).

Which pod of a StatefulSet is ready is not in its status, only how many are: a pod is
adoptable when the StatefulSet counts enough ready pods *and* Prometheus has its routing
version (it runs and is scraped). Both are read, never remembered, so a restarted operator
picks up where the last one stopped; only drain clocks restart.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from hotshard.control.actuator import PoolChange
from hotshard.engine.model import PoolState
from hotshard.routing import RoutingTable, Shard
from hotshard_operator.children import shard_name, shard_ordinal, shard_url
from hotshard_operator.reconcile import Cluster, FleetRef
from hotshard_operator.resources import PartitionMapSpec

DRAIN_SECONDS = 10.0
"""Out of the table this long before a pod is removed: routers follow the ConfigMap through a
watch within about a second; 10 s also covers a watch reconnect and bids in flight (< 1 s)."""


class VersionReader(Protocol):
    """The routing version each shard runs, as Prometheus last scraped it."""

    async def versions(self, shards: Iterable[str]) -> Mapping[str, int]: ...


class KubernetesActuator:
    """The :class:`~hotshard.control.actuator.Actuator` of one PartitionMap's fleet."""

    def __init__(
        self,
        ref: FleetRef,
        spec: PartitionMapSpec,
        cluster: Cluster,
        versions: VersionReader,
        *,
        drain_seconds: float = DRAIN_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ref = ref
        self.spec = spec
        self.cluster = cluster
        self.reader = versions
        self.drain_seconds = drain_seconds
        self.clock = clock
        self.warm_target = spec.tiers.overflow.warm
        """The last pool target the loop asked for; a restart begins with the spec's."""
        self.draining: tuple[str, ...] = ()
        """Overflow pods out of the table that will be removed once drained."""
        self.removed: list[str] = []
        """Pods removed since the caller last emptied this list (for ScaledDown Events)."""
        self._pending = 0
        self._out_since: dict[str, float] = {}

    # -- names --------------------------------------------------------------------------

    def _name(self, ordinal: int) -> str:
        return shard_name(self.ref.name, "overflow", ordinal)

    def _entry(self, ordinal: int) -> Shard:
        url = shard_url(
            self.ref.name, self.ref.namespace, "overflow", ordinal, self.spec.bidder.port
        )
        return Shard(name=self._name(ordinal), tier="overflow", url=url)

    def _ceiling(self) -> int:
        """The most overflow pods allowed: the tier maximum, within the shard budget."""
        t = self.spec.tiers
        room = self.spec.budget.max_shards - t.base.replicas - t.sandbox.replicas
        return max(0, min(t.overflow.maximum, room))

    # -- the Actuator protocol ----------------------------------------------------------

    @property
    def pending(self) -> int:
        return self._pending

    async def shard_versions(self, shards: Iterable[str]) -> Mapping[str, int]:
        return await self.reader.versions(shards)

    async def reconcile_pool(self, table: RoutingTable, warm_target: int) -> RoutingTable | None:
        """Adopt ready pods into the table, scale up for the rest, drop surplus idle shards."""
        state = await self.cluster.tier_status(self.ref, "overflow")
        replicas = state.replicas or 0
        listed = {shard_ordinal(s.name) for s in table.shards if s.tier == "overflow"}
        idle = {shard_ordinal(n) for n in PoolState.from_table(table).idle}
        used = listed - idle
        # NB: the pool can only hold what the tier may still add beside the shards in use.
        target = max(0, min(warm_target, self._ceiling() - len(used)))
        self.warm_target = target
        outside = [i for i in range(replicas) if i not in listed]
        need = target - len(idle)
        adopted: list[int] = []
        if need > 0 and outside:
            ready_outside = state.ready - len(listed & set(range(replicas)))
            seen = await self.reader.versions(self._name(i) for i in outside)
            running = [i for i in outside if self._name(i) in seen]
            adopted = running[: max(0, min(need, ready_outside))]
            self._pending = len(outside) - len(running)
        else:
            self._pending = 0
        need -= len(adopted) + self._pending
        wanted = max(replicas, max(listed, default=-1) + 1)  # a listed shard must have its pod
        if need > 0:
            wanted = max(wanted, min(replicas + need, self._ceiling()))
        if wanted > replicas:
            await self.cluster.scale(self.ref, "overflow", wanted)
            self._pending += wanted - replicas
        dropped: set[int] = set()
        surplus = len(idle) - target
        if surplus > 0 and not adopted:
            # NB: only idle shards above every shard in use can ever leave the StatefulSet.
            top = max(used, default=-1)
            above = sorted((i for i in idle if i > top), reverse=True)
            dropped = set(above[:surplus])
        if not adopted and not dropped:
            return None
        data = table.model_dump()
        data["version"] = table.version + 1
        gone = {self._name(i) for i in dropped}
        data["shards"] = [s for s in data["shards"] if s["name"] not in gone]
        data["shards"] += [self._entry(i).model_dump() for i in adopted]
        return RoutingTable.model_validate(data)

    async def released(self, table: RoutingTable) -> PoolChange:
        """Shrink the overflow StatefulSet over unlisted pods that have drained."""
        state = await self.cluster.tier_status(self.ref, "overflow")
        replicas = state.replicas or 0
        listed = {shard_ordinal(s.name) for s in table.shards if s.tier == "overflow"}
        idle = len(PoolState.from_table(table).idle)
        outside = [i for i in range(replicas) if i not in listed]
        # The lowest unlisted pods are the ones reconcile_pool will adopt; they stay.
        keep = max(0, self.warm_target - idle)
        leaving = outside[keep:]
        now = self.clock()
        names = {self._name(i) for i in leaving}
        self._out_since = {n: t for n, t in self._out_since.items() if n in names}
        for name in names:
            self._out_since.setdefault(name, now)
        self.draining = tuple(sorted(names, key=shard_ordinal))
        new = replicas
        leaving_set = set(leaving)
        while new > 0 and (new - 1) in leaving_set:
            if now - self._out_since[self._name(new - 1)] < self.drain_seconds:
                break
            new -= 1
        if new == replicas:
            return PoolChange()
        await self.cluster.scale(self.ref, "overflow", new)
        stopped = tuple(self._name(i) for i in range(new, replicas))
        self.removed.extend(stopped)
        self.draining = tuple(n for n in self.draining if n not in stopped)
        for name in stopped:
            self._out_since.pop(name, None)
        return PoolChange(stopped=stopped)
