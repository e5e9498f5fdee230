"""Scaling the base tier: `kubectl scale pmap` (spec.tiers.base.replicas) reaches the routing table.

The base shards own every partition nothing hot has taken. When their count changes, the table
must follow, or new base pods own nothing and removed ones take their partitions with them:

* **Grow.** ``ensure`` grows the base StatefulSet at once. When the StatefulSet counts the new
  pods ready, one two-phase hand-over gives every base shard an even share of the partitions
  the base tier owns; the fewest partitions move (each old shard gives away its highest ones).
* **Shrink.** ``ensure`` keeps the pods the table still lists. One hand-over moves the leaving
  shards' partitions to the others and drops those shards from the table (its *final* table
  no longer lists them). After :data:`~hotshard_operator.actuator.DRAIN_SECONDS` out of the
  table (routers have followed the watch, bids in flight are done) the StatefulSet shrinks to
  the spec's count, which removes the highest ordinals: exactly the shards that left.

:func:`rebalance_base` is the pure table change; :class:`BaseTierScaler` writes it with the same
prepare, commit, final compare-and-swap steps as the control loop. A lost compare-and-swap stops
the hand-over where it is; the control loop settles it on the next tick (a commit table is
finished, a prepare table rolled back) and the scaler plans again from what it finds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from hotshard.control.loop import new_owners
from hotshard.routing import RoutingTable, Shard
from hotshard.routing.migration import plan_handover
from hotshard.routing.store import RoutingStore, StaleTokenError
from hotshard_operator.actuator import DRAIN_SECONDS, VersionReader
from hotshard_operator.children import shard_name, shard_ordinal, shard_url
from hotshard_operator.reconcile import Action, Cluster, FleetRef, Transition
from hotshard_operator.resources import PartitionMapSpec

log = logging.getLogger(__name__)

VERSION_POLL_S = 0.05
"""How often to look whether the new owners run the prepare table (as the control loop does)."""


def rebalance_base(
    table: RoutingTable, want: int, make_shard: Callable[[int], Shard]
) -> RoutingTable | None:
    """The table with base shards ``0..want-1`` sharing the base tier's partitions evenly.

    Only partitions a base shard owns move; overflow and sandbox routes and splits stay. The
    shards that own the most keep the odd partitions, and each gives away its highest ones,
    so the fewest move. None when the table already lists exactly those base shards, or when a
    leaving shard serves in a split (it waits until the engine merges that split back).
    """
    names = [make_shard(i).name for i in range(want)]
    listed = [s.name for s in table.shards if s.tier == "base"]
    leaving = set(listed) - set(names)
    joining = [n for n in names if n not in listed]
    if not leaving and not joining:
        return None
    if any(leaving & set(s.shards) for s in table.splits):
        return None
    owners = table.owners()
    mine: dict[str, list[int]] = {n: [] for n in names}
    loose: list[int] = []
    for p, owner in enumerate(owners):
        if owner in mine:
            mine[owner].append(p)
        elif owner in leaving:
            loose.append(p)
    total = sum(len(ps) for ps in mine.values()) + len(loose)
    share, odd = divmod(total, want)
    richest = sorted(names, key=lambda n: (-len(mine[n]), shard_ordinal(n)))
    quota = {n: share + (1 if i < odd else 0) for i, n in enumerate(richest)}
    for n in names:
        while len(mine[n]) > quota[n]:
            loose.append(mine[n].pop())
    loose.sort()
    for n in names:
        while len(mine[n]) < quota[n]:
            p = loose.pop(0)
            owners[p] = n
            mine[n].append(p)
    base = [make_shard(i) for i in range(want)]
    others = [s for s in table.shards if s.tier != "base"]
    shards = [s.model_dump() for s in [*base, *others]]
    return table.with_owners(owners, shards=shards, version=table.version + 1)


@dataclass
class ScaleResult:
    """What one scaler step wrote and did, for the operator's Events and status."""

    written: list[int] = field(default_factory=list)
    events: list[Transition] = field(default_factory=list)
    action: Action = "none"
    reason: str = ""
    pending: int = 0
    """Base pods asked for and not ready yet."""
    draining: int = 0
    """Base pods out of the table, waiting to be removed."""


class BaseTierScaler:
    """Brings the routing table and the base StatefulSet to ``spec.tiers.base.replicas``."""

    def __init__(
        self,
        ref: FleetRef,
        spec: PartitionMapSpec,
        cluster: Cluster,
        store: RoutingStore,
        versions: VersionReader,
        *,
        prepare_timeout_s: float,
        drain_seconds: float = DRAIN_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ref = ref
        self.want = spec.tiers.base.replicas
        self.port = spec.bidder.port
        self.cluster = cluster
        self.store = store
        self.reader = versions
        self.prepare_timeout_s = prepare_timeout_s
        self.drain_seconds = drain_seconds
        self.clock = clock
        self._out_since: float | None = None

    def _shard(self, ordinal: int) -> Shard:
        url = shard_url(self.ref.name, self.ref.namespace, "base", ordinal, self.port)
        return Shard(name=shard_name(self.ref.name, "base", ordinal), tier="base", url=url)

    async def step(self) -> ScaleResult:
        """One look: hand the partitions over, or shrink the drained StatefulSet, or nothing."""
        out = ScaleResult()
        table, token = await asyncio.to_thread(self.store.read)
        if table.migrations:
            return out  # the control loop settles a half-done hand-over first
        state = await self.cluster.tier_status(self.ref, "base")
        desired = rebalance_base(table, self.want, self._shard)
        if desired is not None:
            if state.ready < self.want:
                out.pending = self.want - state.ready
                return out  # new base pods first; a shrink keeps its pods until it drained
            await self._hand_over(table, token, desired, out)
            return out
        replicas = state.replicas or 0
        out.draining = max(0, replicas - self.want)
        if not out.draining:
            self._out_since = None
            return out
        now = self.clock()
        self._out_since = now if self._out_since is None else self._out_since
        if now - self._out_since < self.drain_seconds:
            return out
        await self.cluster.scale(self.ref, "base", self.want)
        gone = ", ".join(shard_name(self.ref.name, "base", i) for i in range(self.want, replicas))
        message = f"removed drained base shard(s) {gone} from the top of the StatefulSet"
        out.events.append(Transition("ScaledDown", message))
        out.action, out.reason, out.draining = "scaleDown", message, 0
        self._out_since = None
        return out

    async def _hand_over(
        self, table: RoutingTable, token: str, desired: RoutingTable, out: ScaleResult
    ) -> None:
        plan = plan_handover(table, desired)
        moved = len(plan.prepare.migrations) if plan.prepare is not None else 0
        before = sum(1 for s in table.shards if s.tier == "base")
        why = f"base tier from {before} to {self.want} shards: {moved} partition(s) move"
        try:
            for table_ in (plan.prepare, plan.commit, plan.final):
                if table_ is None:
                    continue
                token = await asyncio.to_thread(self.store.replace, table_, token)
                out.written.append(table_.version)
                if table_ is plan.prepare:
                    started = Transition("BaseRebalanceStarted", f"v{table_.version}: {why}")
                    out.events.append(started)
                    await self._await_version(new_owners(table_), table_.version)
        except StaleTokenError:
            out.action, out.reason = "hold", f"the routing table changed during the {why}"
            return
        out.events.append(Transition("BaseRebalanced", f"v{out.written[-1]}: {why}"))
        out.action, out.reason = "move", why
        self._out_since = None

    async def _await_version(self, shards: set[str], version: int) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.prepare_timeout_s
        waiting = set(shards)
        while waiting and loop.time() < deadline:
            versions = await self.reader.versions(waiting)
            waiting = {n for n in waiting if versions.get(n, 0) < version}
            if waiting:
                await asyncio.sleep(VERSION_POLL_S)
        if waiting:
            log.warning("base shards %s did not load version %d in time", sorted(waiting), version)
