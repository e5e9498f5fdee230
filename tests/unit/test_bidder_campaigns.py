"""Budget leases: across shards and table changes, a campaign never spends more than its budget."""

from __future__ import annotations

import random
from collections import defaultdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hotshard.routing import RoutingSnapshot, RoutingTable, Shard, partition_of
from hotshard.routing.store import SnapshotHolder
from hotshard_bidder.campaigns import HANDOVER_GRACE_S, PACING_SLACK, CampaignBook

PARTITIONS = 8
SHARDS = [Shard(name=f"s{i}", url=f"http://127.0.0.1:{9100 + i}") for i in range(3)]
CAMPAIGN = "campaign-1"
P = partition_of(CAMPAIGN, PARTITIONS)
BUDGET = 10.0


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def owner_table(version: int, owner: str, split: tuple[str, ...] = ()) -> RoutingTable:
    base = RoutingTable.even(SHARDS, partitions=PARTITIONS)
    owners = base.owners()
    owners[P] = owner
    splits = [{"partition": P, "shards": list(split)}] if split else []
    return base.with_owners(owners, version=version, splits=splits)


LAYOUTS = [
    ("s0", ()),
    ("s1", ()),
    ("s0", ("s0", "s1")),
    ("s0", ("s0", "s1", "s2")),
    ("s2", ("s1", "s2")),
    ("s2", ()),
]


def test_a_split_halves_the_lease_of_each_shard() -> None:
    clock = Clock(1000.0)
    snap = RoutingSnapshot(owner_table(1, "s0", ("s0", "s1")))
    book = CampaignBook("s0", BUDGET, clock)
    state = book.state(CAMPAIGN, P, snap)
    assert state.lease == BUDGET / 2


def test_pacing_limits_spend_early_in_the_second() -> None:
    clock = Clock(1000.0)
    book = CampaignBook("s0", BUDGET, clock)
    state = book.state(CAMPAIGN, P, RoutingSnapshot(owner_table(1, "s0")))
    spent = sum(0.1 for _ in range(200) if book.try_spend(state, 0.1))
    assert abs(spent - BUDGET * PACING_SLACK) < 1e-9  # only 10% at the top of the second
    clock.now = 1000.5
    assert book.try_spend(state, BUDGET * 0.5)
    assert not book.try_spend(state, 0.1 + 1e-9)


def test_a_gaining_shard_waits_for_the_next_whole_second_after_the_grace() -> None:
    clock = Clock(1000.3)
    holder = SnapshotHolder(RoutingSnapshot(owner_table(1, "s0")))
    book = CampaignBook("s1", BUDGET, clock)
    holder.on_swap(book.note_swap)
    holder.offer(owner_table(2, "s1"))
    state = book.state(CAMPAIGN, P, holder.current)
    clock.now = 1000.99
    assert not book.try_spend(state, 0.01)
    clock.now = 1001.0
    state = book.state(CAMPAIGN, P, holder.current)
    assert book.try_spend(state, 0.01)
    assert state.lease == BUDGET


def test_a_growing_lease_waits_for_the_next_second_and_a_shrinking_one_applies_now() -> None:
    clock = Clock(1000.5)
    book = CampaignBook("s0", BUDGET, clock, grace=0.25)
    state = book.state(CAMPAIGN, P, RoutingSnapshot(owner_table(1, "s0", ("s0", "s1"))))
    assert state.lease == BUDGET / 2
    holder = SnapshotHolder(RoutingSnapshot(owner_table(1, "s0", ("s0", "s1"))))
    holder.on_swap(book.note_swap)
    holder.offer(owner_table(2, "s0"))
    state = book.state(CAMPAIGN, P, holder.current)
    assert state.lease == BUDGET / 2  # merged, but s1 may still spend its half this second
    clock.now = 1001.0
    state = book.state(CAMPAIGN, P, holder.current)
    assert state.lease == BUDGET
    holder.offer(owner_table(3, "s0", ("s0", "s1", "s2")))
    state = book.state(CAMPAIGN, P, holder.current)
    assert state.lease == pytest.approx(BUDGET / 3)  # a shrink applies at once


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, len(LAYOUTS) - 1), st.floats(0.05, 1.7)), max_size=8),
    st.integers(0, 2**32),
)
def test_lease_sums_never_exceed_the_budget_in_any_second(
    changes: list[tuple[int, float]], seed: int
) -> None:
    """Three shards bid for one campaign while the table moves and splits it at random times.

    Each shard acts on the table it has: a shard serves a request only if its table routes the
    campaign to it, and each learns of a new table at its own (random) moment, as in reality.
    """
    rng = random.Random(seed)
    clock = Clock(5000.0)
    tables = [owner_table(1, *LAYOUTS[0])]
    change_times = []
    t = clock.now
    for index, gap in changes:
        t += gap
        change_times.append(t)
        tables.append(owner_table(len(tables) + 1, *LAYOUTS[index]))
    holders = {s.name: SnapshotHolder(RoutingSnapshot(tables[0])) for s in SHARDS}
    books = {s.name: CampaignBook(s.name, BUDGET, clock) for s in SHARDS}
    for name, holder in holders.items():
        holder.on_swap(books[name].note_swap)
    # Each shard adopts each table within the hand-over grace the book assumes.
    lag = {
        (name, v): rng.uniform(0.0, HANDOVER_GRACE_S)
        for name in holders
        for v in range(len(tables))
    }
    spent: dict[int, float] = defaultdict(float)
    end = (change_times[-1] if change_times else clock.now) + 2.5
    while clock.now < end:
        clock.now += rng.uniform(0.001, 0.02)
        for name, holder in holders.items():
            for v, at in enumerate(change_times, start=1):
                if clock.now >= at + lag[(name, v)]:
                    holder.offer(tables[v])
            snap = holder.current
            if name not in snap.shards_for(P, CAMPAIGN):
                continue
            state = books[name].state(CAMPAIGN, P, snap)
            amount = rng.uniform(0.01, 0.4)
            if books[name].try_spend(state, amount):
                spent[int(clock.now)] += amount
    assert spent, "the simulation should have spent something"
    assert max(spent.values()) <= BUDGET + 1e-9


def test_a_gain_late_in_the_second_skips_to_the_second_after_next() -> None:
    clock = Clock(1000.9)
    holder = SnapshotHolder(RoutingSnapshot(owner_table(1, "s0")))
    book = CampaignBook("s1", BUDGET, clock, grace=0.25)
    holder.on_swap(book.note_swap)
    holder.offer(owner_table(2, "s1"))
    # The old owner may still spend until 1001.15 on the old table, so second 1001 is its.
    cap = book.cap(P, CAMPAIGN, clock.now)
    assert cap is not None
    assert (cap.until, cap.share) == (1002, 0.0)
