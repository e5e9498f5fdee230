"""What the operator does for one PartitionMap: build the fleet, then tick the control loop.

The kopf handlers only register; they call the two entry points here. :func:`ensure_fleet`
publishes the first routing table (or adopts the one already in the ConfigMap, which is how a
restarted operator resumes) and applies the children (StatefulSets, headless Services) sized
for that table. :func:`run_tick` runs one detect-plan-act step of the shared control loop and
turns what it did into status, conditions and Events.

All I/O goes through two narrow seams, so this module is tested without a cluster: a
:class:`Cluster` (apply a manifest, scale a tier, patch status, post an Event) and a
:class:`ControlStep` (one step of the control loop that local mode also runs; the production
one is :class:`hotshard_operator.loopstep.LoopStep`).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from pydantic import ValidationError

from hotshard.engine.model import PoolState
from hotshard.routing import RoutingTable
from hotshard.routing.configmap_store import ConfigMapRoutingStore
from hotshard_operator.children import (
    Tier,
    base_selector,
    build_children,
    build_first_table,
    owner_reference,
    shard_ordinal,
)
from hotshard_operator.resources import PartitionMapSpec, SpecError
from hotshard_operator.status import (
    CampaignCost,
    Containment,
    Decision,
    HotPartition,
    PartitionMapStatus,
    ShardCounts,
    now_rfc3339,
    set_condition,
)

log = logging.getLogger(__name__)

Action = Literal["none", "split", "move", "quarantine", "merge", "scaleDown", "hold"]
EventReason = Literal[
    "SplitStarted",
    "SplitCommitted",
    "SplitRolledBack",
    "ScaledDown",
    "BaseRebalanceStarted",
    "BaseRebalanced",
]


@dataclass(frozen=True)
class FleetRef:
    """Which PartitionMap this is."""

    name: str
    namespace: str
    uid: str
    generation: int


@dataclass(frozen=True)
class TierStatus:
    """One tier's StatefulSet: the replicas asked for (None: it does not exist) and ready pods."""

    replicas: int | None
    ready: int


class Cluster(Protocol):
    """The Kubernetes calls the reconciler and the actuator make."""

    async def apply(self, manifest: dict[str, Any]) -> None: ...

    async def scale(self, ref: FleetRef, tier: Tier, replicas: int) -> None:
        """Set one tier's StatefulSet replicas; the StatefulSet removes the highest ordinals."""
        ...

    async def tier_status(self, ref: FleetRef, tier: Tier) -> TierStatus: ...

    async def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None: ...

    async def post_event(self, ref: FleetRef, kind: str, reason: str, message: str) -> None: ...

    async def ready_shards(self, ref: FleetRef) -> dict[str, int]:
        """Ready pods per tier, from the StatefulSets' status."""
        ...


class MetricsUnavailableError(RuntimeError):
    """Prometheus is unreachable or its samples are stale: hold the table, reshard nothing."""


@dataclass(frozen=True)
class Transition:
    """A change a user cares about, posted as an Event."""

    reason: EventReason
    message: str
    warning: bool = False


@dataclass(frozen=True)
class StepResult:
    """What one step of the control loop saw and did."""

    action: Action
    reason: str
    hot: list[HotPartition] = field(default_factory=list)
    table: RoutingTable | None = None
    """The table in the ConfigMap after the step (None: unknown, keep what status says)."""
    written: tuple[int, ...] = ()
    """Routing versions this step wrote to the ConfigMap, in order."""
    events: tuple[Transition, ...] = ()
    pending: int = 0
    """Pods asked for and not ready yet (the warm pool's refill, or a base scale-up)."""
    draining: int = 0
    """Pods out of the routing table, waiting to be removed from the top of their tier."""
    campaign_costs: list[CampaignCost] = field(default_factory=list)
    """The costliest campaigns by CPU this tick."""
    containment: Containment | None = None
    """Throttled/tripped requests and open breakers (None: unknown, keep what status says)."""


class ControlStep(Protocol):
    """One detect-plan-act step: reads and writes the routing ConfigMap itself.

    Raises :class:`MetricsUnavailableError` when it cannot see, before it changes anything. A
    lost compare-and-swap (409) is handled inside: re-read, re-plan, never overwrite.
    """

    async def step(self) -> StepResult: ...


def parse_spec(raw: dict[str, Any]) -> tuple[PartitionMapSpec | None, str]:
    """The spec, or None and a message fit for a condition when it breaks a rule.

    The spec must also make an engine configuration: some values pass the CRD's schema and
    still mean nothing to the engine.
    """
    from hotshard_operator.engine_config import to_engine_config

    try:
        spec = PartitionMapSpec.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "spec"
        return None, f"spec.{where}: {first['msg']}. Fix the PartitionMap; nothing was changed."
    try:
        to_engine_config(spec)
    except SpecError as exc:
        return None, f"spec: {exc}. Fix the PartitionMap; nothing was changed."
    return spec, ""


async def report_invalid_spec(
    ref: FleetRef, status: PartitionMapStatus, message: str, cluster: Cluster
) -> None:
    """Say in status why the spec cannot be acted on, instead of crash-looping."""
    conditions = set_condition(
        status.conditions, "Ready", "False", "InvalidSpec", message, ref.generation
    )
    patched = status.model_copy(update={"conditions": conditions})
    await cluster.patch_status(ref.namespace, ref.name, dump_status(patched))


def dump_status(status: PartitionMapStatus) -> dict[str, Any]:
    return status.model_dump(by_alias=True, exclude_none=True, mode="json")


def count_shards(table: RoutingTable, ready: dict[str, int], draining: int = 0) -> ShardCounts:
    """Shards by tier (``ready`` pods per tier) and by state (the table, and the actuator)."""
    owning = set(table.owners())
    for s in table.splits:
        owning.update(s.shards)
    return ShardCounts(
        base=ready.get("base", 0),
        overflow=ready.get("overflow", 0),
        sandbox=ready.get("sandbox", 0),
        serving=len(owning),
        warm=len(PoolState.from_table(table).idle),
        draining=draining,
        total=sum(ready.values()),
    )


def overflow_replicas(spec: PartitionMapSpec, table: RoutingTable, current: int | None) -> int:
    """Overflow pods to keep on (re)apply: every shard the table lists, and the warm pool.

    Never fewer than the highest listed ordinal + 1 (those pods serve or are warm), and never
    below what runs now unless that exceeds the maximum: a restarted operator must not shrink
    a fleet mid-spike. The control loop's actuator adjusts it from there.
    """
    listed = [shard_ordinal(s.name) for s in table.shards if s.tier == "overflow"]
    floor = max(listed, default=-1) + 1
    wanted = max(current or 0, spec.tiers.overflow.warm)
    return max(floor, min(wanted, spec.tiers.overflow.maximum))


def base_replicas(spec: PartitionMapSpec, table: RoutingTable, current: int | None) -> int:
    """Base pods to keep on (re)apply: the spec's count, and every pod that may still serve.

    A scale-up applies at once (new pods must run before partitions move to them); a scale-down
    keeps every base shard the table lists and every pod that runs now: the base-tier scaler
    moves their partitions away first and shrinks the StatefulSet once they have drained.
    """
    listed = [shard_ordinal(s.name) for s in table.shards if s.tier == "base"]
    return max(spec.tiers.base.replicas, max(listed, default=-1) + 1, current or 0)


async def ensure_fleet(
    ref: FleetRef,
    spec: PartitionMapSpec,
    status: PartitionMapStatus,
    cluster: Cluster,
    store: ConfigMapRoutingStore,
) -> PartitionMapStatus:
    """Make sure the routing ConfigMap holds a table, apply the children; patch status."""
    first = build_first_table(ref.name, ref.namespace, spec)
    try:
        await asyncio.to_thread(store.initialize, first, [owner_reference(ref.name, ref.uid)])
        table, reason = first, "published the first routing table"
    except FileExistsError:
        # NB: resume from what is published: the ConfigMap, not memory, is the truth.
        table, _ = await asyncio.to_thread(store.read)
        reason = f"adopted routing table version {table.version} from the ConfigMap"
    current = (await cluster.tier_status(ref, "overflow")).replicas
    replicas = overflow_replicas(spec, table, current)
    base = base_replicas(spec, table, (await cluster.tier_status(ref, "base")).replicas)
    for manifest in build_children(ref.name, ref.namespace, ref.uid, spec, replicas, base):
        await cluster.apply(manifest)
    conditions = set_condition(
        status.conditions, "Ready", "True", "RoutingPublished", reason, ref.generation
    )
    moving = bool(table.migrations)
    conditions = set_condition(
        conditions,
        "Progressing",
        "True" if moving else "False",
        "MigrationInFlight" if moving else "Idle",
        f"{len(table.migrations)} migration(s) in the table; the next tick resumes or rolls"
        " them back"
        if moving
        else "nothing is moving",
        ref.generation,
    )
    new = status.model_copy(
        update={
            "observed_generation": ref.generation,
            "routing_version": table.version,
            "selector": base_selector(ref.name),
            "conditions": conditions,
        }
    )
    await cluster.patch_status(ref.namespace, ref.name, dump_status(new))
    return new


async def _degrade(
    ref: FleetRef, status: PartitionMapStatus, cluster: Cluster, reason: str, message: str
) -> PartitionMapStatus:
    conditions = set_condition(
        status.conditions, "Degraded", "True", reason, message, ref.generation
    )
    new = status.model_copy(update={"conditions": conditions})
    await cluster.patch_status(ref.namespace, ref.name, dump_status(new))
    return new


def _progress(result: StepResult) -> tuple[bool, str, str]:
    """The Progressing condition after a step: status, reason, message."""
    table = result.table
    if table is not None and table.migrations:
        return True, "MigrationInFlight", f"{len(table.migrations)} migration(s) in the table"
    if result.pending:
        return True, "WarmingShards", f"{result.pending} shard(s) starting"
    if result.draining:
        return True, "DrainingShards", f"{result.draining} shard(s) draining"
    return False, "Idle", "nothing is moving"


async def run_tick(
    ref: FleetRef,
    spec: PartitionMapSpec,
    status: PartitionMapStatus,
    cluster: Cluster,
    control: ControlStep,
    *,
    elapsed_s: float,
) -> PartitionMapStatus:
    """One detection tick: run the control step, post its Events, report it in status."""
    try:
        result = await control.step()
    except MetricsUnavailableError as exc:
        return await _degrade(
            ref,
            status,
            cluster,
            "MetricsUnavailable",
            f"{exc}; holding routing version {status.routing_version}, no reshard until"
            " metrics return.",
        )
    except Exception as exc:  # NB: an API error must not end the daemon; the next tick retries.
        log.exception("control step of %s/%s failed", ref.namespace, ref.name)
        return await _degrade(
            ref, status, cluster, "TickFailed", f"the control step failed: {exc!r}"[:1024]
        )

    for event in result.events:
        kind = "Warning" if event.warning else "Normal"
        await cluster.post_event(ref, kind, event.reason, event.message)

    ready = await cluster.ready_shards(ref)
    table = result.table
    shards = count_shards(table, ready, result.draining) if table is not None else status.shards
    extra_shards = shards.total - spec.tiers.base.replicas - spec.tiers.sandbox.replicas
    cost = (
        status.cost_so_far + max(extra_shards, 0) * spec.budget.shard_hour_cost * elapsed_s / 3600
    )
    conditions = set_condition(
        status.conditions, "Degraded", "False", "MetricsFresh", "metrics are fresh", ref.generation
    )
    moving, why, message = _progress(result)
    conditions = set_condition(
        conditions, "Progressing", "True" if moving else "False", why, message, ref.generation
    )
    containment = result.containment or status.containment
    quarantines = status.containment.quarantines + (result.action == "quarantine")
    containment = containment.model_copy(update={"quarantines": quarantines})
    decision = Decision(
        action=result.action,
        reason=result.reason[:1024],
        time=now_rfc3339(),
        routing_version=result.written[-1] if result.written else 0,
    )
    new = status.model_copy(
        update={
            "routing_version": table.version if table is not None else status.routing_version,
            "shards": shards,
            "hot_partitions": result.hot,
            "hot_partition_count": len(result.hot),
            "last_decision": decision if result.action != "none" else status.last_decision,
            "cost_so_far": round(cost, 6),
            "campaign_costs": result.campaign_costs,
            "containment": containment,
            "conditions": conditions,
        }
    )
    await cluster.patch_status(ref.namespace, ref.name, dump_status(new))
    return new
