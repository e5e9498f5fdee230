"""The metrics source that asks a real Prometheus, with a handful of PromQL queries per second.

The fleet's costs must stay flat as it grows (hundreds of shards, 4096+ virtual partitions), so
the control loop never pulls every series. Each tick asks for:

* the top-``k`` partitions by request rate and the top-``k`` by CPU (``topk`` is evaluated
  inside Prometheus; only ``2k`` series cross the wire), and for those partitions only, their
  service time and the other signal;
* per-shard totals (rate, CPU, mean service time, in-flight requests, resident memory);
* the routers' top-k hot campaigns (by rate) and the bidders' (by demanded CPU);
* the timestamp of the newest sample, which gives the age the engine needs to fail static.

Rates use ``irate(...[3s])``: the slope between the last two samples, so a spike shows at full
height one scrape after it starts (``rate`` over the same window would average it with two calm
seconds and report a third of it). The 3 s range only bounds how far back the last two samples
may be when a scrape arrives late. irate is noisier than rate; the engine's sustain rule and its
baselines absorb that. Partitions outside the top-k are simply absent; the
engine treats an absent partition as "not hot", which is what being outside the top-k means.

A partition's CPU is its *demanded* CPU: what its requests spent, plus what the requests a bidder
refused for their cost (CPU tokens, resource breaker) were predicted to spend. A campaign the
bidder throttles spends next to nothing, yet it is exactly the resource hot spot the engine must
move to the sandbox tier; counting only what was spent would hide it behind its own
containment. A shard's CPU stays what it spent, since that is what fills it.
aiohttp is the client because kopf, which runs the operator, already depends on it: one more
HTTP stack would buy nothing here.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from typing import Any

import aiohttp

from hotshard.engine.model import CampaignLoad, Observation, PartitionLoad, ShardLoad
from hotshard.routing import partition_of
from hotshard.routing.hashing import DEFAULT_PARTITIONS

WINDOW = "3s"
RATE = "irate"
TOP_K = 20
"""Partitions fetched per signal: a few hot spots at a time are realistic; 20 leaves margin."""
QUERY_TIMEOUT_S = 0.8
"""A query must answer inside the 1 s loop; later data would be stale anyway."""

_REQ = "hotshard_bidder_requests_total"
_CPU = "hotshard_bidder_cpu_seconds_total"
_LAT = "hotshard_bidder_latency_seconds_total"
_REFUSED = "hotshard_bidder_refused_cpu_seconds_total"
_CAMPAIGN_CPU = "hotshard_bidder_hot_campaign_cpu_seconds"


def matchers(*terms: str) -> str:
    """A PromQL label selector from label matchers, skipping empty ones (``""`` when none)."""
    kept = [t for t in terms if t]
    return "{" + ", ".join(kept) + "}" if kept else ""


def demanded_cpu(sel: str) -> str:
    """PromQL for demanded CPU per partition: spent plus refused (zero where a bidder exports
    no refused series)."""
    spent = f"sum by (partition) ({RATE}({_CPU}{sel}[{WINDOW}]))"
    refused = f"sum by (partition) ({RATE}({_REFUSED}{sel}[{WINDOW}]))"
    # NB: the two counters cannot share one irate(): it drops the metric name, and a spent and
    # a refused series of one partition would then collide.
    return f"{spent} + ({refused} or {spent} * 0)"


def partition_queries(k: int = TOP_K, scope: str = "") -> dict[str, str]:
    """PromQL for the top-k partitions by rate and by CPU (partition label ``none`` excluded).

    ``scope`` is an extra label matcher (e.g. ``shard=~"fleet-.*"``) that keeps one fleet's
    series apart from another's in a shared Prometheus; empty means every series.
    """
    sel = matchers('partition!="none"', scope)
    return {
        "rate": f"topk({k}, sum by (partition) ({RATE}({_REQ}{sel}[{WINDOW}])))",
        "cpu": f"topk({k}, {demanded_cpu(sel)})",
    }


def detail_queries(partitions: list[str], scope: str = "") -> dict[str, str]:
    """Rate, demanded CPU and service-time sums of the named partitions only."""
    sel = matchers('partition=~"' + "|".join(partitions) + '"', scope)
    return {
        "rate": f"sum by (partition) ({RATE}({_REQ}{sel}[{WINDOW}]))",
        "cpu": demanded_cpu(sel),
        "latency": f"sum by (partition) ({RATE}({_LAT}{sel}[{WINDOW}]))",
    }


def shard_queries(scope: str = "") -> dict[str, str]:
    """Per-shard totals: rate, CPU, service time, in-flight requests, resident memory."""
    sel = matchers(scope)
    return {
        "rate": f"sum by (shard) ({RATE}({_REQ}{sel}[{WINDOW}]))",
        "cpu": f"sum by (shard) ({RATE}({_CPU}{sel}[{WINDOW}]))",
        "latency": f"sum by (shard) ({RATE}({_LAT}{sel}[{WINDOW}]))",
        "queue": f"max by (shard) (hotshard_bidder_inflight{sel})",
        "memory": f"max by (shard) (process_resident_memory_bytes{sel})",
    }


def newest_query(scope: str = "") -> str:
    """The timestamp of the newest in-flight sample: how fresh the whole view is."""
    return f"max(timestamp(hotshard_bidder_inflight{matchers(scope)}))"


CAMPAIGN_QUERY = "max by (campaign, partition) (hotshard_router_hot_campaign_requests)"


def campaign_cpu_query(scope: str = "") -> str:
    """The bidders' top campaigns by demanded CPU (last 1 s window), summed over shards."""
    return f"sum by (campaign) ({_CAMPAIGN_CPU}{matchers(scope)})"


def vector_by(result: Any, label: str) -> dict[str, float]:
    """``{label value: sample value}`` from an instant-vector result, NaN samples dropped."""
    out: dict[str, float] = {}
    for series in result or ():
        key = series.get("metric", {}).get(label)
        value = float(series["value"][1])
        if key is not None and not math.isnan(value):
            out[key] = value
    return out


def build_partitions(
    rate: Mapping[str, float], cpu: Mapping[str, float], latency_sum: Mapping[str, float]
) -> dict[int, PartitionLoad]:
    loads = {}
    for label in set(rate) | set(cpu):
        if not label.isdigit():
            continue
        r = rate.get(label, 0.0)
        loads[int(label)] = PartitionLoad(
            rate=r, cpu=cpu.get(label, 0.0), latency=latency_sum.get(label, 0.0) / r if r else 0.0
        )
    return loads


def build_shards(values: Mapping[str, Mapping[str, float]]) -> dict[str, ShardLoad]:
    shards = {}
    # NB: a shard routed nothing has no request series but does export its in-flight gauge;
    # it is idle, not missing.
    for name in set(values["rate"]) | set(values["queue"]):
        r = values["rate"].get(name, 0.0)
        shards[name] = ShardLoad(
            rate=r,
            cpu=values["cpu"].get(name, 0.0),
            memory=values["memory"].get(name, 0.0),
            latency=values["latency"].get(name, 0.0) / r if r else 0.0,
            queue=values["queue"].get(name, 0.0),
        )
    return shards


def build_campaigns(result: Any) -> list[CampaignLoad]:
    campaigns = []
    for series in result or ():
        metric = series.get("metric", {})
        campaign = metric.get("campaign")
        if not campaign:
            continue
        partition = metric.get("partition", "")
        campaigns.append(
            CampaignLoad(
                campaign=campaign,
                partition=int(partition) if partition.isdigit() else partition_of(campaign),
                rate=float(series["value"][1]),
            )
        )
    return campaigns


def build_campaign_costs(result: Any, partitions: int = DEFAULT_PARTITIONS) -> list[CampaignLoad]:
    """The bidders' campaigns by demanded CPU-seconds per second (their partition by hash over
    the fleet's ``partitions``)."""
    return [
        CampaignLoad(campaign=name, partition=partition_of(name, partitions), cpu=cpu)
        for name, cpu in sorted(vector_by(result, "campaign").items())
        if name
    ]


class QueryError(RuntimeError):
    """Prometheus did not answer a query usefully."""


class PrometheusSource:
    """Builds each second's observation from about a dozen PromQL queries."""

    def __init__(
        self,
        base_url: str,
        *,
        k: int = TOP_K,
        scope: str = "",
        partitions: int = DEFAULT_PARTITIONS,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.k = k
        self.scope = scope
        """An extra label matcher on every bidder query (the operator scopes by shard name)."""
        self.partitions = partitions
        """The fleet's virtual partition count: the bidders' campaign reports carry no
        partition label, so it is hashed here, as the routing table hashes it."""
        self.last_error: str | None = None
        """Why the last observation had no data (``None`` when Prometheus answered)."""
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=QUERY_TIMEOUT_S)
            )
        return self._session

    async def query(self, promql: str) -> Any:
        """Run an instant query; return its ``result`` list."""
        url = f"{self.base_url}/api/v1/query"
        try:
            async with self._client().get(url, params={"query": promql}) as resp:
                body = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError, OSError) as exc:
            raise QueryError(f"Prometheus at {self.base_url} did not answer: {exc!r}") from exc
        # NB: a proxy in front of Prometheus may answer a bare string, a list or null.
        if not isinstance(body, dict) or body.get("status") != "success":
            why = body.get("error", body) if isinstance(body, dict) else f"HTTP {resp.status}"
            raise QueryError(f"query {promql!r} failed: {why}")
        return body["data"]["result"]

    async def _named(self, queries: Mapping[str, str]) -> dict[str, Any]:
        results = await asyncio.gather(*(self.query(q) for q in queries.values()))
        return dict(zip(queries, results, strict=True))

    async def observe(self, now: float) -> Observation:
        scope = self.scope
        try:
            newest = await self.query(newest_query(scope))
            top = await self._named(partition_queries(self.k, scope))
            labels = sorted(
                set(vector_by(top["rate"], "partition")) | set(vector_by(top["cpu"], "partition"))
            )
            labels = [p for p in labels if p.isdigit()]
            details = await self._named(detail_queries(labels, scope)) if labels else {}
            shard_raw = await self._named(shard_queries(scope))
            hot = await self.query(CAMPAIGN_QUERY)
            costly = await self.query(campaign_cpu_query(scope))
        except QueryError as exc:
            # NB: no answer is the stalest data there is; the engine will hold.
            self.last_error = str(exc)
            return Observation(time=now, partitions={}, shards={}, age_seconds=math.inf)
        self.last_error = None
        partitions = (
            build_partitions(
                vector_by(details["rate"], "partition"),
                vector_by(details["cpu"], "partition"),
                vector_by(details["latency"], "partition"),
            )
            if details
            else {}
        )
        shards = build_shards({k: vector_by(v, "shard") for k, v in shard_raw.items()})
        stamp = float(newest[0]["value"][1]) if newest else -math.inf
        return Observation(
            time=now,
            partitions=partitions,
            shards=shards,
            campaigns=build_campaigns(hot) + build_campaign_costs(costly, self.partitions),
            age_seconds=max(0.0, now - stamp),
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
