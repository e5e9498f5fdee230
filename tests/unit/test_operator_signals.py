"""The operator's Prometheus edge: the freshness gate, shard versions, and the fleet's scope."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest

from hotshard.control.prometheus import PrometheusSource, QueryError
from hotshard.engine.model import CampaignLoad, Observation
from hotshard_operator.loopstep import campaign_costs
from hotshard_operator.reconcile import MetricsUnavailableError
from hotshard_operator.signals import (
    FreshnessGate,
    PrometheusContainment,
    PrometheusVersions,
    shard_scope,
)
from hotshard_operator.status import Containment


class Source:
    def __init__(self, age: float, error: str | None = None) -> None:
        self.age = age
        self.last_error = error
        self.calls = 0

    async def observe(self, now: float) -> Observation:
        self.calls += 1
        return Observation(time=now, partitions={}, shards={}, age_seconds=self.age)

    async def aclose(self) -> None:
        return None


async def test_fresh_metrics_pass_and_the_loop_reuses_the_same_observation() -> None:
    source = Source(age=1.5)
    gate = FreshnessGate(source, 5.0, "http://prom:9090")
    checked = await gate.check(100.0)
    assert await gate.observe(100.0) is checked
    assert source.calls == 1
    await gate.observe(101.0)  # another instant is a new observation
    assert source.calls == 2


async def test_stale_unreachable_and_empty_are_unavailable_with_their_cause() -> None:
    with pytest.raises(MetricsUnavailableError, match=r"is 12\.0s old.*staleAfter \(5s\)"):
        await FreshnessGate(Source(age=12.0), 5.0, "http://prom:9090").check(100.0)
    refused = Source(age=math.inf, error="Prometheus at http://prom:9090 did not answer: refused")
    with pytest.raises(MetricsUnavailableError, match="did not answer: refused"):
        await FreshnessGate(refused, 5.0, "http://prom:9090").check(100.0)
    with pytest.raises(MetricsUnavailableError, match="no samples of this fleet's bidders"):
        await FreshnessGate(Source(age=math.inf), 5.0, "http://prom:9090").check(100.0)


def test_the_scope_matches_this_maps_shards_only() -> None:
    scope = shard_scope("web.fleet")
    assert scope == 'shard=~"web[.]fleet-(base|overflow|sandbox)-[0-9]+"'
    pattern = re.compile(scope.split('"')[1].replace("[.]", r"\."))
    assert pattern.fullmatch("web.fleet-overflow-12")
    assert not pattern.fullmatch("webxfleet-overflow-12")
    assert not pattern.fullmatch("web.fleet-base-x")
    assert not pattern.fullmatch("other-base-0")


class QueryingSource(PrometheusSource):
    def __init__(self, result: Any) -> None:
        super().__init__("http://prom:9090")
        self.result = result
        self.queries: list[str] = []

    async def query(self, promql: str) -> Any:
        self.queries.append(promql)
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


async def test_versions_come_from_the_routing_version_gauge() -> None:
    source = QueryingSource(
        [
            {"metric": {"shard": "fleet-overflow-0"}, "value": [0, "7"]},
            {"metric": {"shard": "fleet-overflow-1"}, "value": [0, "0"]},  # no table loaded yet
        ]
    )
    versions = PrometheusVersions(source, 'shard=~"fleet-.*"')
    got = await versions.versions(["fleet-overflow-1", "fleet-overflow-0"])
    assert got == {"fleet-overflow-0": 7}
    assert source.queries == [
        "max by (shard) (hotshard_bidder_routing_version"
        '{shard=~"fleet-.*", shard=~"fleet-overflow-0|fleet-overflow-1"})'
    ]
    assert await versions.versions([]) == {}
    assert len(source.queries) == 1  # nothing asked, nothing queried


async def test_a_failed_version_query_means_not_there_yet() -> None:
    source = QueryingSource(QueryError("down"))
    assert await PrometheusVersions(source, "").versions(["fleet-overflow-0"]) == {}


def test_the_shared_source_scopes_every_bidder_query() -> None:
    from hotshard.control.prometheus import newest_query, partition_queries, shard_queries

    scope = 'shard=~"f-(base)-[0-9]+"'
    assert (
        newest_query(scope) == 'max(timestamp(hotshard_bidder_inflight{shard=~"f-(base)-[0-9]+"}))'
    )
    assert '{partition!="none", shard=~"f-(base)-[0-9]+"}' in partition_queries(5, scope)["rate"]
    assert all(scope in q for q in shard_queries(scope).values())
    assert newest_query() == "max(timestamp(hotshard_bidder_inflight))"  # unscoped as before


class ScriptedPrometheus:
    """Answers the three containment queries as Prometheus would; records what it was asked."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.asked: list[str] = []

    async def query(self, promql: str) -> Any:
        self.asked.append(promql)
        if self.fail:
            raise QueryError("Prometheus at http://prom:9090 did not answer")
        if "hotshard_bidder_requests" in promql:
            return [
                {"metric": {"outcome": "throttled"}, "value": [1, "1520"]},
                {"metric": {"outcome": "tripped"}, "value": [1, "37"]},
            ]
        if "rollbacks" in promql:
            return [{"metric": {}, "value": [1, "3"]}]
        return [{"metric": {}, "value": [1, "2"]}]


async def test_containment_counts_come_from_the_bidders_and_routers_of_this_map() -> None:
    prometheus = ScriptedPrometheus()
    reader = PrometheusContainment(prometheus, shard_scope("fleet"))  # type: ignore[arg-type]
    counts = await reader.containment()
    assert counts == Containment(
        throttled_requests=1520, tripped_requests=37, breakers_open=2, rollbacks=3
    )
    assert prometheus.asked == [
        'sum by (outcome) (hotshard_bidder_requests{shard=~"fleet-(base|overflow|sandbox)-[0-9]+",'
        ' outcome=~"throttled|tripped"})',
        'sum(hotshard_router_breaker_open{shard=~"fleet-(base|overflow|sandbox)-[0-9]+"})',
        'sum(hotshard_bidder_config_rollbacks_total{shard=~"fleet-(base|overflow|sandbox)-[0-9]+"})',
    ]
    failing = PrometheusContainment(ScriptedPrometheus(fail=True), "")  # type: ignore[arg-type]
    assert await failing.containment() is None


def test_campaign_costs_are_the_top_k_by_cpu_priced_per_shard_hour() -> None:
    loads = [
        CampaignLoad("router-only", 1, rate=900.0),  # a router's entry: requests, no CPU
        CampaignLoad("cheap", 2, cpu=0.01),
        CampaignLoad("costly", 5, cpu=0.75),
        CampaignLoad("mid", 9, cpu=0.2),
    ]
    costs = campaign_costs(loads, cost_per_core_hour=3.6, k=2)
    assert [(c.campaign, c.partition, c.cpu_cores, c.cost_per_hour) for c in costs] == [
        ("costly", 5, 0.75, 2.7),
        ("mid", 9, 0.2, 0.72),
    ]
