"""Where the control loop's numbers come from: a protocol, and a source that scrapes directly.

The engine wants one :class:`~hotshard.engine.model.Observation` per second: load per virtual
partition, per shard, and the hot campaigns, plus how old the data is, so that it can hold the
table (fail static) when the numbers are stale rather than act on what it does not know. A
:class:`MetricsSource` produces that observation; :class:`DirectSource` does it with no
Prometheus at all by polling every bidder's ``/stats`` (cumulative counters, diffed here
between two polls) and the router's ``/hot`` (its top-k campaigns over the last 1 s window).
:mod:`hotshard.control.prometheus` is the other implementation.

Both report a partition's *demanded* CPU (spent, plus the predicted cost of the requests a
bidder refused for their cost) and the bidders' top campaigns by demanded CPU, so that a
campaign the bidder already throttles is still seen as the resource hot spot it is; a shard's
CPU is what it spent.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp

from hotshard.engine.model import CampaignLoad, Observation, PartitionLoad, ShardLoad
from hotshard.routing import partition_of

SCRAPE_TIMEOUT_S = 0.5
"""Per-request timeout of a scrape: half the 1 s loop, so one slow shard cannot stall a tick."""


class MetricsSource(Protocol):
    """Produces the engine's view of the last second."""

    async def observe(self, now: float) -> Observation:
        """Load per partition, shard and hot campaign; ``age_seconds`` says how fresh it is."""
        ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class ShardCounters:
    """One bidder's cumulative counters at one instant (its ``/stats``)."""

    at: float
    version: int
    requests: Mapping[int, float]
    cpu: Mapping[int, float]
    latency: Mapping[int, float]
    inflight: float
    memory: float
    refused: Mapping[int, float] = field(default_factory=dict)
    """Predicted CPU seconds of the requests refused for their cost, per partition."""
    campaigns: tuple[CampaignLoad, ...] = ()
    """The bidder's top campaigns by demanded CPU in its last 1 s window (a rate already)."""


def parse_stats(document: Mapping[str, Any], at: float) -> ShardCounters:
    """Read a bidder's ``/stats``; requests refused before routing (no partition) are skipped."""
    requests: dict[int, float] = {}
    cpu: dict[int, float] = {}
    latency: dict[int, float] = {}
    refused: dict[int, float] = {}
    for label, meter in document.get("partitions", {}).items():
        if not str(label).isdigit():
            continue
        p = int(label)
        requests[p] = float(meter.get("requests", 0))
        cpu[p] = float(meter.get("cpu_seconds", 0.0))
        latency[p] = float(meter.get("latency_seconds", 0.0))
        refused[p] = float(meter.get("refused_cpu_seconds", 0.0))
    campaigns = tuple(
        CampaignLoad(
            str(e["campaign"]), partition_of(str(e["campaign"])), cpu=float(e["cpu_seconds"])
        )
        for e in document.get("campaigns_top", ())
        if e.get("campaign") and "cpu_seconds" in e
    )
    return ShardCounters(
        at=float(document.get("time", at)),
        version=int(document.get("version", 0)),
        requests=requests,
        cpu=cpu,
        latency=latency,
        inflight=float(document.get("inflight", 0)),
        memory=float(document.get("rss_bytes", 0)),
        refused=refused,
        campaigns=campaigns,
    )


def diff_counters(old: ShardCounters, new: ShardCounters) -> dict[int, PartitionLoad]:
    """Per-partition rates between two polls of one shard (a restart's reset counts as zero);
    a partition's CPU is its demanded CPU, spent plus refused."""
    dt = new.at - old.at
    if dt <= 0:
        return {}
    loads: dict[int, PartitionLoad] = {}
    for p, count in new.requests.items():
        served = count - old.requests.get(p, 0.0)
        if served <= 0:
            continue
        spent = max(0.0, new.cpu.get(p, 0.0) - old.cpu.get(p, 0.0))
        spent += max(0.0, new.refused.get(p, 0.0) - old.refused.get(p, 0.0))
        waited = max(0.0, new.latency.get(p, 0.0) - old.latency.get(p, 0.0))
        loads[p] = PartitionLoad(rate=served / dt, cpu=spent / dt, latency=waited / served)
    return loads


def spent_cpu(old: ShardCounters, new: ShardCounters) -> float:
    """CPU-seconds per second a shard spent on requests between two polls (refusals excluded)."""
    dt = new.at - old.at
    if dt <= 0:
        return 0.0
    return sum(max(0.0, c - old.cpu.get(p, 0.0)) for p, c in new.cpu.items()) / dt


def sum_campaigns(reports: Sequence[Sequence[CampaignLoad]]) -> list[CampaignLoad]:
    """One entry per campaign, its demanded CPU added up over the shards that serve it."""
    total: dict[str, float] = {}
    for report in reports:
        for c in report:
            total[c.campaign] = total.get(c.campaign, 0.0) + c.cpu
    return [CampaignLoad(name, partition_of(name), cpu=cpu) for name, cpu in sorted(total.items())]


def parse_hot(document: Any) -> list[CampaignLoad]:
    """The router's ``/hot``: its top-k campaigns over the last window, as requests per second."""
    if isinstance(document, Mapping):
        entries = document.get("top", document.get("campaigns", []))
        window = float(document.get("window_seconds") or 1.0)
    else:
        entries, window = document, 1.0
    out = []
    for entry in entries or ():
        campaign = str(entry.get("campaign", ""))
        if not campaign:
            continue
        count = float(entry.get("requests", entry.get("rate", 0.0)))
        partition = entry.get("partition")
        out.append(
            CampaignLoad(
                campaign=campaign,
                partition=int(partition) if partition is not None else partition_of(campaign),
                rate=count / window,
            )
        )
    return out


def merge_partitions(parts: Sequence[Mapping[int, PartitionLoad]]) -> dict[int, PartitionLoad]:
    """Add up the loads of partitions served by several shards (a split partition)."""
    merged: dict[int, PartitionLoad] = {}
    for loads in parts:
        for p, load in loads.items():
            have = merged.get(p)
            if have is None:
                merged[p] = load
                continue
            rate = have.rate + load.rate
            # NB: latency is a mean per request, so it is weighted by each shard's rate.
            latency = (have.latency * have.rate + load.latency * load.rate) / rate if rate else 0.0
            merged[p] = PartitionLoad(
                rate=rate, cpu=have.cpu + load.cpu, latency=latency, queue=have.queue + load.queue
            )
    return merged


class DirectSource:
    """Scrapes each bidder's ``/stats`` and the router's ``/hot``; no Prometheus needed.

    ``shards`` is called every tick so that warm-pool shards started since appear at once.
    """

    def __init__(
        self,
        shards: Callable[[], Mapping[str, str]],
        router_url: str | None,
        *,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self._shards = shards
        self._router_url = router_url
        self._session = session
        self._previous: dict[str, ShardCounters] = {}
        self._fresh: dict[str, float] = {}

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT_S)
            )
        return self._session

    async def _get_json(self, url: str) -> Any:
        async with self._client().get(url) as resp:
            resp.raise_for_status()
            return await resp.json(content_type=None)

    async def _poll(self, url: str) -> ShardCounters | None:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError, OSError):
            return parse_stats(await self._get_json(url + "/stats"), time.time())
        return None

    async def observe(self, now: float) -> Observation:
        shards = dict(self._shards())
        polled = await asyncio.gather(*(self._poll(u) for u in shards.values()))
        per_shard: dict[str, ShardLoad] = {}
        partition_parts: list[dict[int, PartitionLoad]] = []
        for name, counters in zip(shards, polled, strict=True):
            if counters is None:
                continue
            self._fresh[name] = now
            before = self._previous.get(name)
            self._previous[name] = counters
            if before is None:
                continue
            loads = diff_counters(before, counters)
            partition_parts.append(loads)
            rate = sum(x.rate for x in loads.values())
            per_shard[name] = ShardLoad(
                rate=rate,
                cpu=spent_cpu(before, counters),
                memory=counters.memory,
                latency=sum(x.latency * x.rate for x in loads.values()) / rate if rate else 0.0,
                queue=counters.inflight,
            )
        for gone in set(self._previous) - set(shards):
            del self._previous[gone]
            self._fresh.pop(gone, None)
        campaigns = sum_campaigns([c.campaigns for c in polled if c is not None])
        if self._router_url is not None:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError, OSError):
                campaigns += parse_hot(await self._get_json(self._router_url + "/hot"))
        # NB: the oldest shard decides the age: one silent shard makes the whole view suspect.
        ages = [now - self._fresh.get(name, -math.inf) for name in shards]
        return Observation(
            time=now,
            partitions=merge_partitions(partition_parts),
            shards=per_shard,
            campaigns=campaigns,
            age_seconds=max(ages, default=math.inf),
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
