"""Detection: the bar, sustain, the baseline, resource and key-level hot spots, fail static."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from hotshard.engine import (
    CampaignLoad,
    Decision,
    DetectionConfig,
    Engine,
    EngineConfig,
    Observation,
    PartitionLoad,
    PoolState,
    PredictionConfig,
)
from hotshard.engine.detection import D_RATE, Detector, detection_signals
from hotshard.engine.fleet import model_observation
from hotshard.engine.windows import Window
from hotshard.routing import RoutingTable, Shard, partition_of

V = 64


def fleet(base: int = 4, overflow: int = 2, sandbox: int = 1) -> RoutingTable:
    shards = [Shard(name=f"base-{i}", url=f"http://127.0.0.1:{9100 + i}") for i in range(base)]
    shards += [
        Shard(name=f"overflow-{i}", tier="overflow", url=f"http://127.0.0.1:{9200 + i}")
        for i in range(overflow)
    ]
    shards += [
        Shard(name=f"sandbox-{i}", tier="sandbox", url=f"http://127.0.0.1:{9300 + i}")
        for i in range(sandbox)
    ]
    return RoutingTable.even(shards, partitions=V)


def flat(rate: float = 15.0, cpu_per_request: float = 0.0005) -> dict[int, PartitionLoad]:
    return {
        p: PartitionLoad(rate=rate, cpu=rate * cpu_per_request, memory=1e6, latency=0.01)
        for p in range(V)
    }


def quiet_engine(**detection: float) -> Engine:
    # Forecasting is off so that only detection speaks in these tests.
    config = EngineConfig(
        detection=DetectionConfig(**detection), prediction=PredictionConfig(enabled=False)
    )
    return Engine(config)


def run(
    engine: Engine,
    table: RoutingTable,
    t: float,
    loads: dict[int, PartitionLoad],
    campaigns: Sequence[CampaignLoad] = (),
) -> Decision:
    obs = model_observation(t, table, loads, campaigns)
    return engine.step(obs, table, PoolState.from_table(table))


def test_rate_spike_fires_on_the_second_bucket_not_the_first() -> None:
    engine, table = quiet_engine(), fleet()
    for t in range(60):
        assert not run(engine, table, t, flat()).hot
    spiky = flat() | {5: PartitionLoad(rate=15.0 * 5, cpu=0.03)}  # 5x: over 3x, under the surge
    first = run(engine, table, 60, spiky)
    second = run(engine, table, 61, spiky)
    assert first.hot == ()  # one bucket may be a scrape artefact
    assert [(h.partition, h.signal) for h in second.hot] == [(5, "rate")]
    # The first over bucket nudged the baseline by 0.02/61 of the jump: 15 -> 15.02 req/s.
    assert second.hot[0].score == pytest.approx(75 / (15 + 60 * 0.02 / 61), rel=0.001)


def test_a_surge_fires_on_the_first_bucket() -> None:
    engine, table = quiet_engine(), fleet()
    for t in range(60):
        assert not run(engine, table, t, flat()).hot
    spiky = flat() | {5: PartitionLoad(rate=15.0 * 50, cpu=0.3)}  # 50x: past the 10x surge bar
    first = run(engine, table, 60, spiky)
    assert [(h.partition, h.signal) for h in first.hot] == [(5, "rate")]
    assert first.hot[0].score == pytest.approx(50.0, rel=0.001)


def test_a_partition_first_reported_in_a_spike_is_a_surge_not_its_new_normal() -> None:
    # A campaign with no request before its spike has no metrics series until it wakes up.
    engine, table = quiet_engine(), fleet()
    quiet = {p: load for p, load in flat().items() if p not in (5, 6)}
    for t in range(10):
        assert not run(engine, table, t, quiet).hot
    woke = quiet | {5: PartitionLoad(rate=300.0, cpu=0.15), 6: PartitionLoad(rate=4.0, cpu=0.002)}
    first = run(engine, table, 10, woke)
    # Its rate baseline is zero, not 300: hot on the first bucket. The small newcomer (under the
    # 20 req/s floor) is not, and its baseline is simply its rate.
    assert [(h.partition, h.signal) for h in first.hot] == [(5, "rate")]
    assert "rate 300 req/s against a baseline of 0 req/s" in first.hot[0].reason
    assert engine._detector is not None
    assert engine._detector.baseline[D_RATE, 6] == pytest.approx(4.0)


def test_spike_below_the_absolute_floor_is_not_hot() -> None:
    engine, table = quiet_engine(), fleet()
    for t in range(5):
        run(engine, table, t, flat(rate=1.0))
    tiny = flat(rate=1.0) | {3: PartitionLoad(rate=15.0, cpu=0.0075)}  # 15x, but 15 < 20 req/s
    decisions = [run(engine, table, t, tiny) for t in range(5, 10)]
    assert all(d.hot == () for d in decisions)


def test_baseline_does_not_chase_a_long_spike() -> None:
    detector = Detector(DetectionConfig(), V)
    window = Window(V, 30)
    calm = np.full((5, V), 10.0)
    for t in range(100):
        window.write(t, calm)
        detector.update(detection_signals(window.latest()), t, 1.0)
    spike = calm.copy()
    spike[0, 7] = 1000.0
    for t in range(100, 400):  # five minutes of spike, one baseline half-life
        window.write(t, spike)
        verdict = detector.update(detection_signals(window.latest()), t, 1.0)
    assert verdict.hot[D_RATE, 7]
    # Unfrozen, the baseline would be well over half-way to 1000; slowed 50x (with the running
    # mean of the first minutes as its rate) it moves less than 3% of the jump.
    expected = 10.0
    for t in range(100, 400):
        alpha = max(1 - 0.5 ** (1 / 300), 1 / (t + 1)) * 0.02
        expected += alpha * (1000.0 - expected)
    assert detector.baseline[D_RATE, 7] == pytest.approx(expected, rel=1e-6)
    assert detector.baseline[D_RATE, 7] < 40


def test_resource_hot_spot_cpu_per_request_x100_at_a_flat_rate() -> None:
    engine, table = quiet_engine(), fleet()
    for t in range(30):
        run(engine, table, t, flat())
    costly = flat() | {9: PartitionLoad(rate=15.0, cpu=15.0 * 0.0005 * 100, latency=0.01)}
    campaigns = [CampaignLoad("greedy", 9, rate=12.0, cpu=0.74)]
    first = run(engine, table, 30, costly, campaigns)
    decision = run(engine, table, 31, costly, campaigns)
    assert [(h.partition, h.signal) for h in decision.hot] == [(9, "cpu_per_request")]
    # 100x over a baseline nudged once, by 0.02/31 of the jump, in the first over bucket.
    assert decision.hot[0].score == pytest.approx(100 / (1 + 99 * 0.02 / 31), rel=1e-6)
    # "greedy" does not hash to partition 9, so its report is dropped: the hot spot stays
    # partition-wide. 100x is a surge, hot at once, and base-0 is at 86% in that first bucket,
    # so the engine acts on it: a partition at 75% of a core is split over two warm shards.
    assert decision.hot[0].campaign is None
    assert "cpu per request 0.05 cpu-s/req against a baseline of 0.0005" in decision.hot[0].reason
    assert [(a.kind, a.target) for a in first.actions if a.kind != "refill_pool"] == [
        ("claim_shard", ("overflow-0",)),
        ("claim_shard", ("overflow-1",)),
        ("split", ("overflow-0", "overflow-1")),
    ]
    # This test never applies the table, as a loop whose write was lost would not: a second
    # later the same split is planned again (a lost plan does not settle), and base-0's
    # neighbours stay where they are.
    assert [(a.kind, a.target) for a in decision.actions if a.kind != "refill_pool"] == [
        (a.kind, a.target) for a in first.actions if a.kind != "refill_pool"
    ]


def test_campaign_that_carries_the_partition_is_the_hot_spot_and_is_quarantined() -> None:
    engine, table = quiet_engine(), fleet()
    name = "greedy-campaign"
    p = partition_of(name, V)
    for t in range(30):
        run(engine, table, t, flat())
    costly = flat() | {p: PartitionLoad(rate=15.0, cpu=0.75)}
    campaigns = [CampaignLoad(name, p, rate=10.0, cpu=0.74)]
    decision = run(engine, table, 30, costly, campaigns)  # 100x is a surge: the first bucket
    assert [(h.partition, h.campaign, h.signal) for h in decision.hot] == [
        (p, name, "cpu_per_request")
    ]
    assert [
        (a.kind, a.campaign, a.target) for a in decision.actions if a.kind != "refill_pool"
    ] == [("quarantine", name, ("sandbox-0",))]
    assert decision.table is not None
    split = {(s.partition, s.campaign): s.shards for s in decision.table.splits}
    assert split == {(p, name): ("sandbox-0",)}


def test_a_throttled_campaign_whose_refusals_are_retried_is_still_a_resource_hot_spot() -> None:
    engine, table = quiet_engine(), fleet()
    name = "greedy-campaign"
    p = partition_of(name, V)
    for t in range(30):
        run(engine, table, t, flat())
    # Callers retry its 429s: 4x the requests reach the shard (15 -> 60 rps, hot on rate too),
    # each refused at a predicted 10 ms, 20x the 0.5 ms it cost: demanded CPU 0.6 core.
    retried = flat() | {p: PartitionLoad(rate=60.0, cpu=0.6, memory=1e6, latency=0.01)}
    campaigns = [CampaignLoad(name, p, rate=15.0, cpu=0.6)]
    decision = run(engine, table, 30, retried, campaigns)
    assert [(h.partition, h.campaign, h.signal) for h in decision.hot] == [
        (p, name, "cpu_per_request")
    ]
    assert [(a.kind, a.target) for a in decision.actions if a.kind != "refill_pool"] == [
        ("quarantine", ("sandbox-0",))
    ]


def test_a_quarantined_campaign_stays_in_the_sandbox_when_its_latency_there_is_high() -> None:
    engine, table = quiet_engine(), fleet()
    name = "greedy-campaign"
    p = partition_of(name, V)
    for t in range(30):
        run(engine, table, t, flat())
    costly = flat() | {p: PartitionLoad(rate=15.0, cpu=0.75)}
    campaigns = [CampaignLoad(name, p, rate=10.0, cpu=0.74)]
    decision = run(engine, table, 30, costly, campaigns)
    assert decision.table is not None
    table = decision.table
    # The sandbox's tight quota makes the campaign slow there: 400 ms against 10 ms.
    slow = flat() | {p: PartitionLoad(rate=15.0, cpu=0.0075, memory=1e6, latency=0.4)}
    for t in range(31, 40):
        later = run(engine, table, t, slow, [CampaignLoad(name, p, rate=15.0, cpu=0.0075)])
        assert [a.kind for a in later.actions if a.kind != "refill_pool"] == []
    assert [(h.campaign, h.signal) for h in later.hot] == [(name, "latency")]
    assert any("quarantined on sandbox-0" in n for n in later.notes)


def test_a_small_campaign_in_a_hot_partition_leaves_the_partition_as_the_hot_spot() -> None:
    engine, table = quiet_engine(), fleet()
    for t in range(10):
        run(engine, table, t, flat())
    hot = flat() | {4: PartitionLoad(rate=900.0, cpu=0.45)}
    campaigns = [CampaignLoad("someone", 4, rate=200.0, cpu=0.1)]  # 22%: under half
    run(engine, table, 10, hot, campaigns)
    decision = run(engine, table, 11, hot, campaigns)
    assert [(h.partition, h.campaign) for h in decision.hot] == [(4, None)]


def test_the_heat_map_lowers_the_bar_for_a_repeat_offender() -> None:
    engine, table = quiet_engine(), fleet()
    for t in range(20):
        run(engine, table, t, flat())
    spike = flat() | {2: PartitionLoad(rate=150.0, cpu=0.075)}  # 10x
    for t in range(20, 25):
        run(engine, table, t, spike)
    for t in range(25, 60):
        run(engine, table, t, flat())
    mild = flat() | {2: PartitionLoad(rate=30.0, cpu=0.015), 3: PartitionLoad(rate=30.0, cpu=0.015)}
    run(engine, table, 60, mild)
    decision = run(engine, table, 61, mild)
    # 2x is under the usual 3x bar, but partition 2 was hot a minute ago: its bar is 1.8x.
    assert [h.partition for h in decision.hot] == [2]


def test_stale_metrics_hold_with_a_reason() -> None:
    engine, table = quiet_engine(), fleet()
    obs = model_observation(0, table, flat(), age_seconds=7.0)
    decision = engine.step(obs, table, PoolState.from_table(table))
    assert decision.table is None
    assert decision.actions == ()
    assert decision.reason == "metrics are 7 s stale (limit 5 s): holding the current table"


def test_missing_metrics_hold_with_a_reason() -> None:
    engine, table = quiet_engine(), fleet()
    empty = engine.step(Observation(0.0, {}, {}), table, PoolState.from_table(table))
    assert empty.reason == "no metrics arrived: holding the current table"
    obs = model_observation(1, table, flat())
    partial = Observation(
        1.0, obs.partitions, {k: v for k, v in obs.shards.items() if k != "base-1"}
    )
    decision = engine.step(partial, table, PoolState.from_table(table))
    assert decision.held
    assert decision.reason == "no metrics for shard(s) base-1: holding the current table"
    assert decision.health["base-1"].state == "missing"


def test_health_scores_weigh_each_signal_against_capacity() -> None:
    engine, table = quiet_engine(), fleet()
    decision = run(engine, table, 0, flat(rate=100.0))
    base0 = decision.health["base-0"]
    # 16 partitions x 100 req/s = 1600 of 2000 req/s, 0.8 of 1 core, 16 MB of 2 GiB, 10 of 100 ms.
    expected = 0.3 * 0.8 + 0.4 * 0.8 + 0.2 * 16e6 / 2**31 + 0.1 * 0.1
    assert base0.score == pytest.approx(expected)
    assert base0.utilisation == pytest.approx(0.8)
    assert base0.state == "over"
    assert decision.health["overflow-0"].state == "idle"


@pytest.mark.parametrize(("campaign_cpu", "carried"), [(1.41, "nearly all"), (0.6, "80%")])
def test_a_campaign_share_is_never_said_to_exceed_its_partition(
    campaign_cpu: float, carried: str
) -> None:
    engine, table = quiet_engine(), fleet()
    name = "Evan_McMullin"
    p = partition_of(name, V)
    for t in range(30):
        run(engine, table, t, flat())
    costly = flat() | {p: PartitionLoad(rate=15.0, cpu=0.75)}
    # The router's count of the campaign ran ahead of the bidders' count of its partition.
    campaigns = [CampaignLoad(name, p, rate=10.0, cpu=campaign_cpu)]
    decision = run(engine, table, 30, costly, campaigns)
    (spot,) = decision.hot
    assert spot.campaign == name
    assert spot.reason.endswith(f"; campaign {name!r} carries {carried} of it")
