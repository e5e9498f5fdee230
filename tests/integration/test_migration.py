"""Router and two real shards: a partition moves under load with nothing lost and no 5xx.

Load comes from two senders at once. The project's load generator (``hotshard_bidder.loadgen``,
in a child process) runs at a fixed rate over Zipf-popular campaigns and reports sent, answered
and lost. Beside it, a small open-loop *probe* in this test sends requests for campaigns of the
moving partition and records every answer's status, ``X-Hotshard-Shard`` and routing version,
so each answer can be checked against the owner at the version that routed it.
"""

from __future__ import annotations

import asyncio
import urllib.request
from dataclasses import dataclass

import aiohttp
import pytest

from hotshard.datasets import openrtb_requests
from hotshard.routing import Migration, MigrationPhase, RoutingTable, partition_of
from hotshard_bidder.loadgen import BackgroundLoad, LoadSpec

from .conftest import PARTITIONS, Fleet

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LOAD_RPS = 200
"""Fixed rate of the background load: steady traffic on a shared 2-core box, not a stress test."""
PROBE_RPS = 100
LOAD_SECONDS = 4.0
DEADLINE_MS = "1000"
"""Generous deadlines: this test checks who answers, not how fast, on a shared, busy 2-core box
where a 100 ms scheduling stall would turn into a 504 that says nothing about the move."""


@dataclass(frozen=True)
class Seen:
    campaign: str
    status: int
    shard: str
    version: int
    reason: str = ""
    """The body of an answer other than 200 or 204: says which refusal it was."""


def moving_partition() -> int:
    """The partition of the load generator's most popular campaign, so the move is busy."""
    return partition_of("campaign-1", PARTITIONS)


def campaigns_in(partition: int, count: int) -> list[str]:
    keys = (f"probe-{i}" for i in range(1_000_000))
    return [k for k in keys if partition_of(k, PARTITIONS) == partition][:count]


def move(table: RoutingTable, partition: int, target: str, phase: MigrationPhase) -> RoutingTable:
    """``table`` with ``partition`` being handed to ``target`` in ``phase``."""
    owners = table.owners()
    source = owners[partition]
    if phase is MigrationPhase.COMMIT:
        owners[partition] = target
    migration = Migration(partition=partition, source=(source,), target=(target,), phase=phase)
    return table.with_owners(owners, version=table.version + 1, migrations=(migration,))


async def probe(url: str, campaigns: list[str], rate: float, seconds: float) -> list[Seen]:
    """Open loop: one request every ``1/rate`` s whatever the answers do; bounded in count."""
    body = openrtb_requests()[0].raw
    seen: list[Seen] = []
    lost: list[BaseException] = []

    async def one(session: aiohttp.ClientSession, campaign: str) -> None:
        try:
            async with session.post(url, data=body, headers={"X-Hotshard-Campaign": campaign}) as r:
                text = await r.text()
                seen.append(
                    Seen(
                        campaign,
                        r.status,
                        r.headers.get("X-Hotshard-Shard", "-"),
                        int(r.headers.get("X-Hotshard-Routing-Version", "0")),
                        "" if r.status in (200, 204) else text[:300],
                    )
                )
        except (aiohttp.ClientError, TimeoutError) as exc:
            lost.append(exc)

    timeout = aiohttp.ClientTimeout(total=2.0)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        loop = asyncio.get_running_loop()
        start = loop.time()
        tasks = []
        for n in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, start + n / rate - loop.time()))
            tasks.append(asyncio.create_task(one(session, campaigns[n % len(campaigns)])))
        await asyncio.gather(*tasks)
    assert not lost, f"{len(lost)} probe requests got no answer: {lost[:3]}"
    return seen


def router_lines(base: str, prefix: str) -> list[str]:
    """The router's metric lines starting with ``prefix``."""
    with urllib.request.urlopen(base + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return [line for line in text.splitlines() if line.startswith(prefix)]


def owner(table: RoutingTable, campaign: str) -> str:
    p = partition_of(campaign, table.partitions)
    return table.owners()[p]


async def test_partition_moves_between_shards_under_load_losing_nothing(fleet: Fleet) -> None:
    fleet.bidder("shard-0")
    fleet.bidder("shard-1")
    router = fleet.router("--default-deadline-ms", DEADLINE_MS, "--max-deadline-ms", DEADLINE_MS)
    partition = moving_partition()
    assert fleet.table().owners()[partition] == "shard-0"
    campaigns = campaigns_in(partition, 5)
    url = router.url + "/openrtb2/auction"
    spec = LoadSpec(
        target=url,
        profile=f"constant:{LOAD_RPS}",
        duration=LOAD_SECONDS,
        campaigns=200,
        skew=1.0,
        seed=3,
        deadline_ms=int(DEADLINE_MS),
        max_deadline_ms=int(DEADLINE_MS),
    )
    with BackgroundLoad(spec) as load:
        probing = asyncio.create_task(probe(url, campaigns, PROBE_RPS, LOAD_SECONDS))
        await asyncio.sleep(1.2)
        prepare = move(fleet.table(), partition, "shard-1", MigrationPhase.PREPARE)
        fleet.publish(prepare)
        await asyncio.sleep(0.8)
        commit = move(prepare, partition, "shard-1", MigrationPhase.COMMIT)
        fleet.publish(commit)
        seen = await probing
        report = await asyncio.to_thread(load.wait, 30.0)

    assert report.sent > 0.9 * LOAD_RPS * LOAD_SECONDS
    assert report.lost == 0
    assert report.not_sent == 0
    outcomes = router_lines(router.url, "hotshard_router_re")
    assert sum(n for status, n in report.answered.items() if status >= 500) == 0, outcomes
    # NB: the issue asks for zero lost and zero 5xx; a 429 is backpressure answered at once,
    # which a host too slow for the load (2026-12-04) gives a few of. Allowed, but bounded.
    assert set(report.answered) <= {200, 204, 429}, outcomes
    assert report.answered.get(429, 0) <= 0.05 * report.sent, outcomes

    assert len(seen) == int(PROBE_RPS * LOAD_SECONDS)
    assert {s.status for s in seen} <= {200, 204}, [s for s in seen if s.reason]
    for s in seen:
        assert s.shard == owner(fleet.tables[s.version], s.campaign), s
    # The move happened while the probe ran: both owners answered, old before new.
    versions = [s.version for s in seen]
    assert versions == sorted(versions)
    assert {s.shard for s in seen} == {"shard-0", "shard-1"}
    assert seen[-1].version == commit.version


async def test_a_router_with_a_stale_table_gets_421_and_recovers(fleet: Fleet) -> None:
    fleet.bidder("shard-0")
    fleet.bidder("shard-1")
    # Polls every 5 s: it will not see the commit below by itself within this test.
    router = fleet.router("--poll-interval", "5")
    partition = moving_partition()
    campaign = campaigns_in(partition, 1)[0]
    url = router.url + "/openrtb2/auction"
    first = await probe(url, [campaign], rate=20, seconds=0.25)
    assert {(s.shard, s.version) for s in first} == {("shard-0", 1)}

    commit = move(fleet.table(), partition, "shard-1", MigrationPhase.COMMIT)
    commit = commit.model_copy(update={"migrations": ()})
    fleet.publish(RoutingTable.model_validate(commit.model_dump()))
    await asyncio.sleep(
        0.3
    )  # the shards poll every 50 ms and have the new table; the router does not

    after = await probe(url, [campaign], rate=20, seconds=0.5)
    assert [s.status for s in after] != []
    assert {s.status for s in after} <= {200, 204}, [s for s in after if s.reason]
    assert {(s.shard, s.version) for s in after} == {("shard-1", 2)}
    lines = await asyncio.to_thread(router_lines, router.url, "hotshard_router_")
    # The first 421 made the router refresh at once: only that request, and any already in
    # flight beside it on a slow host, met the old owner. Without the refresh all 10 would.
    (misdirected,) = [
        float(line.split()[-1]) for line in lines if 'retries_total{reason="misdirected"}' in line
    ]
    assert 1 <= misdirected <= 2, lines
    assert "hotshard_router_routing_version 2.0" in lines
