"""The operator's control step: the shared control loop, over the ConfigMap and the cluster.

:class:`LoopStep` is the production :class:`~hotshard_operator.reconcile.ControlStep`. Each
step:

1. checks that the fleet's metrics are fresh (:class:`~hotshard_operator.signals.
   FreshnessGate`); if not, it raises before anything is read or written (fail static);
2. runs one :meth:`hotshard.control.loop.ControlLoop.tick`, the loop local mode runs, with the
   engine configured from the spec, the routing store on the ConfigMap (a 409 re-reads and
   re-plans inside the loop) and the :class:`~hotshard_operator.actuator.KubernetesActuator`.
   The loop first settles a hand-over a previous operator left half-done, from the ConfigMap
   alone: phase *commit* is finished, phase *prepare* rolled back (crash safety);
3. turns what the loop settled, its timeline entries and the actuator's removals into Events
   and a :class:`~hotshard_operator.reconcile.StepResult` for status.

The loop and its engine live as long as the PartitionMap's daemon (the engine's baselines are
its memory); a new spec generation builds a new step.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence

from hotshard.control.loop import ControlLoop, LoopSettings, Settled
from hotshard.control.prometheus import PrometheusSource
from hotshard.control.timeline import Entry
from hotshard.engine import Engine
from hotshard.engine.model import CampaignLoad, Decision, HotSpot
from hotshard.routing import RoutingTable
from hotshard.routing.configmap_store import ConfigMapRoutingStore
from hotshard.routing.store import RoutingStore
from hotshard.routing.table import RoutingSnapshot
from hotshard_operator.actuator import KubernetesActuator, VersionReader
from hotshard_operator.basetier import BaseTierScaler
from hotshard_operator.engine_config import to_engine_config
from hotshard_operator.reconcile import Action, Cluster, FleetRef, StepResult, Transition
from hotshard_operator.resources import PartitionMapSpec
from hotshard_operator.signals import (
    ContainmentReader,
    FreshnessGate,
    ObservingSource,
    PrometheusContainment,
    PrometheusVersions,
    shard_scope,
)
from hotshard_operator.status import CampaignCost, HotPartition

PREPARE_TIMEOUT_S = 3.0
"""Longest wait for new owners to run the prepare table: a watch delivers the ConfigMap in
well under a second, and Prometheus needs up to one 1 s scrape plus a query to show it."""
GROWING = ("split", "migrate", "quarantine", "claim_shard")
"""Action kinds that give a hot spot room: their hand-over is a split in the Events."""
STATUS_ACTION: dict[str, Action] = {
    "split": "split",
    "migrate": "move",
    "quarantine": "quarantine",
    "merge": "merge",
    "release_shard": "scaleDown",
}
"""The engine's action kinds as status reports them, in order of precedence."""


def describe_migrations(table: RoutingTable, limit: int = 4) -> str:
    """``partition 5 (a -> b, c)`` for the first few migrations of a table."""
    parts = []
    for m in table.migrations[:limit]:
        what = f"partition {m.partition}" + (f"/{m.campaign}" if m.campaign else "")
        parts.append(f"{what} ({', '.join(m.source)} -> {', '.join(m.target)})")
    more = len(table.migrations) - limit
    return "; ".join(parts) + (f" and {more} more" if more > 0 else "")


def settle_event(settled: Settled) -> Transition:
    """The Event for a hand-over the loop found half-done and settled."""
    found, new = settled.found, settled.written
    what = describe_migrations(found)
    if settled.outcome == "finished":
        return Transition(
            "SplitCommitted",
            f"v{new.version}: finished the hand-over left in phase commit at v{found.version};"
            f" the new owners already served: {what}",
        )
    return Transition(
        "SplitRolledBack",
        f"v{new.version}: rolled back the hand-over left in phase prepare at v{found.version};"
        f" the old owners serve again: {what}",
        warning=True,
    )


CAMPAIGN_COSTS_K = 10
"""Campaigns in ``status.campaignCosts``: each bidder exports its top 10, and people read it."""


def campaign_costs(
    campaigns: Sequence[CampaignLoad], cost_per_core_hour: float, k: int = CAMPAIGN_COSTS_K
) -> list[CampaignCost]:
    """The ``k`` campaigns with the highest CPU demand, costliest first, priced per hour."""
    cpu: dict[str, CampaignLoad] = {}
    for load in campaigns:
        have = cpu.get(load.campaign)
        if load.cpu > 0 and math.isfinite(load.cpu) and (have is None or load.cpu > have.cpu):
            cpu[load.campaign] = load
    top = sorted(cpu.values(), key=lambda c: (-c.cpu, c.campaign))[:k]
    return [
        CampaignCost(
            campaign=c.campaign[:256],
            partition=c.partition,
            cpu_cores=round(c.cpu, 6),
            cost_per_hour=round(c.cpu * cost_per_core_hour, 6),
        )
        for c in top
    ]


def hot_partitions(hot: Sequence[HotSpot], table: RoutingTable) -> list[HotPartition]:
    """The engine's hot spots per partition, hottest first, with the shards serving them."""
    snapshot = RoutingSnapshot(table)
    best: dict[int, HotSpot] = {}
    for spot in hot:
        have = best.get(spot.partition)
        if have is None or spot.score > have.score:
            best[spot.partition] = spot
    out = [
        HotPartition(
            partition=p,
            reason="cpu" if spot.signal == "cpu_per_request" else spot.signal,
            score=round(spot.score, 3) if math.isfinite(spot.score) and spot.score > 0 else 0.0,
            shards=list(snapshot.shards_for(p)),
        )
        for p, spot in best.items()
        if p < table.partitions
    ]
    return sorted(out, key=lambda h: -h.score)[:1000]


def entry_kinds(entry: Entry) -> set[str]:
    return {a.split(":", 1)[0] for a in entry.actions}


def handover_events(entries: Sequence[Entry]) -> list[Transition]:
    """Events for the hand-overs the loop wrote: a split starts at prepare and commits at commit.

    A hand-over that only merges is a scale-down: it is posted once, when it commits.
    """
    events = []
    for entry in entries:
        growing = bool(entry_kinds(entry) & set(GROWING))
        if entry.kind == "prepare" and growing:
            events.append(Transition("SplitStarted", entry.reason))
        elif entry.kind == "commit":
            events.append(Transition("SplitCommitted" if growing else "ScaledDown", entry.reason))
    return events


def status_action(decision: Decision, entries: Sequence[Entry]) -> Action:
    """What status says was decided: the route change written, a hold, or nothing."""
    kinds = {a.kind for a in decision.actions}
    if any(e.kind == "final" for e in entries):
        for kind, action in STATUS_ACTION.items():
            if kind in kinds:
                return action
        return "move"
    if decision.table is not None:
        return "hold"  # the engine wanted a change that was not written (conflicts, stale)
    return "none"


class LoopStep:
    """One PartitionMap's control loop, as the reconciler's ControlStep."""

    def __init__(
        self,
        ref: FleetRef,
        spec: PartitionMapSpec,
        cluster: Cluster,
        store: RoutingStore,
        source: ObservingSource,
        versions: VersionReader,
        *,
        clock: Callable[[], float] = time.time,
        actuator: KubernetesActuator | None = None,
        containment: ContainmentReader | None = None,
    ) -> None:
        self.ref = ref
        self.store = store
        self.clock = clock
        self.gate = FreshnessGate(source, spec.metrics.stale_after, spec.metrics.prometheus_url)
        self.actuator = actuator or KubernetesActuator(ref, spec, cluster, versions)
        settings = LoopSettings(
            interval_s=spec.detection.interval,
            prepare_timeout_s=PREPARE_TIMEOUT_S,
            stale_after_s=spec.metrics.stale_after,
        )
        config = to_engine_config(spec)
        self.containment = containment
        # NB: a campaign using a whole bidder's CPU limit costs one shard-hour an hour.
        self.core_hour_cost = spec.budget.shard_hour_cost / config.planning.shard_capacity_cpu
        engine = Engine(config)
        self.loop = ControlLoop(engine, self.gate, store, self.actuator, settings)
        self.base = BaseTierScaler(
            ref,
            spec,
            cluster,
            store,
            versions,
            prepare_timeout_s=PREPARE_TIMEOUT_S,
            clock=lambda: self.actuator.clock(),
        )

    async def _read(self) -> tuple[RoutingTable, str]:
        return await asyncio.to_thread(self.store.read)

    def _take_removed(self) -> Transition | None:
        removed, self.actuator.removed[:] = list(self.actuator.removed), []
        if not removed:
            return None
        return Transition(
            "ScaledDown",
            f"removed drained overflow shard(s) {', '.join(removed)} from the top of the"
            " StatefulSet",
        )

    async def step(self) -> StepResult:
        now = self.clock()
        observation = await self.gate.check(now)
        mark = len(self.loop.timeline)
        tick = await self.loop.tick(now)
        settled = tick.settled
        entries = self.loop.timeline.entries[mark:]
        if settled is not None:  # the settling entry is reported by its own Event
            entries = [e for e in entries if e.version != settled.written.version]
        events = [settle_event(settled)] if settled else []
        events += handover_events(entries)
        shrunk = self._take_removed()
        events += [shrunk] if shrunk else []
        action, reason = status_action(tick.decision, entries), tick.decision.reason
        conflicts = [e for e in entries if e.kind == "conflict"]
        if action == "hold" and conflicts:
            reason = f"{conflicts[-1].reason}; the next tick plans on the new table"
        elif action == "none" and settled is not None:
            rolled_back = settled.outcome == "rolled_back"
            action, reason = ("hold" if rolled_back else "move"), events[0].message
        elif action == "none" and shrunk is not None:
            action, reason = "scaleDown", shrunk.message
        written = ([settled.written.version] if settled else []) + [
            e.version for e in entries if e.version is not None
        ]
        if not written:  # NB: one hand-over a tick: the base tier waits for a calm one
            scaled = await self.base.step()
            events += scaled.events
            written += scaled.written
            if scaled.action != "none":
                action, reason = scaled.action, scaled.reason
        else:
            scaled = None
        table, _ = await self._read()
        contained = await self.containment.containment() if self.containment else None
        return StepResult(
            action=action,
            reason=reason,
            hot=hot_partitions(tick.decision.hot, table),
            table=table,
            written=tuple(written),
            events=tuple(events),
            pending=self.actuator.pending + (scaled.pending if scaled else 0),
            draining=len(self.actuator.draining) + (scaled.draining if scaled else 0),
            campaign_costs=campaign_costs(observation.campaigns, self.core_hour_cost),
            containment=contained,
        )

    async def aclose(self) -> None:
        await self.gate.aclose()


def build_loop_step(
    ref: FleetRef, spec: PartitionMapSpec, cluster: Cluster, store: ConfigMapRoutingStore
) -> LoopStep:
    """The production step: Prometheus scoped to this map's shards, versions from Prometheus."""
    scope = shard_scope(ref.name)
    source = PrometheusSource(
        spec.metrics.prometheus_url, scope=scope, partitions=spec.virtual_partitions
    )
    versions, containment = PrometheusVersions(source, scope), PrometheusContainment(source, scope)
    return LoopStep(ref, spec, cluster, store, source, versions, containment=containment)
