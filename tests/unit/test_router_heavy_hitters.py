"""Space-Saving top-k and its 1 s windows."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hotshard_bidder.heavy_hitters import SpaceSaving, WindowedTopK


def test_exact_while_under_capacity() -> None:
    s = SpaceSaving(4)
    for key in "abacabaa":
        s.add(key)
    assert [(h.key, h.weight, h.error) for h in s.top(3)] == [
        ("a", 5.0, 0.0),
        ("b", 2.0, 0.0),
        ("c", 1.0, 0.0),
    ]


def test_eviction_inherits_the_minimum_as_error() -> None:
    s = SpaceSaving(2)
    for key in ["a", "a", "a", "b", "c"]:
        s.add(key)
    # "b" (count 1) was the minimum; "c" replaced it with count 1 + 1 and error 1.
    assert [(h.key, h.weight, h.error) for h in s.top(2)] == [("a", 3.0, 0.0), ("c", 2.0, 1.0)]
    assert len(s) == 2
    assert s.total == 5.0


def test_weights_may_be_fractional() -> None:
    s = SpaceSaving(3)
    s.add("x", 0.25)
    s.add("y", 0.5)
    s.add("x", 0.5)
    assert [(h.key, h.weight) for h in s.top(2)] == [("x", 0.75), ("y", 0.5)]


def test_finds_the_hot_keys_of_a_skewed_stream() -> None:
    rng = random.Random(7)
    stream = (
        ["hot-1"] * 3000 + ["hot-2"] * 2000 + [f"cold-{rng.randrange(5000)}" for _ in range(20000)]
    )
    rng.shuffle(stream)
    s = SpaceSaving(40)
    for key in stream:
        s.add(key)
    top = s.top(2)
    assert [h.key for h in top] == ["hot-1", "hot-2"]
    assert top[0].weight - top[0].error <= 3000 <= top[0].weight


@given(st.lists(st.sampled_from("abcdefghij"), max_size=300), st.integers(1, 6))
def test_estimates_bound_the_true_count(stream: list[str], capacity: int) -> None:
    s = SpaceSaving(capacity)
    for key in stream:
        s.add(key)
    for h in s.top(capacity):
        true = stream.count(h.key)
        assert h.weight - h.error <= true <= h.weight
    assert sum(h.weight for h in s.top(capacity)) == pytest.approx(len(stream))


def test_window_publishes_the_completed_window_only() -> None:
    now = [100.2]
    published: list[list[str]] = []
    w = WindowedTopK(
        2, clock=lambda: now[0], on_window=lambda top, total: published.append([h.key for h in top])
    )
    for key in ["a", "b", "b"]:
        w.add(key)
    assert w.last == []
    now[0] = 101.05
    w.add("c")
    assert published == [["b", "a"]]
    assert w.last_total == 3.0
    now[0] = 103.5  # an idle gap: the next roll closes the window holding only "c"
    w.roll()
    assert published[-1] == ["c"]
    w.roll()
    assert len(published) == 2
