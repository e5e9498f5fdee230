"""The router's refusals of what it cannot route, in process: the same words as the bidders'."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from hotshard.routing import RoutingTable, Shard
from hotshard.routing.store import FileRoutingStore
from hotshard_bidder.http_server import Headers, Request
from hotshard_bidder.router import RouterApp
from hotshard_bidder.serving import TableWatch
from hotshard_bidder.settings import RouterSettings

BODY = orjson.dumps({"id": "r1", "imp": [{"id": "1", "banner": {"w": 300, "h": 250}}]})


@pytest.fixture
async def router(tmp_path: Path) -> RouterApp:
    path = tmp_path / "routing.json"
    # NB: the shard's port is closed: a request that got past the checks would fail with 502.
    shard = Shard(name="s0", tier="base", url="http://127.0.0.1:9")
    FileRoutingStore(path).initialize(RoutingTable.even([shard], partitions=64))
    return RouterApp(RouterSettings(routing_file=path), TableWatch.open(path, 0.05))


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("\udcff\udcfe", r"campaign key '\udcff\udcfe' is not text or has control characters"),
        ("camp\r\nX-Evil: 1", r"campaign key 'camp\r\nX-Evil: 1' is not text or has control"),
    ],
)
async def test_a_key_the_bidders_refuse_is_refused_at_the_router(
    router: RouterApp, key: str, reason: str
) -> None:
    request = Request("POST", "/openrtb2/auction", Headers({"x-hotshard-campaign": key}), BODY)
    answer = await router.auction(request)
    assert answer.status == 400
    assert orjson.loads(answer.body)["error"].startswith(reason)
    router.clients.close()


async def test_a_body_that_is_not_an_object_is_refused_with_its_reason(router: RouterApp) -> None:
    request = Request("POST", "/", Headers({"x-hotshard-campaign": "c1"}), b"[1, 2]")
    answer = await router.auction(request)
    assert (answer.status, orjson.loads(answer.body)) == (
        400,
        {"error": "a BidRequest must be a JSON object", "shard": "none"},
    )
    router.clients.close()
