"""What the engine tells people: each shard's health, and one sentence per decision.

A decision is read by an operator at 3 a.m. as often as by code, so the words live in one
place: the per-shard health (a compound score, the planner's utilisation and a state with its
facts), the sentence that says what was decided and why, and the decision that holds still,
with the reason it holds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from hotshard.engine.capacity import IntArray
from hotshard.engine.config import CostConfig, EngineConfig
from hotshard.engine.detection import compound_score, shard_units
from hotshard.engine.model import (
    Action,
    CostSummary,
    Decision,
    HealthState,
    HotSpot,
    PoolState,
    ShardHealth,
)
from hotshard.routing import RoutingTable


def assess_health(
    config: EngineConfig,
    table: RoutingTable,
    pool: PoolState,
    reported: set[str],
    owner_idx: IntArray,
    hot: Sequence[HotSpot],
    signals: tuple[np.ndarray, ...],
) -> dict[str, ShardHealth]:
    """Per shard: a compound score, the planner's utilisation and a state in words.

    ``signals`` are per-shard arrays in table order: rate, CPU, memory, latency, queue.
    """
    rate, cpu, memory, latency, queue = signals
    planning = config.planning
    scores = compound_score(
        rate, cpu, memory, latency, config.detection, planning, config.cost.latency_budget_seconds
    )
    names = [s.name for s in table.shards]
    hot_owners = {names[owner_idx[s.partition]] for s in hot}
    target = planning.target_utilisation
    idle = set(pool.idle)
    out: dict[str, ShardHealth] = {}
    for i, shard in enumerate(table.shards):
        name = shard.name
        util = shard_units(rate[i], cpu[i], planning)
        facts = f"{util:.0%} used, {latency[i] * 1000:.0f} ms latency, {queue[i]:.0f} queued"
        state: HealthState
        if name not in reported:
            state, why = "missing", "no metrics reported"
        elif name in idle:
            state, why = "idle", f"warm and idle ({facts})"
        elif util > target:
            state, why = "over", f"over the {target:.0%} target: {facts}"
        elif name in hot_owners:
            state, why = "hot", f"owns a hot partition: {facts}"
        else:
            state, why = "ok", facts
        out[name] = ShardHealth(name, shard.tier, state, float(scores[i]), float(util), why)
    return out


def hold(
    reason: str,
    table: RoutingTable,
    pool: PoolState,
    warm_target: int,
    cost: CostConfig,
    hot: Sequence[HotSpot],
    health: Mapping[str, ShardHealth],
    *,
    shard_seconds: float,
    violation_seconds: float,
) -> Decision:
    """A decision that changes nothing, with the reason why."""
    summary = CostSummary(
        shards=len(table.shards),
        shard_cost_per_hour=len(table.shards) * cost.shard_hour_cost,
        idle_warm_shards=len(pool.idle),
        idle_warm_cost_per_hour=len(pool.idle) * cost.shard_hour_cost,
        violation_shards=0,
        violation_cost_per_hour=0.0,
        action_cost=0.0,
        shard_seconds=shard_seconds,
        violation_seconds=violation_seconds,
    )
    return Decision(None, (), tuple(hot), dict(health), reason, summary, warm_target)


def explain(
    actions: Sequence[Action],
    notes: Sequence[str],
    spots: Sequence[HotSpot],
) -> str:
    """One sentence: what was decided and why, or why nothing was."""
    if actions:
        first = actions[0].reason
        more = len(actions) - 1
        tail = f" (and {more} more action{'s' if more > 1 else ''})" if more else ""
        # NB: no table version here: whoever writes the change prefixes the version it wrote.
        return f"{first[0].upper()}{first[1:]}{tail}"
    if spots:
        n = len(spots)
        why = notes[0] if notes else spots[0].reason
        return f"{n} hot spot{'s' if n > 1 else ''}, no change: {why}"
    if notes:
        return f"no change: {notes[0]}"
    return "nothing is hot and every shard is within target: holding the current table"
