"""The reconciler against a fake cluster, a fake ConfigMap API and a scripted control step.

These exercise the domain module the kopf handlers delegate to; the handlers themselves only
register (see ``test_operator_handlers.py``). The control step itself, with the real engine and
control loop, is tested in ``test_operator_loopstep.py``.
"""

from __future__ import annotations

from typing import Any

import pytest
from test_operator_configmap_store import FakeCoreV1  # pytest puts tests/unit on the path

from hotshard.routing import RoutingTable, Shard
from hotshard.routing.configmap_store import ConfigMapRoutingStore
from hotshard_operator.children import Tier
from hotshard_operator.reconcile import (
    FleetRef,
    MetricsUnavailableError,
    StepResult,
    TierStatus,
    Transition,
    ensure_fleet,
    overflow_replicas,
    parse_spec,
    report_invalid_spec,
    run_tick,
)
from hotshard_operator.resources import PartitionMapSpec
from hotshard_operator.status import (
    CampaignCost,
    Containment,
    HotPartition,
    PartitionMapStatus,
    find_condition,
)

REF = FleetRef(name="fleet", namespace="bidding", uid="uid-1", generation=3)


class FakeCluster:
    def __init__(self) -> None:
        self.applied: list[dict[str, Any]] = []
        self.statuses: list[dict[str, Any]] = []
        self.events: list[tuple[str, str, str]] = []
        self.ready = {"base": 2, "overflow": 2, "sandbox": 1}
        self.overflow: int | None = None

    async def apply(self, manifest: dict[str, Any]) -> None:
        self.applied.append(manifest)

    async def scale(self, ref: FleetRef, tier: Tier, replicas: int) -> None:
        raise AssertionError("the reconciler never scales; the actuator does")

    async def tier_status(self, ref: FleetRef, tier: Tier) -> TierStatus:
        return TierStatus(replicas=self.overflow, ready=self.overflow or 0)

    async def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.statuses.append(status)

    async def post_event(self, ref: FleetRef, kind: str, reason: str, message: str) -> None:
        self.events.append((kind, reason, message))

    async def ready_shards(self, ref: FleetRef) -> dict[str, int]:
        return dict(self.ready)


class ScriptedStep:
    """Returns scripted results; an exception in the script is raised instead."""

    def __init__(self, *script: StepResult | Exception) -> None:
        self.script = list(script)

    async def step(self) -> StepResult:
        outcome = self.script.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


SPEC = PartitionMapSpec.model_validate(
    {
        "bidder": {"image": "hotshard:0.1.0"},
        "virtualPartitions": 8,
        "tiers": {"base": {"replicas": 2}, "overflow": {"warm": 2, "maximum": 6}},
        "budget": {"shardHourCost": 3.6},
    }
)


FIRST_TABLE_JSON = RoutingTable.even(
    [Shard(name="fleet-base-0", url="http://fleet-base-0:9100")], partitions=8
).to_json()


@pytest.fixture
def api() -> FakeCoreV1:
    return FakeCoreV1()


@pytest.fixture
def store(api: FakeCoreV1) -> ConfigMapRoutingStore:
    return ConfigMapRoutingStore(api, "bidding", "fleet-routing")


async def test_create_applies_children_and_publishes_the_first_table(
    store: ConfigMapRoutingStore, api: FakeCoreV1
) -> None:
    cluster = FakeCluster()
    status = await ensure_fleet(REF, SPEC, PartitionMapStatus(), cluster, store)
    assert [(m["kind"], m["metadata"]["name"]) for m in cluster.applied] == [
        ("ServiceAccount", "fleet-bidder"),
        ("Role", "fleet-bidder"),
        ("RoleBinding", "fleet-bidder"),
        ("Service", "fleet-base"),
        ("StatefulSet", "fleet-base"),
        ("Service", "fleet-overflow"),
        ("StatefulSet", "fleet-overflow"),
        ("Service", "fleet-sandbox"),
        ("StatefulSet", "fleet-sandbox"),
    ]
    table, _ = store.read()
    assert table.owners() == ["fleet-base-0"] * 4 + ["fleet-base-1"] * 4
    owner = api.objects["fleet-routing"]["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"]) == ("PartitionMap", "uid-1")
    assert cluster.statuses[-1]["routingVersion"] == 1
    assert cluster.statuses[-1]["observedGeneration"] == 3
    ready = find_condition(status.conditions, "Ready")
    assert ready is not None
    assert (ready.status, ready.reason) == ("True", "RoutingPublished")


async def test_resume_adopts_the_published_table_instead_of_overwriting(
    store: ConfigMapRoutingStore,
) -> None:
    cluster = FakeCluster()
    await ensure_fleet(REF, SPEC, PartitionMapStatus(), cluster, store)
    table, token = store.read()
    owners = table.owners()
    owners[0] = "fleet-base-1"
    store.replace(table.with_owners(owners, version=7), token)

    status = await ensure_fleet(REF, SPEC, PartitionMapStatus(), FakeCluster(), store)
    assert status.routing_version == 7
    assert store.read()[0].owners()[0] == "fleet-base-1"
    ready = find_condition(status.conditions, "Ready")
    assert ready is not None
    assert ready.message == "adopted routing table version 7 from the ConfigMap"


async def test_a_step_result_becomes_status_events_and_cost(
    store: ConfigMapRoutingStore,
) -> None:
    cluster = FakeCluster()
    status = await ensure_fleet(REF, SPEC, PartitionMapStatus(), cluster, store)
    table, _ = store.read()
    hot = [HotPartition(partition=2, reason="rate", score=41.5, shards=["fleet-base-0"])]
    committed = table.with_owners(table.owners(), version=4)
    step = ScriptedStep(
        StepResult(
            "split",
            "partition 2 runs at 41.5x its baseline",
            hot=hot,
            table=committed,
            written=(2, 3, 4),
            events=(
                Transition("SplitStarted", "v2: split partition 2"),
                Transition("SplitCommitted", "v3: split partition 2"),
            ),
            pending=1,
            draining=2,
        )
    )
    status = await run_tick(REF, SPEC, status, cluster, step, elapsed_s=1.0)
    assert status.routing_version == 4
    assert status.hot_partition_count == 1
    assert status.last_decision is not None
    assert (status.last_decision.action, status.last_decision.routing_version) == ("split", 4)
    assert cluster.events == [
        ("Normal", "SplitStarted", "v2: split partition 2"),
        ("Normal", "SplitCommitted", "v3: split partition 2"),
    ]
    # 5 ready shards, 3 of them base+sandbox: 2 extra shards for 1 s at 3.6/h = 0.002.
    assert status.cost_so_far == pytest.approx(0.002)
    shards = cluster.statuses[-1]["shards"]
    assert (shards["total"], shards["draining"], shards["serving"]) == (5, 2, 2)
    assert cluster.statuses[-1]["hotPartitions"][0]["score"] == 41.5
    progressing = find_condition(status.conditions, "Progressing")
    assert progressing is not None
    assert (progressing.status, progressing.reason) == ("True", "WarmingShards")


async def test_campaign_costs_and_containment_reach_status_and_quarantines_add_up(
    store: ConfigMapRoutingStore,
) -> None:
    cluster = FakeCluster()
    status = await ensure_fleet(REF, SPEC, PartitionMapStatus(), cluster, store)
    costs = [CampaignCost(campaign="c-7", partition=3, cpu_cores=0.5, cost_per_hour=1.8)]
    seen = Containment(throttled_requests=120, tripped_requests=4, breakers_open=1, rollbacks=2)
    step = ScriptedStep(
        StepResult("quarantine", "c-7 burns CPU", campaign_costs=costs, containment=seen),
        StepResult("none", "calm"),  # Prometheus gave no containment counts this tick
        StepResult("quarantine", "c-9 burns CPU", containment=Containment(throttled_requests=130)),
    )
    status = await run_tick(REF, SPEC, status, cluster, step, elapsed_s=1.0)
    assert cluster.statuses[-1]["campaignCosts"] == [
        {"campaign": "c-7", "partition": 3, "cpuCores": 0.5, "costPerHour": 1.8}
    ]
    assert cluster.statuses[-1]["containment"] == {
        "throttledRequests": 120,
        "trippedRequests": 4,
        "breakersOpen": 1,
        "quarantines": 1,
        "rollbacks": 2,
    }
    status = await run_tick(REF, SPEC, status, cluster, step, elapsed_s=1.0)
    assert status.campaign_costs == []
    assert (status.containment.throttled_requests, status.containment.quarantines) == (120, 1)
    status = await run_tick(REF, SPEC, status, cluster, step, elapsed_s=1.0)
    assert (status.containment.throttled_requests, status.containment.quarantines) == (130, 2)


async def test_a_rolled_back_split_is_a_warning_event(store: ConfigMapRoutingStore) -> None:
    cluster = FakeCluster()
    status = await ensure_fleet(REF, SPEC, PartitionMapStatus(), cluster, store)
    event = Transition("SplitRolledBack", "v3: rolled back", warning=True)
    step = ScriptedStep(StepResult("hold", "v3: rolled back", events=(event,)))
    status = await run_tick(REF, SPEC, status, cluster, step, elapsed_s=1.0)
    assert cluster.events == [("Warning", "SplitRolledBack", "v3: rolled back")]
    assert status.routing_version == 1  # no table in the result: status keeps what it had


async def test_a_restart_keeps_every_overflow_shard_the_table_lists(
    store: ConfigMapRoutingStore,
) -> None:
    cluster = FakeCluster()
    await ensure_fleet(REF, SPEC, PartitionMapStatus(), cluster, store)
    table, token = store.read()
    data = table.model_dump()
    data["version"] = 2
    data["shards"] = [
        *data["shards"],
        {"name": "fleet-overflow-4", "tier": "overflow", "url": "http://fleet-overflow-4:9100"},
    ]
    store.replace(RoutingTable.model_validate(data), token)
    restarted = FakeCluster()
    restarted.overflow = 3  # the StatefulSet was shrunk under a listed shard
    await ensure_fleet(REF, SPEC, PartitionMapStatus(), restarted, store)
    sets = {m["metadata"]["name"]: m for m in restarted.applied if m["kind"] == "StatefulSet"}
    assert sets["fleet-overflow"]["spec"]["replicas"] == 5  # ordinal 4 must have its pod


def test_overflow_replicas_keep_what_runs_within_the_maximum() -> None:
    table = RoutingTable.model_validate_json(FIRST_TABLE_JSON)
    # Nothing listed: the warm pool (2), or what runs now, capped at the maximum (6).
    assert [overflow_replicas(SPEC, table, n) for n in (None, 0, 4, 9)] == [2, 2, 4, 6]


async def test_prometheus_down_degrades_and_changes_nothing(
    store: ConfigMapRoutingStore, api: FakeCoreV1
) -> None:
    cluster = FakeCluster()
    status = await ensure_fleet(REF, SPEC, PartitionMapStatus(), cluster, store)
    before = dict(api.objects["fleet-routing"])
    applied = len(cluster.applied)
    step = ScriptedStep(MetricsUnavailableError("Prometheus at http://prom:9090 is unreachable"))
    status = await run_tick(REF, SPEC, status, cluster, step, elapsed_s=1.0)
    degraded = find_condition(status.conditions, "Degraded")
    assert degraded is not None
    assert (degraded.status, degraded.reason) == ("True", "MetricsUnavailable")
    assert "holding routing version 1" in degraded.message
    assert api.objects["fleet-routing"] == before
    assert len(cluster.applied) == applied
    assert cluster.events == []


async def test_an_invalid_spec_becomes_a_condition_not_a_crash() -> None:
    spec, message = parse_spec(
        {"bidder": {"image": "x"}, "tiers": {"overflow": {"warm": 9, "maximum": 1}}}
    )
    assert spec is None
    assert "warm must not exceed maximum" in message
    spec, message = parse_spec({"bidder": {"image": "x"}, "detection": {"factor": 1}})
    assert spec is None
    assert message == (
        "spec: detection.factor must be above 1: at 1 every partition is hot. Fix the"
        " PartitionMap; nothing was changed."
    )
    cluster = FakeCluster()
    await report_invalid_spec(REF, PartitionMapStatus(), message, cluster)
    (cond,) = cluster.statuses[-1]["conditions"]
    assert (cond["type"], cond["status"], cond["reason"]) == ("Ready", "False", "InvalidSpec")
