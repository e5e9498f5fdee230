"""The per-shard allowance: a surge on an overrun shard is cut from its first requests."""

from __future__ import annotations

import heapq

import numpy as np
import pytest
from pydantic import ValidationError

from hotshard_bidder.fair_shedding import (
    BUCKET_S,
    MIN_EVIDENCE,
    RECOMMENDED_INFLIGHT_LIMIT,
    ShardAllowance,
    ShardAllowanceSettings,
)
from hotshard_bidder.zipf import zipf_shares

SHARD = "base-0"
SERVICE_S = 0.00167
"""Wall time per request of a shard under local mode's 0.15-core quota (250 µs of CPU)."""


def replay(
    allowance: ShardAllowance, arrivals: list[tuple[float, str]]
) -> tuple[dict[str, list[bool]], int, dict[str, list[float]]]:
    """Feed time-ordered ``(t, campaign)`` arrivals to one FIFO shard serving one request per
    ``SERVICE_S``; returns each campaign's admit decisions in order, the peak in flight, and
    each campaign's latencies (arrival to answer) of the requests admitted."""
    decisions: dict[str, list[bool]] = {}
    latencies: dict[str, list[float]] = {}
    completions: list[float] = []  # heap of finish times of requests in flight
    busy_until = 0.0
    peak = 0
    for t, campaign in arrivals:
        while completions and completions[0] <= t:
            heapq.heappop(completions)
            allowance.answered(SHARD)
        admitted = allowance.admit(SHARD, campaign, t)
        decisions.setdefault(campaign, []).append(admitted)
        if admitted:
            allowance.sent(SHARD)
            busy_until = max(busy_until, t) + SERVICE_S
            heapq.heappush(completions, busy_until)
            peak = max(peak, allowance.inflight(SHARD))
            latencies.setdefault(campaign, []).append(busy_until - t)
    return decisions, peak, latencies


def calm_traffic(start: float, end: float, rps: float, campaigns: int) -> list[tuple[float, str]]:
    """``rps`` evenly spaced requests cycling over ``campaigns`` calm campaigns."""
    n = round((end - start) * rps)
    return [(start + i / rps, f"calm-{i % campaigns}") for i in range(n)]


def surge(start: float, end: float, rps: float, name: str = "hot") -> list[tuple[float, str]]:
    n = round((end - start) * rps)
    return [(start + (i + 0.5) / rps, name) for i in range(n)]


def test_a_surge_on_an_overrun_shard_is_cut_while_calm_campaigns_pass() -> None:
    allowance = ShardAllowance(inflight_limit=4, shed_share=0.25)
    # 300 req/s of calm traffic (half the shard's capacity) for 6 s, then a campaign jumps to
    # 3,000 req/s, five times what the shard can serve.
    arrivals = calm_traffic(100.0, 106.5, 300, 60) + surge(106.0, 106.5, 3000)
    decisions, peak, latencies = replay(allowance, sorted(arrivals))
    hot = decisions["hot"]
    calm = [d for name, ds in decisions.items() if name != "hot" for d in ds]
    assert all(calm)  # not one calm request shed
    assert len(calm) == 1950
    # the surge's first requests fill the shard to its 4 in flight, and then it is cut: from
    # then on it gets what the shard has left after the calm traffic, 300 req/s x 0.5 s.
    assert hot[:3] == [True] * 3
    assert sum(hot[:12]) == 4
    admitted = sum(hot)
    assert 140 < admitted < 170
    assert allowance.shed == len(hot) - admitted
    # the shard's queue stays near the limit, so calm campaigns keep their latency
    calm_ms = sorted(x * 1000 for name, xs in latencies.items() if name != "hot" for x in xs)
    assert peak <= 4 + 2
    assert calm_ms[int(0.99 * len(calm_ms))] < 10.0
    without = replay(ShardAllowance(10**9, 0.5), sorted(arrivals))[2]  # never over
    worst_calm = max(x for name, xs in without.items() if name != "hot" for x in xs)
    assert worst_calm > 0.5  # unprotected, the shard's queue grows by 2,400 req/s: seconds


def test_before_the_shard_is_overrun_nothing_is_shed() -> None:
    allowance = ShardAllowance(inflight_limit=4, shed_share=0.5)
    # a campaign that holds 80% of the shard but at a rate it can serve (400 of ~600 req/s)
    arrivals = calm_traffic(0.0, 2.0, 100, 10) + surge(0.0, 2.0, 400)
    decisions, peak, _ = replay(allowance, sorted(arrivals))
    assert all(decisions["hot"])
    assert len(decisions["hot"]) == 800
    assert peak < 4


def test_an_ordinary_zipf_mix_on_a_busy_shard_is_left_to_the_shard() -> None:
    """No campaign holds half the shard, so the router sheds none of it, however busy."""
    allowance = ShardAllowance(inflight_limit=4, shed_share=0.5)
    shares = zipf_shares(500, 1.0)
    rng = np.random.default_rng(7)
    names = rng.choice(len(shares), size=8000, p=shares)
    times = np.cumsum(rng.exponential(1 / 1000, size=8000))  # 1,000 req/s: overrun
    arrivals = [(float(t), f"c{n}") for t, n in zip(times, names, strict=True)]
    decisions, peak, _ = replay(allowance, arrivals)
    assert all(d for ds in decisions.values() for d in ds)
    assert allowance.shed == 0
    assert peak > 4  # it really was beyond its allowance


def test_two_surging_campaigns_on_one_shard_are_both_cut() -> None:
    allowance = ShardAllowance(inflight_limit=4, shed_share=0.3)
    arrivals = (
        calm_traffic(0.0, 5.5, 200, 40)
        + surge(5.2, 5.5, 2000, "hot-a")
        + surge(5.2, 5.5, 1500, "hot-b")
    )
    decisions, _, _ = replay(allowance, sorted(arrivals))
    for name in ("hot-a", "hot-b"):
        admitted = sum(decisions[name])
        assert admitted < 0.4 * len(decisions[name]), name
    assert all(d for name, ds in decisions.items() if name.startswith("calm") for d in ds)


def test_a_campaign_that_always_dominates_its_shard_is_not_cut_by_a_burst() -> None:
    """70% of a shard, steadily, is that campaign's usual: a burst over the limit is not a surge."""
    allowance = ShardAllowance(inflight_limit=4, shed_share=0.25)
    steady = surge(0.0, 8.0, 210, "big") + calm_traffic(0.0, 8.0, 90, 30)
    burst = [(7.5 + i * 1e-4, "big") for i in range(8)]  # 8 at once: the shard holds 8+
    decisions, peak, _ = replay(allowance, sorted(steady + burst))
    assert peak >= 8
    assert all(decisions["big"])
    assert allowance.shed == 0


def test_a_surge_is_held_for_about_a_second_then_left_to_the_per_campaign_shedder() -> None:
    """Its usual rate learns the surge over ~5 s; cut while under a third of it."""
    allowance = ShardAllowance(inflight_limit=4, shed_share=0.25)
    arrivals = calm_traffic(0.0, 8.5, 300, 60) + surge(6.0, 8.5, 3000)
    decisions, _, _ = replay(allowance, sorted(arrivals))
    per_bucket = [sum(decisions["hot"][k * 300 : (k + 1) * 300]) for k in range(25)]
    # the shard's spare 300 req/s, i.e. ~30 per 100 ms bucket, while the usual rate learns
    assert all(25 <= n <= 35 for n in per_bucket[1:10]), per_bucket
    # after ~1 s the surge is this campaign's new usual: no longer cut here
    assert per_bucket[-1] == 300
    assert 100 < allowance.shards[SHARD].usual["hot"] < 150  # of 300 per bucket: learning


def test_buckets_roll_cleanly_at_float_edges() -> None:
    """101.2 // 0.1 == 1011.0 in floating point: the window must not empty itself there."""
    allowance = ShardAllowance(inflight_limit=1, shed_share=0.25)
    allowance.admit(SHARD, "warm-up", 95.0)
    allowance.sent(SHARD)  # the shard is at its limit from here on
    verdicts = [allowance.admit(SHARD, "hot", 101.19 + i * 0.001) for i in range(30)]
    window = allowance.shards[SHARD]
    assert verdicts[: MIN_EVIDENCE - 1] == [True] * (MIN_EVIDENCE - 1)
    assert not any(verdicts[MIN_EVIDENCE - 1 :])
    assert window.total == 30  # the 10 of 101.19.. plus the 20 after 101.2, nothing lost
    assert BUCKET_S == 0.1


def test_it_is_off_by_default_and_settings_are_checked() -> None:
    assert ShardAllowanceSettings().build().enabled is False
    built = ShardAllowanceSettings(shard_inflight_limit=RECOMMENDED_INFLIGHT_LIMIT).build()
    assert (built.enabled, built.inflight_limit, built.shed_share) == (True, 4, 0.25)
    with pytest.raises(ValidationError, match="shard_shed_share"):
        ShardAllowanceSettings(shard_shed_share=1.5)


def test_nothing_is_cut_while_a_shard_is_new() -> None:
    allowance = ShardAllowance(inflight_limit=1, shed_share=0.25)
    arrivals = surge(0.0, 2.0, 3000)  # a surge from the router's first second
    decisions, peak, _ = replay(allowance, arrivals)
    assert all(decisions["hot"])
    assert peak > 100
