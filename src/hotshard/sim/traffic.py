"""Arrivals for the simulation, second by second, from the same scenario files as local mode.

A scenario (``scenarios/*.yaml``) compiles, through :func:`hotshard.local.scenario.compile_plan`,
into campaign weights (Wikipedia's election-night top 100) and a per-second rate for the hot
campaigns (the World Cup 98 jump, scaled to 1000x). This module turns that plan into arrays the
fleet model adds up: a rate and a CPU cost per named campaign, and, at the large scale, a tail
of traffic over every partition whose per-partition weights are sums of real Azure Functions
daily invocation totals (many small campaigns hash into each partition).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hotshard import datasets
from hotshard.local.scenario import TrafficPlan
from hotshard.routing import partition_of
from hotshard.sim.config import FleetModel


@dataclass(frozen=True)
class Traffic:
    """Named campaigns and the tail, ready to be evaluated at any second of the run."""

    plan: TrafficPlan
    names: tuple[str, ...]
    partition: np.ndarray
    """Partition of each named campaign."""
    hot: np.ndarray
    """True for the scenario's hot (spiking or buggy) campaigns."""
    steady_rate: np.ndarray
    """Requests/s of each named campaign outside the spike."""
    tail: np.ndarray
    """Requests/s of the tail on each partition (all zeros at the small scale)."""
    base_cost_us: float
    bug_extra_cost_us: float

    @property
    def duration(self) -> int:
        return int(np.ceil(self.plan.duration))

    def named_at(self, second: int) -> tuple[np.ndarray, np.ndarray]:
        """Rate and CPU µs per request of every named campaign during ``second``."""
        rate = self.steady_rate.copy()
        hot_total = float(self.steady_rate[self.hot].sum())
        if hot_total > 0 and self.plan.scenario.spike is not None:
            # The plan's hot rate is at the scenario's base rate; the ratio carries over.
            normal = self.plan.hot_normal_rate
            ratio = self.plan.hot_rates[min(second, len(self.plan.hot_rates) - 1)] / normal
            rate[self.hot] *= ratio
        cost = np.full(len(rate), self.base_cost_us)
        if self.plan.config_changes and second >= self.plan.spike_start:
            # NB: the bad version lands when `during` begins and stays: nothing in the model
            # rolls it back (the bidder's resource guard is not modelled).
            cost[self.hot] += self.bug_extra_cost_us
        return rate, cost


def build_traffic(plan: TrafficPlan, model: FleetModel) -> Traffic:
    """Named campaigns at ``head_share`` of the total rate, the tail over partitions."""
    total = model.total_rps if model.total_rps is not None else plan.scenario.base_rate
    names = tuple(plan.weights)
    weights = np.array([plan.weights[n] for n in names])
    head = total * model.head_share
    tail_total = total - head
    tail = np.zeros(model.partitions)
    if tail_total > 0:
        tail = tail_total * tail_weights(
            model.partitions, model.tail_campaigns_per_partition, model.seed
        )
    return Traffic(
        plan=plan,
        names=names,
        partition=np.array([partition_of(n, model.partitions) for n in names], dtype=np.intp),
        hot=np.array([n in plan.hot for n in names]),
        steady_rate=head * weights,
        tail=tail,
        base_cost_us=model.cost_us,
        bug_extra_cost_us=model.bug_extra_cost_us,
    )


def tail_weights(partitions: int, per_partition: int, seed: int) -> np.ndarray:
    """Per-partition shares summing to 1: each the sum of ``per_partition`` real campaign sizes.

    The sizes are the daily invocation totals of the 1,000 Azure Functions of the 2019 trace
    (heavy-tailed, Zipf-like), drawn with replacement by a seeded generator.
    """
    sizes = np.array(
        [sum(counts) for _, counts in datasets.azure_functions_per_minute()], dtype=np.float64
    )
    sizes = sizes[sizes > 0]
    rng = np.random.default_rng(seed)
    draws = rng.choice(sizes, size=(partitions, per_partition), replace=True).sum(axis=1)
    return np.asarray(draws / draws.sum())
