"""CPU-token buckets and the guard's admission: budgets in CPU time, refusals before the work."""

from __future__ import annotations

import itertools

import pytest

from hotshard_bidder.openrtb import check_request
from hotshard_bidder.resources import THROTTLED, GuardPolicy, ResourceGuard
from hotshard_bidder.tokens import TokenBucket, TokenPolicy


def bucket(rate: float = 0.1, burst: float = 0.03) -> TokenBucket:
    return TokenBucket.full(TokenPolicy(rate_cores=rate, burst_seconds=burst), now=100.0)


def test_an_expensive_request_takes_more_tokens_than_a_cheap_one() -> None:
    b = bucket()
    assert b.admit(100.0, 0.0)
    b.charge(0.02)  # 20 ms of rules
    assert b.tokens == pytest.approx(0.01)
    assert b.admit(100.0, 0.0)
    b.charge(0.0001)
    assert b.tokens == pytest.approx(0.0099)


def test_refill_is_cpu_seconds_per_second_capped_at_the_burst() -> None:
    b = bucket()
    b.charge(0.03)
    assert b.tokens == pytest.approx(0.0)
    b.refill(100.1)  # 0.1 s at 0.1 core = 10 ms
    assert b.tokens == pytest.approx(0.01)
    b.refill(200.0)
    assert b.tokens == pytest.approx(0.03)


def test_a_request_predicted_beyond_the_balance_is_refused_and_counted() -> None:
    b = bucket()
    b.charge(0.025)  # 5 ms left
    assert not b.admit(100.0, 0.02)
    assert b.refused == 1
    assert b.refused_cost == pytest.approx(0.02)
    # 15 ms missing at 0.1 core/s: 0.15 s, which Retry-After rounds up to 1 s.
    assert b.retry_after(0.02) == pytest.approx(0.15)
    assert b.retry_after_header(0.02) == "1"


def test_debt_is_bounded_by_one_burst() -> None:
    b = bucket()
    b.charge(1.0)
    assert b.tokens == pytest.approx(-0.03)
    assert not b.admit(100.0, 0.0)
    assert b.retry_after_header(0.0) == "1"
    b.refill(100.5)  # 50 ms back: from -30 ms to +20 ms
    assert b.tokens == pytest.approx(0.02)


REQUEST = {
    "id": "r1",
    "imp": [{"id": "1", "banner": {"w": 300, "h": 250}}],
    "site": {"domain": "news.example", "page": "http://news.example/a/b.html"},
}


def test_the_guard_refuses_a_known_expensive_fingerprint_before_running_it() -> None:
    view = check_request(REQUEST)
    guard = ResourceGuard("s1", GuardPolicy(), clock=lambda: 100.0)
    res = guard.entry("c1", 100.0)
    assert guard.admit(res, view, 100.0) is None  # first request: profiled, nothing known
    guard.settle(res, 0.018, 0.017, 100.0)
    assert guard.profiler.costs.predict(res.key) == pytest.approx(0.018)
    # The next request of the same shape is predicted at 18 ms, over the 5 ms per-request bound.
    assert guard.admit(res, view, 100.001) == THROTTLED
    assert res.predicted == pytest.approx(0.018)
    assert res.predicted_refusals == 1
    assert [e["kind"] for e in guard.events] == ["anomaly", "throttle"]


def test_a_disabled_guard_measures_but_never_refuses() -> None:
    view = check_request(REQUEST)
    guard = ResourceGuard("s1", GuardPolicy(enabled=False), clock=lambda: 100.0)
    res = guard.entry("c1", 100.0)
    for i in range(50):
        assert guard.admit(res, view, 100.0 + i * 0.01) is None
        guard.settle(res, 0.02, 0.0, 100.0 + i * 0.01)
    assert res.requests == 50
    assert res.cpu_seconds == pytest.approx(1.0)
    assert res.throttled == 0


def test_a_request_whose_rules_ran_out_of_time_is_predicted_at_its_bound() -> None:
    # Under a tight quota a 20 ms evaluation gets only ~4 ms of CPU; it asked for all 20 ms.
    guard = ResourceGuard("s1", GuardPolicy(), clock=lambda: 0.0)
    view = check_request({"id": "r", "imp": [{"id": "1"}], "site": {"page": "http://a.test/"}})
    res = guard.entry("c1", 0.0)
    assert guard.admit(res, view, 0.0) is None
    guard.settle(res, 0.004, 0.004, 0.0, ran_out=0.02)
    assert res.cpu_seconds == pytest.approx(0.004)  # what was spent is what is charged
    assert res.bucket.tokens == pytest.approx(0.026)
    assert guard.admit(res, view, 0.0) == THROTTLED
    assert res.predicted == pytest.approx(0.02)
    assert guard.demanded(res) == pytest.approx(0.02)


def test_an_unseen_shape_of_an_anomalous_campaign_is_predicted_at_its_version_cost() -> None:
    from hotshard_bidder.targeting import CampaignConfig

    guard = ResourceGuard("s1", GuardPolicy(), clock=lambda: 0.0)
    res = guard.entry("c1", 0.0)
    view = check_request({"id": "r", "imp": [{"id": "1"}], "site": {"page": "http://a.test/"}})
    for _ in range(30):  # normal: 300 µs a request
        assert guard.admit(res, view, 0.0) is None
        guard.settle(res, 300e-6, 0.0, 0.0)
        res.bucket.tokens = res.bucket.burst
    guard.configure("c1", CampaignConfig(rollout="immediate"))
    assert guard.admit(res, view, 0.0) is None
    guard.settle(res, 0.02, 0.0, 0.0)  # the new version's first request: 20 ms
    assert res.profile.anomalous
    assert res.profile.fast == pytest.approx(0.3 * 0.02 + 0.7 * 300e-6)
    other = check_request({"id": "r", "imp": [{"id": "1"}, {"id": "2"}], "app": {"bundle": "x"}})
    assert guard.admit(res, other, 0.0) == THROTTLED
    assert res.predicted == pytest.approx(0.02)  # the version's cost, not the 6 ms average


def test_a_bad_canary_does_not_get_the_old_version_refused() -> None:
    from hotshard_bidder.targeting import CampaignConfig

    guard = ResourceGuard("s1", GuardPolicy(), clock=lambda: 0.0)
    res = guard.entry("c1", 0.0)
    view = check_request({"id": "r", "imp": [{"id": "1"}], "site": {"page": "http://a.test/"}})
    for _ in range(30):
        assert guard.admit(res, view, 0.0) is None
        guard.settle(res, 300e-6, 0.0, 0.0)
    guard.configure("c1", CampaignConfig(rollout="graduated"))
    assert res.rollout is not None
    shapes = [view, check_request({"id": "r", "imp": [{"id": "1"}], "app": {"bundle": "b"}})]
    refused = {0: 0, 1: 0}  # version 0 is the last good one here, 1 the new one
    for i in range(400):
        res.bucket.tokens = res.bucket.burst
        if guard.admit(res, shapes[i % 2], 0.0) is None:
            guard.settle(res, 0.02 if res.version == 1 else 300e-6, 0.0, 0.0)
        else:
            refused[res.version] += 1
    # The 5% canary at 20 ms makes the campaign anomalous (each time its cost pulls the average).
    assert "anomaly" in [e["kind"] for e in guard.events]
    # Its last good version's requests still run, a shape never seen included: they are
    # predicted at that version's cost, not at the campaign's average inflated by the canary.
    assert refused[0] == 0
    # A canary's refusals are not demand for the engine: its rollout deals with it.
    res.version = 1
    res.predicted = 0.02
    assert guard.demanded(res) == 0.0
    res.version = 0
    assert guard.demanded(res) == pytest.approx(0.02)


def test_one_expensive_request_does_not_get_a_campaigns_other_shapes_refused_for_good() -> None:
    guard = ResourceGuard("s1", GuardPolicy(), clock=lambda: 0.0)
    res = guard.entry("c1", 0.0)
    flood = check_request({"id": "r", "imp": [{"id": str(i)} for i in range(60)]})
    small = check_request({"id": "r", "imp": [{"id": "1"}], "site": {"page": "http://a.test/"}})
    assert guard.admit(res, flood, 0.0) is None  # nothing known yet: it runs
    guard.settle(res, 0.094, 0.0, 0.0)
    assert res.profile.anomalous
    # An unseen shape is guessed at the campaign's cost and refused...
    assert guard.admit(res, small, 0.5) == THROTTLED
    assert res.predicted == pytest.approx(res.profile.fast)
    # ...until a second has passed with nothing run: then one runs, and its cost is learnt.
    assert guard.admit(res, small, 1.1) is None
    assert res.probes == 1
    guard.settle(res, 50e-6, 0.0, 1.1)
    assert guard.profiler.costs.predict(res.key) == pytest.approx(50e-6)
    # From now on that shape is admitted on what it was measured to cost.
    for i in range(5):
        assert guard.admit(res, small, 1.2 + i * 0.01) is None
        assert res.predicted == pytest.approx(50e-6)
        guard.settle(res, 50e-6, 0.0, 1.2 + i * 0.01)
    assert res.probes == 1
    # The flood's own shape stays refused on its measured 94 ms, probe or not.
    assert guard.admit(res, flood, 5.0) == THROTTLED
    assert res.predicted == pytest.approx(0.094)
    assert res.probes == 1


def test_a_probe_runs_at_most_once_a_second_and_only_with_tokens() -> None:
    guard = ResourceGuard("s1", GuardPolicy(), clock=lambda: 0.0)
    res = guard.entry("c1", 0.0)
    view = check_request({"id": "r", "imp": [{"id": "1"}], "site": {"page": "http://a.test/"}})
    assert guard.admit(res, view, 0.0) is None
    guard.settle(res, 0.094, 0.0, 0.0)
    shapes = [
        check_request({"id": "r", "imp": [{"id": "1"}], "app": {"bundle": f"b{i}"}, "tmax": i})
        for i in range(1, 40)
    ]
    let_through = [
        t
        for t, v in zip(range(39), shapes, strict=True)
        if guard.admit(res, v, 1.0 + t * 0.1) is None
    ]
    # Unseen shapes, one every 100 ms for 3.9 s, none settled: at most one probe a second
    # (fewer while the resource breaker, tripped by the guessed demand, refuses them all).
    assert let_through[:2] == [0, 10]
    assert all(b - a >= 10 for a, b in itertools.pairwise(let_through))
    assert res.probes == len(let_through) >= 3
    res.bucket.tokens = -res.bucket.burst  # in debt: no probe, however long it waited
    res.bucket.updated = 100.0
    res.predicted = 0.094
    assert not guard._probe(res, 100.0)
    res.bucket.tokens = res.bucket.burst  # the same wait with tokens: a probe
    assert guard._probe(res, 100.0)
    assert not guard._probe(res, 100.5)  # and not another within the second
