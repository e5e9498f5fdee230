"""The reconciler against a fake cluster, a fake ConfigMap API and a scripted control step.

These exercise the domain module the kopf handlers delegate to; the handlers themselves only
register (see ``test_operator_handlers.py``).
"""

from __future__ import annotations

from typing import Any

import pytest
from test_operator_configmap_store import FakeCoreV1  # pytest puts tests/unit on the path

from hotshard.routing import RoutingTable
from hotshard.routing.configmap_store import ConfigMapRoutingStore
from hotshard.routing.store import StaleTokenError
from hotshard_operator.reconcile import (
    FleetRef,
    MetricsUnavailableError,
    StepResult,
    ensure_fleet,
    parse_spec,
    report_invalid_spec,
    run_tick,
)
from hotshard_operator.resources import PartitionMapSpec
from hotshard_operator.status import HotPartition, PartitionMapStatus, find_condition

REF = FleetRef(name="fleet", namespace="bidding", uid="uid-1", generation=3)


class FakeCluster:
    def __init__(self) -> None:
        self.applied: list[dict[str, Any]] = []
        self.statuses: list[dict[str, Any]] = []
        self.events: list[tuple[str, str, str]] = []
        self.ready = {"base": 2, "overflow": 2, "sandbox": 1}

    async def apply(self, manifest: dict[str, Any]) -> None:
        self.applied.append(manifest)

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
        self.seen_versions: list[int] = []

    async def step(self, table: RoutingTable, token: str) -> StepResult:
        self.seen_versions.append(table.version)
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


async def test_a_hot_signal_commits_reports_and_posts_an_event(
    store: ConfigMapRoutingStore,
) -> None:
    cluster = FakeCluster()
    status = await ensure_fleet(REF, SPEC, PartitionMapStatus(), cluster, store)
    table, _ = store.read()
    hot = [HotPartition(partition=2, reason="rate", score=41.5, shards=["fleet-base-0"])]
    committed = table.with_owners(table.owners(), version=2)
    step = ScriptedStep(
        StepResult(
            "split",
            "partition 2 runs at 41.5x its baseline",
            hot=hot,
            table=committed,
            event="SplitCommitted",
            overflow_serving=2,
        )
    )
    status = await run_tick(REF, SPEC, status, cluster, store, step, elapsed_s=1.0)
    assert status.routing_version == 2
    assert status.hot_partition_count == 1
    assert status.last_decision is not None
    assert status.last_decision.action == "split"
    reason = "partition 2 runs at 41.5x its baseline"
    assert cluster.events == [("Normal", "SplitCommitted", reason)]
    # Overflow scaled to serving + warm = 4, below its maximum of 6.
    assert cluster.applied[-1]["metadata"]["name"] == "fleet-overflow"
    assert cluster.applied[-1]["spec"]["replicas"] == 4
    # 5 ready shards, 3 of them base+sandbox: 2 extra shards for 1 s at 3.6/h = 0.002.
    assert status.cost_so_far == pytest.approx(0.002)
    assert cluster.statuses[-1]["shards"]["total"] == 5
    assert cluster.statuses[-1]["hotPartitions"][0]["score"] == 41.5


async def test_a_conflict_is_re_planned_on_a_fresh_read(store: ConfigMapRoutingStore) -> None:
    cluster = FakeCluster()
    status = await ensure_fleet(REF, SPEC, PartitionMapStatus(), cluster, store)
    table, token = store.read()
    store.replace(table.with_owners(table.owners(), version=5), token)  # another writer
    step = ScriptedStep(StaleTokenError("lost the race"), StepResult("none", "all partitions calm"))
    status = await run_tick(REF, SPEC, status, cluster, store, step, elapsed_s=1.0)
    assert step.seen_versions == [5, 5]
    assert store.read()[0].version == 5  # nothing overwritten
    assert status.last_decision is None


async def test_prometheus_down_degrades_and_changes_nothing(
    store: ConfigMapRoutingStore, api: FakeCoreV1
) -> None:
    cluster = FakeCluster()
    status = await ensure_fleet(REF, SPEC, PartitionMapStatus(), cluster, store)
    before = dict(api.objects["fleet-routing"])
    applied = len(cluster.applied)
    step = ScriptedStep(MetricsUnavailableError("Prometheus at http://prom:9090 is unreachable"))
    status = await run_tick(REF, SPEC, status, cluster, store, step, elapsed_s=1.0)
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
    cluster = FakeCluster()
    await report_invalid_spec(REF, PartitionMapStatus(), message, cluster)
    (cond,) = cluster.statuses[-1]["conditions"]
    assert (cond["type"], cond["status"], cond["reason"]) == ("Ready", "False", "InvalidSpec")
