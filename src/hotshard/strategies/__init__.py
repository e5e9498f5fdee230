"""The strategies hotshard is compared against, and hotshard's own, under one set of names.

``make bench`` (the local fleet) and ``hotshard simulate`` (the time-stepped model) both run
the same five strategies; this package names them and holds the pure policies of the three
baselines. It does no I/O and keeps no clock: the caller passes samples and time in.

- ``static``: consistent hashing, nothing moves (:func:`place_static`);
- ``hpa``: uniform scale-out on mean CPU with the HPA's defaults (:class:`HpaAutoscaler`);
- ``bounded-load``: a proxy's bounded-load hashing (:class:`BoundedLoadRing`);
- ``hotshard-reactive``: hotshard's engine with prediction and the event calendar off;
- ``hotshard-predictive``: hotshard's engine with both on.
"""

from __future__ import annotations

from enum import StrEnum

from hotshard.strategies.bounded import DEFAULT_FACTOR, BoundedLoadRing
from hotshard.strategies.hpa import HpaAutoscaler, HpaSettings, propose_replicas
from hotshard.strategies.static import place_static


class Strategy(StrEnum):
    """One strategy of the side-by-side comparison, by the name tables and files use."""

    STATIC = "static"
    HPA = "hpa"
    BOUNDED_LOAD = "bounded-load"
    HOTSHARD_REACTIVE = "hotshard-reactive"
    HOTSHARD_PREDICTIVE = "hotshard-predictive"

    @property
    def is_hotshard(self) -> bool:
        """True for the strategies that run hotshard's engine."""
        return self in (Strategy.HOTSHARD_REACTIVE, Strategy.HOTSHARD_PREDICTIVE)

    @property
    def description(self) -> str:
        """One line for tables and ``--help``."""
        return DESCRIPTIONS[self]


DESCRIPTIONS: dict[Strategy, str] = {
    Strategy.STATIC: "static consistent hashing, no mitigation",
    Strategy.HPA: "uniform scale-out on mean CPU, HPA defaults, time-compressed",
    Strategy.BOUNDED_LOAD: "bounded-load consistent hashing, factor 1.25 (Envoy/HAProxy)",
    Strategy.HOTSHARD_REACTIVE: "hotshard engine, detection only (no forecast, no calendar)",
    Strategy.HOTSHARD_PREDICTIVE: "hotshard engine with forecast and event calendar",
}

ORDER: tuple[Strategy, ...] = tuple(Strategy)
"""The order every table lists the strategies in: baselines first, hotshard last."""

REFERENCE = Strategy.HOTSHARD_PREDICTIVE
"""The strategy ratios are taken against."""

__all__ = [
    "DEFAULT_FACTOR",
    "ORDER",
    "REFERENCE",
    "BoundedLoadRing",
    "HpaAutoscaler",
    "HpaSettings",
    "Strategy",
    "place_static",
    "propose_replicas",
]
