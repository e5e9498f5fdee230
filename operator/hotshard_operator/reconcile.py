"""What the operator does for one PartitionMap: build the fleet, then tick the control loop.

The kopf handlers only register; they call the two entry points here. :func:`ensure_fleet`
applies the children (StatefulSets, headless Services) and publishes the first routing table,
or adopts the table already in the ConfigMap, which is how a restarted operator resumes.
:func:`run_tick` runs one detect-plan-act step of the shared control loop and turns what it
did into status, conditions and Events.

All I/O goes through two narrow seams, so this module is tested without a cluster: a
:class:`Cluster` (apply a manifest, patch status, post an Event) and a :class:`ControlStep`
(one step of the control loop that local mode also runs).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from pydantic import ValidationError

from hotshard.routing import RoutingTable
from hotshard.routing.configmap_store import ConfigMapRoutingStore
from hotshard.routing.store import StaleTokenError
from hotshard_operator.children import (
    base_selector,
    build_children,
    build_first_table,
    build_stateful_set,
    owner_reference,
    tier_replicas,
)
from hotshard_operator.resources import PartitionMapSpec
from hotshard_operator.status import (
    Decision,
    HotPartition,
    PartitionMapStatus,
    ShardCounts,
    now_rfc3339,
    set_condition,
)

REPLANS = 3
"""Re-plans after a 409 before giving up for this tick: more means another writer is fighting us."""


class Cluster(Protocol):
    """The Kubernetes calls the reconciler makes."""

    async def apply(self, manifest: dict[str, Any]) -> None: ...

    async def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None: ...

    async def post_event(self, ref: FleetRef, kind: str, reason: str, message: str) -> None: ...

    async def ready_shards(self, ref: FleetRef) -> dict[str, int]:
        """Ready pods per tier, from the StatefulSets' status."""
        ...


class MetricsUnavailableError(RuntimeError):
    """Prometheus is unreachable or its samples are stale: hold the table, reshard nothing."""


@dataclass(frozen=True)
class StepResult:
    """What one step of the control loop saw and did."""

    action: Literal["none", "split", "move", "quarantine", "merge", "scaleDown", "hold"]
    reason: str
    hot: list[HotPartition] = field(default_factory=list)
    table: RoutingTable | None = None
    """The table committed by this step, or None when the table did not change."""
    event: Literal["SplitStarted", "SplitCommitted", "SplitRolledBack", "ScaledDown"] | None = None
    overflow_serving: int = 0
    """Overflow shards that own partitions after this step; the warm pool is kept on top."""


class ControlStep(Protocol):
    """One detect-plan-act step over the current table.

    Raises :class:`MetricsUnavailableError` when it cannot see, and :class:`StaleTokenError`
    when its commit lost a race; the caller re-reads and calls again.

    TODO(#5): the production implementation wraps ``hotshard.control.ControlLoop`` (with a
    ``PrometheusSource`` and an actuator over :class:`ConfigMapRoutingStore`) once it lands.
    """

    async def step(self, table: RoutingTable, token: str) -> StepResult: ...


@dataclass(frozen=True)
class FleetRef:
    """Which PartitionMap this is."""

    name: str
    namespace: str
    uid: str
    generation: int


def parse_spec(raw: dict[str, Any]) -> tuple[PartitionMapSpec | None, str]:
    """The spec, or None and a message fit for a condition when it breaks a rule."""
    try:
        return PartitionMapSpec.model_validate(raw), ""
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "spec"
        return None, f"spec.{where}: {first['msg']}. Fix the PartitionMap; nothing was changed."


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


def count_shards(table: RoutingTable, ready: dict[str, int]) -> ShardCounts:
    """Shards by tier (``ready`` pods per tier) and by state (from the routing table)."""
    owning = set(table.owners())
    for s in table.splits:
        owning.update(s.shards)
    overflow_in_table = sum(1 for s in table.shards if s.tier == "overflow" and s.name in owning)
    return ShardCounts(
        base=ready.get("base", 0),
        overflow=ready.get("overflow", 0),
        sandbox=ready.get("sandbox", 0),
        serving=len(owning),
        warm=max(ready.get("overflow", 0) - overflow_in_table, 0),
        total=sum(ready.values()),
    )


async def ensure_fleet(
    ref: FleetRef,
    spec: PartitionMapSpec,
    status: PartitionMapStatus,
    cluster: Cluster,
    store: ConfigMapRoutingStore,
    overflow_serving: int = 0,
) -> PartitionMapStatus:
    """Apply the children and make sure the routing ConfigMap holds a table; patch status."""
    for manifest in build_children(ref.name, ref.namespace, ref.uid, spec, overflow_serving):
        await cluster.apply(manifest)
    first = build_first_table(ref.name, ref.namespace, spec)
    try:
        await asyncio.to_thread(store.initialize, first, [owner_reference(ref.name, ref.uid)])
        table, reason = first, "published the first routing table"
    except FileExistsError:
        # NB: resume from what is published: the ConfigMap, not memory, is the truth.
        table, _ = await asyncio.to_thread(store.read)
        reason = f"adopted routing table version {table.version} from the ConfigMap"
    conditions = set_condition(
        status.conditions, "Ready", "True", "RoutingPublished", reason, ref.generation
    )
    moving = bool(table.migrations)
    conditions = set_condition(
        conditions,
        "Progressing",
        "True" if moving else "False",
        "MigrationInFlight" if moving else "Idle",
        f"{len(table.migrations)} migration(s) in the table" if moving else "nothing is moving",
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


async def run_tick(
    ref: FleetRef,
    spec: PartitionMapSpec,
    status: PartitionMapStatus,
    cluster: Cluster,
    store: ConfigMapRoutingStore,
    control: ControlStep,
    *,
    elapsed_s: float,
) -> PartitionMapStatus:
    """One detection tick: run the control step, act on its result, report it."""
    result: StepResult | None = None
    table: RoutingTable | None = None
    try:
        for _ in range(REPLANS):
            read, token = await asyncio.to_thread(store.read)
            table = read
            try:
                result = await control.step(read, token)
                break
            except StaleTokenError:
                continue  # someone else committed: re-read and re-plan, never overwrite
    except MetricsUnavailableError as exc:
        conditions = set_condition(
            status.conditions,
            "Degraded",
            "True",
            "MetricsUnavailable",
            f"{exc}; holding routing version {status.routing_version}, no reshard until"
            " metrics return.",
            ref.generation,
        )
        new = status.model_copy(update={"conditions": conditions})
        await cluster.patch_status(ref.namespace, ref.name, dump_status(new))
        return new
    if result is None:
        result = StepResult("hold", f"the routing table changed under {REPLANS} plans in a row")

    committed = result.table
    if committed is not None:
        replicas = tier_replicas(spec, "overflow", result.overflow_serving)
        sts = build_stateful_set(ref.name, ref.namespace, ref.uid, spec, "overflow", replicas)
        await cluster.apply(sts)
    if result.event is not None:
        kind = "Warning" if result.event == "SplitRolledBack" else "Normal"
        await cluster.post_event(ref, kind, result.event, result.reason)

    latest = committed or table
    ready = await cluster.ready_shards(ref)
    shards = count_shards(latest, ready) if latest is not None else status.shards
    extra_shards = shards.total - spec.tiers.base.replicas - spec.tiers.sandbox.replicas
    cost = (
        status.cost_so_far + max(extra_shards, 0) * spec.budget.shard_hour_cost * elapsed_s / 3600
    )
    conditions = set_condition(
        status.conditions, "Degraded", "False", "MetricsFresh", "metrics are fresh", ref.generation
    )
    moving = committed is not None and bool(committed.migrations)
    if committed is not None or result.action == "none":
        conditions = set_condition(
            conditions,
            "Progressing",
            "True" if moving else "False",
            "MigrationInFlight" if moving else "Idle",
            result.reason,
            ref.generation,
        )
    decision = Decision(
        action=result.action,
        reason=result.reason,
        time=now_rfc3339(),
        routing_version=committed.version if committed else 0,
    )
    new = status.model_copy(
        update={
            "routing_version": committed.version if committed else status.routing_version,
            "shards": shards,
            "hot_partitions": result.hot,
            "hot_partition_count": len(result.hot),
            "last_decision": decision if result.action != "none" else status.last_decision,
            "cost_so_far": round(cost, 6),
            "conditions": conditions,
        }
    )
    await cluster.patch_status(ref.namespace, ref.name, dump_status(new))
    return new
