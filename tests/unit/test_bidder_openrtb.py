"""OpenRTB checks: the real corpus passes; each malformed shape gets 400 with its reason."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from hotshard.datasets import openrtb_requests
from hotshard_bidder import scoring
from hotshard_bidder.openrtb import BadRequest, Bid, build_response, check_request, parse_json


def test_every_corpus_request_passes_and_is_priced() -> None:
    samples = openrtb_requests()
    assert len(samples) >= 50
    priced = 0
    for sample in samples:
        view = check_request(parse_json(sample.raw))
        assert view.id == sample.body["id"]
        assert len(view.imps) == len(sample.body["imp"])
        shared = scoring.request_features(view)
        for imp in view.imps:
            price, media = scoring.price_imp(imp, shared, "campaign-1", 2, 1.0)
            assert media in scoring.MEDIA_VALUE
            if price > 0:
                priced += 1
                assert price > imp.floor
    assert priced > len(samples) // 2


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "empty body"),
        (b"{not json", "malformed JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"imp": [{"id": "1"}]}', "missing required field 'id'"),
        (b'{"id": 7, "imp": [{"id": "1"}]}', "'id' must be a non-empty string"),
        (b'{"id": "r"}', "missing required field 'imp'"),
        (b'{"id": "r", "imp": []}', "'imp' must be a non-empty list"),
        (b'{"id": "r", "imp": {"id": "1"}}', "'imp' must be a non-empty list"),
        (b'{"id": "r", "imp": ["x"]}', "imp[0] must be an object"),
        (b'{"id": "r", "imp": [{"id": 1}]}', "imp[0].id must be a non-empty string"),
        (b'{"id": "r", "imp": [{"id": "1", "bidfloor": "0.5"}]}', "bidfloor must be a number"),
        (b'{"id": "r", "imp": [{"id": "1", "bidfloor": true}]}', "bidfloor must be a number"),
        (b'{"id": "r", "imp": [{"id": "1", "bidfloor": -1}]}', "must not be negative"),
        (b'{"id": "r", "imp": [{"id": "1", "banner": []}]}', "imp[0].banner must be an object"),
        (b'{"id": "r", "imp": [{"id": "1"}], "tmax": 1.5}', "'tmax' must be an integer"),
        (b'{"id": "r", "imp": [{"id": "1"}], "tmax": "100"}', "'tmax' must be an integer"),
        (b'{"id": "r", "imp": [{"id": "1"}], "device": "phone"}', "'device' must be an object"),
        (
            b'{"id": "r", "imp": [{"id": "1", "bidfloor": 1, "bidfloorcur": "XYZ"}]}',
            "imp[0].bidfloorcur 'XYZ' is not a currency we convert",
        ),
        (b'{"id": "r", "imp": [{"id": "1", "bidfloorcur": 978}]}', "bidfloorcur must be a string"),
    ],
)
def test_malformed_requests_name_their_problem(body: bytes, reason: str) -> None:
    with pytest.raises(BadRequest) as info:
        check_request(parse_json(body))
    assert reason in str(info.value)


def test_response_carries_the_openrtb_fields() -> None:
    raw = build_response("req-1", "camp-9", "s0", [Bid("imp-1", 1.23456, "video")])
    doc = orjson.loads(raw)
    bid = doc["seatbid"][0]["bid"][0]
    assert doc["id"] == "req-1"
    assert (bid["impid"], bid["price"], bid["cid"], bid["crid"]) == (
        "imp-1",
        1.2346,
        "camp-9",
        "camp-9-video",
    )
    assert bid["adm"].startswith("<VAST")
    assert "${AUCTION_PRICE}" in bid["nurl"]


@pytest.mark.parametrize(
    ("currency", "floor_usd"),
    [(None, 2.0), ("USD", 2.0), ("EUR", 2.16), ("eur", 2.16), ("JPY", 0.0134), ("RUB", 0.022)],
)
def test_floors_are_converted_to_dollars(currency: str | None, floor_usd: float) -> None:
    imp: dict[str, object] = {"id": "1", "bidfloor": 2.0, "banner": {}}
    if currency is not None:
        imp["bidfloorcur"] = currency
    view = check_request({"id": "r", "imp": [imp]})
    assert view.imps[0].floor == pytest.approx(floor_usd)


def test_a_floor_in_euros_is_compared_in_dollars() -> None:
    """A floor just under the bid's value in dollars passes in USD and is not met in EUR."""
    doc = {"id": "r", "imp": [{"id": "1", "bidfloor": 0.0, "banner": {}}]}
    view = check_request(doc)
    features = scoring.request_features(view)
    value, _ = scoring.price_imp(view.imps[0], features, "camp-1", 4, 1.0)
    assert value > 0.0
    value_usd = value / scoring.SHADE  # from a zero floor the bid is SHADE x our value
    floor = round(value_usd / 1.04, 6)  # under the value in dollars, over it once x1.08 (EUR)
    in_usd = check_request({"id": "r", "imp": [{"id": "1", "bidfloor": floor, "banner": {}}]})
    in_eur = check_request(
        {"id": "r", "imp": [{"id": "1", "bidfloor": floor, "bidfloorcur": "EUR", "banner": {}}]}
    )
    usd_price, _ = scoring.price_imp(in_usd.imps[0], features, "camp-1", 4, 1.0)
    eur_price, _ = scoring.price_imp(in_eur.imps[0], features, "camp-1", 4, 1.0)
    assert usd_price == pytest.approx(floor + scoring.SHADE * (value_usd - floor))
    assert eur_price == 0.0


async def test_a_campaign_header_of_non_utf8_bytes_is_a_clean_400_not_a_bug(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import asyncio

    from hotshard.routing import RoutingTable, Shard
    from hotshard.routing.store import FileRoutingStore
    from hotshard_bidder.app import BidderApp
    from hotshard_bidder.http_server import HttpServer
    from hotshard_bidder.serving import TableWatch
    from hotshard_bidder.settings import BidderSettings

    path = tmp_path / "routing.json"
    shard = Shard(name="s0", tier="base", url="http://127.0.0.1:9")
    FileRoutingStore(path).initialize(RoutingTable.even([shard], partitions=64))
    app = BidderApp(BidderSettings(shard="s0", routing_file=path), TableWatch.open(path, 0.05))
    body = orjson.dumps({"id": "r1", "imp": [{"id": "1", "banner": {"w": 300, "h": 250}}]})
    server = HttpServer(app.routes(), 65536, app.count_refusal, "bidder")
    port = await server.start("127.0.0.1", 0)
    # A raw request: an HTTP client library would encode the header as UTF-8.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /openrtb2/auction HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"X-Hotshard-Campaign: \xff\xfe\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body
    )
    await writer.drain()
    answer = await reader.read()
    writer.close()
    await writer.wait_closed()
    await server.shutdown(1.0)
    app.close()
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b"not text or has control characters" in answer
    assert b"UnicodeEncodeError" not in answer
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


def test_a_request_over_the_impression_limit_is_refused_before_any_is_priced() -> None:
    from hotshard_bidder.openrtb import MAX_IMPS

    at_limit = {"id": "r", "imp": [{"id": str(i)} for i in range(MAX_IMPS)]}
    assert len(check_request(at_limit).imps) == MAX_IMPS
    over = {"id": "r", "imp": [{"id": str(i)} for i in range(2000)]}
    with pytest.raises(BadRequest, match=r"'imp' has 2000 impressions; at most 64 are served"):
        check_request(over)
