"""The operator's view of Prometheus, and the control step it runs until the shared loop lands.

Prometheus is queried with plain ``httpx`` on the event loop rather than
prometheus-api-client in an executor: the operator needs two instant queries per tick, httpx
is natively async with per-request timeouts, and a thread per query would cap how many
PartitionMaps one operator can tick each second.

:class:`FailStaticStep` is the production :class:`~hotshard_operator.reconcile.ControlStep`
for now: it proves the metrics are reachable and fresh (raising
:class:`~hotshard_operator.reconcile.MetricsUnavailableError` otherwise, which holds the table)
and decides nothing. TODO(#5): replace its body with one ``hotshard.control.ControlLoop``
step (PrometheusSource + engine + an actuator over the ConfigMap store) once that lands.
"""

from __future__ import annotations

import time

import httpx

from hotshard.routing import RoutingTable
from hotshard_operator.reconcile import MetricsUnavailableError, StepResult
from hotshard_operator.resources import PartitionMapSpec

QUERY_TIMEOUT_S = 0.5
"""Half of the default 1 s tick: a slower Prometheus is treated as unavailable, not waited on."""


async def newest_sample_age(http: httpx.AsyncClient, base_url: str, selector: str) -> float:
    """Seconds since the newest ``up`` sample of the fleet's pods was scraped."""
    query = f"time() - max(timestamp(up{{{selector}}}))"
    try:
        reply = await http.get(
            f"{base_url.rstrip('/')}/api/v1/query",
            params={"query": query},
            timeout=QUERY_TIMEOUT_S,
        )
        reply.raise_for_status()
        result = reply.json()["data"]["result"]
    except (httpx.HTTPError, KeyError, ValueError) as exc:
        raise MetricsUnavailableError(f"Prometheus at {base_url} is unreachable: {exc}") from exc
    if not result:
        raise MetricsUnavailableError(
            f"Prometheus at {base_url} has no samples for {{{selector}}}; is it scraping the"
            " bidders?"
        )
    return float(result[0]["value"][1])


class FailStaticStep:
    """Checks that metrics are fresh, then holds: the seam for the shared control loop."""

    def __init__(self, http: httpx.AsyncClient, spec: PartitionMapSpec, pmap: str) -> None:
        self.http = http
        self.spec = spec
        self.selector = f'app_kubernetes_io_instance="{pmap}"'
        self.last_checked = 0.0

    async def step(self, table: RoutingTable, token: str) -> StepResult:
        url = self.spec.metrics.prometheus_url
        age = await newest_sample_age(self.http, url, self.selector)
        self.last_checked = time.monotonic()
        if age > self.spec.metrics.stale_after:
            raise MetricsUnavailableError(
                f"the newest sample in Prometheus at {url} is {age:.1f}s old,"
                f" older than metrics.staleAfter ({self.spec.metrics.stale_after:g}s)"
            )
        return StepResult("none", "metrics are fresh; the shared control loop is not wired yet")
