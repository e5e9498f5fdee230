"""Request-rate profiles for the load generator and the intended send time of every request.

The load generator is open loop: when each request goes out is decided before the run starts,
from a rate profile, and never waits for an answer. This module owns both halves of that: the
profiles (a constant rate, steps, a spike, a trace file of ``t_seconds,rate`` rows, or the 1998
World Cup site's per-minute request counts compressed in time) and :func:`send_times`, which
turns a profile into the exact offset of each request from the start of the run.

Profiles are parsed from one short CLI string, e.g. ``constant:2000``, ``step:0=500,10=2000``,
``spike:base=500,peak=4000,start=5,length=3``, ``trace:rates.csv`` or
``worldcup98:peak=3000,start_minute=80000,minutes=60,seconds_per_minute=1``.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

STEP_SECONDS = 0.001
"""Integration step for :func:`send_times`: 1 ms is finer than any profile edge we use and keeps
a 10-minute schedule at 600k points."""

MAX_PLANNED_REQUESTS = 2_000_000
"""Cap on one run's schedule: a planned request costs ~190 bytes of plan (1e7 took 1.87 GB), so
2M is ~0.4 GB, and ten minutes at 3k rps (more than one box sends) is only 1.8M."""


class TooManyRequestsError(ValueError):
    """The profile over the duration schedules more than :data:`MAX_PLANNED_REQUESTS`."""


class RateProfile(Protocol):
    """Requests per second as a function of seconds since the start of the run."""

    def rates(self, t: FloatArray) -> FloatArray: ...

    def describe(self) -> str: ...


@dataclass(frozen=True)
class ConstantRate:
    rate: float

    def rates(self, t: FloatArray) -> FloatArray:
        return np.full_like(t, self.rate, dtype=np.float64)

    def describe(self) -> str:
        return f"constant {self.rate:g} rps"


@dataclass(frozen=True)
class StepRate:
    """Piecewise constant: ``(start_second, rate)`` pairs; before the first step the rate is 0."""

    steps: tuple[tuple[float, float], ...]

    def rates(self, t: FloatArray) -> FloatArray:
        starts = np.array([s for s, _ in self.steps], dtype=np.float64)
        values = np.array([0.0, *(r for _, r in self.steps)], dtype=np.float64)
        return values[np.searchsorted(starts, t, side="right")]

    def describe(self) -> str:
        return "steps " + ", ".join(f"{r:g} rps from {s:g}s" for s, r in self.steps)


@dataclass(frozen=True)
class SpikeRate:
    """``base`` rps, jumping to ``peak`` for ``length`` seconds from ``start``."""

    base: float
    peak: float
    start: float
    length: float

    def rates(self, t: FloatArray) -> FloatArray:
        inside = (t >= self.start) & (t < self.start + self.length)
        return np.where(inside, self.peak, self.base).astype(np.float64)

    def describe(self) -> str:
        return f"spike {self.base:g} -> {self.peak:g} rps at {self.start:g}s for {self.length:g}s"


@dataclass(frozen=True)
class TraceRate:
    """Rates read from a trace, linearly interpolated between points, held after the last."""

    times: tuple[float, ...]
    values: tuple[float, ...]
    label: str = "trace"

    def rates(self, t: FloatArray) -> FloatArray:
        rates = np.interp(t, np.array(self.times), np.array(self.values))
        return np.asarray(rates, dtype=np.float64)

    def describe(self) -> str:
        return f"{self.label} ({len(self.times)} points, peak {max(self.values):g} rps)"


def read_trace_csv(path: Path) -> TraceRate:
    """A ``t_seconds,rate`` CSV (header optional) as a profile."""
    points: list[tuple[float, float]] = []
    with path.open(newline="") as f:
        for row in csv.reader(f):
            if not row or row[0].strip().startswith("#"):
                continue
            try:
                points.append((float(row[0]), float(row[1])))
            except ValueError:
                if points:  # a header is only allowed on the first line
                    raise ValueError(f"{path}: bad row {row!r}; expected t_seconds,rate") from None
    if not points:
        raise ValueError(f"{path}: no t_seconds,rate rows")
    points.sort()
    return TraceRate(tuple(p[0] for p in points), tuple(p[1] for p in points), label=path.name)


def worldcup98_profile(
    peak: float, start_minute: int = 0, minutes: int = 60, seconds_per_minute: float = 1.0
) -> TraceRate:
    """A window of the World Cup 98 per-minute trace, one minute played in ``seconds_per_minute``,
    scaled so that its busiest minute becomes ``peak`` rps."""
    from hotshard.datasets import worldcup98_per_minute

    counts = [c for _, c in worldcup98_per_minute()[start_minute : start_minute + minutes]]
    if not counts or max(counts) <= 0:
        raise ValueError(f"World Cup 98 window at minute {start_minute} has no traffic")
    scale = peak / max(counts)
    times = tuple(i * seconds_per_minute for i in range(len(counts)))
    values = tuple(c * scale for c in counts)
    return TraceRate(times, values, label=f"worldcup98 from minute {start_minute}")


def _parse_fields(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for part in filter(None, text.split(",")):
        name, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"expected name=value, got {part!r}")
        fields[name.strip()] = value.strip()
    return fields


def _rate(text: str, name: str = "rate", zero_ok: bool = False) -> float:
    """A finite rate in rps: positive, or also zero where ``zero_ok`` (silence in a profile)."""
    value = _number(text, name)
    if value < 0 or (value == 0 and not zero_ok):
        raise ValueError(f"{name} must be {'>= 0' if zero_ok else '> 0'} rps, got {text!r}")
    return value


def _number(text: str, name: str) -> float:
    value = float(text)
    if not np.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {text!r}")
    return value


def _field(fields: dict[str, str], name: str) -> str:
    if name not in fields:
        raise ValueError(f"missing parameter {name!r}")
    return fields[name]


def parse_profile(text: str) -> RateProfile:
    """Parse a profile from its CLI form (see the module docstring); a bare number is constant."""
    kind, _, rest = text.partition(":")
    try:
        if not rest:
            return ConstantRate(_rate(kind))
        if kind == "constant":
            return ConstantRate(_rate(rest))
        if kind == "step":
            steps = sorted(
                (_number(s, "step start"), _rate(r, zero_ok=True))
                for s, r in _parse_fields(rest).items()
            )
            if not any(r > 0 for _, r in steps):
                raise ValueError("every step has rate 0")
            return StepRate(tuple(steps))
        if kind == "spike":
            f = _parse_fields(rest)
            return SpikeRate(
                _rate(_field(f, "base"), "base", zero_ok=True),
                _rate(_field(f, "peak"), "peak"),
                _number(_field(f, "start"), "start"),
                _rate(_field(f, "length"), "length"),
            )
        if kind == "trace":
            try:
                return read_trace_csv(Path(rest))
            except OSError as exc:
                raise ValueError(f"cannot read trace file {rest!r}: {exc.strerror}") from exc
        if kind == "worldcup98":
            f = _parse_fields(rest)
            return worldcup98_profile(
                peak=_rate(_field(f, "peak"), "peak"),
                start_minute=int(f.get("start_minute", "0")),
                minutes=int(f.get("minutes", "60")),
                seconds_per_minute=float(f.get("seconds_per_minute", "1")),
            )
    except (KeyError, ValueError) as exc:
        raise ValueError(f"bad rate profile {text!r}: {exc}") from exc
    raise ValueError(
        f"unknown rate profile {kind!r}; use constant:R, step:T=R,..., spike:base=,peak=,start=,"
        "length=, trace:FILE.csv or worldcup98:peak=,start_minute=,minutes=,seconds_per_minute="
    )


def send_times(profile: RateProfile, duration: float) -> FloatArray:
    """The intended send offset (seconds from the start) of every request in ``[0, duration)``.

    The rate is integrated in :data:`STEP_SECONDS` steps and request ``k`` goes out when the
    expected count reaches ``k + 1/2``: a constant 1000 rps sends at 0.5 ms, 1.5 ms, ... and a
    step changes the spacing exactly at its edge. Evenly spaced arrivals (rather than
    Poisson) keep runs comparable: any queueing seen is the server's, not the generator's dice.
    """
    if duration <= 0:
        return np.empty(0, dtype=np.float64)
    steps, edges, rate, expected = _integrate(profile, duration)
    total = _count(expected)
    targets = np.arange(total, dtype=np.float64) + 0.5
    # The step in which the expected count first reaches each target, then the exact instant
    # inside that step (the rate is constant within a step). Zero-rate stretches are skipped.
    step = np.clip(np.searchsorted(expected, targets - 1e-9, side="left") - 1, 0, steps - 1)
    within = (targets - expected[step]) / np.maximum(rate[step] * STEP_SECONDS, 1e-12)
    times = edges[step] + np.clip(within, 0.0, 1.0) * STEP_SECONDS
    return np.asarray(times[times < duration], dtype=np.float64)


def _integrate(
    profile: RateProfile, duration: float
) -> tuple[int, FloatArray, FloatArray, FloatArray]:
    """Steps, step edges, rate per step and expected count at each edge over ``duration``."""
    steps = int(np.ceil(duration / STEP_SECONDS))
    edges = np.arange(steps + 1, dtype=np.float64) * STEP_SECONDS
    mids = edges[:-1] + STEP_SECONDS / 2
    rate = np.clip(profile.rates(mids), 0.0, None)
    expected = np.concatenate(([0.0], np.cumsum(rate * STEP_SECONDS)))
    return steps, edges, rate, expected


def _count(expected: FloatArray) -> int:
    """Requests scheduled for an expected count, refused past :data:`MAX_PLANNED_REQUESTS`."""
    # Request k goes out when the expected count reaches k + 1/2: a constant rate R sends at
    # 0.5/R, 1.5/R, ..., exactly R * duration requests. The epsilon absorbs float drift.
    total = float(np.floor(expected[-1] + 0.5 + 1e-6))
    if not total <= MAX_PLANNED_REQUESTS:
        raise TooManyRequestsError(
            f"the profile plans {total:.3g} requests, over the cap of {MAX_PLANNED_REQUESTS:,} "
            "per run (MAX_PLANNED_REQUESTS); lower the rate or the duration"
        )
    return int(total)


def planned_count(profile: RateProfile, duration: float) -> int:
    """How many requests :func:`send_times` would schedule, without building the schedule;
    raises :class:`TooManyRequestsError` past :data:`MAX_PLANNED_REQUESTS`."""
    if duration <= 0:
        return 0
    return _count(_integrate(profile, duration)[3])
