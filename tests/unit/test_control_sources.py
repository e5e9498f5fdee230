"""Turning scraped counters and PromQL answers into the engine's observation."""

from __future__ import annotations

import pytest

from hotshard.control.prometheus import build_shards, detail_queries, partition_queries, vector_by
from hotshard.control.sources import diff_counters, merge_partitions, parse_hot, parse_stats
from hotshard.engine.model import PartitionLoad


def stats(t: float, requests: int, cpu: float, latency: float) -> dict[str, object]:
    return {
        "time": t,
        "version": 7,
        "inflight": 3,
        "rss_bytes": 1000,
        "partitions": {
            "12": {"requests": requests, "cpu_seconds": cpu, "latency_seconds": latency},
            "none": {"requests": 99, "cpu_seconds": 0, "latency_seconds": 0},
        },
    }


def test_counters_are_diffed_into_rates() -> None:
    old = parse_stats(stats(100.0, 1000, 1.0, 2.0), 0)
    new = parse_stats(stats(102.0, 1400, 1.2, 2.8), 0)
    assert new.version == 7
    loads = diff_counters(old, new)
    assert set(loads) == {12}  # requests refused before routing have no partition
    assert loads[12].rate == pytest.approx(200.0)
    assert loads[12].cpu == pytest.approx(0.1)
    assert loads[12].latency == pytest.approx(0.8 / 400)


def test_a_restarted_shard_counts_nothing_rather_than_negative() -> None:
    old = parse_stats(stats(100.0, 1000, 1.0, 2.0), 0)
    new = parse_stats(stats(101.0, 10, 0.01, 0.02), 0)
    assert diff_counters(old, new) == {}


def test_split_partition_loads_add_up_with_weighted_latency() -> None:
    merged = merge_partitions(
        [
            {1: PartitionLoad(rate=100, cpu=0.1, latency=0.002)},
            {1: PartitionLoad(rate=300, cpu=0.2, latency=0.004)},
        ]
    )
    assert merged[1].rate == 400
    assert merged[1].cpu == pytest.approx(0.3)
    assert merged[1].latency == pytest.approx((0.2 + 1.2) / 400)


def test_router_hot_list_becomes_campaign_rates() -> None:
    hot = parse_hot(
        {
            "window_seconds": 2.0,
            "top": [
                {"rank": 1, "campaign": "Evan_McMullin", "partition": 2118, "requests": 500},
                {"rank": 2, "campaign": "", "partition": 1, "requests": 5},
            ],
        }
    )
    assert [(c.campaign, c.partition, c.rate) for c in hot] == [("Evan_McMullin", 2118, 250.0)]


def test_promql_asks_only_for_the_top_k_and_named_partitions() -> None:
    queries = partition_queries(5)
    assert queries["rate"].startswith("topk(5, sum by (partition)")
    assert '{partition=~"3|17"}' in detail_queries(["3", "17"])["latency"]


def test_idle_shard_with_only_a_gauge_is_present_at_zero() -> None:
    result = [{"metric": {"shard": "overflow-0"}, "value": [0, "0"]}]
    values = {
        "rate": {},
        "cpu": {},
        "latency": {},
        "memory": {},
        "queue": vector_by(result, "shard"),
    }
    shards = build_shards(values)
    assert shards["overflow-0"].rate == 0.0
