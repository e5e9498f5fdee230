"""The bidder shard's metrics: Prometheus series for the control loop, and the same numbers as JSON.

The operator's detector reads these names, so they are fixed (see ``docs/dataplane.md``). Every
label is bounded: shard, virtual partition (at most ``V``), outcome (ten values), and a
top-k rank. A campaign id appears only in the hot-campaign gauge, which holds at most
``HOT_K`` series at a time. Label children are cached per partition so that counting a request
is a few attribute updates, not a label look-up.

A campaign refused for its cost (throttled by its CPU tokens or tripped by its resource breaker)
spends almost nothing, yet what it *asked for* is the resource hot spot the control loop must
see to move it to the sandbox tier. So the predicted cost of every such refusal is counted as
refused demand, per partition (``hotshard_bidder_refused_cpu_seconds_total``) and in the
hot-campaign gauge, which ranks campaigns by demanded CPU: spent plus refused.
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

from hotshard_bidder.heavy_hitters import HeavyHitter, WindowedTopK

OUTCOMES = (
    "bid",
    "nobid",
    "bad_request",
    "too_large",
    "misdirected",
    "retry",
    "overloaded",
    "expired",
    "throttled",
    "tripped",
)
NO_PARTITION = "none"
"""Partition label for requests refused before their campaign key was known."""
HOT_K = 10
"""Hot campaigns exported per shard: enough to see a hot set, few enough to bound series."""
DURATION_BUCKETS = (0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1)
"""0.25 ms to 100 ms: a bid is ~0.1 ms of CPU, and a bidder's whole budget is ~100 ms."""


@dataclass(slots=True)
class PartitionMeter:
    """Cumulative numbers of one partition, plus its cached Prometheus children."""

    requests: int = 0
    cpu_seconds: float = 0.0
    refused_cpu_seconds: float = 0.0
    latency_seconds: float = 0.0
    outcomes: dict[str, int] = field(default_factory=dict)
    counters: dict[str, Any] = field(default_factory=dict)
    cpu: Any = None
    refused: Any = None
    latency: Any = None


class BidderMetrics:
    """Owns the shard's registry and records one request at a time."""

    def __init__(self, shard: str) -> None:
        self.shard = shard
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        r = self.registry
        self._requests = Counter(
            "hotshard_bidder_requests",
            "Requests by partition and outcome.",
            ["shard", "partition", "outcome"],
            registry=r,
        )
        self._cpu = Counter(
            "hotshard_bidder_cpu_seconds",
            "CPU seconds spent on requests, by partition.",
            ["shard", "partition"],
            registry=r,
        )
        self._refused = Counter(
            "hotshard_bidder_refused_cpu_seconds",
            "Predicted CPU seconds of requests refused for their cost (throttled or tripped): "
            "demand the shard did not serve, by partition.",
            ["shard", "partition"],
            registry=r,
        )
        self._latency = Counter(
            "hotshard_bidder_latency_seconds",
            "Sum of service times; rate(latency)/rate(requests) is the mean latency.",
            ["shard", "partition"],
            registry=r,
        )
        self._duration = Histogram(
            "hotshard_bidder_request_duration_seconds",
            "Service time of one request.",
            ["shard"],
            buckets=DURATION_BUCKETS,
            registry=r,
        ).labels(shard)
        self._inflight = Gauge(
            "hotshard_bidder_inflight", "Requests in progress.", ["shard"], registry=r
        ).labels(shard)
        self._version = Gauge(
            "hotshard_bidder_routing_version",
            "Routing table version in force.",
            ["shard"],
            registry=r,
        ).labels(shard)
        self._hot = Gauge(
            "hotshard_bidder_hot_campaign_cpu_seconds",
            "CPU seconds demanded by the top campaigns in the last complete 1 s window: spent, "
            "plus predicted for the requests refused for their cost.",
            ["shard", "rank", "campaign"],
            registry=r,
        )
        self._rollbacks = Counter(
            "hotshard_bidder_config_rollbacks",
            "Campaign configuration versions this shard rolled back for their cost.",
            ["shard"],
            registry=r,
        ).labels(shard)
        self.rollbacks = 0
        self.partitions: dict[str, PartitionMeter] = {}
        self.hot = WindowedTopK(HOT_K, clock=time.monotonic, on_window=self._publish_hot)

    def meter(self, partition: str) -> PartitionMeter:
        """The meter of ``partition`` (a label string), created with its children on first use."""
        meter = self.partitions.get(partition)
        if meter is None:
            meter = PartitionMeter(
                cpu=self._cpu.labels(self.shard, partition),
                # NB: created with the meter, so the series exists (at 0) before a refusal and
                # its first refusal shows in a rate at once.
                refused=self._refused.labels(self.shard, partition),
                latency=self._latency.labels(self.shard, partition),
            )
            self.partitions[partition] = meter
        return meter

    def record(
        self,
        partition: str,
        outcome: str,
        cpu_seconds: float,
        latency_seconds: float,
        campaign: str | None = None,
    ) -> None:
        """Count one finished request."""
        meter = self.partitions.get(partition) or self.meter(partition)
        meter.requests += 1
        meter.outcomes[outcome] = meter.outcomes.get(outcome, 0) + 1
        counter = meter.counters.get(outcome)
        if counter is None:
            counter = meter.counters[outcome] = self._requests.labels(
                self.shard, partition, outcome
            )
        counter.inc()
        if cpu_seconds:
            meter.cpu_seconds += cpu_seconds
            meter.cpu.inc(cpu_seconds)
        meter.latency_seconds += latency_seconds
        meter.latency.inc(latency_seconds)
        self._duration.observe(latency_seconds)
        if campaign is not None and cpu_seconds:
            self.hot.add(campaign, cpu_seconds)

    def record_refused(self, partition: str, campaign: str, predicted_seconds: float) -> None:
        """Count the demand of one request refused for its cost (its predicted CPU seconds)."""
        if predicted_seconds <= 0:
            return
        meter = self.partitions.get(partition) or self.meter(partition)
        meter.refused_cpu_seconds += predicted_seconds
        meter.refused.inc(predicted_seconds)
        self.hot.add(campaign, predicted_seconds)

    def set_inflight(self, value: int) -> None:
        self._inflight.set(value)

    def set_version(self, version: int) -> None:
        self._version.set(version)

    def set_rollbacks(self, total: int) -> None:
        """Bring the rollback counter up to ``total``, the resource guard's own count."""
        if total > self.rollbacks:
            self._rollbacks.inc(total - self.rollbacks)
            self.rollbacks = total

    def _publish_hot(self, top: list[HeavyHitter], total: float) -> None:
        self._hot.clear()
        for rank, hitter in enumerate(top, start=1):
            self._hot.labels(self.shard, str(rank), hitter.key).set(hitter.weight)

    def exposition(self) -> bytes:
        """The Prometheus text format of every series."""
        self.hot.roll()
        return generate_latest(self.registry)

    def stats(self, version: int, inflight: int) -> dict[str, Any]:
        """Cumulative counters as JSON, for a control loop that runs without Prometheus."""
        self.hot.roll()
        return {
            "shard": self.shard,
            "version": version,
            "time": time.time(),
            "partitions": {
                p: {
                    "requests": m.requests,
                    "cpu_seconds": m.cpu_seconds,
                    "refused_cpu_seconds": m.refused_cpu_seconds,
                    "latency_seconds": m.latency_seconds,
                    "outcomes": dict(m.outcomes),
                }
                for p, m in self.partitions.items()
            },
            "campaigns_top": [
                {"rank": i, "campaign": h.key, "cpu_seconds": h.weight, "error": h.error}
                for i, h in enumerate(self.hot.last, start=1)
            ],
            "inflight": inflight,
            "config_rollbacks": self.rollbacks,
            "rss_bytes": rss_bytes(),
        }


def rss_bytes() -> int:
    """Resident set size now (from /proc), else the peak from getrusage."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * resource.getpagesize()
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
