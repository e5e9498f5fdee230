"""The routers' and the bidders' campaign reports together, on the e2e fleet's shape (issue #7).

The routers report a campaign's rate, the bidders its demanded CPU; merged, the engine sees both.
The fleet is ``tests/e2e/reshard.py``'s: 64 partitions, two base shards, two warm overflow
shards, one sandbox, detection at 3x over a 50 req/s floor sustained 3 s, eight shards at most,
and 20 req/s of background over every partition at 100 us a request. A campaign hot on rate
must leave its base shard even when its reported CPU makes it too big for the warm shards there
are; a campaign hot on cost at a flat rate must go to the sandbox.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from hotshard.engine import (
    CampaignLoad,
    CostConfig,
    Decision,
    DetectionConfig,
    Engine,
    EngineConfig,
    PartitionLoad,
    PlanningConfig,
    PoolState,
    PredictionConfig,
)
from hotshard.engine.fleet import model_observation, model_shard_loads
from hotshard.routing import RoutingTable, Shard, partition_of

V = 64
CPR = 0.0001
"""CPU-seconds per request: the stand-in bidders' 50-150 us bids."""
BACKGROUND = 20.0 / V
"""req/s per partition: the e2e load generator's 20 req/s over every partition."""
SPIKE, SPIKED = "spike-a", 27
COSTLY, COSTLY_AT = "Melania_Trump", 62
ROUTE_CHANGES = {"migrate", "split", "quarantine", "merge"}


def e2e_fleet() -> RoutingTable:
    shards = [Shard(name=f"fleet-base-{i}", url=f"http://127.0.0.1:{9100 + i}") for i in range(2)]
    shards += [
        Shard(name=f"fleet-overflow-{i}", tier="overflow", url=f"http://127.0.0.1:{9200 + i}")
        for i in range(2)
    ]
    shards.append(Shard(name="fleet-sandbox-0", tier="sandbox", url="http://127.0.0.1:9300"))
    return RoutingTable.even(shards, partitions=V)


def e2e_engine(shard_cpu: float) -> Engine:
    """What the operator makes of ``reshard_spec`` with a CPU limit of ``shard_cpu`` cores."""
    return Engine(
        EngineConfig(
            detection=DetectionConfig(
                hot_factor=3.0, floor_rps=50.0, sustain_seconds=3.0, window_seconds=10
            ),
            planning=PlanningConfig(
                cooldown_seconds=5.0, max_shards=8, min_warm_pool=2, shard_capacity_cpu=shard_cpu
            ),
            prediction=PredictionConfig(enabled=False),
            cost=CostConfig(),
        )
    )


class Fleet:
    """Feeds the engine one bucket at a time and applies its tables, as the control loop does."""

    def __init__(self, shard_cpu: float) -> None:
        self.engine, self.table, self.t = e2e_engine(shard_cpu), e2e_fleet(), 0.0
        self.decisions: list[Decision] = []

    def step(self, parts: dict[int, PartitionLoad], reports: Sequence[CampaignLoad]) -> Decision:
        obs = model_observation(self.t, self.table, parts, reports)
        decision = self.engine.step(obs, self.table, PoolState.from_table(self.table))
        if decision.table is not None:
            self.table = decision.table
        self.decisions.append(decision)
        self.t += 1.0
        return decision

    def add_overflow(self, ordinal: int) -> None:
        """A refill the pool asked for is ready: the operator adopts it into the table."""
        shard = Shard(
            name=f"fleet-overflow-{ordinal}",
            tier="overflow",
            url=f"http://127.0.0.1:{9200 + ordinal}",
        )
        self.table = self.table.model_copy(
            update={"shards": (*self.table.shards, shard), "version": self.table.version + 1}
        )

    def route_of(self, campaign: str) -> tuple[str, ...]:
        p = partition_of(campaign, V)
        for s in self.table.splits:
            if (s.partition, s.campaign) == (p, campaign):
                return s.shards
        return (self.table.owners()[p],)


def background() -> dict[int, PartitionLoad]:
    return {p: PartitionLoad(BACKGROUND, BACKGROUND * CPR, latency=0.001) for p in range(V)}


def with_campaign(rate: float, cpr: float, partition: int) -> dict[int, PartitionLoad]:
    rest = BACKGROUND + rate
    return background() | {
        partition: PartitionLoad(rest, BACKGROUND * CPR + rate * cpr, latency=0.001)
    }


def reports(campaign: str, partition: int, rate: float, cpu: float) -> list[CampaignLoad]:
    """The routers' top-k (rate) and the bidders' (demanded CPU), as Prometheus gives them."""
    return [
        CampaignLoad(campaign, partition, rate=rate),
        CampaignLoad(campaign, partition, cpu=cpu),
    ]


def test_the_fixture_campaigns_hash_where_the_e2e_scenarios_say() -> None:
    assert partition_of(SPIKE, V) == SPIKED
    assert partition_of(COSTLY, V) == COSTLY_AT


def test_a_rate_spike_with_its_cpu_reported_leaves_its_base_shard_for_the_warm_shards() -> None:
    fleet = Fleet(shard_cpu=0.01)  # the resharding module's 10 millicores
    for _ in range(10):
        fleet.step(background(), [])
    parts = with_campaign(200.0, CPR, SPIKED)
    spike = reports(SPIKE, SPIKED, 200.0, 200.0 * CPR)
    first = fleet.step(parts, spike)
    # 200 req/s at 100 us is 0.02 cores: two 10m shards, three at the 70% target. Two warm
    # shards exist; the campaign leaves fleet-base-0 for both at once (100% each), and the pool
    # is asked for the three shards the budget of eight still allows.
    assert first.hot[0].signal == "rate"
    assert first.hot[0].campaign == SPIKE
    assert first.hot[0].load == pytest.approx(2.0)
    kinds = [(a.kind, a.target) for a in first.actions]
    assert kinds == [
        ("claim_shard", ("fleet-overflow-0",)),
        ("claim_shard", ("fleet-overflow-1",)),
        ("split", ("fleet-overflow-0", "fleet-overflow-1")),
        ("refill_pool", ()),
        ("refill_pool", ()),
        ("refill_pool", ()),
    ]
    split = first.actions[2]
    assert split.source == ("fleet-base-0",)
    assert "too few warm shards: 2 of the 3 it needs at the 70% target" in split.reason
    after = model_shard_loads(fleet.table, parts, spike)
    # fleet-base-0 is back to its own 32 partitions of background, 10 req/s at 100 us (10%).
    assert after["fleet-base-0"].rate == pytest.approx(32 * BACKGROUND)
    assert after["fleet-base-0"].cpu == pytest.approx(32 * BACKGROUND * CPR)
    assert after["fleet-overflow-0"].rate == after["fleet-overflow-1"].rate == 100.0
    assert after["fleet-overflow-0"].cpu == pytest.approx(0.01)
    # No refill yet: it stays where it is, and says what it waits for.
    held = fleet.step(parts, spike)
    assert not [a for a in held.actions if a.kind in ROUTE_CHANGES]
    assert any("needs 3 shard(s)" in n and "waiting for the warm pool" in n for n in held.notes)
    # A refill is ready: the split widens onto it, keeping its two shards, 67% each.
    fleet.add_overflow(2)
    widened = fleet.step(parts, spike)
    changes = [(a.kind, a.source, a.target) for a in widened.actions if a.kind in ROUTE_CHANGES]
    assert changes == [
        (
            "split",
            ("fleet-overflow-0", "fleet-overflow-1"),
            ("fleet-overflow-0", "fleet-overflow-1", "fleet-overflow-2"),
        )
    ]
    after = model_shard_loads(fleet.table, parts, spike)
    for n in ("fleet-overflow-0", "fleet-overflow-1", "fleet-overflow-2"):
        assert after[n].cpu / 0.01 == pytest.approx(2 / 3)


def test_the_same_spike_reported_by_rate_only_is_sized_from_its_rate() -> None:
    fleet = Fleet(shard_cpu=0.01)
    for _ in range(10):
        fleet.step(background(), [])
    parts = with_campaign(200.0, CPR, SPIKED)
    first = fleet.step(parts, [CampaignLoad(SPIKE, SPIKED, rate=200.0)])
    # Without the bidders' CPU the campaign looks like 10% of a 2000 req/s shard: one shard.
    assert first.hot[0].load == pytest.approx(0.1)
    moves = [(a.kind, a.target) for a in first.actions if a.kind in ROUTE_CHANGES]
    assert moves == [("migrate", ("fleet-overflow-0",))]


def test_a_flat_rate_campaign_turned_100x_costlier_is_quarantined_on_the_sandbox() -> None:
    fleet = Fleet(shard_cpu=1.0)  # the advertiser-bug module's one core
    cheap = with_campaign(6.0, CPR, COSTLY_AT)
    for _ in range(12):
        fleet.step(cheap, reports(COSTLY, COSTLY_AT, 6.0, 6.0 * CPR))
    assert not [a for d in fleet.decisions for a in d.actions if a.kind in ROUTE_CHANGES]
    # Version 2: 10 ms a request at the same 6 req/s, 0.06 cores. The rate is under its floor
    # and flat; the cost per request is 100x its baseline, a surge: quarantined at once.
    costly = with_campaign(6.0, 100 * CPR, COSTLY_AT)
    bad = reports(COSTLY, COSTLY_AT, 6.0, 6.0 * 100 * CPR)
    decision = fleet.step(costly, bad)
    assert [(h.partition, h.campaign, h.signal) for h in decision.hot] == [
        (COSTLY_AT, COSTLY, "cpu_per_request")
    ]
    # The partition's cost per request over its baseline: (0.31 + 600) / (0.31 + 6) = 95x.
    ratio = (BACKGROUND + 100 * 6.0) / (BACKGROUND + 6.0)
    assert decision.hot[0].score == pytest.approx(ratio) == pytest.approx(95.1, abs=0.05)
    moves = [(a.kind, a.campaign, a.source, a.target) for a in decision.actions]
    assert moves == [("quarantine", COSTLY, ("fleet-base-1",), ("fleet-sandbox-0",))]
    assert f"partition {COSTLY_AT} is hot on cpu per request" in decision.actions[0].reason
    # It stays there while its cost shows, and nothing else moves.
    for _ in range(8):
        fleet.step(costly, bad)
    assert fleet.route_of(COSTLY) == ("fleet-sandbox-0",)
    later = [a for d in fleet.decisions[13:] for a in d.actions if a.kind in ROUTE_CHANGES]
    assert later == []
