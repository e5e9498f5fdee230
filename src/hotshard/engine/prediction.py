"""Looking ahead: a 30 s forecast for the fastest risers, and a calendar of known events.

Forecasting every partition every second would cost more than the rest of the engine, so the
forecast is a funnel. A vectorised linear projection over all partitions picks the few whose rate
is rising fastest (and the repeat offenders from the heat map); only those get Holt's linear
trend method, and only while a least-squares line through the window rises significantly.
Smoothing parameters are fitted by statsmodels at most ``max_fits_per_step`` times a step and
reused for ``refit_seconds``; between fits, and for flat series, the engine runs Holt's
recursion itself with the cached (or default) parameters, which costs microseconds.

A forecast becomes a hot spot when it would push the owning shard over its target utilisation
before the current rate does: that is a pre-emptive split. A calendar event becomes a hot spot
``calendar_lead_seconds`` before it starts, sized by its expected factor.
"""

from __future__ import annotations

import time as _clock
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from hotshard.engine.config import PlanningConfig, PredictionConfig
from hotshard.engine.detection import shard_units
from hotshard.engine.model import CampaignLoad, HotSpot
from hotshard.engine.windows import RATE, FloatArray, Window
from hotshard.routing import partition_of

DEFAULT_LEVEL = 0.5
"""Holt's level smoothing before a fit: weighs the last second as much as all before it."""
DEFAULT_TREND = 0.3
"""Holt's trend smoothing before a fit: a rise must last a few seconds to steer the trend."""
MIN_POINTS = 10
"""Fewer buckets give a trend that is mostly noise, and statsmodels' heuristic start needs 10."""


@dataclass(frozen=True, slots=True)
class HoltParams:
    level: float
    trend: float
    fitted_at: float


@dataclass(frozen=True, slots=True)
class ForecastStats:
    """What the forecast cost this step (for the benchmark and the decision's notes)."""

    candidates: int
    forecasts: int
    fits: int
    fit_seconds: float


def forecast_holt(series: FloatArray, params: HoltParams | None, steps: float) -> float:
    """Holt's linear trend forecast ``steps`` ahead, by the recursion (no fitting)."""
    a = params.level if params else DEFAULT_LEVEL
    b = params.trend if params else DEFAULT_TREND
    level = float(series[0])
    trend = float(series[1] - series[0])
    for y in series[1:]:
        previous = level
        level = a * float(y) + (1 - a) * (level + trend)
        trend = b * (level - previous) + (1 - b) * trend
    return max(0.0, level + steps * trend)


def project_trend(series: FloatArray, steps: float, min_t: float) -> float | None:
    """The least-squares line's value ``steps`` ahead, or ``None`` unless its slope is rising
    with a t-statistic of at least ``min_t`` (noise has a t-statistic near zero)."""
    n = series.size
    x = np.arange(n, dtype=np.float64)
    xc = x - x.mean()
    sxx = float(xc @ xc)
    slope = float(xc @ (series - series.mean())) / sxx
    intercept = float(series.mean()) - slope * float(x.mean())
    residuals = series - (intercept + slope * x)
    spread = float(np.sqrt((residuals @ residuals) / max(n - 2, 1) / sxx))
    if slope <= 0 or slope < min_t * spread:
        return None
    return intercept + slope * (n - 1 + steps)


def fit_holt(series: FloatArray, now: float) -> HoltParams:
    """Fit Holt's smoothing parameters with statsmodels (slow: milliseconds)."""
    from statsmodels.tsa.holtwinters import Holt

    with warnings.catch_warnings():
        # NB: short, spiky series often end an optimisation early; the result is still usable.
        warnings.simplefilter("ignore")
        # NB: the heuristic start fits in ~10 ms; "estimated" optimises the start too, ~100 ms.
        fitted = Holt(series, initialization_method="heuristic").fit()
    level = float(np.clip(fitted.params["smoothing_level"], 0.01, 1.0))
    trend = float(np.clip(fitted.params["smoothing_trend"], 0.0, 1.0))
    return HoltParams(level, trend, now)


class Forecaster:
    """Forecasts the top candidates and keeps their fitted parameters."""

    def __init__(self, config: PredictionConfig) -> None:
        self.config = config
        self.params: dict[int, HoltParams] = {}
        self.last = ForecastStats(0, 0, 0, 0.0)

    def select(self, window: Window, rate: FloatArray, heat: FloatArray) -> list[int]:
        """The partitions worth a forecast: rising fastest by a linear projection."""
        n = self.config.candidates
        if n == 0:
            return []
        lag = (
            4  # NB: a 4 s slope: long enough to ignore one noisy bucket, short enough to be early.
        )
        past = np.nan_to_num(window.ago(lag)[RATE].astype(np.float64))
        projected = rate + (rate - past) / lag * self.config.horizon_seconds
        # Repeat offenders rank as if they rose faster: the heat map lowers their bar here too.
        # Partitions already hot stay in: a ramp is hot long before it fills its shard.
        rank = projected * (1 + heat) - rate
        rank[~(projected > rate)] = -np.inf
        top = np.argpartition(-rank, n)[:n] if n < rank.size else np.arange(rank.size)
        top = top[np.isfinite(rank[top])]
        return sorted(top.tolist(), key=lambda p: (-rank[p], p))

    def forecast(self, window: Window, candidates: list[int], now: float) -> dict[int, float]:
        """Forecast rate ``horizon_seconds`` ahead for each candidate (skipping flat series)."""
        c = self.config
        out: dict[int, float] = {}
        fits = 0
        spent = 0.0
        for p in candidates:
            series = window.series(RATE, p)
            if series.size < MIN_POINTS:
                continue
            mean = float(series.mean())
            if mean <= 0 or float(series.std()) <= c.flat_cv * mean:
                continue
            linear = project_trend(series, c.horizon_seconds, c.min_trend_t)
            if linear is None:
                continue
            params = self.params.get(p)
            stale = params is None or now - params.fitted_at >= c.refit_seconds
            if stale and fits < c.max_fits_per_step:
                started = _clock.perf_counter()  # NB: measures the fit's cost; never decides.
                params = fit_holt(series, now)
                spent += _clock.perf_counter() - started
                self.params[p] = params
                fits += 1
            # The smaller of the two: Holt reacts fast, the line needs the whole window to agree.
            out[p] = min(forecast_holt(series, params, c.horizon_seconds), linear)
        # Forget parameters of partitions that stopped rising long ago: bounded memory.
        for p in [p for p, v in self.params.items() if now - v.fitted_at > 10 * c.refit_seconds]:
            del self.params[p]
        self.last = ForecastStats(len(candidates), len(out), fits, spent)
        return out


def forecast_hot_spots(
    forecasts: Mapping[int, float],
    rate: FloatArray,
    resident: tuple[FloatArray, FloatArray],
    owner_util: Mapping[int, float],
    baseline: FloatArray,
    factor: FloatArray,
    planning: PlanningConfig,
    config: PredictionConfig,
) -> list[HotSpot]:
    """A forecast is hot when the rise has begun (``rise_factor`` over baseline), the forecast
    itself clears the detection bar, and it would push the owner over target before the rate
    does. The first two gates keep extrapolated noise from moving anything.

    ``rate`` is each partition's total, which the forecast follows; ``resident`` is the (rate,
    cpu) still on its owner, without campaigns split away, and only that grows on the owner."""
    spots = []
    target = planning.target_utilisation
    horizon = config.horizon_seconds
    for p, predicted in sorted(forecasts.items()):
        now_rate = float(rate[p])
        if predicted <= now_rate or now_rate <= 0:
            continue
        if now_rate < config.rise_factor * baseline[p] or predicted < factor[p] * baseline[p]:
            continue
        now_load = shard_units(float(resident[0][p]), float(resident[1][p]), planning)
        later = now_load * predicted / now_rate  # CPU is assumed to scale with the rate.
        util_now = owner_util.get(p, 0.0)
        if util_now <= target < util_now - now_load + later:
            reason = (
                f"partition {p} is forecast at {predicted:.0f} req/s in {horizon:g} s "
                f"(now {now_rate:.0f}): its shard would reach "
                f"{util_now - now_load + later:.0%} of capacity, over the {target:.0%} target"
            )
            spots.append(HotSpot(p, None, "forecast", later / target, reason, later))
    return spots


def calendar_hot_spots(
    config: PredictionConfig,
    partitions: int,
    now: float,
    campaigns: Mapping[tuple[int, str], CampaignLoad],
    baseline_rate: FloatArray,
    baseline_cpu: FloatArray,
    planning: PlanningConfig,
) -> list[HotSpot]:
    """Campaigns of events that start within ``calendar_lead_seconds`` or are under way."""
    spots = []
    for event in config.calendar:
        if not event.start - config.calendar_lead_seconds <= now < event.end:
            continue
        for name in sorted(event.campaigns):
            p = partition_of(name, partitions)
            seen = campaigns.get((p, name))
            # NB: the event multiplies the campaign's *usual* rate: its partition's baseline
            # bounds it, since one second's count of a campaign at 0.3 req/s reads 1-2 req/s
            # (3-6x too big) and once the event is under way that count has the surge in it.
            rate = _usual(seen.rate if seen else None, float(baseline_rate[p]))
            cpu = _usual(seen.cpu if seen else None, float(baseline_cpu[p]))
            load = shard_units(rate, cpu, planning) * event.expected_factor
            when = "under way" if now >= event.start else f"starts in {event.start - now:.0f} s"
            reason = (
                f"calendar event {event.name!r} {when}: campaign {name!r} expected at "
                f"{event.expected_factor:g}x its {rate:.0f} req/s"
            )
            spots.append(
                HotSpot(p, name, "calendar", load / planning.target_utilisation, reason, load)
            )
    return spots


def _usual(seen: float | None, baseline: float) -> float:
    """The smaller of a campaign's last-second figure and its partition's baseline, if known."""
    if seen is None or seen <= 0:
        return baseline
    return min(seen, baseline) if baseline > 0 else seen
