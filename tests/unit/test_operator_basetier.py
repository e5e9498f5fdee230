"""Scaling the base tier reaches the routing table: even shares, two phases, drain, then shrink.

The table change is checked with real values on a 16-partition map; the whole path (spec
change, ``ensure``, the control step) on the loop-step tests' fakes.
"""

from __future__ import annotations

from collections import Counter

from test_operator_loopstep import REF, SPEC, Rig

from hotshard.routing import RoutingTable, Shard
from hotshard_operator.actuator import DRAIN_SECONDS
from hotshard_operator.basetier import rebalance_base
from hotshard_operator.children import build_first_table, shard_url
from hotshard_operator.reconcile import ensure_fleet
from hotshard_operator.resources import PartitionMapSpec


def base_shard(i: int) -> Shard:
    url = shard_url("fleet", "bidding", "base", i, 9100)
    return Shard(name=f"fleet-base-{i}", tier="base", url=url)


def first_table() -> RoutingTable:
    return build_first_table("fleet", "bidding", SPEC)  # 16 partitions over 4 base shards


def short(owners: list[str]) -> list[str]:
    return [o.replace("fleet-", "") for o in owners]


def with_base(spec: PartitionMapSpec, replicas: int) -> PartitionMapSpec:
    tiers = spec.tiers.model_copy(
        update={"base": spec.tiers.base.model_copy(update={"replicas": replicas})}
    )
    return spec.model_copy(update={"tiers": tiers})


def test_growing_from_four_to_six_moves_one_partition_from_each_old_shard() -> None:
    table = first_table()
    grown = rebalance_base(table, 6, base_shard)
    assert grown is not None
    assert grown.version == table.version + 1
    b0, b1, b2, b3, b4, b5 = (f"base-{i}" for i in range(6))
    assert short(grown.owners()) == [
        b0, b0, b0, b4,
        b1, b1, b1, b4,
        b2, b2, b2, b5,
        b3, b3, b3, b5,
    ]  # fmt: skip
    assert [s.name for s in grown.shards] == [f"fleet-base-{i}" for i in range(6)] + [
        "fleet-sandbox-0"
    ]
    assert grown.shard("fleet-base-5").url == "http://fleet-base-5.fleet-base.bidding.svc:9100"
    assert rebalance_base(grown, 6, base_shard) is None  # already even: nothing to do


def test_shrinking_from_four_to_three_hands_the_top_shard_out_and_drops_it() -> None:
    shrunk = rebalance_base(first_table(), 3, base_shard)
    assert shrunk is not None
    b0, b1, b2 = (f"base-{i}" for i in range(3))
    assert short(shrunk.owners()) == [
        b0, b0, b0, b0,
        b1, b1, b1, b1,
        b2, b2, b2, b2,
        b0, b0, b1, b2,
    ]  # fmt: skip
    assert Counter(shrunk.owners()) == {
        "fleet-base-0": 6,
        "fleet-base-1": 5,
        "fleet-base-2": 5,
    }
    assert "fleet-base-3" not in [s.name for s in shrunk.shards]


def test_partitions_the_overflow_serves_stay_where_they_are() -> None:
    table = first_table()
    overflow = Shard(name="fleet-overflow-0", tier="overflow", url="http://o0:9100")
    owners = table.owners()
    owners[5] = "fleet-overflow-0"  # a hot partition moved off base-1
    table = table.with_owners(owners, shards=[*table.shards, overflow])
    grown = rebalance_base(table, 5, base_shard)
    assert grown is not None
    assert grown.owners()[5] == "fleet-overflow-0"
    counts = Counter(o for o in grown.owners() if "base" in o)
    assert sorted(counts.values()) == [3, 3, 3, 3, 3]  # 15 base-owned partitions, 3 each


async def test_scaling_up_hands_partitions_to_the_new_shards_in_two_phases() -> None:
    rig = Rig()
    step = await rig.start()
    await rig.tick(step, 3)  # the warm pool joins the table (v2)
    rig.spec = with_base(SPEC, 6)
    rig.status = await ensure_fleet(REF, rig.spec, rig.status, rig.cluster, rig.store)
    assert rig.cluster.replicas["base"] == 6  # new pods start at once
    step = rig.step()
    status = await rig.tick(step, 1)

    phases = [
        (t.version, t.migrations[0].phase.value if t.migrations else "-") for t in rig.api.tables
    ]
    assert phases[-3:] == [(3, "prepare"), (4, "commit"), (5, "-")]
    prepare = rig.api.tables[-3]
    assert sorted({t for m in prepare.migrations for t in m.target}) == [
        "fleet-base-4",
        "fleet-base-5",
    ]
    assert prepare.owners()[3] == "fleet-base-0"  # the old owner serves until commit
    final, _ = rig.store.read()
    assert Counter(o for o in final.owners() if "base" in o) == {
        "fleet-base-0": 3,
        "fleet-base-1": 3,
        "fleet-base-2": 3,
        "fleet-base-3": 3,
        "fleet-base-4": 2,
        "fleet-base-5": 2,
    }
    assert [r for _, r, _ in rig.cluster.events] == ["BaseRebalanceStarted", "BaseRebalanced"]
    assert rig.cluster.events[1][2] == "v5: base tier from 4 to 6 shards: 4 partition(s) move"
    assert status.last_decision is not None
    assert (status.last_decision.action, status.last_decision.routing_version) == ("move", 5)


async def test_scaling_down_drains_the_top_shards_then_shrinks_the_stateful_set() -> None:
    rig = Rig()
    step = await rig.start()
    await rig.tick(step, 3)
    rig.spec = with_base(SPEC, 2)
    rig.status = await ensure_fleet(REF, rig.spec, rig.status, rig.cluster, rig.store)
    assert rig.cluster.replicas["base"] == 4  # nothing is removed before it drained
    step = rig.step()
    status = await rig.tick(step, 1)
    final, _ = rig.store.read()
    assert not final.migrations
    assert Counter(final.owners()) == {"fleet-base-0": 8, "fleet-base-1": 8}
    assert [s.name for s in final.shards if s.tier == "base"] == ["fleet-base-0", "fleet-base-1"]
    assert rig.cluster.scaled == []
    ticks = 0
    while rig.cluster.replicas["base"] == 4:
        draining = status.shards.draining
        status = await rig.tick(step, 1)
        ticks += 1
        assert ticks < 30
    assert draining == 2  # status showed the two leaving pods while they drained
    assert ticks >= DRAIN_SECONDS
    assert rig.cluster.scaled[-1] == ("base", 2)
    assert rig.cluster.events[-1][1:] == (
        "ScaledDown",
        "removed drained base shard(s) fleet-base-2, fleet-base-3 from the top of the StatefulSet",
    )
