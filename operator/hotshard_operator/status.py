"""The PartitionMap status: what the operator saw, decided and did, and the three conditions.

Status is the operator's explanation to a user and, with the routing ConfigMap, the only state
it needs to resume after a restart. It is patched explicitly by the reconciler; kopf handlers
return nothing into it, because fields the CRD does not declare would be pruned silently.

The conditions follow the Kubernetes convention: `Ready` (the fleet serves from a committed
routing table), `Progressing` (a split, merge or scale is under way) and `Degraded` (the
operator is holding still because it cannot see or cannot act). `lastTransitionTime` changes
only when a condition's status flips, not on every patch.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from hotshard_operator.resources import Signal

ConditionType = Literal["Ready", "Progressing", "Degraded"]
ConditionStatus = Literal["True", "False", "Unknown"]


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, use_attribute_docstrings=True
    )


class Condition(_Model):
    """One condition, in the shape every Kubernetes condition has."""

    type: ConditionType
    """Ready, Progressing or Degraded."""
    status: ConditionStatus
    """True, False or Unknown."""
    reason: str = Field(pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$", max_length=1024)
    """One CamelCase word a program can switch on, e.g. `PrometheusUnreachable`."""
    message: str = Field(default="", max_length=32768)
    """A sentence for a person: what is wrong and what to do about it."""
    last_transition_time: str = Field(json_schema_extra={"format": "date-time"})
    """When `status` last changed."""
    observed_generation: int = Field(default=0, ge=0)
    """The `metadata.generation` this condition was computed from."""


class ShardCounts(_Model):
    """Shards by tier and by state."""

    base: int = Field(default=0, ge=0)
    """Base shards that are ready. The scale subresource reads this field."""
    overflow: int = Field(default=0, ge=0)
    """Overflow shards that are ready, serving or warm."""
    sandbox: int = Field(default=0, ge=0)
    """Sandbox shards that are ready."""
    serving: int = Field(default=0, ge=0)
    """Shards that own at least one partition in the routing table."""
    warm: int = Field(default=0, ge=0)
    """Ready overflow shards that own nothing yet: the warm pool."""
    draining: int = Field(default=0, ge=0)
    """Shards that gave their partitions back and finish what is in flight before removal."""
    total: int = Field(default=0, ge=0)
    """All ready shards."""


class HotPartition(_Model):
    """A virtual partition the engine judged hot on the last tick."""

    partition: int = Field(ge=0)
    """The virtual partition."""
    reason: Signal
    """The signal that weighed most: rate, cpu, memory, latency, forecast or calendar."""
    score: float = Field(ge=0)
    """Health score as a multiple of the partition's baseline."""
    shards: list[str] = Field(default_factory=list)
    """The shards serving the partition now."""


class Decision(_Model):
    """The last thing the operator decided, and why."""

    action: Literal["none", "split", "move", "quarantine", "merge", "scaleDown", "hold"]
    """What the operator decided."""
    reason: str = Field(max_length=1024)
    """Why, in one sentence."""
    time: str = Field(json_schema_extra={"format": "date-time"})
    """When the decision was taken."""
    routing_version: int = Field(default=0, ge=0)
    """The routing table version the decision produced, 0 when none."""


class CampaignCost(_Model):
    """One campaign's CPU cost, from the bidders' per-campaign CPU series."""

    campaign: str = Field(max_length=256)
    """The campaign key."""
    partition: int = Field(ge=0)
    """The virtual partition the campaign hashes to."""
    cpu_cores: float = Field(ge=0)
    """CPU seconds per second the campaign demanded (spent, plus predicted for refused requests)
    in the bidders' last complete 1 s window, summed over the map's shards."""
    cost_per_hour: float = Field(ge=0)
    """`cpuCores` over the bidder CPU limit, times `budget.shardHourCost`: what the campaign costs
    an hour at this rate, in the same unit as `costSoFar`."""


class Containment(_Model):
    """What the fleet did to keep costly campaigns from hurting the others."""

    throttled_requests: int = Field(default=0, ge=0)
    """Requests the bidders refused because their campaign ran out of CPU tokens, counted by the
    bidder pods running now since they started."""
    tripped_requests: int = Field(default=0, ge=0)
    """Requests refused by an open per-campaign CPU breaker, counted the same way."""
    breakers_open: int = Field(default=0, ge=0)
    """Router breakers open now on this map's shards (summed over routers)."""
    quarantines: int = Field(default=0, ge=0)
    """Hand-overs that moved a costly campaign to the sandbox tier, since the map was created."""
    rollbacks: int = Field(default=0, ge=0)
    """Campaign configuration versions the bidders rolled back for their cost: one per shard
    that rolled a version back (each shard judges the versions it serves), counted by the bidder
    pods running now since they started."""


class PartitionMapStatus(_Model):
    """What the operator observed and did."""

    observed_generation: int = Field(default=0, ge=0)
    """The `metadata.generation` of the spec last reconciled."""
    routing_version: int = Field(default=0, ge=0)
    """Version of the routing table committed to the ConfigMap."""
    selector: str = ""
    """Label selector of the base-tier pods, for the scale subresource."""
    shards: ShardCounts = Field(default_factory=ShardCounts)
    """Shards by tier and state."""
    hot_partitions: list[HotPartition] = Field(default_factory=list, max_length=1000)
    """Partitions judged hot on the last tick, hottest first."""
    hot_partition_count: int = Field(default=0, ge=0)
    """How many partitions are hot; a printer column, since a list has no length in JSONPath."""
    last_decision: Decision | None = None
    """The last decision and its reason."""
    cost_so_far: float = Field(default=0.0, ge=0)
    """Shard-hours spent above the base tier, times `budget.shardHourCost`."""
    campaign_costs: list[CampaignCost] = Field(default_factory=list, max_length=10)
    """The costliest campaigns by CPU on the last tick with fresh metrics, costliest first (at
    most 10: the bidders export their top 10 each)."""
    containment: Containment = Field(default_factory=Containment)
    """Containment actions taken: throttled and tripped requests, open breakers, quarantines."""
    conditions: list[Condition] = Field(default_factory=list, max_length=8)
    """Ready, Progressing and Degraded."""


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: list[Condition],
    type_: ConditionType,
    status: ConditionStatus,
    reason: str,
    message: str,
    generation: int,
    *,
    now: str | None = None,
) -> list[Condition]:
    """Return `conditions` with `type_` set; its transition time moves only on a flip."""
    stamp = now or now_rfc3339()
    out: list[Condition] = []
    found = False
    for c in conditions:
        if c.type != type_:
            out.append(c)
            continue
        found = True
        moved = stamp if c.status != status else c.last_transition_time
        out.append(
            Condition(
                type=type_,
                status=status,
                reason=reason,
                message=message,
                last_transition_time=moved,
                observed_generation=generation,
            )
        )
    if not found:
        out.append(
            Condition(
                type=type_,
                status=status,
                reason=reason,
                message=message,
                last_transition_time=stamp,
                observed_generation=generation,
            )
        )
    return sorted(out, key=lambda c: ("Ready", "Progressing", "Degraded").index(c.type))


def find_condition(conditions: list[Condition], type_: ConditionType) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)
