"""The bidder's resource path in process: cost on every answer, refused demand, off-loop rules."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from hotshard.routing import RoutingTable, Shard, partition_of
from hotshard.routing.store import FileRoutingStore
from hotshard_bidder.app import BidderApp
from hotshard_bidder.http_server import HttpServer
from hotshard_bidder.serving import COST_HEADER, VERSION_HEADER, TableWatch
from hotshard_bidder.settings import BidderSettings

BAD_PATTERN = r"^(?:[\w:/.?=&-]|[a-z])*\s$"
"""Backtracks exponentially on a long lowercase page URL: every request burns its time bound."""
REQUEST = {
    "id": "r1",
    "imp": [{"id": "1", "banner": {"w": 300, "h": 250}}],
    "site": {"domain": "news.test", "page": "http://news.test/" + "abcdefghij" * 3},
}


def bidder(tmp_path: Path, tier: str) -> BidderApp:
    path = tmp_path / "routing.json"
    shard = Shard(name="s0", tier=tier, url="http://127.0.0.1:9")
    FileRoutingStore(path).initialize(RoutingTable.even([shard], partitions=64))
    settings = BidderSettings(shard="s0", routing_file=path)
    return BidderApp(settings, TableWatch.open(path, 0.05))


@asynccontextmanager
async def served(app: BidderApp) -> AsyncIterator[aiohttp.ClientSession]:
    """The bidder on its real HTTP server on a free loopback port, and a client for it."""
    server = HttpServer(app.routes(), app.settings.max_body_bytes, app.count_refusal, "bidder")
    port = await server.start("127.0.0.1", 0)
    judging = asyncio.create_task(app.judge_periodically())
    try:
        async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{port}") as client:
            yield client
    finally:
        judging.cancel()
        await server.shutdown(1.0)
        app.close()


async def send(client: aiohttp.ClientSession, campaign: str) -> tuple[int, dict[str, str]]:
    headers = {"X-Hotshard-Campaign": campaign, "Content-Type": "application/json"}
    resp = await client.post("/openrtb2/auction", data=orjson.dumps(REQUEST), headers=headers)
    await resp.read()
    return resp.status, dict(resp.headers)


async def configure(client: aiohttp.ClientSession, campaign: str, pattern: str) -> None:
    body = {"rollout": "immediate", "rules": {"page_patterns": [pattern]}}
    resp = await client.put(f"/campaigns/{campaign}/config", data=orjson.dumps(body))
    assert resp.status == 200


async def test_a_throttled_campaign_leaves_its_refused_demand_and_every_answer_a_cost(
    tmp_path: Path,
) -> None:
    app = bidder(tmp_path, "base")
    async with served(app) as client:
        await configure(client, "greedy", BAD_PATTERN)
        answers = [await send(client, "greedy") for _ in range(12)]
        stats = await (await client.get("/stats")).json()
    statuses = [status for status, _ in answers]
    assert all(COST_HEADER in headers for _, headers in answers)
    assert 429 in statuses
    refused = [h for s, h in answers if s == 429]
    # Refused before running: a prediction, and next to no CPU spent on the refusal itself.
    assert all(int(h["X-Hotshard-Cost-Estimate-Us"]) > 5000 for h in refused)
    assert all(int(h[COST_HEADER]) < 5000 for h in refused)
    (meter,) = stats["partitions"].values()
    assert meter["refused_cpu_seconds"] > 0.005 * len(refused)
    top = {c["campaign"]: c["cpu_seconds"] for c in stats["campaigns_top"]}
    assert set(top) <= {"greedy"}


async def test_on_the_sandbox_tier_an_anomalous_campaign_runs_in_the_worker_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = bidder(tmp_path, "sandbox")
    assert app.guard.sandboxed
    assert app.guard.max_request == app.settings.guard_policy().tokens.sandbox_request_seconds
    calls: list[str] = []
    original = app.rules_worker.submit

    def spy(fn: Any, *args: Any) -> Any:
        calls.append(getattr(fn, "__name__", ""))
        return original(fn, *args)

    monkeypatch.setattr(app.rules_worker, "submit", spy)
    async with served(app) as client:
        await configure(client, "greedy", BAD_PATTERN)
        answers = []
        for _ in range(4):
            answers.append(await send(client, "greedy"))
            await asyncio.sleep(0.2)  # 0.25 core x 0.2 s: the tokens cover the next one
        costs = await (await client.get("/resources")).json()
    greedy = costs["campaigns"]["greedy"]
    assert greedy["profile"]["anomalous"] is True
    # A version not yet judged good runs in the worker from its first request, and the
    # campaign's 20-30 ms of rules are not refused on the sandbox tier.
    assert calls == ["matches_off_loop"] * 4
    assert [s for s, _ in answers] == [204] * 4
    assert all(int(h[COST_HEADER]) > 1000 for _, h in answers)
    assert costs["sandboxed"] is True


@pytest.mark.parametrize(
    ("segment", "reason"),
    [
        ("bad%00key", r"campaign key 'bad\x00key' is not text or has control characters"),
        ("bad%ffkey", r"campaign key 'bad\udcffkey' is not text or has control characters"),
    ],
)
async def test_a_configuration_for_a_key_no_request_could_carry_is_refused(
    tmp_path: Path, segment: str, reason: str
) -> None:
    app = bidder(tmp_path, "base")
    body = orjson.dumps({"rollout": "immediate", "rules": {"page_patterns": ["^x"]}})
    async with served(app) as client:
        resp = await client.put(f"/campaigns/{segment}/config", data=body)
        answer = await resp.json()
        good = await client.put("/campaigns/camp%2F7/config", data=body)
        stored = await good.json()
    assert (resp.status, answer) == (400, {"error": reason})
    assert (good.status, stored["campaign"]) == (200, "camp/7")
    assert set(app.guard.campaigns) == {"camp/7"}


async def test_reading_a_newer_table_for_a_request_is_not_charged_to_its_campaign(
    tmp_path: Path,
) -> None:
    path = tmp_path / "routing.json"
    shards = [Shard(name=f"s{i}", url=f"http://127.0.0.1:{9000 + i}") for i in range(64)]
    store = FileRoutingStore(path)
    store.initialize(RoutingTable.even(shards))
    # The shard's watcher polls once a minute: only the request's version makes it read.
    app = BidderApp(BidderSettings(shard="s0", routing_file=path), TableWatch.open(path, 60.0))
    # Version 2: 4096 one-partition ranges over 64 shards, slow to read and validate.
    table, token = store.read()
    store.replace(table.with_owners([f"s{p % 64}" for p in range(4096)], version=2), token)
    read_cpu = min(_cpu_of(store.read) for _ in range(3))
    campaign = next(c for c in (f"c{i}" for i in range(100_000)) if partition_of(c, 4096) == 0)
    async with served(app) as client:
        headers = {"X-Hotshard-Campaign": campaign, VERSION_HEADER: "2"}
        resp = await client.post("/openrtb2/auction", data=orjson.dumps(REQUEST), headers=headers)
        await resp.read()
    assert resp.status in (200, 204)
    assert resp.headers[VERSION_HEADER] == "2"  # it did read the newer table
    assert int(resp.headers[COST_HEADER]) < read_cpu * 1e6 / 2


def _cpu_of(work: Callable[[], object]) -> float:
    start = time.thread_time()
    work()
    return time.thread_time() - start
