"""Turning scraped counters and PromQL answers into the engine's observation."""

from __future__ import annotations

import pytest

from hotshard.control.prometheus import (
    build_campaign_costs,
    build_shards,
    campaign_cpu_query,
    detail_queries,
    partition_queries,
    vector_by,
)
from hotshard.control.sources import (
    diff_counters,
    merge_partitions,
    parse_hot,
    parse_stats,
    spent_cpu,
    sum_campaigns,
)
from hotshard.engine.model import PartitionLoad
from hotshard.routing import partition_of


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


def test_refused_demand_counts_in_the_partition_cpu_but_not_in_the_shard_cpu() -> None:
    old, new = stats(100.0, 1000, 1.0, 2.0), stats(102.0, 1014, 1.002, 2.1)
    old["partitions"]["12"]["refused_cpu_seconds"] = 0.5  # type: ignore[index]
    # 12 requests refused at a predicted 10 ms each, 2 run at 1 ms: a throttled campaign.
    new["partitions"]["12"]["refused_cpu_seconds"] = 0.62  # type: ignore[index]
    before, after = parse_stats(old, 0), parse_stats(new, 0)
    loads = diff_counters(before, after)
    assert loads[12].cpu == pytest.approx((0.002 + 0.12) / 2)
    assert loads[12].cpu / loads[12].rate == pytest.approx(0.122 / 14)
    assert spent_cpu(before, after) == pytest.approx(0.001)


def test_bidders_top_campaigns_by_demanded_cpu_add_up_over_shards() -> None:
    def top(*entries: tuple[str, float]) -> dict[str, object]:
        doc = stats(100.0, 0, 0.0, 0.0)
        doc["campaigns_top"] = [
            {"rank": i, "campaign": c, "cpu_seconds": cpu, "error": 0.0}
            for i, (c, cpu) in enumerate(entries, start=1)
        ]
        return doc

    a = parse_stats(top(("Melania_Trump", 0.07), ("Hillary_Clinton", 0.01)), 0)
    b = parse_stats(top(("Melania_Trump", 0.03)), 0)
    summed = sum_campaigns([a.campaigns, b.campaigns])
    assert [(c.campaign, c.partition, c.rate) for c in summed] == [
        ("Hillary_Clinton", partition_of("Hillary_Clinton"), 0.0),
        ("Melania_Trump", partition_of("Melania_Trump"), 0.0),
    ]
    assert [c.cpu for c in summed] == pytest.approx([0.01, 0.1])


def test_promql_partition_cpu_is_spent_plus_refused_and_campaign_cpu_is_scoped() -> None:
    spent = 'sum by (partition) (irate(hotshard_bidder_cpu_seconds_total{partition!="none"}[3s]))'
    refused = spent.replace("_cpu_seconds_total", "_refused_cpu_seconds_total")
    assert partition_queries(5)["cpu"] == f"topk(5, {spent} + ({refused} or {spent} * 0))"
    assert "refused_cpu_seconds_total{partition=~" in detail_queries(["3"])["cpu"]
    assert campaign_cpu_query('shard=~"f-.*"') == (
        'sum by (campaign) (hotshard_bidder_hot_campaign_cpu_seconds{shard=~"f-.*"})'
    )
    result = [{"metric": {"campaign": "Melania_Trump"}, "value": [0, "0.08"]}]
    assert [(c.campaign, c.cpu) for c in build_campaign_costs(result)] == [("Melania_Trump", 0.08)]


@pytest.mark.parametrize(
    ("body", "why"),
    [("upstream connect error", "did not answer"), ("[]", "HTTP 503"), ("null", "HTTP 503")],
)
async def test_a_proxy_error_page_is_a_query_error_not_a_crash(body: str, why: str) -> None:
    from aiohttp import web

    from hotshard.control.prometheus import PrometheusSource, QueryError

    async def refuse(request: web.Request) -> web.Response:
        return web.Response(status=503, text=body)

    app = web.Application()
    app.router.add_get("/api/v1/query", refuse)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    source = PrometheusSource(f"http://127.0.0.1:{port}")
    try:
        with pytest.raises(QueryError, match=why):
            await source.query("up")
        observation = await source.observe(1000.0)
        assert observation.age_seconds == float("inf")
        assert source.last_error is not None
        assert why in source.last_error
    finally:
        await source.aclose()
        await runner.cleanup()


def test_campaign_costs_hash_over_the_fleets_partitions_and_merge_with_the_routers_rate() -> None:
    from hotshard.control.prometheus import PrometheusSource, build_campaigns
    from hotshard.engine.detection import aggregate_campaigns

    # The bidders' gauge has no partition label: the source hashes the campaign itself, over
    # the fleet's 64 partitions as the routing table does (spike-a is partition 27 there).
    costs = [{"metric": {"campaign": "spike-a"}, "value": [0, "0.02"]}]
    assert [(c.partition, c.cpu) for c in build_campaign_costs(costs, 64)] == [(27, 0.02)]
    assert PrometheusSource("http://127.0.0.1:9", partitions=64).partitions == 64
    routers = [{"metric": {"campaign": "spike-a", "partition": "27"}, "value": [0, "200"]}]
    merged = aggregate_campaigns(build_campaigns(routers) + build_campaign_costs(costs, 64), 64)
    assert [(k, v.rate, v.cpu) for k, v in merged.items()] == [((27, "spike-a"), 200.0, 0.02)]
    # Hashed over the default 4096 (partition 795), the cost names a partition a 64-partition
    # table does not have, and the engine drops it: the bug the e2e advertiser test found.
    stray = build_campaign_costs(costs)
    assert stray[0].partition == partition_of("spike-a") == 795
    assert aggregate_campaigns(stray, 64) == {}
