"""The spec-to-engine conversion, field by field, and the specs no engine can be made from."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from hotshard.engine import EngineConfig
from hotshard_operator.engine_config import parse_quantity, to_engine_config
from hotshard_operator.resources import PartitionMapSpec, SpecError

DEFAULTS = EngineConfig()


def spec(**fields: Any) -> PartitionMapSpec:
    return PartitionMapSpec.model_validate({"bidder": {"image": "x"}, **fields})


def test_every_spec_field_lands_on_its_engine_setting() -> None:
    config = to_engine_config(
        spec(
            bidder={"image": "x", "resources": {"limits": {"cpu": "1500m", "memory": "3Gi"}}},
            tiers={"overflow": {"warm": 3, "maximum": 10}},
            detection={
                "interval": 0.5,
                "window": 20.4,
                "factor": 4.0,
                "floor": 75.0,
                "sustain": 6,
                "weights": {"rate": 0.5, "cpu": 0.25, "memory": 0.05, "latency": 0.2},
            },
            prediction={
                "enabled": False,
                "horizon": 45.0,
                "calendar": [
                    {
                        "name": "final",
                        "start": "2026-07-19T19:00:00Z",
                        "duration": 7200,
                        "campaigns": ["fifa-final"],
                        "expectedFactor": 40,
                    }
                ],
            },
            scaleDown={"cooldown": 120.0},
            budget={"maxShards": 40, "shardHourCost": 0.25},
            metrics={"staleAfter": 8.0},
        )
    )
    d, p, f, c = config.detection, config.planning, config.prediction, config.cost
    assert (d.hot_factor, d.min_hot_factor, d.floor_rps) == (4.0, 1.5, 75.0)
    assert d.sustain_seconds == 3.0  # 6 ticks of 0.5 s
    assert d.window_seconds == 21  # whole one-second buckets, rounded up
    assert d.stale_after_seconds == 8.0
    assert d.weights.model_dump() == {"rate": 0.5, "cpu": 0.25, "memory": 0.05, "latency": 0.2}
    assert (p.cooldown_seconds, p.max_shards, p.min_warm_pool) == (120.0, 40, 3)
    assert (p.shard_capacity_cpu, p.shard_capacity_memory_bytes) == (1.5, 3 * 2**30)
    assert (f.enabled, f.horizon_seconds) == (False, 45.0)
    (event,) = f.calendar
    start = datetime(2026, 7, 19, 19, tzinfo=UTC).timestamp()
    assert (event.name, event.start, event.end) == ("final", start, start + 7200)
    assert (event.campaigns, event.expected_factor) == (("fifa-final",), 40.0)
    assert c.shard_hour_cost == 0.25
    # What the spec does not expose keeps the engine's own defaults.
    assert p.target_utilisation == DEFAULTS.planning.target_utilisation
    assert c.violation_cost == DEFAULTS.cost.violation_cost
    assert f.candidates == DEFAULTS.prediction.candidates


def test_edges_are_clamped_to_what_the_engine_can_hold() -> None:
    config = to_engine_config(
        spec(detection={"interval": 0.25, "window": 1.0, "sustain": 1, "factor": 1.2})
    )
    assert config.detection.sustain_seconds == 1.0  # one bucket is the least it can sustain
    assert config.detection.window_seconds == 4
    assert config.detection.min_hot_factor == 1.2  # the user's lower bar is honoured


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"detection": {"factor": 1}}, "detection.factor must be above 1"),
        (
            {
                "prediction": {
                    "calendar": [{"name": "x", "start": "2026-07-19T19:00:00", "campaigns": ["c"]}]
                }
            },
            r"prediction.calendar\[0\].start .* needs a time zone",
        ),
        (
            {"prediction": {"calendar": [{"name": "x", "start": "soon", "campaigns": ["c"]}]}},
            "is not an RFC 3339 time",
        ),
        (
            {
                "prediction": {
                    "calendar": [
                        {
                            "name": "x",
                            "start": "2026-07-19T19:00:00Z",
                            "campaigns": ["c"],
                            "expectedFactor": 1,
                        }
                    ]
                }
            },
            r"calendar\[0\].expectedFactor must be above 1",
        ),
        (
            {"bidder": {"image": "x", "resources": {"limits": {"cpu": "0"}}}},
            r"limits.cpu: the engine rejects it \(Input should be greater than 0\)",
        ),
    ],
)
def test_specs_the_engine_cannot_take_raise_a_spec_error(
    fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(SpecError, match=message):
        to_engine_config(spec(**fields))


def test_quantities() -> None:
    assert [parse_quantity(q) for q in ("500m", "2", "1.5", "1k", "512Mi", "1Gi")] == [
        0.5,
        2.0,
        1.5,
        1000.0,
        512 * 2**20,
        2**30,
    ]
    with pytest.raises(SpecError, match="not a Kubernetes quantity"):
        parse_quantity("1.5 cores")
