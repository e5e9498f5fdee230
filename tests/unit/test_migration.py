"""The two-phase hand-over: prepare, commit, final, and rollback from either phase."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hotshard.routing import (
    MigrationPhase,
    RoutingError,
    RoutingSnapshot,
    RoutingTable,
    Shard,
    Split,
    partition_of,
)
from hotshard.routing.migration import changed_routes, plan_handover, rollback

V = 16
BASE = [Shard(name=f"base-{i}", url=f"http://127.0.0.1:{9100 + i}") for i in range(2)]
EXTRA = [
    Shard(name="overflow-0", tier="overflow", url="http://127.0.0.1:9200"),
    Shard(name="overflow-1", tier="overflow", url="http://127.0.0.1:9201"),
]
HOT = "superbowl-ad"
HOT_P = partition_of(HOT, V)


def current() -> RoutingTable:
    return RoutingTable.even(BASE, partitions=V, version=7)


def desired() -> RoutingTable:
    """Partition 3 moves to overflow-0 and the hot campaign is split over both overflow shards."""
    owners = current().owners()
    owners[3] = "overflow-0"
    return current().with_owners(
        owners,
        version=8,
        shards=(*BASE, *EXTRA),
        splits=(Split(partition=HOT_P, campaign=HOT, shards=("overflow-0", "overflow-1")),),
    )


def test_handover_lists_every_changed_route_in_both_phases() -> None:
    h = plan_handover(current(), desired())
    assert [t.version for t in (h.prepare, h.commit, h.final)] == [8, 9, 10]
    routes = [(m.partition, m.campaign, m.source, m.target) for m in h.migrations]
    assert routes == [
        (3, None, ("base-0",), ("overflow-0",)),
        (HOT_P, HOT, (current().owners()[HOT_P],), ("overflow-0", "overflow-1")),
    ]
    assert {m.phase for m in h.prepare.migrations} == {MigrationPhase.PREPARE}
    assert {m.phase for m in h.commit.migrations} == {MigrationPhase.COMMIT}
    assert h.final.migrations == ()


def test_prepare_still_routes_to_the_sources_and_commit_to_the_targets() -> None:
    h = plan_handover(current(), desired())
    prepare, commit = RoutingSnapshot(h.prepare), RoutingSnapshot(h.commit)
    assert prepare.shards_for(3) == ("base-0",)
    assert commit.shards_for(3) == ("overflow-0",)
    assert prepare.shards_for(HOT_P, HOT) == (current().owners()[HOT_P],)
    assert commit.shards_for(HOT_P, HOT) == ("overflow-0", "overflow-1")
    # The new shards are known from the prepare phase on, so targets can warm up.
    assert [s.name for s in h.prepare.shards] == ["base-0", "base-1", "overflow-0", "overflow-1"]
    assert h.final.ranges == desired().ranges
    assert h.final.splits == desired().splits


def test_a_released_shard_stays_until_the_final_table() -> None:
    start = desired()
    owners = start.owners()
    owners[3] = "base-0"
    back = start.with_owners(owners, version=9, shards=(*BASE, EXTRA[0]), splits=())
    h = plan_handover(start, back)
    assert "overflow-1" in [s.name for s in h.commit.shards]
    assert "overflow-1" not in [s.name for s in h.final.shards]
    assert [(m.partition, m.campaign) for m in h.migrations] == [(3, None), (HOT_P, HOT)]


def test_rollback_from_prepare_drops_the_migrations() -> None:
    h = plan_handover(current(), desired())
    back = rollback(h.prepare)
    assert back.version == h.prepare.version + 1
    assert back.migrations == ()
    assert back.owners() == current().owners()
    assert back.splits == ()


def test_rollback_from_commit_restores_the_source_routes() -> None:
    h = plan_handover(current(), desired())
    back = rollback(h.commit)
    assert back.version == h.commit.version + 1
    assert back.migrations == ()
    assert back.owners() == current().owners()
    assert back.splits == ()
    assert changed_routes(current(), back) == []


def test_a_table_mid_handover_cannot_start_another_or_roll_back_twice() -> None:
    h = plan_handover(current(), desired())
    with pytest.raises(RoutingError, match="already has a hand-over in progress"):
        plan_handover(h.prepare, desired())
    with pytest.raises(RoutingError, match="no hand-over to roll back"):
        rollback(h.final)


@settings(max_examples=60, deadline=None)
@given(
    moves=st.lists(
        st.tuples(st.integers(0, V - 1), st.sampled_from(["base-0", "base-1", "overflow-0"])),
        max_size=8,
    ),
    split=st.booleans(),
)
def test_any_handover_is_valid_and_lands_on_the_desired_routes(
    moves: list[tuple[int, str]], split: bool
) -> None:
    start = current()
    owners = start.owners()
    for p, shard in moves:
        owners[p] = shard
    splits = (Split(partition=HOT_P, campaign=HOT, shards=("overflow-1",)),) if split else ()
    goal = start.with_owners(owners, version=8, shards=(*BASE, *EXTRA), splits=splits)
    h = plan_handover(start, goal)  # every table is validated, phases included, on build
    final = RoutingSnapshot(h.final)
    wanted = RoutingSnapshot(goal)
    for p in range(V):
        assert final.shards_for(p) == wanted.shards_for(p)
    assert final.shards_for(HOT_P, HOT) == wanted.shards_for(HOT_P, HOT)
    assert changed_routes(h.final, goal) == []
    assert len(h.migrations) == len(changed_routes(start, goal))
