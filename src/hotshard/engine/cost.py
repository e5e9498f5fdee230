"""What capacity costs, what running short costs, and how many warm shards to keep.

Two prices decide the warm pool: an idle warm shard costs ``shard_hour_cost`` every hour it
waits, and a spike that needs a shard the pool does not have waits ``cold_start_seconds`` for a
pod, over its latency budget, at ``violation_cost`` per shard-second. The recommendation is the
smallest pool whose expected violation cost stays within a tolerance, which is how an operator
trades money against the latency budget in one number. Every decision also carries its own
cost: hand-overs for route changes, a shard-hour for each shard added or released.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from hotshard.engine.config import CostConfig
from hotshard.engine.model import Action, CostSummary, ShardHealth


@dataclass(frozen=True, slots=True)
class WarmPoolAdvice:
    """A recommended warm-pool size and what it costs per hour."""

    size: int
    idle_cost_per_hour: float
    violation_cost_per_hour: float
    reason: str


def expected_shortfall(demand: Sequence[int], pool: int) -> float:
    """Mean number of shards a spike needs beyond ``pool``, over the observed spikes."""
    if not demand:
        return 0.0
    return sum(max(0, d - pool) for d in demand) / len(demand)


def recommend_warm_pool(
    demand: Sequence[int],
    cost: CostConfig,
    *,
    spikes_per_hour: float | None = None,
    tolerance: float | None = None,
    limit: int = 64,
) -> WarmPoolAdvice:
    """The smallest warm pool whose expected violation cost per hour is within ``tolerance``.

    ``demand`` holds how many shards each past spike claimed. A spike needing ``d`` shards from a
    pool of ``n`` leaves ``d - n`` shards cold-starting for ``cold_start_seconds`` each, every
    second of which is priced at ``violation_cost``.

    Example:
        >>> from hotshard.engine.config import CostConfig
        >>> recommend_warm_pool([1, 2, 4], CostConfig(), tolerance=10.0).size
        2
    """
    rate = cost.spikes_per_hour if spikes_per_hour is None else spikes_per_hour
    allowed = cost.violation_tolerance_per_hour if tolerance is None else tolerance
    per_missing_shard = cost.cold_start_seconds * cost.violation_cost
    upper = min(limit, max(demand, default=0))
    for size in range(upper + 1):
        violations = rate * expected_shortfall(demand, size) * per_missing_shard
        if violations <= allowed:
            break
    idle = size * cost.shard_hour_cost
    reason = (
        f"{size} warm shard(s) cost {idle:.2f}/h idle; at {rate:g} spikes/h the expected "
        f"cold-start violations cost {violations:.2f}/h (tolerance {allowed:g}/h)"
    )
    return WarmPoolAdvice(size, idle, violations, reason)


def handover_cost(cost: CostConfig, routes: int) -> float:
    return routes * cost.handover_cost


def shard_delta_cost(cost: CostConfig, shards: int) -> float:
    """The cost over the next hour of adding (positive) or releasing (negative) shards."""
    return shards * cost.shard_hour_cost


def summarise_cost(
    cost: CostConfig,
    health: Mapping[str, ShardHealth],
    latency: Mapping[str, float],
    idle_warm: int,
    actions: Iterable[Action],
    *,
    shard_seconds: float = 0.0,
    violation_seconds: float = 0.0,
) -> CostSummary:
    """The fleet's run rate and this decision's price."""
    shards = len(health)
    violating = sum(1 for name in health if latency.get(name, 0.0) > cost.latency_budget_seconds)
    return CostSummary(
        shards=shards,
        shard_cost_per_hour=shards * cost.shard_hour_cost,
        idle_warm_shards=idle_warm,
        idle_warm_cost_per_hour=idle_warm * cost.shard_hour_cost,
        violation_shards=violating,
        violation_cost_per_hour=violating * cost.violation_cost * 3600.0,
        action_cost=math.fsum(a.cost for a in actions),
        shard_seconds=shard_seconds,
        violation_seconds=violation_seconds,
    )
