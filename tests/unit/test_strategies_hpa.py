"""The HPA-like autoscaler reproduces the HPA's documented arithmetic and defaults."""

from __future__ import annotations

import pytest

from hotshard.strategies import HpaAutoscaler, HpaSettings, propose_replicas


def test_raw_proposal_is_ceil_of_current_times_ratio() -> None:
    s = HpaSettings(target_utilisation=0.5)
    assert propose_replicas(4, [0.9, 0.9, 0.9, 0.9], s) == 8  # ceil(4 * 1.8) = 8
    assert propose_replicas(3, [0.6, 0.7, 0.8], s) == 5  # mean 0.7 -> ceil(3 * 1.4) = 5
    assert propose_replicas(10, [0.2] * 10, s) == 4  # ceil(10 * 0.4)


def test_tolerance_band_holds_within_ten_percent() -> None:
    s = HpaSettings(target_utilisation=0.5)
    assert propose_replicas(4, [0.55] * 4, s) == 4  # ratio 1.10: inside the band
    assert propose_replicas(4, [0.45] * 4, s) == 4  # ratio 0.90: inside the band
    assert propose_replicas(4, [0.56] * 4, s) == 5  # ratio 1.12: outside, ceil(4.48)


def test_scale_up_is_limited_to_double_or_plus_four_per_period() -> None:
    hpa = HpaAutoscaler(HpaSettings(target_utilisation=0.5))
    # 4 pods at 200 %: raw proposal 16, but one period allows max(2 * 4, 4 + 4) = 8.
    assert hpa.tick(0.0, 4, [2.0] * 4) == 8
    # Within the same sync period nothing is recomputed.
    assert hpa.tick(10.0, 8, [2.0] * 8) == 8
    # Next period: from 8 the limit is max(16, 12) = 16; raw is 32.
    assert hpa.tick(15.0, 8, [2.0] * 8) == 16


def test_plus_four_beats_doubling_for_small_targets() -> None:
    hpa = HpaAutoscaler(HpaSettings(target_utilisation=0.5))
    assert hpa.tick(0.0, 1, [5.0]) == 5  # raw 10; max(2 * 1, 1 + 4) = 5


def test_scale_down_waits_for_the_stabilisation_window() -> None:
    hpa = HpaAutoscaler(HpaSettings(target_utilisation=0.5))
    assert hpa.tick(0.0, 8, [0.5] * 8) == 8  # on target: recommendation 8
    # Load drops to a quarter: raw proposal 4, but 8 is in the 300 s window.
    for t in range(15, 300, 15):
        assert hpa.tick(float(t), 8, [0.125] * 8) == 8
    # The recommendation of 8 made at t=0 leaves the window after 300 s.
    assert hpa.tick(315.0, 8, [0.125] * 8) == 2  # ceil(8 * 0.25) = 2


def test_time_compression_divides_every_period() -> None:
    hpa = HpaAutoscaler(HpaSettings(target_utilisation=0.5, time_compression=10.0))
    assert hpa.tick(0.0, 8, [0.5] * 8) == 8
    assert hpa.tick(1.0, 8, [0.125] * 8) == 8  # 1.0 s < the 1.5 s compressed sync period
    assert hpa.tick(1.5, 8, [0.125] * 8) == 8  # still inside the 30 s window
    assert hpa.tick(31.5, 8, [0.125] * 8) == 2


def test_replicas_stay_within_min_and_max() -> None:
    hpa = HpaAutoscaler(HpaSettings(target_utilisation=0.5, max_replicas=6, min_replicas=2))
    assert hpa.tick(0.0, 4, [2.0] * 4) == 6
    low = HpaAutoscaler(
        HpaSettings(target_utilisation=0.5, min_replicas=3, scale_down_window_s=0.0)
    )
    assert low.tick(0.0, 8, [0.01] * 8) == 3


@pytest.mark.parametrize("factor", [0.0, -1.0])
def test_settings_reject_a_compression_below_one(factor: float) -> None:
    with pytest.raises(ValueError, match="time_compression"):
        HpaSettings(time_compression=factor)
