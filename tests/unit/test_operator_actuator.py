"""The Kubernetes actuator: the overflow StatefulSet as the warm pool, refilled and drained."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from hotshard.routing import RoutingTable, Shard
from hotshard_operator.actuator import KubernetesActuator
from hotshard_operator.children import Tier
from hotshard_operator.reconcile import FleetRef, TierStatus
from hotshard_operator.resources import PartitionMapSpec

REF = FleetRef(name="fleet", namespace="bidding", uid="u", generation=1)


def make_spec(warm: int = 2, maximum: int = 6, max_shards: int = 64) -> PartitionMapSpec:
    return PartitionMapSpec.model_validate(
        {
            "bidder": {"image": "x"},
            "virtualPartitions": 8,
            "tiers": {"base": {"replicas": 2}, "overflow": {"warm": warm, "maximum": maximum}},
            "budget": {"maxShards": max_shards},
        }
    )


class Cluster:
    def __init__(self, replicas: int, ready: int | None = None) -> None:
        self.replicas = replicas
        self.ready = replicas if ready is None else ready
        self.scaled: list[int] = []

    async def apply(self, manifest: dict[str, Any]) -> None:
        raise AssertionError("the actuator scales; it never applies manifests")

    async def scale(self, ref: FleetRef, tier: Tier, replicas: int) -> None:
        assert tier == "overflow"
        self.scaled.append(replicas)
        self.replicas = replicas

    async def tier_status(self, ref: FleetRef, tier: Tier) -> TierStatus:
        return TierStatus(replicas=self.replicas, ready=self.ready)

    async def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None: ...

    async def post_event(self, ref: FleetRef, kind: str, reason: str, message: str) -> None: ...

    async def ready_shards(self, ref: FleetRef) -> dict[str, int]:
        return {}


class Seen:
    """Prometheus has a routing version for these shards (they run and are scraped)."""

    def __init__(self, *ordinals: int) -> None:
        self.names = {f"fleet-overflow-{i}" for i in ordinals}

    async def versions(self, shards: Iterable[str]) -> Mapping[str, int]:
        return {n: 1 for n in shards if n in self.names}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def table(overflow: Iterable[int] = (), serving: Iterable[int] = ()) -> RoutingTable:
    """Two base shards own partitions 0-7, except those given to ``serving`` overflow shards."""
    shards = [Shard(name=f"fleet-base-{i}", url=f"http://b{i}:9100") for i in range(2)]
    shards += [
        Shard(name=f"fleet-overflow-{i}", tier="overflow", url=f"http://o{i}:9100")
        for i in sorted(set(overflow) | set(serving))
    ]
    base = RoutingTable.even(shards[:2], partitions=8)
    owners = base.owners()
    for p, i in enumerate(sorted(serving)):
        owners[p] = f"fleet-overflow-{i}"
    return RoutingTable(
        version=1, partitions=8, shards=tuple(shards), ranges=base.ranges
    ).with_owners(owners)


def overflow_names(t: RoutingTable | None) -> list[str]:
    assert t is not None
    return [s.name for s in t.shards if s.tier == "overflow"]


async def test_only_running_ready_pods_are_adopted_and_the_rest_is_pending() -> None:
    cluster = Cluster(replicas=3, ready=2)
    act = KubernetesActuator(REF, make_spec(warm=3), cluster, Seen(0, 2))
    proposed = await act.reconcile_pool(table(), warm_target=3)
    assert overflow_names(proposed) == ["fleet-overflow-0", "fleet-overflow-2"]
    assert proposed is not None
    assert proposed.version == 2
    url = proposed.shard("fleet-overflow-0").url
    assert url == "http://fleet-overflow-0.fleet-overflow.bidding.svc:9100"
    assert act.pending == 1  # fleet-overflow-1 is asked for and not running yet
    assert cluster.scaled == []  # 2 adopted + 1 starting = the target of 3


async def test_the_stateful_set_count_caps_adoption_when_prometheus_runs_ahead() -> None:
    cluster = Cluster(replicas=2, ready=1)
    act = KubernetesActuator(REF, make_spec(), cluster, Seen(0, 1))
    proposed = await act.reconcile_pool(table(), warm_target=2)
    assert overflow_names(proposed) == ["fleet-overflow-0"]


async def test_refill_scales_up_within_the_maximum_and_the_budget() -> None:
    cluster = Cluster(replicas=0)
    act = KubernetesActuator(REF, make_spec(warm=2, maximum=6), cluster, Seen())
    assert await act.reconcile_pool(table(), warm_target=2) is None
    assert (cluster.scaled, act.pending) == ([2], 2)
    # Asked again while those start: nothing more is asked for.
    assert await act.reconcile_pool(table(), warm_target=2) is None
    assert cluster.scaled == [2]

    # A target beyond the tier: base 2 + sandbox 1 leave 5 of maxShards 8 for overflow.
    tight = Cluster(replicas=0)
    act = KubernetesActuator(REF, make_spec(warm=2, maximum=5, max_shards=8), tight, Seen())
    await act.reconcile_pool(table(serving=[]), warm_target=9)
    assert tight.scaled == [5]


async def test_a_listed_shard_whose_pod_is_gone_gets_it_back() -> None:
    cluster = Cluster(replicas=1)
    act = KubernetesActuator(REF, make_spec(warm=0), cluster, Seen(0))
    await act.reconcile_pool(table(serving=[0, 3]), warm_target=0)
    assert cluster.scaled == [4]


async def test_surplus_idle_shards_leave_the_table_only_above_every_serving_one() -> None:
    cluster = Cluster(replicas=5)
    act = KubernetesActuator(REF, make_spec(warm=1), cluster, Seen(0, 1, 2, 3, 4))
    # 0 and 3 serve; 1, 2 and 4 are idle; the target is 1, so 2 are surplus, but only 4 sits
    # above every serving shard: removing 1 or 2 from the table could never free their pods.
    proposed = await act.reconcile_pool(table(overflow=[1, 2, 4], serving=[0, 3]), warm_target=1)
    assert overflow_names(proposed) == [f"fleet-overflow-{i}" for i in (0, 1, 2, 3)]


async def test_release_drains_then_shrinks_from_the_highest_ordinal() -> None:
    cluster = Cluster(replicas=4)
    clock = Clock()
    act = KubernetesActuator(REF, make_spec(warm=0), cluster, Seen(), clock=clock)
    act.warm_target = 0
    listed = table(serving=[0, 1])  # 2 and 3 were released from the table
    change = await act.released(listed)
    assert (change.stopped, act.draining) == ((), ("fleet-overflow-2", "fleet-overflow-3"))
    clock.now = 9.9
    assert (await act.released(listed)).stopped == ()
    clock.now = 10.0
    change = await act.released(listed)
    assert change.stopped == ("fleet-overflow-2", "fleet-overflow-3")
    assert (cluster.scaled, act.removed, act.draining) == ([2], list(change.stopped), ())


async def test_a_pod_below_a_serving_one_is_never_removed() -> None:
    cluster = Cluster(replicas=3)
    clock = Clock()
    act = KubernetesActuator(REF, make_spec(warm=0), cluster, Seen(), clock=clock)
    act.warm_target = 0
    listed = table(serving=[0, 2])  # 1 left the table, but 2 above it serves
    await act.released(listed)
    clock.now = 1000.0
    assert (await act.released(listed)).stopped == ()
    assert cluster.scaled == []
    assert act.draining == ("fleet-overflow-1",)


async def test_pods_the_pool_still_needs_are_not_drained() -> None:
    cluster = Cluster(replicas=2)
    clock = Clock()
    act = KubernetesActuator(REF, make_spec(warm=2), cluster, Seen(), clock=clock)
    # Both pods were just asked for (not listed yet) and the pool wants two: they stay.
    await act.released(table())
    clock.now = 1000.0
    assert (await act.released(table())).stopped == ()
    assert act.draining == ()
