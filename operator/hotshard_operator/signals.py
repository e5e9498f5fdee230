"""The operator's view of Prometheus: one fleet's series, how fresh they are, shard versions.

The metrics themselves come from the shared :class:`~hotshard.control.prometheus.
PrometheusSource` (the same PromQL local mode runs), scoped to one PartitionMap by the bidders'
own ``shard`` label: a shard is named after its pod, ``<map>-<tier>-<ordinal>``, so the scope
works whatever relabelling the scrape configuration does or does not do.

Two things are added here for the operator:

* :class:`FreshnessGate` observes *before* the control loop touches anything, and raises
  :class:`~hotshard_operator.reconcile.MetricsUnavailableError` (which becomes
  ``Degraded=True``) when Prometheus is unreachable, has no samples for the fleet, or its newest
  sample is older than ``metrics.staleAfter``. The loop then reuses the same observation, so a
  tick costs one round of queries.
* :class:`PrometheusVersions` reads ``hotshard_bidder_routing_version`` per shard, which the
  control loop waits on between the prepare and commit tables, and the actuator uses to tell
  a running pod from one still starting.
* :class:`PrometheusContainment` reads what the fleet did to costly campaigns for status: the
  bidders' throttled and tripped request counters and the routers' open breakers.

NB: the queries run on kopf's event loop through aiohttp (natively async, a timeout per query)
rather than prometheus-api-client, which is synchronous and would need a worker thread per
query: that would cap how many PartitionMaps one operator ticks a second and slow shutdown.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from hotshard.control.prometheus import PrometheusSource, QueryError, matchers, vector_by
from hotshard.engine.model import Observation
from hotshard_operator.children import TIERS
from hotshard_operator.reconcile import MetricsUnavailableError
from hotshard_operator.status import Containment

VERSION_QUERY_GAP_S = 0.5
"""At most two version queries a second: Prometheus scrapes each second, so more see nothing
new, while the loop polls every 50 ms while it waits on a prepare table."""


def shard_scope(pmap: str) -> str:
    """The label matcher of one PartitionMap's shards: ``shard=~"<map>-(base|...)-[0-9]+"``."""
    name = pmap.replace(".", "[.]")  # NB: names may hold dots; RE2 would read them as any char
    return f'shard=~"{name}-({"|".join(TIERS)})-[0-9]+"'


class ObservingSource(Protocol):
    async def observe(self, now: float) -> Observation: ...

    async def aclose(self) -> None: ...


class FreshnessGate:
    """A :class:`~hotshard.control.sources.MetricsSource` that refuses to go on blind."""

    def __init__(self, source: ObservingSource, stale_after_s: float, where: str) -> None:
        self.source = source
        self.stale_after_s = stale_after_s
        self.where = where
        self._checked: tuple[float, Observation] | None = None

    async def check(self, now: float) -> Observation:
        """Observe; raise :class:`MetricsUnavailableError` unless the data is fresh."""
        observation = await self.source.observe(now)
        age = observation.age_seconds
        if math.isinf(age):
            error = getattr(self.source, "last_error", None)
            raise MetricsUnavailableError(
                error
                or f"Prometheus at {self.where} has no samples of this fleet's bidders; is it"
                " scraping them?"
            )
        if age > self.stale_after_s:
            raise MetricsUnavailableError(
                f"the newest sample in Prometheus at {self.where} is {age:.1f}s old, older than"
                f" metrics.staleAfter ({self.stale_after_s:g}s)"
            )
        self._checked = (now, observation)
        return observation

    async def observe(self, now: float) -> Observation:
        """The observation :meth:`check` made for ``now``, else a new one."""
        if self._checked is not None and self._checked[0] == now:
            observation = self._checked[1]
            self._checked = None
            return observation
        return await self.source.observe(now)

    async def aclose(self) -> None:
        await self.source.aclose()


class PrometheusVersions:
    """:class:`~hotshard_operator.actuator.VersionReader` over a PrometheusSource's client."""

    def __init__(self, source: PrometheusSource, scope: str) -> None:
        self.source = source
        self.scope = scope
        self._last = -math.inf

    async def versions(self, shards: Iterable[str]) -> Mapping[str, int]:
        names = sorted(set(shards))
        if not names:
            return {}
        wait = self._last + VERSION_QUERY_GAP_S - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        self._last = time.monotonic()
        pattern = "|".join(n.replace(".", "[.]") for n in names)
        selector = matchers(self.scope, f'shard=~"{pattern}"')
        try:
            result: Any = await self.source.query(
                f"max by (shard) (hotshard_bidder_routing_version{selector})"
            )
        except QueryError:
            return {}  # NB: no answer is "not there yet"; the loop's own timeout bounds the wait
        return {shard: int(v) for shard, v in vector_by(result, "shard").items() if v >= 1}


class ContainmentReader(Protocol):
    async def containment(self) -> Containment | None: ...


class PrometheusContainment:
    """:class:`ContainmentReader` over a PrometheusSource's client, scoped to one map's shards.

    Three instant queries a tick. Quarantines are not read here: the operator counts the ones it
    commits.
    """

    def __init__(self, source: PrometheusSource, scope: str) -> None:
        self.source = source
        self.scope = scope

    async def containment(self) -> Containment | None:
        refused = matchers(self.scope, 'outcome=~"throttled|tripped"')
        try:
            outcomes: Any = await self.source.query(
                f"sum by (outcome) (hotshard_bidder_requests{refused})"
            )
            breakers: Any = await self.source.query(
                f"sum(hotshard_router_breaker_open{matchers(self.scope)})"
            )
            rollbacks: Any = await self.source.query(
                f"sum(hotshard_bidder_config_rollbacks_total{matchers(self.scope)})"
            )
        except QueryError:
            return None  # NB: status keeps the last counts; the tick itself already saw fresh data
        counts = vector_by(outcomes, "outcome")
        opened, rolled = (float(r[0]["value"][1]) if r else 0.0 for r in (breakers, rollbacks))
        return Containment(
            throttled_requests=round(counts.get("throttled", 0.0)),
            tripped_requests=round(counts.get("tripped", 0.0)),
            breakers_open=round(opened) if math.isfinite(opened) else 0,
            rollbacks=round(rolled) if math.isfinite(rolled) else 0,
        )
