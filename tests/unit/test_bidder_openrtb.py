"""OpenRTB checks: the real corpus passes; each malformed shape gets 400 with its reason."""

from __future__ import annotations

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
