"""An HPA-like uniform autoscaler: the baseline most Kubernetes users already run.

The benchmark and the simulation compare hotshard against what the Horizontal Pod Autoscaler
would do with the same CPU samples. This module reimplements the HPA's replica arithmetic and
its documented defaults, so both compare against one policy, and owns nothing else: no pods,
no metrics API, no clock. The caller passes per-shard CPU utilisation and the time; the
autoscaler answers with a desired replica count.

Defaults, each from the Kubernetes documentation ("Horizontal Pod Autoscaling", section
"Algorithm details" and "Default Behavior", kubernetes.io/docs/tasks/run-application/
horizontal-pod-autoscale/, and the autoscaling/v2 ``HPAScalingRules`` API reference):

- ``desired = ceil(current * currentMetric / targetMetric)`` on the mean utilisation;
- no change while ``|ratio - 1| <= 0.1`` (the cluster-wide tolerance, 10 % by default);
- the controller syncs every 15 s (``--horizontal-pod-autoscaler-sync-period``);
- scale-up: no stabilisation window; at most the larger of +100 % or +4 pods per 15 s period;
- scale-down: a 300 s stabilisation window (the highest recommendation over the window wins),
  then at most 100 % of the pods removed per 15 s period.

Everything measured in seconds is divided by ``time_compression``, the factor by which the
scenario compresses time, so a 10x-compressed replay syncs every 1.5 s with a 30 s window.
What is left out: the pod-readiness and missing-metrics rules (every shard reports a sample
here) and the 5-minute CPU initialisation period.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field


class HpaSettings(BaseModel):
    """The HPA's knobs, at their documented defaults (times in uncompressed seconds)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    target_utilisation: float = Field(
        default=0.5, gt=0, description="Target mean CPU utilisation (0.5 = 50 % of the request)."
    )
    tolerance: float = Field(default=0.1, ge=0, description="HPA default cluster tolerance: 10 %.")
    sync_period_s: float = Field(default=15.0, gt=0, description="HPA default sync period.")
    scale_up_percent: float = Field(
        default=100.0, ge=0, description="Default scale-up policy: +100 % per period."
    )
    scale_up_pods: int = Field(default=4, ge=0, description="Default scale-up policy: +4 pods.")
    scale_up_period_s: float = Field(default=15.0, gt=0, description="Default policy period.")
    scale_down_window_s: float = Field(
        default=300.0, ge=0, description="Default scale-down stabilisation window: 300 s."
    )
    scale_down_percent: float = Field(
        default=100.0, ge=0, description="Default scale-down policy: -100 % per 15 s period."
    )
    scale_down_period_s: float = Field(default=15.0, gt=0, description="Default policy period.")
    min_replicas: int = Field(default=1, ge=1)
    max_replicas: int = Field(default=1000, ge=1)
    time_compression: float = Field(
        default=1.0, ge=1.0, description="Divide every period and window by this factor."
    )

    def seconds(self, uncompressed: float) -> float:
        """``uncompressed`` seconds of HPA time, on the compressed scenario clock."""
        return uncompressed / self.time_compression


@dataclass(slots=True)
class _Change:
    at: float
    delta: int


@dataclass(slots=True)
class HpaAutoscaler:
    """The HPA's control loop for one scale target, driven by the caller's clock.

    Call :meth:`tick` as often as you like; it recomputes only once a sync period has passed
    and otherwise returns the last decision.

    Example:
        >>> hpa = HpaAutoscaler(HpaSettings(target_utilisation=0.5))
        >>> hpa.tick(0.0, 4, [0.9, 0.9, 0.9, 0.9])
        8
    """

    settings: HpaSettings
    _last_sync: float | None = None
    _desired: int | None = None
    _recommendations: deque[tuple[float, int]] = field(default_factory=deque)
    _changes: deque[_Change] = field(default_factory=deque)

    def sync_due(self, now: float) -> bool:
        """True when a sync period has passed since the last recomputation (or none ran)."""
        if self._last_sync is None:
            return True
        return now - self._last_sync >= self.settings.seconds(self.settings.sync_period_s) - 1e-9

    def tick(self, now: float, current: int, utilisations: Sequence[float]) -> int:
        """The desired replica count at ``now`` given ``current`` replicas and their CPU."""
        if not self.sync_due(now) and self._desired is not None:
            return self._desired
        self._last_sync = now
        self._desired = self.recommend(now, current, utilisations)
        return self._desired

    def recommend(self, now: float, current: int, utilisations: Sequence[float]) -> int:
        """Recompute now: raw proposal, stabilisation, then the rate-limit policies."""
        raw = propose_replicas(current, utilisations, self.settings)
        stabilised = self._stabilise(now, current, raw)
        limited = self._limit_rate(now, current, stabilised)
        limited = max(self.settings.min_replicas, min(self.settings.max_replicas, limited))
        if limited != current:
            self._changes.append(_Change(now, limited - current))
        return limited

    def _stabilise(self, now: float, current: int, raw: int) -> int:
        # Scale-down takes the highest recommendation in the window; scale-up has no window, so
        # it takes the current recommendation (the HPA keeps both bounds, as here).
        window = self.settings.seconds(self.settings.scale_down_window_s)
        self._recommendations.append((now, raw))
        while self._recommendations and self._recommendations[0][0] < now - window - 1e-9:
            self._recommendations.popleft()
        down_bound = max(r for _, r in self._recommendations)
        up_bound = raw
        if current < up_bound:
            return up_bound
        if current > down_bound:
            return down_bound
        return current

    def _limit_rate(self, now: float, current: int, proposed: int) -> int:
        s = self.settings
        horizon = max(s.seconds(s.scale_up_period_s), s.seconds(s.scale_down_period_s))
        while self._changes and self._changes[0].at < now - horizon - 1e-9:
            self._changes.popleft()
        if proposed > current:
            period = s.seconds(s.scale_up_period_s)
            added = sum(c.delta for c in self._changes if c.delta > 0 and c.at > now - period)
            start = current - added
            limit = max(math.ceil(start * (1 + s.scale_up_percent / 100)), start + s.scale_up_pods)
            return min(proposed, max(limit, current))
        if proposed < current:
            period = s.seconds(s.scale_down_period_s)
            removed = -sum(c.delta for c in self._changes if c.delta < 0 and c.at > now - period)
            start = current + removed
            floor = math.floor(start * (1 - s.scale_down_percent / 100))
            return max(proposed, min(floor, current))
        return proposed


def propose_replicas(current: int, utilisations: Sequence[float], settings: HpaSettings) -> int:
    """The HPA's raw proposal: ``ceil(current * mean / target)``, or ``current`` within tolerance.

    Example:
        >>> propose_replicas(4, [0.9] * 4, HpaSettings(target_utilisation=0.5))
        8
        >>> propose_replicas(4, [0.54] * 4, HpaSettings(target_utilisation=0.5))
        4
    """
    if current <= 0 or not utilisations:
        return max(current, settings.min_replicas)
    ratio = (sum(utilisations) / len(utilisations)) / settings.target_utilisation
    if abs(ratio - 1.0) <= settings.tolerance + 1e-9:  # 1e-9: 0.55 / 0.5 is 1.1000000000000003
        return current
    return max(1, math.ceil(current * ratio - 1e-9))
