"""Campaign-key and secondary-key extraction: header first, then JSON pointers in order."""

from __future__ import annotations

import pytest

from hotshard.routing.keys import KeyExtractor, PointerError, parse_pointer, resolve


def test_header_wins_over_the_body() -> None:
    body = {"ext": {"hotshard": {"campaign": "from-body"}}}
    assert KeyExtractor().campaign({"X-Hotshard-Campaign": "from-header"}, body) == "from-header"


def test_pointers_are_tried_in_order() -> None:
    extractor = KeyExtractor()
    top = {
        "ext": {"hotshard": {"campaign": "top"}},
        "imp": [{"ext": {"hotshard": {"campaign": "imp"}}}],
    }
    assert extractor.campaign({}, top) == "top"
    only_imp = {"imp": [{"ext": {"hotshard": {"campaign": "imp"}}}]}
    assert extractor.campaign({}, only_imp) == "imp"


def test_integer_keys_become_strings_and_other_types_are_ignored() -> None:
    extractor = KeyExtractor(campaign_pointers=("/a", "/b"))
    assert extractor.campaign({}, {"a": 17}) == "17"
    assert extractor.campaign({}, {"a": True, "b": "x"}) == "x"
    assert extractor.campaign({}, {"a": {"nested": 1}, "b": ""}) is None


def test_no_key_anywhere_is_none_and_the_description_says_where_it_looked() -> None:
    extractor = KeyExtractor(header="X-C", campaign_pointers=("/site/id",))
    assert extractor.campaign({}, {"id": "r1"}) is None
    assert extractor.campaign({}, ["not", "an", "object"]) is None
    assert extractor.describe() == "header X-C, /site/id"


def test_secondary_key_prefers_user_then_device_then_request_id() -> None:
    extractor = KeyExtractor()
    assert extractor.secondary({"id": "r", "user": {"id": "u"}, "device": {"ifa": "d"}}) == "u"
    assert extractor.secondary({"id": "r", "device": {"ifa": "d"}}) == "d"
    assert extractor.secondary({"id": "r"}) == "r"
    assert extractor.secondary({}) == ""


def test_pointer_parsing_unescapes_and_indexes() -> None:
    assert parse_pointer("/a~1b/0/c~0d") == ("a/b", 0, "c~d")
    assert resolve({"a/b": [{"c~d": 5}]}, parse_pointer("/a~1b/0/c~0d")) == 5
    assert resolve({"a": [1]}, parse_pointer("/a/3")) is None
    with pytest.raises(PointerError):
        parse_pointer("no-slash")


def test_a_key_that_is_not_text_or_has_control_characters_is_named() -> None:
    from hotshard.routing.keys import key_problem

    # Header bytes \xff\xfe are not UTF-8; the HTTP parser hands them over as lone surrogates.
    assert (
        key_problem("\udcff\udcfe")
        == r"campaign key '\udcff\udcfe' is not text or has control characters"
    )
    assert key_problem("a\r\nX-Forged: 1") is not None
    assert key_problem("Evan_McMullin") is None
    assert key_problem("ÿþ") is None
