"""Bounded-load hashing keeps every shard within the factor and spills in ring order."""

from __future__ import annotations

import pytest

from hotshard.strategies import ORDER, REFERENCE, BoundedLoadRing, Strategy, place_static

OWNERS = ["a"] * 4 + ["b"] * 4 + ["c"] * 4 + ["d"] * 4


def test_a_key_stays_on_its_owner_while_the_owner_is_under_the_bound() -> None:
    ring = BoundedLoadRing.from_owners(OWNERS)
    # total 8 -> bound 1.25 * 9 / 4 = 2.81; b carries 1, and 1 + 1 <= 2.81.
    assert ring.pick(5, {"a": 3, "b": 1, "c": 2, "d": 2}) == "b"
    # b at 2 with total 9: bound 1.25 * 10 / 4 = 3.125 and 2 + 1 <= 3.125 -> stays.
    assert ring.pick(5, {"a": 3, "b": 2, "c": 2, "d": 2}) == "b"
    # b at 3 with total 10: bound 1.25 * 11 / 4 = 3.44 and 3 + 1 > 3.44 -> spills to c.
    assert ring.pick(5, {"a": 3, "b": 3, "c": 2, "d": 2}) == "c"


def test_an_overloaded_owner_spills_to_the_next_shard_on_the_ring() -> None:
    ring = BoundedLoadRing.from_owners(OWNERS)
    # total 12 -> bound 1.25 * 13 / 4 = 4.06; b (9) and c (4, 4 + 1 > 4.06) are full.
    assert ring.pick(5, {"a": 0, "b": 9, "c": 4, "d": 0}) == "d"
    # The walk wraps: from d, the next shard is a.
    assert ring.pick(13, {"a": 0, "b": 0, "c": 0, "d": 9}) == "a"


def test_when_every_shard_is_full_the_owner_takes_the_request() -> None:
    ring = BoundedLoadRing(run_starts=(0, 2), run_shards=("a", "b"), positions=4, factor=1.0)
    assert ring.pick(3, {"a": 5, "b": 5}) == "b"  # bound 1.0 * 11 / 2 = 5.5; 6 > 5.5 for both


def test_spread_caps_every_shard_at_factor_times_the_mean() -> None:
    ring = BoundedLoadRing.from_owners(OWNERS)
    flows = {p: 1.0 for p in range(16)}
    flows[5] = 100.0  # one hot partition on b
    placed = ring.spread(flows)
    carried: dict[str, float] = {}
    for share in placed.values():
        for shard, f in share.items():
            carried[shard] = carried.get(shard, 0.0) + f
    total = sum(flows.values())  # 115
    assert sum(carried.values()) == pytest.approx(total)
    assert max(carried.values()) == pytest.approx(1.25 * total / 4)  # 35.9375
    # The hot partition fills b (which already took partition 4), then c, then part of d.
    assert placed[5] == pytest.approx({"b": 34.9375, "c": 35.9375, "d": 29.125})
    # Its neighbours are displaced: c's own partition now lands on d, and d's on d and a.
    assert placed[8] == {"d": 1.0}
    assert placed[12] == pytest.approx({"d": 0.8125, "a": 0.1875})
    assert placed[0] == {"a": 1.0}


def test_uniform_flows_do_not_move() -> None:
    ring = BoundedLoadRing.from_owners(OWNERS)
    flows = {p: 2.0 for p in range(16)}
    assert ring.spread(flows) == place_static(OWNERS, flows)


def test_the_ring_lists_its_shards_in_order() -> None:
    ring = BoundedLoadRing.from_owners(["x", "x", "y", "x", "z"])
    assert ring.shards == ["x", "y", "z"]
    assert list(ring.successors(3)) == ["x", "z", "y"]


def test_registry_names_the_five_strategies() -> None:
    assert [s.value for s in ORDER] == [
        "static",
        "hpa",
        "bounded-load",
        "hotshard-reactive",
        "hotshard-predictive",
    ]
    assert REFERENCE is Strategy.HOTSHARD_PREDICTIVE
    assert Strategy("bounded-load").is_hotshard is False
    assert Strategy.HOTSHARD_REACTIVE.is_hotshard is True
