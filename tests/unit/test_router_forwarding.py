"""The forwarder against a scripted shard on loopback: which answers it retries, which it passes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from hotshard.routing import RoutingSnapshot
from hotshard.routing.store import SnapshotHolder
from hotshard.routing.table import RoutingTable, Shard
from hotshard_bidder.fair_shedding import USUAL_HORIZON_S, ShardAllowance
from hotshard_bidder.forwarding import ESTIMATE_HEADER, Forwarder
from hotshard_bidder.http_server import HttpServer, Request, Response
from hotshard_bidder.router_metrics import RouterMetrics
from hotshard_bidder.shard_client import ShardClients


class ScriptedShard:
    """Answers each request with the next scripted response (the last one repeats)."""

    def __init__(self, script: list[Response]) -> None:
        self.script = script
        self.seen: list[Request] = []

    async def answer(self, request: Request) -> Response:
        self.seen.append(request)
        return self.script[min(len(self.seen), len(self.script)) - 1]


class StillTable:
    """A table follower with nothing newer to offer."""

    def refresh(self) -> bool:
        return False

    def poke(self) -> None:
        pass

    async def run(self) -> None:
        pass


@pytest.fixture
async def shard() -> AsyncIterator[tuple[ScriptedShard, int]]:
    scripted = ScriptedShard([Response(204)])
    server = HttpServer({("POST", "/openrtb2/auction"): scripted.answer}, 65536)
    port = await server.start("127.0.0.1", 0)
    yield scripted, port
    await server.shutdown(1.0)


def forwarder_to(
    port: int, allowance: ShardAllowance | None = None
) -> tuple[Forwarder, RouterMetrics]:
    table = RoutingTable.even((Shard(name="s0", url=f"http://127.0.0.1:{port}"),))
    holder = SnapshotHolder(RoutingSnapshot(table))
    metrics = RouterMetrics(5, holder.current.partition)
    clients = ShardClients(4, 30.0)
    forwarder = Forwarder(
        holder,
        StillTable(),
        clients,
        metrics,
        breaker_failures=5,
        breaker_cooloff=1.0,
        allowance=allowance,
    )
    return forwarder, metrics


async def forward(forwarder: Forwarder, budget_s: float = 0.5) -> tuple[int, dict[str, str], int]:
    deadline = forwarder.loop.time() + budget_s
    answer, version = await forwarder.forward(b"{}", "camp-1", 7, "", deadline, 0)
    return answer.status, answer.headers, version


def retries(metrics: RouterMetrics, reason: str) -> float:
    value = metrics.registry.get_sample_value("hotshard_router_retries_total", {"reason": reason})
    return value or 0.0


async def test_a_429_with_a_cost_estimate_is_passed_on_without_a_retry(
    shard: tuple[ScriptedShard, int],
) -> None:
    scripted, port = shard
    refusal = Response.json(429, {"error": "over its CPU budget"})
    refusal.headers.update({"Retry-After": "2", ESTIMATE_HEADER: "4200", "X-Hotshard-Shard": "s0"})
    scripted.script = [refusal, Response(204)]
    forwarder, metrics = forwarder_to(port)
    status, headers, version = await forward(forwarder)
    assert (status, headers[ESTIMATE_HEADER], headers["Retry-After"]) == (429, "4200", "2")
    assert (len(scripted.seen), retries(metrics, "overloaded"), version) == (1, 0.0, 1)
    forwarder.clients.close()


async def test_a_plain_429_is_retried_and_the_retry_answers(
    shard: tuple[ScriptedShard, int],
) -> None:
    scripted, port = shard
    busy = Response.json(429, {"error": "shard over its in-flight limit"})
    scripted.script = [busy, busy, Response(204, headers={"X-Hotshard-Shard": "s0"})]
    forwarder, metrics = forwarder_to(port)
    status, headers, _ = await forward(forwarder)
    assert (status, headers["X-Hotshard-Shard"]) == (204, "s0")
    assert (len(scripted.seen), retries(metrics, "overloaded")) == (3, 2.0)
    forwarder.clients.close()


async def test_the_forwarded_request_carries_the_routing_headers(
    shard: tuple[ScriptedShard, int],
) -> None:
    scripted, port = shard
    forwarder, _ = forwarder_to(port)
    deadline = forwarder.loop.time() + 0.5
    await forwarder.forward(b'{"id": "r"}', "camp-7", 3, "", deadline, 1_700_000_000_000)
    (seen,) = scripted.seen
    assert seen.body == b'{"id": "r"}'
    assert (
        seen.headers["x-hotshard-campaign"],
        seen.headers["X-Hotshard-Routing-Version"],
        seen.headers["X-Hotshard-Deadline-Ms"],
    ) == ("camp-7", "1", "1700000000000")
    forwarder.clients.close()


async def test_a_shard_slower_than_the_deadline_gets_504_and_a_breaker_failure() -> None:
    async def stall(request: Request) -> Response:
        await asyncio.sleep(0.3)
        return Response(204)

    server = HttpServer({("POST", "/openrtb2/auction"): stall}, 65536)
    port = await server.start("127.0.0.1", 0)
    allowance = ShardAllowance(inflight_limit=4, shed_share=0.5)
    forwarder, _ = forwarder_to(port, allowance)
    status, headers, _ = await forward(forwarder, budget_s=0.03)
    assert (status, headers["X-Hotshard-Shard"]) == (504, "s0")
    assert forwarder.breakers["s0"].consecutive == 1
    assert allowance.inflight("s0") == 0  # the abandoned attempt left the shard's count
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0  # the deadline's cancellation was ours and is taken back
    forwarder.clients.close()
    await server.shutdown(1.0)


async def test_an_overrun_shard_sheds_the_dominant_campaign_without_sending_it(
    shard: tuple[ScriptedShard, int],
) -> None:
    scripted, port = shard
    allowance = ShardAllowance(inflight_limit=1, shed_share=0.5)
    forwarder, _ = forwarder_to(port, allowance)
    # the router has known s0 for a while (its usual rates are learnt): camp-1 is new there
    allowance.admit("s0", "another", forwarder.loop.time() - USUAL_HORIZON_S)
    await forward(forwarder)
    await forward(forwarder)  # camp-1 now holds nearly every recent request of s0
    allowance.sent("s0")  # something else holds the shard's one slot
    status, headers, _ = await forward(forwarder)
    assert (status, headers["Retry-After"]) == (429, "1")
    assert len(scripted.seen) == 2
    assert allowance.shed == 1
    forwarder.clients.close()
