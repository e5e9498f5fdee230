"""The simulation end to end at the local fleet's size: the strategies differ as they should."""

from __future__ import annotations

import pytest

from hotshard.local.scenario import compile_plan, load_scenario
from hotshard.sim.cli import build_policy
from hotshard.sim.config import calibrate_cost_us, large_model, small_model
from hotshard.sim.run import simulate
from hotshard.sim.traffic import build_traffic
from hotshard.strategies import Strategy


@pytest.fixture(scope="module")
def election() -> dict[str, dict[str, object]]:
    model = small_model(451.0)
    plan = compile_plan(load_scenario("election-night").quickened())
    traffic = build_traffic(plan, model)
    out = {}
    for strategy in (Strategy.STATIC, Strategy.BOUNDED_LOAD, Strategy.HOTSHARD_REACTIVE):
        out[strategy.value] = simulate(
            model, traffic, build_policy(strategy, model, plan)
        ).summary()
    return out


def test_static_hashing_loses_requests_and_hotshard_does_not(
    election: dict[str, dict[str, object]],
) -> None:
    static, ours = election["static"], election["hotshard-reactive"]
    assert isinstance(static["lost"], int)
    assert static["lost"] > 1000
    assert ours["lost"] == 0
    assert static["detect_seconds"] is None
    # Detection: the spike's second bucket plus the one-second scrape delay.
    assert ours["detect_seconds"] == 2


def test_hotshard_pays_for_its_overflow_shards(election: dict[str, dict[str, object]]) -> None:
    static, ours = election["static"], election["hotshard-reactive"]
    assert isinstance(ours["shard_seconds"], float)
    assert isinstance(static["shard_seconds"], float)
    assert ours["shard_seconds"] > static["shard_seconds"]
    assert static["shards_peak"] == 3


def test_bounded_load_spills_at_once(election: dict[str, dict[str, object]]) -> None:
    assert election["bounded-load"]["mitigate_seconds"] == 0


def test_calibration_reads_the_dataplane_benchmark() -> None:
    cost, note = calibrate_cost_us()
    assert 100 <= cost <= 1000
    assert "µs" in note


def test_the_large_fleet_has_hundreds_of_shards_at_ten_million_rps() -> None:
    model = large_model(451.0)
    assert 100 <= model.base_shards < 1000
    # The base load fills each shard to 40 % of its quota.
    assert 10e6 * 451e-6 / (model.base_shards * model.cores) == pytest.approx(0.4, abs=0.01)
