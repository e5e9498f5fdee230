"""The load generator's campaign popularity: Zipf shares, seeded draws and real key weights."""

from __future__ import annotations

import numpy as np
import pytest

from hotshard_bidder.zipf import (
    estimate_skew,
    weighted_popularity,
    wikipedia_popularity,
    zipf_popularity,
    zipf_shares,
)


@pytest.mark.parametrize("skew", [0.8, 1.0, 1.2])
def test_sampled_skew_matches_the_requested_exponent(skew: float) -> None:
    popularity = zipf_popularity(1000, skew)
    ranks = popularity.sample(200_000, seed=7)
    assert estimate_skew(ranks, popularity.size) == pytest.approx(skew, abs=0.05)


def test_rank_one_takes_its_zipf_share() -> None:
    popularity = zipf_popularity(1000, 1.0)
    harmonic = sum(1.0 / r for r in range(1, 1001))  # H(1000) = 7.485
    ranks = popularity.sample(200_000, seed=3)
    assert popularity.shares[0] == pytest.approx(1.0 / harmonic)
    assert np.mean(ranks == 0) == pytest.approx(1.0 / harmonic, abs=0.005)


def test_zero_skew_is_uniform() -> None:
    assert zipf_shares(4, 0.0).tolist() == [0.25, 0.25, 0.25, 0.25]


def test_same_seed_same_draws_other_seed_other_draws() -> None:
    popularity = zipf_popularity(50, 1.1)
    first = popularity.sample(1000, seed=11)
    assert np.array_equal(first, popularity.sample(1000, seed=11))
    assert not np.array_equal(first, popularity.sample(1000, seed=12))
    assert first.min() >= 0
    assert first.max() < 50


def test_keys_are_ranked_and_the_top_is_hot() -> None:
    popularity = zipf_popularity(5, 1.0)
    assert popularity.keys == ("campaign-1", "campaign-2", "campaign-3", "campaign-4", "campaign-5")
    assert popularity.top(2) == ("campaign-1", "campaign-2")


def test_weighted_popularity_sorts_by_weight_and_makes_keys_header_safe() -> None:
    popularity = weighted_popularity([("small", 1), ("Björk Guðmundsdóttir", 3), ("none", 0)])
    assert popularity.keys == ("Bj%C3%B6rk%20Gu%C3%B0mundsd%C3%B3ttir", "small")
    assert popularity.shares.tolist() == [0.75, 0.25]


def test_wikipedia_election_day_keys() -> None:
    popularity = wikipedia_popularity()
    assert popularity.size == 100
    assert all(key.isascii() and " " not in key for key in popularity.keys)
    assert list(popularity.shares) == sorted(popularity.shares, reverse=True)


def test_bad_models_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one"):
        zipf_shares(0, 1.0)
    with pytest.raises(ValueError, match=">= 0"):
        zipf_shares(10, -1.0)
    with pytest.raises(ValueError, match="positive weight"):
        weighted_popularity([("a", 0)])
