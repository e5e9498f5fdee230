"""Rate profiles and the intended send time of every request (the open-loop schedule)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hotshard_bidder.profiles import (
    ConstantRate,
    RateProfile,
    SpikeRate,
    parse_profile,
    send_times,
    worldcup98_profile,
)


def at(profile: RateProfile | str, *seconds: float) -> list[float]:
    chosen = parse_profile(profile) if isinstance(profile, str) else profile
    values: list[float] = chosen.rates(np.array(seconds, dtype=np.float64)).tolist()
    return values


def test_constant_schedule_is_evenly_spaced_from_half_a_gap() -> None:
    times = send_times(ConstantRate(1000), 2.0)
    assert len(times) == 2000
    assert times[:3] == pytest.approx([0.0005, 0.0015, 0.0025])
    assert np.diff(times) == pytest.approx(np.full(1999, 0.001))


def test_step_schedule_changes_spacing_at_the_edge_and_skips_silence() -> None:
    times = send_times(parse_profile("step:0=100,1=0,2=200"), 3.0)
    assert len(times) == 100 + 0 + 200
    assert times[99] == pytest.approx(0.995)
    assert times[100] == pytest.approx(2.0025)  # nothing is due in the silent second
    assert times[101] - times[100] == pytest.approx(0.005)


def test_step_profile_values() -> None:
    assert at("step:2=500,0=100,5=50", 0.0, 1.9, 2.0, 4.99, 5.0, 60.0) == [
        100.0,
        100.0,
        500.0,
        500.0,
        50.0,
        50.0,
    ]
    assert at("step:3=10", 1.0) == [0.0]


def test_spike_profile_values() -> None:
    spike = parse_profile("spike:base=500,peak=4000,start=5,length=3")
    assert isinstance(spike, SpikeRate)
    assert at(spike, 4.99, 5.0, 7.99, 8.0) == [500.0, 4000.0, 4000.0, 500.0]
    assert len(send_times(spike, 10.0)) == 500 * 7 + 4000 * 3


def test_trace_file_is_interpolated(tmp_path: Path) -> None:
    trace = tmp_path / "rates.csv"
    trace.write_text("t_seconds,rate\n0,100\n10,300\n20,300\n")
    assert at(f"trace:{trace}", 0.0, 5.0, 15.0, 30.0) == [100.0, 200.0, 300.0, 300.0]


def test_worldcup98_window_is_scaled_to_its_peak() -> None:
    profile = worldcup98_profile(peak=3000, start_minute=80_000, minutes=30, seconds_per_minute=2)
    assert max(profile.values) == pytest.approx(3000)
    assert profile.times[:3] == (0.0, 2.0, 4.0)
    assert len(profile.times) == 30


def test_bare_number_is_a_constant_rate() -> None:
    assert parse_profile("250") == ConstantRate(250.0)
    assert parse_profile("constant:250") == ConstantRate(250.0)


@pytest.mark.parametrize("text", ["sine:5", "spike:base=1", "step:x=1", "constant:fast"])
def test_bad_profiles_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="profile"):
        parse_profile(text)


def test_a_schedule_past_the_cap_is_refused_before_it_is_built() -> None:
    from hotshard_bidder.profiles import MAX_PLANNED_REQUESTS, TooManyRequestsError, planned_count

    with pytest.raises(TooManyRequestsError, match="2,000,000"):
        send_times(parse_profile("constant:1e9"), 1.0)
    with pytest.raises(TooManyRequestsError, match="MAX_PLANNED_REQUESTS"):
        planned_count(parse_profile("spike:base=1,peak=1e12,start=0.5,length=0.1"), 1.0)
    assert planned_count(ConstantRate(float(MAX_PLANNED_REQUESTS)), 1.0) == MAX_PLANNED_REQUESTS
    assert (
        planned_count(ConstantRate(1000.0), 2.0)
        == 2000
        == len(send_times(ConstantRate(1000.0), 2.0))
    )


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("constant:-5", "rate must be > 0"),
        ("constant:0", "rate must be > 0"),
        ("-5", "rate must be > 0"),
        ("constant:inf", "finite"),
        ("constant:nan", "finite"),
        ("step:0=-1,5=10", ">= 0"),
        ("step:0=0", "every step has rate 0"),
        ("spike:base=5,peak=-1,start=1,length=1", "peak must be > 0"),
        ("spike:base=5", "missing parameter 'peak'"),
        ("spike:base=5,peak=9,length=1", "missing parameter 'start'"),
    ],
)
def test_bad_rates_and_missing_parameters_are_named(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_profile(text)
