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
    allowance = ShardAllowance(inflight_limit=4, shed_share=0.5)
    # 300 req/s of calm traffic (half the shard's capacity) for a second, then a campaign
    # jumps to 3,000 req/s, five times what the shard can serve.
    arrivals = calm_traffic(100.0, 101.5, 300, 60) + surge(101.0, 101.5, 3000)
    decisions, peak, latencies = replay(allowance, sorted(arrivals))
    hot = decisions["hot"]
    calm = [d for name, ds in decisions.items() if name != "hot" for d in ds]
    assert all(calm)  # not one calm request shed
    assert len(calm) == 450
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
    names = rng.choice(len(shares), size=1500, p=shares)
    times = np.cumsum(rng.exponential(1 / 1000, size=1500))  # 1,000 req/s: overrun
    arrivals = [(float(t), f"c{n}") for t, n in zip(times, names, strict=True)]
    decisions, peak, _ = replay(allowance, arrivals)
    assert all(d for ds in decisions.values() for d in ds)
    assert allowance.shed == 0
    assert peak > 4  # it really was beyond its allowance


def test_two_surging_campaigns_on_one_shard_are_both_cut() -> None:
    allowance = ShardAllowance(inflight_limit=4, shed_share=0.3)
    arrivals = (
        calm_traffic(0.0, 0.5, 200, 40)
        + surge(0.2, 0.5, 2000, "hot-a")
        + surge(0.2, 0.5, 1500, "hot-b")
    )
    decisions, _, _ = replay(allowance, sorted(arrivals))
    for name in ("hot-a", "hot-b"):
        admitted = sum(decisions[name])
        assert admitted < 0.4 * len(decisions[name]), name
    assert all(d for name, ds in decisions.items() if name.startswith("calm") for d in ds)


def test_a_campaign_is_judged_on_recent_buckets_only() -> None:
    allowance = ShardAllowance(inflight_limit=1, shed_share=0.5)
    for i in range(20):  # 20 requests of one campaign in the first bucket
        allowance.admit(SHARD, "hot", 10.0 + i * 0.001)
    allowance.sent(SHARD)  # the shard now holds one: at its limit
    assert allowance.admit(SHARD, "hot", 10.0 + BUCKET_S * 1.5) is False  # previous bucket
    # two buckets on, the old requests are forgotten: a first request is too little evidence
    assert allowance.admit(SHARD, "hot", 10.0 + BUCKET_S * 3.5) is True
    for i in range(MIN_EVIDENCE - 2):
        assert allowance.admit(SHARD, "hot", 10.0 + BUCKET_S * 3.5 + i * 1e-4) is True
    assert allowance.admit(SHARD, "hot", 10.0 + BUCKET_S * 3.6) is False


def test_it_is_off_by_default_and_settings_are_checked() -> None:
    assert ShardAllowanceSettings().build().enabled is False
    built = ShardAllowanceSettings(shard_inflight_limit=RECOMMENDED_INFLIGHT_LIMIT).build()
    assert (built.enabled, built.inflight_limit, built.shed_share) == (True, 4, 0.5)
    with pytest.raises(ValidationError, match="shard_shed_share"):
        ShardAllowanceSettings(shard_shed_share=1.5)
