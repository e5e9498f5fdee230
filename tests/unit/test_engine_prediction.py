"""Prediction and cost: pre-emptive splits on a ramp, calendar events, the warm pool."""

from __future__ import annotations

import numpy as np
import pytest

from hotshard.engine import (
    CalendarEvent,
    CampaignLoad,
    CostConfig,
    Engine,
    EngineConfig,
    PartitionLoad,
    PoolState,
    PredictionConfig,
    recommend_warm_pool,
)
from hotshard.engine.fleet import model_observation, model_shard_loads
from hotshard.engine.prediction import forecast_holt, project_trend
from hotshard.routing import RoutingTable, Shard, partition_of

V = 64


def fleet() -> RoutingTable:
    shards = [Shard(name=f"base-{i}", url=f"http://127.0.0.1:{9100 + i}") for i in range(4)]
    shards += [
        Shard(name=f"overflow-{i}", tier="overflow", url=f"http://127.0.0.1:{9200 + i}")
        for i in range(3)
    ]
    return RoutingTable.even(shards, partitions=V)


def loads(rates: list[float]) -> dict[int, PartitionLoad]:
    return {p: PartitionLoad(rate=r, cpu=r * 0.0002, latency=0.01) for p, r in enumerate(rates)}


def test_holt_and_the_line_agree_on_a_clean_ramp() -> None:
    ramp = np.arange(30, dtype=float) * 40 + 10  # +40 req/s every second
    assert forecast_holt(ramp, None, 30) == pytest.approx(1170 + 40 * 30, rel=0.01)
    assert project_trend(ramp, 30, 3.0) == pytest.approx(1170 + 40 * 30)
    noise = 50 + np.random.default_rng(7).uniform(-20, 20, 30)
    assert project_trend(noise, 30, 3.0) is None


def test_a_ramp_is_moved_before_its_shard_crosses_target() -> None:
    engine = Engine(EngineConfig())
    table = fleet()
    rates = [10.0] * V
    first_move = None
    owner_util_then = None
    for t in range(120):
        if t >= 20:
            rates[5] = 10.0 + 40.0 * (t - 20)  # base-0 crosses 70% only when this reaches 1250
        obs = model_observation(float(t), table, loads(rates))
        decision = engine.step(obs, table, PoolState.from_table(table))
        moves = [a for a in decision.actions if a.partition == 5]
        if moves and first_move is None:
            first_move = t
            owner_util_then = obs.shards["base-0"].rate / 2000
            assert "forecast" in moves[0].reason
        if decision.table is not None:
            table = decision.table
    assert first_move is not None
    assert owner_util_then is not None
    # Without the forecast the move would wait for t = 51. The forecast is the smaller of Holt's
    # and a line through a window that still holds the flat start, so it acts at t = 37, when
    # the shard is at 42%: 14 s early.
    assert first_move == 37
    assert owner_util_then == pytest.approx(0.42)
    assert engine.forecaster.last.fits <= 2


def test_a_calendar_event_splits_its_campaign_a_lead_time_ahead() -> None:
    name = "election-night"
    p = partition_of(name, V)
    event = CalendarEvent(
        name="results", start=100.0, end=400.0, campaigns=(name,), expected_factor=30.0
    )
    engine = Engine(EngineConfig(prediction=PredictionConfig(calendar=(event,))))
    table = fleet()
    rates = [10.0] * V
    rates[p] = 110.0
    campaigns = [CampaignLoad(name, p, rate=100.0, cpu=0.02)]
    split_at = None
    for t in range(60):
        obs = model_observation(float(t), table, loads(rates), campaigns)
        decision = engine.step(obs, table, PoolState.from_table(table))
        if any(a.kind == "split" for a in decision.actions):
            split_at = t
            split = next(a for a in decision.actions if a.kind == "split")
            # 100 req/s x 30 = 3000 req/s = 1.5 shards: ceil(1.5 / 0.7) = 3 ways.
            assert (split.campaign, len(split.target)) == (name, 3)
            assert "calendar event 'results' starts in 60 s" in split.reason
            table = decision.table or table
            break
    assert split_at == 40  # start 100 - lead 60
    shard_loads = model_shard_loads(table, loads(rates), campaigns)
    assert all(shard_loads[n].rate < 1400 for n in split.target)


def test_a_calendar_event_is_sized_from_the_usual_rate_not_one_noisy_second() -> None:
    name = "election-night"
    p = partition_of(name, V)
    event = CalendarEvent(
        name="results", start=100.0, end=400.0, campaigns=(name,), expected_factor=1000.0
    )
    engine = Engine(EngineConfig(prediction=PredictionConfig(calendar=(event,))))
    table = fleet()
    rates = [10.0] * V
    rates[p] = 3.0  # the partition's (and so the campaign's) usual rate
    # The router's last-second count of the campaign reads 4x its usual rate.
    campaigns = [CampaignLoad(name, p, rate=12.0, cpu=0.0)]
    for t in range(60):
        obs = model_observation(float(t), table, loads(rates), campaigns)
        decision = engine.step(obs, table, PoolState.from_table(table))
        split = next((a for a in decision.actions if a.kind == "split"), None)
        if split is not None:
            # 3 req/s x 1000 = 3000 req/s = 1.5 shards: 3 ways (12 req/s would have made 9).
            assert (split.campaign, len(split.target)) == (name, 3)
            assert "1000x its 3 req/s" in split.reason
            return
        table = decision.table or table
    pytest.fail("the calendar event never split its campaign")


def test_warm_pool_recommendation_prices_idle_shards_against_cold_starts() -> None:
    cost = CostConfig()  # 0.10/shard-hour, 60 s cold start at 0.50 per shard-second
    # Spikes needing 1, 2 and 4 shards, 0.5 an hour: each missing shard costs 30 per spike.
    demand = [1, 2, 4]
    assert recommend_warm_pool(demand, cost, tolerance=40.0).size == 0  # 0.5 x 7/3 x 30 = 35/h
    advice = recommend_warm_pool(demand, cost, tolerance=10.0)
    assert advice.size == 2  # 0.5 x 2/3 x 30 = 10/h
    assert advice.idle_cost_per_hour == pytest.approx(0.2)
    assert advice.violation_cost_per_hour == pytest.approx(10.0)
    assert recommend_warm_pool(demand, cost, tolerance=0.0).size == 4
    assert recommend_warm_pool(demand, cost, tolerance=0.0, limit=3).size == 3
    assert recommend_warm_pool([], cost).size == 0


def test_each_decision_carries_its_cost() -> None:
    engine = Engine(EngineConfig(prediction=PredictionConfig(enabled=False)))
    table = fleet()
    rates = [10.0] * V
    for t in range(5):
        engine.step(model_observation(t, table, loads(rates)), table, PoolState.from_table(table))
    rates[3] = 1300.0
    decision = engine.step(
        model_observation(5, table, loads(rates)), table, PoolState.from_table(table)
    )
    # 1300 req/s rising 130x is sized for 2600: two warm shards, claimed; a split over them.
    assert [a.kind for a in decision.actions] == ["claim_shard", "claim_shard", "split"]
    assert [a.cost for a in decision.actions[:2]] == [0.0, 0.0]  # warm shards are paid for
    assert decision.actions[2].cost == pytest.approx(0.004)  # one hand-over to each shard
    assert decision.cost.shards == 7
    assert decision.cost.shard_cost_per_hour == pytest.approx(0.7)
    assert decision.cost.idle_warm_shards == 1
    assert decision.cost.idle_warm_cost_per_hour == pytest.approx(0.1)
    assert decision.cost.violation_shards == 0
    assert decision.cost.action_cost == pytest.approx(0.004)
    assert decision.cost.shard_seconds == pytest.approx(7 * 6)  # 7 shards for 6 one-second steps
    assert decision.cost.violation_seconds == 0.0
