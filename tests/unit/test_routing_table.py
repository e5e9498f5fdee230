"""Routing-table validation: each rule, with a table that must be refused."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from hotshard.routing import (
    MigrationPhase,
    RoutingError,
    RoutingSnapshot,
    RoutingTable,
    Shard,
    check_successor,
    partition_of,
)

SHARDS = [Shard(name=f"s{i}", url=f"http://127.0.0.1:{9100 + i}") for i in range(3)]


def base(**changes: Any) -> dict[str, Any]:
    data = RoutingTable.even(SHARDS, partitions=8).model_dump(mode="json")
    data.update(changes)
    return data


def rng(first: int, last: int, shard: str) -> dict[str, Any]:
    return {"first": first, "last": last, "shard": shard}


def refused(data: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as info:
        RoutingTable.model_validate(data)
    return str(info.value)


def campaign_in(partition: int, partitions: int = 8) -> str:
    return next(f"c{i}" for i in range(10_000) if partition_of(f"c{i}", partitions) == partition)


def test_even_table_owns_every_partition_once() -> None:
    table = RoutingTable.even(SHARDS, partitions=8)
    assert table.owners() == ["s0", "s0", "s1", "s1", "s1", "s2", "s2", "s2"]


def test_unowned_partitions_are_refused() -> None:
    data = base(ranges=[{"first": 0, "last": 5, "shard": "s0"}])
    assert "partitions 6..7 are unowned" in refused(data)
    gap = base(
        ranges=[{"first": 0, "last": 2, "shard": "s0"}, {"first": 4, "last": 7, "shard": "s1"}]
    )
    assert "partitions 3..3 are unowned" in refused(gap)


def test_a_partition_owned_twice_is_refused() -> None:
    data = base(
        ranges=[{"first": 0, "last": 4, "shard": "s0"}, {"first": 4, "last": 7, "shard": "s1"}]
    )
    assert "owned by more than one range" in refused(data)


def test_unknown_shards_are_refused_in_ranges_splits_and_migrations() -> None:
    assert "unknown shard(s): s9" in refused(base(ranges=[{"first": 0, "last": 7, "shard": "s9"}]))
    split = base(splits=[{"partition": 1, "shards": ["s0", "s9"]}])
    assert "unknown shard(s): s9" in refused(split)
    move = base(
        migrations=[{"partition": 1, "source": ["s0"], "target": ["s9"], "phase": "prepare"}]
    )
    assert "unknown shard(s): s9" in refused(move)


def test_duplicate_shard_names_are_refused() -> None:
    data = base(shards=[s.model_dump() for s in (*SHARDS, SHARDS[0])])
    assert "repeated: s0" in refused(data)


def test_a_split_campaign_must_hash_to_its_partition() -> None:
    campaign = campaign_in(3)
    ok = base(splits=[{"partition": 3, "campaign": campaign, "shards": ["s1", "s2"]}])
    assert RoutingTable.model_validate(ok).splits[0].campaign == campaign
    wrong = base(splits=[{"partition": 4, "campaign": campaign, "shards": ["s1", "s2"]}])
    assert "hashes to partition 3, not 4" in refused(wrong)


def test_a_partition_split_needs_two_distinct_shards() -> None:
    assert "at least two shards" in refused(base(splits=[{"partition": 1, "shards": ["s0"]}]))
    assert "repeats a shard" in refused(base(splits=[{"partition": 1, "shards": ["s0", "s0"]}]))


def test_a_split_of_a_partition_outside_the_table_is_refused() -> None:
    assert "outside 0..7" in refused(base(splits=[{"partition": 8, "shards": ["s0", "s1"]}]))


def test_migration_phase_must_match_who_the_table_routes_to() -> None:
    prepare = {"partition": 1, "source": ["s0"], "target": ["s1"], "phase": "prepare"}
    assert RoutingTable.model_validate(base(migrations=[prepare])).migrations[0].phase is (
        MigrationPhase.PREPARE
    )
    # Committed, yet the ranges still route partition 1 to the source: inconsistent.
    commit = {**prepare, "phase": "commit"}
    assert "in phase commit must route to ['s1']" in refused(base(migrations=[commit]))
    # Prepare, yet the ranges already route to the target.
    moved = base(
        ranges=[
            {"first": 0, "last": 0, "shard": "s0"},
            {"first": 1, "last": 1, "shard": "s1"},
            {"first": 2, "last": 7, "shard": "s1"},
        ],
        migrations=[prepare],
    )
    assert "in phase prepare must route to ['s0']" in refused(moved)
    same = {**prepare, "target": ["s0"]}
    assert "same source and target" in refused(base(migrations=[same]))


def test_version_may_not_go_back_or_stand_still() -> None:
    current = RoutingTable.even(SHARDS, partitions=8, version=5)
    with pytest.raises(RoutingError, match="version must increase: proposed 5, current 5"):
        check_successor(current, current)
    with pytest.raises(RoutingError, match="proposed 4, current 5"):
        check_successor(current, RoutingTable.even(SHARDS, partitions=8, version=4))
    check_successor(current, RoutingTable.even(SHARDS, partitions=8, version=6))


def test_partition_count_is_fixed() -> None:
    current = RoutingTable.even(SHARDS, partitions=8, version=1)
    with pytest.raises(RoutingError, match="fixed at 8"):
        check_successor(current, RoutingTable.even(SHARDS, partitions=16, version=2))


def test_snapshot_routes_campaign_splits_before_partition_splits_before_ranges() -> None:
    campaign = campaign_in(3)
    table = RoutingTable.model_validate(
        base(
            splits=[
                {"partition": 3, "shards": ["s0", "s2"]},
                {"partition": 3, "campaign": campaign, "shards": ["s0"]},
            ]
        )
    )
    snap = RoutingSnapshot(table)
    assert snap.shards_for(3, campaign) == ("s0",)
    assert snap.shards_for(3, "someone-else") == ("s0", "s2")
    assert snap.shards_for(5) == ("s2",)
    assert snap.ways(3, campaign) == 1
    assert snap.ways(3, "someone-else") == 2
    served = {snap.route(3, "someone-else", f"user-{i}") for i in range(50)}
    assert served == {"s0", "s2"}
