"""The one translation from a PartitionMap spec to the shared engine's :class:`EngineConfig`.

A PartitionMap speaks the user's language (ticks, Kubernetes quantities, RFC 3339 times); the
engine speaks seconds, bytes and cores. :func:`to_engine_config` is the only place where one
becomes the other, so a field means the same thing in the CRD, in local mode and in the
engine's own documentation (`docs/engine.md`). Engine settings the spec does not expose keep
the engine's defaults, whose reasons are written next to them in ``hotshard.engine.config``.

A spec can pass the CRD's schema and still not make an engine (a detection factor of exactly
1 means "every partition is hot"); that raises :class:`~hotshard_operator.resources.SpecError`
with a message naming the field, which the reconciler turns into an ``InvalidSpec`` condition
instead of a crash loop.
"""

from __future__ import annotations

import math
import re
from datetime import datetime

from pydantic import ValidationError

from hotshard.engine import (
    CalendarEvent,
    CostConfig,
    DetectionConfig,
    EngineConfig,
    PlanningConfig,
    PredictionConfig,
    SignalWeights,
)
from hotshard_operator.resources import PartitionMapSpec, SpecError

DEFAULT_MIN_HOT_FACTOR = DetectionConfig().min_hot_factor
"""The engine's floor for a heat-discounted bar; lowered to the spec's factor when that is lower."""
MIN_WINDOW_BUCKETS = 4
MAX_WINDOW_BUCKETS = 600
"""The engine's window bounds, in one-second buckets (see ``DetectionConfig.window_seconds``)."""

SPEC_FIELD = {
    "shard_capacity_cpu": "bidder.resources.limits.cpu",
    "shard_capacity_memory_bytes": "bidder.resources.limits.memory",
}
"""Engine settings derived from a spec field under another name, for error messages."""

_SUFFIX = {
    "": 1.0,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "Ki": 2.0**10,
    "Mi": 2.0**20,
    "Gi": 2.0**30,
    "Ti": 2.0**40,
}
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m|Ki|Mi|Gi|Ti|k|M|G|T)?$")


def parse_quantity(text: str) -> float:
    """A Kubernetes quantity as a plain number: ``500m`` is 0.5, ``1Gi`` is 1073741824."""
    match = _QUANTITY.match(text)
    if match is None:
        raise SpecError(f"{text!r} is not a Kubernetes quantity")
    return float(match.group(1)) * _SUFFIX[match.group(2) or ""]


def _epoch(stamp: str, where: str) -> float:
    try:
        parsed = datetime.fromisoformat(stamp)
    except ValueError as exc:
        raise SpecError(f"{where} {stamp!r} is not an RFC 3339 time") from exc
    if parsed.tzinfo is None:
        raise SpecError(f"{where} {stamp!r} needs a time zone (for example a trailing Z)")
    return parsed.timestamp()


def _calendar(spec: PartitionMapSpec) -> tuple[CalendarEvent, ...]:
    events = []
    for i, event in enumerate(spec.prediction.calendar):
        where = f"prediction.calendar[{i}]"
        if event.expected_factor <= 1:
            raise SpecError(f"{where}.expectedFactor must be above 1 for the event to matter")
        start = _epoch(event.start, f"{where}.start")
        events.append(
            CalendarEvent(
                name=event.name,
                start=start,
                end=start + event.duration,
                campaigns=tuple(event.campaigns),
                expected_factor=event.expected_factor,
            )
        )
    return tuple(events)


def to_engine_config(spec: PartitionMapSpec) -> EngineConfig:
    """The engine configuration a PartitionMap asks for; raises :class:`SpecError` if none fits.

    Ticks become seconds (``sustain`` x ``interval``), the window becomes whole one-second
    buckets, the bidder's CPU and memory limits become a shard's capacity, the warm pool size
    becomes the engine's minimum warm pool, and calendar times become Unix seconds (the control
    loop's clock).
    """
    d = spec.detection
    if d.factor <= 1:
        raise SpecError("detection.factor must be above 1: at 1 every partition is hot")
    limits = spec.bidder.resources.limits
    try:
        return EngineConfig(
            detection=DetectionConfig(
                hot_factor=d.factor,
                min_hot_factor=min(DEFAULT_MIN_HOT_FACTOR, d.factor),
                floor_rps=d.floor,
                # NB: the engine's buckets are one second long; it cannot sustain for less.
                sustain_seconds=max(1.0, d.sustain * d.interval),
                window_seconds=min(
                    MAX_WINDOW_BUCKETS, max(MIN_WINDOW_BUCKETS, math.ceil(d.window))
                ),
                stale_after_seconds=spec.metrics.stale_after,
                weights=SignalWeights(**d.weights.model_dump()),
            ),
            planning=PlanningConfig(
                cooldown_seconds=spec.scale_down.cooldown,
                max_shards=spec.budget.max_shards,
                min_warm_pool=spec.tiers.overflow.warm,
                shard_capacity_cpu=parse_quantity(limits.cpu),
                shard_capacity_memory_bytes=parse_quantity(limits.memory),
            ),
            prediction=PredictionConfig(
                enabled=spec.prediction.enabled,
                horizon_seconds=spec.prediction.horizon,
                calendar=_calendar(spec),
            ),
            cost=CostConfig(shard_hour_cost=spec.budget.shard_hour_cost),
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        setting = ".".join(str(p) for p in first["loc"])
        where = SPEC_FIELD.get(setting, setting)
        raise SpecError(f"{where}: the engine rejects it ({first['msg']})") from exc
