"""Planning for growth: how big a rising hot spot will be by the time its new shards serve it.

A spike is detected on its way up. Placing it for the load of the instant means re-splitting a
second later, and each re-split is a hand-over and a shuffle of warm traffic; so while a hot
spot's partition is rising fast (this bucket ``growth_trigger`` times the one before), it is
sized for its projected load: the last second's rise carried on for ``growth_horizon_seconds``,
never more than ``growth_cap`` times today's. A *rising surge* (over ``surge_factor`` times its
baseline as well) is also isolated: it leaves its base shard for a warm one before it fills it.
Everything here is arithmetic on two buckets, so it is deterministic and costs nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from hotshard.engine.config import EngineConfig, PlanningConfig
from hotshard.engine.model import HotSpot


@dataclass(frozen=True, slots=True)
class Growth:
    """What a hot spot is planned for, relative to what it carries now."""

    factor: float = 1.0
    """Projected load over current load, at least 1."""
    surge: bool = False
    """Rising and at least ``surge_factor`` over its baseline: isolate it on a warm shard."""
    why: str = ""
    """The projection in words, for the action's reason; empty when not rising."""


STEADY = Growth()
"""Not rising: planned for what it carries now."""


def assess_growth(
    now: float,
    previous: float,
    baseline: float,
    planning: PlanningConfig,
    surge_factor: float,
) -> Growth:
    """Project a partition's rate from its last two buckets (req/s each); ``previous`` may be
    NaN when that second was not reported, which counts as no rise."""
    if not (now > 0 and math.isfinite(previous)) or now <= planning.growth_trigger * previous:
        return STEADY
    ahead = now + planning.growth_horizon_seconds * (now - previous)
    projected = max(now, min(ahead, planning.growth_cap * now))
    factor = projected / now
    surge = planning.isolate_surges and now >= surge_factor * baseline
    why = (
        f"rising from {previous:.4g} to {now:.4g} req/s in a second, sized for {factor:.2g}x "
        f"({planning.growth_horizon_seconds:g} s on, at most {planning.growth_cap:g}x)"
    )
    return Growth(factor, surge, why)


def spot_growth(
    spot: HotSpot,
    rate: npt.NDArray[np.floating],
    previous: npt.NDArray[np.floating],
    baseline: npt.NDArray[np.floating],
    config: EngineConfig,
) -> Growth:
    """How fast a detected hot spot's partition rises, from its rate this bucket and the one
    before (per partition). Only load grows: forecasts and events carry their own growth, a
    resource hot spot needs a sandbox, and latency or memory is a symptom."""
    if spot.signal not in ("rate", "cpu"):
        return STEADY
    p = spot.partition
    return assess_growth(
        float(rate[p]),
        float(previous[p]),
        float(baseline[p]),
        config.planning,
        config.detection.surge_factor,
    )
