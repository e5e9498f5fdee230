"""The router sheds a hot campaign's excess, and only the hot campaign's, by a token bucket."""

from __future__ import annotations

from hotshard_bidder.heavy_hitters import WindowedTopK
from hotshard_bidder.shedding import BURST_SECONDS, RELEASE_WINDOWS, HotKeyShedder


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def send(shedder: HotKeyShedder, clock: Clock, campaign: str, ways: int = 1) -> bool:
    shedder.sketch.add(campaign)
    return shedder.allow(campaign, lambda: ways, clock.t)


def test_campaigns_under_the_limit_are_never_shed() -> None:
    clock = Clock()
    shedder = HotKeyShedder(100.0, WindowedTopK(10, clock=clock))
    passed = 0
    for i in range(100):  # 100 requests in one second: exactly at the limit
        clock.t = 1000.0 + i / 100
        passed += send(shedder, clock, "calm")
    assert passed == 100
    assert shedder.throttled() == []


def test_a_hot_campaign_is_held_to_its_rate_and_others_pass() -> None:
    clock = Clock()
    shedder = HotKeyShedder(100.0, WindowedTopK(10, clock=clock))
    hot_passed = calm_passed = 0
    # 1000 req/s of "hot" for two seconds, one "calm" request every 10 ms.
    for i in range(2000):
        clock.t = 1000.0 + i / 1000
        hot_passed += send(shedder, clock, "hot")
        if i % 10 == 0:
            calm_passed += send(shedder, clock, "calm")
    assert calm_passed == 200
    assert shedder.throttled() == ["hot"]
    # Until 20 requests are seen the pace is judged over at least 0.2 s, so the bar is
    # 1.5 x 100 x 0.2 = 30: the first 30 pass before the bucket exists. The bucket starts with
    # 5 tokens (50 ms at 100 req/s) and refills at 100 req/s for the remaining 1.969 s:
    # 30 + 5 + 196 = 231.
    assert hot_passed == 231


def test_a_split_widens_the_allowance_by_its_ways() -> None:
    clock = Clock()
    shedder = HotKeyShedder(100.0, WindowedTopK(10, clock=clock))
    for i in range(1000):  # flag it in the first second
        clock.t = 1000.0 + i / 1000
        send(shedder, clock, "hot")
    passed = 0
    for i in range(1000):  # now served by 3 shards: 300 req/s allowed
        clock.t = 1001.0 + i / 1000
        passed += send(shedder, clock, "hot", ways=3)
    assert 295 <= passed <= 300 + 300 * BURST_SECONDS


def test_a_campaign_is_released_after_quiet_windows() -> None:
    clock = Clock()
    shedder = HotKeyShedder(100.0, WindowedTopK(10, clock=clock))
    for i in range(500):
        clock.t = 1000.0 + i / 500
        send(shedder, clock, "hot")
    assert shedder.throttled() == ["hot"]
    # Calm again: 50 req/s. The bucket goes after RELEASE_WINDOWS whole quiet windows.
    second = 1001
    while shedder.throttled() and second < 1010:
        for i in range(50):
            clock.t = second + i / 50
            send(shedder, clock, "hot")
        second += 1
    assert shedder.throttled() == []
    assert second - 1001 == RELEASE_WINDOWS + 1
