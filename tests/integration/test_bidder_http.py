"""One real bidder process: the whole corpus bids, bad input gets 4xx with a reason, never 5xx."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request

import orjson
import pytest

from hotshard.datasets import openrtb_requests
from hotshard.routing import partition_of

from .conftest import PARTITIONS, Fleet, get_json

pytestmark = pytest.mark.integration


def post(
    url: str, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def campaign_on(fleet: Fleet, shard: str, n: int = 0) -> str:
    """The ``n``-th synthetic campaign key whose partition ``shard`` owns."""
    owners = fleet.table().owners()
    keys = (f"campaign-{i}" for i in range(100_000))
    return [k for k in keys if owners[partition_of(k, PARTITIONS)] == shard][n]


def test_every_corpus_request_gets_a_bid_or_a_no_bid(fleet: Fleet) -> None:
    shard = fleet.bidder("shard-0")
    statuses = {}
    for i, sample in enumerate(openrtb_requests()):
        campaign = campaign_on(fleet, "shard-0", i % 7)
        status, headers, body = post(
            shard.url + "/openrtb2/auction", sample.raw, {"X-Hotshard-Campaign": campaign}
        )
        statuses[sample.name] = status
        assert headers["X-Hotshard-Shard"] == "shard-0"
        assert headers["X-Hotshard-Routing-Version"] == "1"
        assert int(headers["X-Hotshard-Cost-Us"]) > 0
        if status == 200:
            doc = orjson.loads(body)
            assert doc["id"] == sample.body["id"]
            imp_ids = {imp["id"] for imp in sample.body["imp"]}
            for bid in doc["seatbid"][0]["bid"]:
                assert bid["impid"] in imp_ids
                assert bid["cid"] == campaign
                assert bid["price"] > 0
    assert set(statuses.values()) <= {200, 204}, statuses
    assert list(statuses.values()).count(200) > len(statuses) // 2
    stats = get_json(shard.url + "/stats")
    assert isinstance(stats, dict)
    served = sum(p["requests"] for p in stats["partitions"].values())
    assert served == len(statuses)


BAD = [
    (b"{not json", "malformed JSON"),
    (b'{"imp": [{"id": "1"}]}', "missing required field 'id'"),
    (b'{"id": "r"}', "missing required field 'imp'"),
    (b'{"id": "r", "imp": "banner"}', "'imp' must be a non-empty list"),
    (b'{"id": "r", "imp": [{"id": "1", "bidfloor": "cheap"}]}', "bidfloor must be a number"),
    (b'{"id": "r", "imp": [{"id": "1"}], "tmax": "soon"}', "'tmax' must be an integer"),
    (b'[{"id": "r"}]', "must be a JSON object"),
    (b"\xff\xfe\x00garbage", "malformed JSON"),
]


def test_bad_requests_get_400_or_413_with_a_reason(fleet: Fleet) -> None:
    shard = fleet.bidder("shard-0")
    url = shard.url + "/openrtb2/auction"
    key = {"X-Hotshard-Campaign": campaign_on(fleet, "shard-0")}
    for body, reason in BAD:
        status, _, answer = post(url, body, key)
        assert status == 400, body
        assert reason in orjson.loads(answer)["error"]
    status, _, answer = post(url, b'{"id": "r", "imp": [{"id": "1"}]}')
    assert status == 400
    assert "no campaign key; looked in header X-Hotshard-Campaign" in orjson.loads(answer)["error"]
    status, _, answer = post(
        url, b'{"id": "r", "imp": [{"id": "1"}], "pad": "' + b"x" * 70_000 + b'"}', key
    )
    assert status == 413
    assert "65536-byte limit" in orjson.loads(answer)["error"]
    # Still healthy, and every refusal was counted under its outcome.
    metrics = urllib.request.urlopen(shard.url + "/metrics", timeout=5).read().decode()
    series = 'hotshard_bidder_requests_total{outcome="%s",partition="none",shard="shard-0"} %s'
    assert series % ("bad_request", f"{len(BAD) + 1}.0") in metrics
    assert series % ("too_large", "1.0") in metrics


def test_a_request_for_another_shard_gets_421_naming_the_owner(fleet: Fleet) -> None:
    shard = fleet.bidder("shard-0")
    campaign = campaign_on(fleet, "shard-1")
    body = openrtb_requests()[0].raw
    status, headers, answer = post(shard.url + "/", body, {"X-Hotshard-Campaign": campaign})
    assert status == 421
    assert headers["X-Hotshard-Routing-Version"] == "1"
    assert orjson.loads(answer)["owner"] == "shard-1"


def test_a_router_ahead_of_the_shard_gets_503_with_a_retry_hint(fleet: Fleet) -> None:
    shard = fleet.bidder("shard-0")
    body = openrtb_requests()[0].raw
    headers = {
        "X-Hotshard-Campaign": campaign_on(fleet, "shard-0"),
        "X-Hotshard-Routing-Version": "9",
    }
    status, got, answer = post(shard.url + "/", body, headers)
    assert status == 503
    assert got["Retry-After"] == "1"
    assert got["X-Hotshard-Retry-After-Ms"] == "20"
    assert "version 1 is behind 9" in orjson.loads(answer)["error"]


def test_an_expired_deadline_is_refused_before_any_work(fleet: Fleet) -> None:
    shard = fleet.bidder("shard-0")
    body = openrtb_requests()[0].raw
    headers = {
        "X-Hotshard-Campaign": campaign_on(fleet, "shard-0"),
        "X-Hotshard-Deadline-Ms": "1000",
    }
    status, got, _ = post(shard.url + "/", body, headers)
    assert status == 504
    assert got["X-Hotshard-Cost-Us"] == "0"


def slow_post(url: str, sent: bytes, declared: int) -> tuple[int, bytes]:
    """Declare ``declared`` body bytes, send only ``sent``, and wait for the answer."""
    host, port = url.split("//")[1].split("/")[0].split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        head = (
            f"POST /openrtb2/auction HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"X-Hotshard-Campaign: slow\r\nContent-Length: {declared}\r\n\r\n"
        )
        sock.sendall(head.encode() + sent)
        answer = sock.recv(65536)
    status = int(answer.split(b" ", 2)[1])
    return status, answer.split(b"\r\n\r\n", 1)[1]


def test_a_body_that_never_arrives_gets_408_not_a_hang(fleet: Fleet) -> None:
    shard = fleet.bidder("shard-0")
    router = fleet.router()
    for service in (shard, router):
        status, body = slow_post(service.url, b'{"id":', declared=100)
        assert status == 408, service.name
        assert b"request body not received within 500 ms" in body
