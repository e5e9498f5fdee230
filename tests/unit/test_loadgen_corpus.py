"""The load generator's request bodies: the real corpus, with fresh ids per request."""

from __future__ import annotations

import numpy as np
import orjson

from hotshard.datasets import openrtb_requests
from hotshard_bidder.corpus import RequestCorpus, user_id


def test_every_corpus_request_becomes_a_template() -> None:
    corpus = RequestCorpus.load()
    assert len(corpus) == 58
    assert [t.name for t in corpus.templates] == [s.name for s in openrtb_requests()]


def test_rendered_bodies_carry_the_new_ids_and_keep_the_rest() -> None:
    corpus = RequestCorpus.load()
    for template, sample in zip(corpus.templates, openrtb_requests(), strict=True):
        body = orjson.loads(template.render("run1-42", user_id(7)))
        assert body["id"] == "run1-42"
        assert body["id"] != sample.body["id"]
        assert body["user"]["id"] == "hs-user-000007"
        original_user = sample.body.get("user") or {}
        assert {k: v for k, v in body["user"].items() if k != "id"} == {
            k: v for k, v in original_user.items() if k != "id"
        }
        rest = {k: v for k, v in body.items() if k not in ("id", "user")}
        assert rest == {k: v for k, v in sample.body.items() if k not in ("id", "user")}
        assert template.tmax_ms == sample.tmax


def test_draws_are_seeded_and_in_range() -> None:
    corpus = RequestCorpus.load()
    templates, users = corpus.draw(5000, seed=5, users=1000)
    again_t, again_u = corpus.draw(5000, seed=5, users=1000)
    assert np.array_equal(templates, again_t)
    assert np.array_equal(users, again_u)
    assert set(templates.tolist()) == set(range(58))  # 5000 draws reach every body
    assert users.min() >= 0
    assert users.max() < 1000
    assert len(set(users.tolist())) > 900  # users spread, so split routing spreads
