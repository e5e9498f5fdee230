"""The router's metrics: outcomes per shard, latency, retries, breakers and the hot campaigns.

The router is the first to see a campaign turn hot, so besides its own health it exports the
heavy-hitter sketch's last complete window as ``hotshard_router_hot_campaign_requests`` (at most
``k`` series, ranked) and the same list as JSON for ``/hot``. Label children are cached so the
request path does no label look-ups.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

from hotshard_bidder.breaker import CircuitBreaker
from hotshard_bidder.heavy_hitters import HeavyHitter, WindowedTopK

NO_SHARD = "none"
"""Shard label of requests the router answered itself, before choosing a shard."""
DURATION_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5)
"""0.5 ms to 500 ms: from a loopback hop to the largest deadline the router allows."""


class RouterMetrics:
    """Owns the router's registry and the heavy-hitter window."""

    def __init__(self, hot_k: int, partition_of: Callable[[str], int]) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        r = self.registry
        self._requests = Counter(
            "hotshard_router_requests",
            "Requests answered, by outcome and answering shard.",
            ["outcome", "shard"],
            registry=r,
        )
        self._duration = Histogram(
            "hotshard_router_request_duration_seconds",
            "Time from arrival to answer.",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self._retries = Counter(
            "hotshard_router_retries",
            "Retries of a forwarded request, by reason.",
            ["reason"],
            registry=r,
        )
        self._version = Gauge(
            "hotshard_router_routing_version", "Routing table version in force.", registry=r
        )
        self._breaker = Gauge(
            "hotshard_router_breaker_open",
            "1 while the shard's circuit breaker is open.",
            ["shard"],
            registry=r,
        )
        self._hot = Gauge(
            "hotshard_router_hot_campaign_requests",
            "Requests of the top campaigns in the last complete 1 s window.",
            ["rank", "campaign", "partition"],
            registry=r,
        )
        self._request_children: dict[tuple[str, str], Any] = {}
        self._retry_children: dict[str, Any] = {}
        self.partition_of = partition_of
        self.hot = WindowedTopK(hot_k, clock=time.time, on_window=self._publish_hot)

    def record(self, outcome: str, shard: str, seconds: float) -> None:
        child = self._request_children.get((outcome, shard))
        if child is None:
            child = self._request_children[(outcome, shard)] = self._requests.labels(outcome, shard)
        child.inc()
        self._duration.observe(seconds)

    def retried(self, reason: str) -> None:
        child = self._retry_children.get(reason)
        if child is None:
            child = self._retry_children[reason] = self._retries.labels(reason)
        child.inc()

    def set_version(self, version: int) -> None:
        self._version.set(version)

    def _publish_hot(self, top: list[HeavyHitter], total: float) -> None:
        self._hot.clear()
        for rank, hitter in enumerate(top, start=1):
            partition = str(self.partition_of(hitter.key))
            self._hot.labels(str(rank), hitter.key, partition).set(hitter.weight)

    def hot_json(self) -> dict[str, Any]:
        self.hot.roll()
        return {
            "window_end": self.hot.last_end,
            "window_seconds": self.hot.window,
            "total": self.hot.last_total,
            "top": [
                {
                    "rank": rank,
                    "campaign": h.key,
                    "partition": self.partition_of(h.key),
                    "requests": h.weight,
                    "error": h.error,
                }
                for rank, h in enumerate(self.hot.last, start=1)
            ],
        }

    def exposition(self, breakers: dict[str, CircuitBreaker]) -> bytes:
        self.hot.roll()
        for shard, breaker in breakers.items():
            self._breaker.labels(shard).set(1.0 if breaker.is_open else 0.0)
        return generate_latest(self.registry)
