"""One scenario, one strategy, second by second: route, queue, measure, let the policy react.

Each simulated second: the named campaigns' and the tail's arrivals are added up per partition,
routed by the policy's layout (hotshard's router first sheds a campaign's excess over its
allowance), every shard is advanced one second by :mod:`hotshard.sim.queueing`, latencies go
into per-phase histograms for the hot and the other campaigns, and the policy sees the
observation of the second before (a 1 s scrape). The result holds the same measures the local
benchmark reports.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hotshard.engine.model import CampaignLoad, Observation, PartitionLoad, ShardLoad
from hotshard.sim.config import FleetModel
from hotshard.sim.policies import Layout, Policy
from hotshard.sim.queueing import EDGES, latency_mass, percentile, step_shards
from hotshard.sim.traffic import Traffic

PHASES = ("before", "during", "after")
GROUPS = ("hot", "other", "neighbours")
"""``neighbours`` are the other campaigns whose partitions share the hot campaigns' base shard:
at hundreds of shards they are under 1 % of the traffic, so the fleet-wide p99 hides them."""
MEMORY_PER_PARTITION = 2e6
"""Bytes a partition's campaigns hold in a bidder: a constant, memory is not what runs out."""


@dataclass
class GroupPhase:
    """Latency histogram and counts of one group of campaigns in one phase."""

    hist: np.ndarray = field(default_factory=lambda: np.zeros(len(EDGES) - 1))
    sent: float = 0.0
    refused: float = 0.0
    timeouts: float = 0.0


@dataclass
class StrategyRun:
    """Everything one strategy's pass measured."""

    strategy: str
    stats: dict[str, dict[str, GroupPhase]]
    shard_seconds: float = 0.0
    shards: list[int] = field(default_factory=list)
    p99_hot: list[float | None] = field(default_factory=list)
    p99_other: list[float | None] = field(default_factory=list)
    detect_seconds: float | None = None
    mitigate_seconds: float | None = None
    wall_seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        def ms(x: float | None) -> float | None:
            return None if x is None else round(x * 1000, 2)

        # NB: the neighbours are a subset of the other campaigns: counting them again would
        # count their requests, refusals and timeouts twice.
        whole = [s for g in ("hot", "other") for s in self.stats[g].values()]
        out: dict[str, Any] = {
            "strategy": self.strategy,
            "detect_seconds": self.detect_seconds,
            "mitigate_seconds": self.mitigate_seconds,
            "p99_ms": {
                g: {p: ms(percentile(self.stats[g][p].hist, 0.99)) for p in PHASES} for g in GROUPS
            },
            "sent": round(sum(s.sent for s in whole)),
            "rejected_429": round(sum(s.refused for s in whole)),
            "timeouts": round(sum(s.timeouts for s in whole)),
            "by_group": {
                g: {
                    p: {
                        "sent": round(s.sent),
                        "rejected_429": round(s.refused),
                        "timeouts": round(s.timeouts),
                    }
                    for p, s in self.stats[g].items()
                }
                for g in GROUPS
            },
            "shard_seconds": round(self.shard_seconds, 1),
            "shards_peak": max(self.shards, default=0),
            "shards_end": self.shards[-1] if self.shards else 0,
            "wall_seconds": round(self.wall_seconds, 2),
        }
        # NB: "lost" is what a client that gives up at tmax sees: no answer in time.
        out["lost"] = out["timeouts"]
        other = self.stats["other"].values()
        out["failed_other"] = round(sum(s.refused + s.timeouts for s in other))
        return out


def simulate(model: FleetModel, traffic: Traffic, policy: Policy) -> StrategyRun:
    """Run ``policy`` through the whole scenario and return what it measured."""
    started = time.perf_counter()
    plan = traffic.plan
    run = StrategyRun(policy.strategy.value, {g: {p: GroupPhase() for p in PHASES} for g in GROUPS})
    hot_partitions = {int(p) for p in traffic.partition[traffic.hot]}
    base_owners = {policy.names[policy.owner[p]] for p in hot_partitions}
    owner_ids = [policy.owner[p] for p in hot_partitions]
    neighbour = np.isin(policy.owner, owner_ids)
    neighbour[list(hot_partitions)] = True  # NB: the hot campaigns' partition-mates, too
    backlog = np.zeros(len(policy.names))
    backlog_names = list(policy.names)
    pending: deque[Observation] = deque()
    # NB: the router reads each request's tmax; a proxy in front of the shards has one timeout.
    deadlines = model.deadlines if policy.reads_tmax else ((model.proxy_timeout_s, 1.0),)
    for second in range(traffic.duration):
        rate, cost = traffic.named_at(second)
        part_work = traffic.tail * model.cost_us * 1e-6
        np.add.at(part_work, traffic.partition, rate * cost * 1e-6)
        layout = policy.layout(part_work)
        index = {n: i for i, n in enumerate(layout.names)}
        backlog = np.array([_carry(backlog, backlog_names, n) for n in layout.names])
        backlog_names = list(layout.names)
        flows, served_by, shed = route(model, traffic, layout, rate, cost, neighbour)
        r_hot, r_other, w_hot, w_other, r_nb, w_nb = flows
        state = step_shards(
            w_hot + w_other,
            r_hot + r_other,
            backlog,
            model.cores,
            model.servers,
            model.queue_bound_s,
        )
        backlog = state.backlog
        phase = plan.phase_of(second + 0.5)
        admitted = 1.0 - state.refused_share
        speed = model.cores / model.servers
        for group, r, w, shed_g in (
            ("hot", r_hot, w_hot, shed[0]),
            ("other", r_other, w_other, shed[1]),
            ("neighbours", r_nb, w_nb, 0.0),
        ):
            with np.errstate(divide="ignore", invalid="ignore"):
                service = np.where(r > 0, w / r, 0.0) / speed
            hist, late = latency_mass(state, r * admitted, service, deadlines)
            gp = run.stats[group][phase]
            gp.hist += hist
            gp.sent += float(r.sum()) + shed_g
            gp.refused += float((r * state.refused_share).sum()) + shed_g
            gp.timeouts += late
        run.shards.append(policy.shard_count())
        run.shard_seconds += policy.shard_count()
        if (
            run.mitigate_seconds is None
            and second >= plan.spike_start
            and any(layout.names[i] not in base_owners for i in served_by)
        ):
            run.mitigate_seconds = round(second - plan.spike_start, 2)
        pending.append(
            observe(
                model,
                traffic,
                layout,
                index,
                state,
                flows,
                (rate, cost),
                float(second + 1),
                with_partitions=policy.reads_partitions,
            )
        )
        if len(pending) > model.metrics_delay_s:
            seen = pending.popleft()
            aged = Observation(
                seen.time,
                seen.partitions,
                seen.shards,
                seen.campaigns,
                float(model.metrics_delay_s),
            )
            policy.after(second, aged, hot_partitions if second >= plan.spike_start else set())
    if policy.detected_at is not None:
        run.detect_seconds = round(policy.detected_at + model.metrics_delay_s - plan.spike_start, 2)
    run.wall_seconds = time.perf_counter() - started
    return run


def _carry(backlog: np.ndarray, names: list[str], name: str) -> float:
    try:
        return float(backlog[names.index(name)])
    except ValueError:
        return 0.0


def route(
    model: FleetModel,
    traffic: Traffic,
    layout: Layout,
    rate: np.ndarray,
    cost: np.ndarray,
    neighbour: np.ndarray,
) -> tuple[tuple[np.ndarray, ...], set[int], tuple[float, float]]:
    """Per shard: hot rate, other rate, hot work, other work, neighbours' rate and work; the
    shards serving hot traffic; and the requests hotshard's router shed (hot, other)."""
    n = len(layout.names)
    parts = model.partitions
    rate = rate.copy()
    shed = [0.0, 0.0]
    if layout.sheds_hot_keys:
        for k, name in enumerate(traffic.names):
            ways = len(
                layout.campaign_routes.get(name)
                or layout.partition_splits.get(int(traffic.partition[k]))
                or [0]
            )
            allowance = model.hot_key_share * model.engine_capacity_rps * ways
            if rate[k] > allowance:
                shed[0 if traffic.hot[k] else 1] += float(rate[k] - allowance)
                rate[k] = allowance
    own = np.array([name in layout.campaign_routes for name in traffic.names], dtype=bool)
    # Partition-level flows (rate hot, rate other, work hot, work other) of what follows the table.
    p_flows = np.zeros((6, parts))
    p_flows[1] = traffic.tail
    p_flows[3] = traffic.tail * model.cost_us * 1e-6
    stay = ~own
    for row, mask in ((0, traffic.hot & stay), (1, ~traffic.hot & stay)):
        np.add.at(p_flows[row], traffic.partition[mask], rate[mask])
        np.add.at(p_flows[row + 2], traffic.partition[mask], rate[mask] * cost[mask] * 1e-6)
    p_flows[4] = p_flows[1] * neighbour
    p_flows[5] = p_flows[3] * neighbour
    special = {**{p: {s: 1.0 / len(ss) for s in ss} for p, ss in layout.partition_splits.items()}}
    special.update(layout.spread)
    owner = layout.owner
    out = np.zeros((6, n))
    plain = p_flows.copy()
    if special:
        ids = np.fromiter(special.keys(), dtype=np.intp)
        plain[:, ids] = 0.0
        for p, share in special.items():
            for s, f in share.items():
                out[:, s] += p_flows[:, p] * f
    for row in range(6):
        out[row] += np.bincount(owner, weights=plain[row], minlength=n)
    served_by: set[int] = set()
    for k in np.flatnonzero(traffic.hot).tolist():
        name = traffic.names[k]
        p = int(traffic.partition[k])
        if own[k]:
            targets = layout.campaign_routes[name]
            for s in targets:
                out[0, s] += rate[k] / len(targets)
                out[2, s] += rate[k] * cost[k] * 1e-6 / len(targets)
            served_by.update(targets)
        elif p in special:
            served_by.update(special[p])
        else:
            served_by.add(int(owner[p]))
    for k in np.flatnonzero(~traffic.hot & own).tolist():
        targets = layout.campaign_routes[traffic.names[k]]
        rows = (1, 3, 4, 5) if neighbour[traffic.partition[k]] else (1, 3)
        for s in targets:
            for row in rows:
                per = rate[k] if row in (1, 4) else rate[k] * cost[k] * 1e-6
                out[row, s] += per / len(targets)
    return tuple(out), served_by, (shed[0], shed[1])


def observe(
    model: FleetModel,
    traffic: Traffic,
    layout: Layout,
    index: dict[str, int],
    state: Any,
    flows: tuple[np.ndarray, ...],
    named: tuple[np.ndarray, np.ndarray],
    now: float,
    *,
    with_partitions: bool,
) -> Observation:
    """What the fleet's metrics would say about this second: served load, not asked-for load.

    Per-partition loads are built only for policies that read them (the engine): at V=65536
    they are most of a step's cost.
    """
    rate, cost = named
    r_hot, r_other = flows[0], flows[1]
    shard_rate = (r_hot + r_other) * (1.0 - state.refused_share)
    owner = layout.owner
    admitted_p = (1.0 - state.refused_share)[owner]
    latency_p = state.mean_latency[owner]
    part_rate = traffic.tail.copy()
    np.add.at(part_rate, traffic.partition, rate)
    part_cpu = traffic.tail * model.cost_us * 1e-6
    np.add.at(part_cpu, traffic.partition, rate * cost * 1e-6)
    part_rate *= admitted_p
    part_cpu *= admitted_p
    partitions: dict[int, PartitionLoad] = {}
    if with_partitions:
        live = np.flatnonzero(part_rate > 0)
        partitions = {
            p: PartitionLoad(rate=r, cpu=c, memory=MEMORY_PER_PARTITION, latency=lat)
            for p, r, c, lat in zip(
                live.tolist(),
                part_rate[live].tolist(),
                part_cpu[live].tolist(),
                latency_p[live].tolist(),
                strict=True,
            )
        }
    per_shard_parts = np.bincount(owner, minlength=len(layout.names))
    shards = {
        name: ShardLoad(
            rate=float(shard_rate[i]),
            cpu=float(state.served[i]),
            memory=MEMORY_PER_PARTITION * float(per_shard_parts[i]),
            latency=float(state.mean_latency[i]),
            queue=float(state.backlog[i] / max(model.cost_us * 1e-6, 1e-12)),
        )
        for name, i in index.items()
    }
    campaigns = [
        CampaignLoad(
            name, int(traffic.partition[k]), float(rate[k]), float(rate[k] * cost[k] * 1e-6)
        )
        for k, name in enumerate(traffic.names)
        if rate[k] > 0
    ]
    return Observation(now, partitions, shards, tuple(campaigns))
