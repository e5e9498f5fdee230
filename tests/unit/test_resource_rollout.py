"""Graduated rollout widens on normal cost and rolls back on a spike, with the reason in words."""

from __future__ import annotations

import pytest

from hotshard_bidder.resources import GuardPolicy, ResourceGuard
from hotshard_bidder.rollout import Rollout, RolloutPolicy
from hotshard_bidder.targeting import CampaignConfig, TargetingRules

POLICY = RolloutPolicy()  # 5% start, x2, 2 s stages, 5 samples, 4x, 2 s confirm, 120 s watch


def feed(r: Rollout, start: float, seconds: float, rps: int, new_cost: float, old: float) -> float:
    """Requests at ``rps`` for ``seconds``, judged after each; returns the end time."""
    t = start
    for _ in range(int(seconds * rps)):
        t += 1 / rps
        version = r.pick()
        r.record(version, new_cost if version == r.current else old)
        r.judge(t, POLICY)
    return t


def test_a_graduated_change_starts_at_five_percent_of_requests() -> None:
    r = Rollout.start(1, 2, 0.0, 100e-6, graduated=True, policy=POLICY)
    picks = [r.pick() for _ in range(1000)]
    assert picks.count(2) == pytest.approx(50, abs=2)


def test_normal_cost_widens_stage_by_stage_then_promotes() -> None:
    r = Rollout.start(1, 2, 0.0, 100e-6, graduated=True, policy=POLICY)
    shares: list[float] = []
    t = 0.0
    while not r.promoted and t < 60:
        t = feed(r, t, 0.5, 200, 110e-6, 100e-6)
        if not shares or shares[-1] != r.share:
            shares.append(r.share)
    assert shares == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0]
    assert r.promoted
    assert not r.rolled_back
    # Five widenings and a promotion, 2 s each.
    assert t == pytest.approx(12.0, abs=0.6)


def test_a_spike_after_a_change_rolls_back_after_the_confirmation_time() -> None:
    r = Rollout.start(1, 2, 0.0, 100e-6, graduated=False, policy=POLICY)
    assert r.share == 1.0
    t = 0.0
    verdicts = []
    for i in range(400):
        t = i * 0.01
        r.record(r.pick(), 0.02)
        verdicts.append(r.judge(t, POLICY))
    rollback = [v for v in verdicts if v.kind == "rollback"]
    assert len(rollback) == 1
    # Over the bar from the 5th request (0.04 s), confirmed 2 s later.
    index = verdicts.index(rollback[0])
    assert index * 0.01 == pytest.approx(2.04, abs=0.011)
    assert (
        "version 2 costs 20000 µs per request, 200x the 100 µs of version 1" in rollback[0].reason
    )
    assert r.pick() == 1


def test_a_spike_long_after_the_change_is_not_the_change() -> None:
    r = Rollout.start(1, 2, 0.0, 100e-6, graduated=False, policy=POLICY)
    for _ in range(50):
        r.record(2, 100e-6)
    for i in range(300):
        r.record(2, 0.02)
        verdict = r.judge(200.0 + i * 0.01, POLICY)
        assert verdict.kind != "rollback"


def test_the_guard_rolls_back_to_the_last_good_version_and_records_why() -> None:
    clock = [0.0]
    guard = ResourceGuard("s1", GuardPolicy(), clock=lambda: clock[0])
    good = CampaignConfig(rollout="immediate", rules=TargetingRules(page_patterns=("^http",)))
    bad = CampaignConfig(rollout="immediate", rules=TargetingRules(page_patterns=("(a|aa)*b",)))
    from hotshard_bidder.openrtb import check_request

    view = check_request({"id": "r", "imp": [{"id": "1"}], "site": {"page": "http://x.test/p"}})
    res = guard.entry("c1", 0.0)

    def serve(cost: float, seconds: float) -> None:
        for _ in range(int(seconds * 20)):
            clock[0] += 0.05
            if guard.admit(res, view, clock[0]) is None:
                guard.settle(res, cost, 0.0, clock[0])

    assert guard.configure("c1", good).version == 1
    serve(100e-6, 4.0)
    assert res.history is not None
    assert res.history.get(1).verdict == "good"
    assert guard.configure("c1", bad).version == 2
    assert guard.rollbacks == 0
    serve(0.004, 4.0)  # 4 ms each: 40x, under the 5 ms per-request bound so they run
    kinds = [e["kind"] for e in guard.events]
    assert kinds[:2] == ["config", "promote"]
    assert kinds.count("rollback") == guard.rollbacks == 1
    assert res.active == 1
    assert res.history.get(2).verdict == "bad"
    assert "back to version 1" in res.history.get(2).why


def test_a_shard_that_knows_no_cost_judges_against_the_fallback_reference() -> None:
    # The sandbox shard a campaign was just moved to: no reference for it at all.
    r = Rollout.start(1, 2, 0.0, 0.0, graduated=False, policy=POLICY)
    verdicts = []
    for i in range(300):
        r.record(r.pick(), 0.02)
        verdicts.append(r.judge(i * 0.01, POLICY))
    rollback = next(v for v in verdicts if v.kind == "rollback")
    assert "20x the 1000 µs a request may cost before it is expensive" in rollback.reason
    assert "(no cost known here for version 1)" in rollback.reason
    cheap = Rollout.start(1, 2, 0.0, 0.0, graduated=False, policy=POLICY)
    t = feed(cheap, 0.0, 3.0, 20, 300e-6, 0.0)
    assert cheap.promoted
    assert not cheap.rolled_back
    assert t == pytest.approx(3.0)


def test_the_guard_judges_a_campaign_that_stopped_sending_requests() -> None:
    clock = [0.0]
    guard = ResourceGuard("s1", GuardPolicy(), clock=lambda: clock[0])
    from hotshard_bidder.openrtb import check_request

    view = check_request({"id": "r", "imp": [{"id": "1"}], "site": {"page": "http://x.test/p"}})
    res = guard.entry("c1", 0.0)
    for _ in range(40):  # 2 s at 100 µs: the campaign's normal cost here
        clock[0] += 0.05
        assert guard.admit(res, view, clock[0]) is None
        guard.settle(res, 100e-6, 0.0, clock[0])
    bad = CampaignConfig(rollout="immediate", rules=TargetingRules(page_patterns=("(a|aa)*b",)))
    assert guard.configure("c1", bad).version == 1
    for _ in range(10):  # half a second at 4 ms, then the engine moves the campaign away
        clock[0] += 0.05
        if guard.admit(res, view, clock[0]) is None:
            guard.settle(res, 0.004, 0.0, clock[0])
    assert "rollback" not in [e["kind"] for e in guard.events]
    clock[0] += 2.0
    guard.judge_due(clock[0])
    rollback = [e for e in guard.events if e["kind"] == "rollback"]
    assert len(rollback) == 1
    assert rollback[0]["share"] == 1.0
    assert res.active == 0
    assert res.history is not None
    assert res.history.get(1).verdict == "bad"


def test_a_rollback_goes_to_the_newest_version_not_known_bad() -> None:
    from hotshard_bidder.targeting import ConfigHistory

    history = ConfigHistory("c1")
    first = history.store(CampaignConfig(note="v1"), 1.0)
    second = history.store(CampaignConfig(note="v2"), 2.0)
    second.verdict = "bad"
    history.store(CampaignConfig(note="v3"), 3.0)
    # v1 was never judged on this shard (it never served the campaign): still the fallback.
    assert history.last_good(3) is first
    first.verdict = "bad"
    assert history.last_good(3).version == 0


def test_the_rollback_counter_follows_the_guards_count_and_never_goes_back() -> None:
    from hotshard_bidder.metrics import BidderMetrics

    metrics = BidderMetrics("s1")

    def exported() -> str:
        lines = metrics.exposition().decode().splitlines()
        return next(x for x in lines if x.startswith("hotshard_bidder_config_rollbacks_total"))

    assert exported() == 'hotshard_bidder_config_rollbacks_total{shard="s1"} 0.0'
    metrics.set_rollbacks(2)
    metrics.set_rollbacks(2)  # read twice: counted once
    assert exported() == 'hotshard_bidder_config_rollbacks_total{shard="s1"} 2.0'
    metrics.set_rollbacks(3)
    assert exported() == 'hotshard_bidder_config_rollbacks_total{shard="s1"} 3.0'
    assert metrics.stats(1, 0)["config_rollbacks"] == 3
