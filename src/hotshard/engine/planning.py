"""From hot spots to a new routing table: where each hot thing goes, and in what order.

The planner works on a :class:`Workspace`, a mutable copy of the table's routes plus each shard's
projected load. Every placement is checked against the destination's load *plus* the load being
moved, so no destination ends above its target utilisation (no cascading hot spots); if no
serving shard fits, a warm idle overflow shard is claimed. A campaign hotter than one shard is
split ``k = ceil(load / (capacity x target))`` ways; a campaign whose requests turned expensive
is quarantined on a sandbox shard. A churn limit caps the routing changes per round, and a
route that just changed settles before it may change again.

Giving capacity back lives in :mod:`hotshard.engine.scaledown`; both share the workspace.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from hotshard.engine.config import CostConfig, PlanningConfig
from hotshard.engine.cost import handover_cost
from hotshard.engine.model import Action, ActionKind, HotSpot
from hotshard.routing import RoutingTable, Split

RouteKey = tuple[int, str | None]


def ordinal(name: str) -> tuple[int, str]:
    """Sort key by the trailing number of a shard name (``overflow-10`` after ``overflow-9``)."""
    match = re.search(r"(\d+)$", name)
    return (int(match.group(1)) if match else -1, name)


def lease_budget(total_micros: int, k: int) -> list[int]:
    """Split a campaign's budget, in micro-units of currency, into ``k`` leases summing to it.

    Integers, not floats: ``0.02`` summed 35 times is ``0.7000000000000001``, which would be an
    overspend. The remainder of the division goes one micro-unit each to the first shards.

    Example:
        >>> lease_budget(10_000_000, 3)
        [3333334, 3333333, 3333333]
    """
    if k < 1:
        raise ValueError(f"a budget is leased to at least one shard, not {k}")
    if total_micros <= 0:
        return [0] * k
    each, rest = divmod(total_micros, k)
    return [each + 1 if i < rest else each for i in range(k)]


@dataclass(slots=True)
class PlanMemory:
    """What the planner remembers between rounds."""

    home: list[str] = field(default_factory=list)
    """Each partition's base-tier owner, where scale-down sends it back."""
    settled_until: dict[RouteKey, float] = field(default_factory=dict)
    calm_since: dict[RouteKey, float] = field(default_factory=dict)
    idle_since: dict[str, float] = field(default_factory=dict)
    demand: list[int] = field(default_factory=list)
    """Shards claimed per round that claimed any, the warm-pool recommender's history."""


class Workspace:
    """Routes and projected shard loads for one round of planning."""

    def __init__(
        self,
        table: RoutingTable,
        idle: Iterable[str],
        shard_rate: Mapping[str, float],
        shard_cpu: Mapping[str, float],
        planning: PlanningConfig,
        cost: CostConfig,
        memory: PlanMemory,
        now: float,
    ) -> None:
        self.table = table
        self.planning = planning
        self.cost = cost
        self.memory = memory
        self.now = now
        self.owners = table.owners()
        self.splits: dict[RouteKey, tuple[str, ...]] = {
            (s.partition, s.campaign): s.shards for s in table.splits
        }
        self.order = {s.name: i for i, s in enumerate(table.shards)}
        self.tier = {s.name: s.tier for s in table.shards}
        self.rate = {n: float(shard_rate.get(n, 0.0)) for n in self.order}
        self.cpu = {n: float(shard_cpu.get(n, 0.0)) for n in self.order}
        self.idle = sorted((n for n in idle if self.tier.get(n) == "overflow"), key=ordinal)
        self.released: list[str] = []
        self.actions: list[Action] = []
        self.notes: list[str] = []
        self.changes = 0
        self.claimed = 0

    # -- loads ----------------------------------------------------------------------------

    def util(self, name: str, rate: float = 0.0, cpu: float = 0.0) -> float:
        p = self.planning
        return max(
            (self.rate[name] + rate) / p.shard_capacity_rps,
            (self.cpu[name] + cpu) / p.shard_capacity_cpu,
        )

    def shift(self, source: Iterable[str], target: Iterable[str], rate: float, cpu: float) -> None:
        """Move ``rate``/``cpu`` spread evenly over ``source`` onto ``target``, evenly."""
        for group, sign in ((tuple(source), -1.0), (tuple(target), 1.0)):
            for name in group:
                self.rate[name] = max(0.0, self.rate[name] + sign * rate / len(group))
                self.cpu[name] = max(0.0, self.cpu[name] + sign * cpu / len(group))

    def serving(self) -> list[str]:
        """Base and overflow shards that serve something, least loaded first."""
        idle = set(self.idle)
        names = [n for n in self.order if self.tier[n] != "sandbox" and n not in idle]
        return sorted(names, key=lambda n: (self.util(n), self.order[n]))

    # -- routes ---------------------------------------------------------------------------

    def route(self, partition: int, campaign: str | None = None) -> tuple[str, ...]:
        if campaign is not None and (partition, campaign) in self.splits:
            return self.splits[(partition, campaign)]
        return self.splits.get((partition, None), (self.owners[partition],))

    def settling(self, partition: int, campaign: str | None) -> bool:
        until = self.memory.settled_until
        return (
            max(
                until.get((partition, campaign), -math.inf), until.get((partition, None), -math.inf)
            )
            > self.now
        )

    def can_change(self) -> bool:
        return self.changes < self.planning.churn_limit

    def record(self, action: Action) -> None:
        self.actions.append(action)
        if action.kind in ("migrate", "split", "quarantine", "merge"):
            self.changes += 1
            key = (action.partition if action.partition is not None else -1, action.campaign)
            self.memory.settled_until[key] = self.now + self.planning.settle_seconds

    # -- placement ------------------------------------------------------------------------

    def claim(self, why: str) -> str | None:
        """Take the lowest-ordinal warm idle overflow shard into service."""
        if not self.idle:
            return None
        name = self.idle.pop(0)
        self.claimed += 1
        self.record(Action("claim_shard", f"claim warm shard {name}: {why}", target=(name,)))
        return name

    def place(self, rate: float, cpu: float, exclude: set[str], why: str, k: int = 1) -> list[str]:
        """``k`` distinct shards that each stay under target after taking ``rate/k``, ``cpu/k``;
        least-loaded serving shards first, then claimed warm shards. Empty if impossible."""
        target = self.planning.target_utilisation
        share_rate, share_cpu = rate / k, cpu / k
        chosen = [
            n
            for n in self.serving()
            if n not in exclude and self.util(n, share_rate, share_cpu) <= target
        ][:k]
        if len(chosen) < k and len(chosen) + len(self.idle) >= k:
            fits_empty = (
                max(
                    share_rate / self.planning.shard_capacity_rps,
                    share_cpu / self.planning.shard_capacity_cpu,
                )
                <= target
            )
            while fits_empty and len(chosen) < k:
                name = self.claim(why)
                assert name is not None
                chosen.append(name)
        return chosen if len(chosen) == k else []

    def ways(self, units: float) -> int:
        """``k = ceil(load / (capacity x target))``, at least one."""
        return max(1, math.ceil(units / self.planning.target_utilisation - 1e-9))

    # -- building -------------------------------------------------------------------------

    def build(self) -> RoutingTable | None:
        """The next table, or ``None`` when nothing in the routing changed."""
        splits = tuple(
            Split(partition=p, campaign=c, shards=shards)
            for (p, c), shards in sorted(
                self.splits.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")
            )
        )
        shards = tuple(s for s in self.table.shards if s.name not in self.released)
        same = (
            self.owners == self.table.owners()
            and splits
            == tuple(sorted(self.table.splits, key=lambda s: (s.partition, s.campaign or "")))
            and len(shards) == len(self.table.shards)
        )
        if same:
            return None
        return self.table.with_owners(
            self.owners, version=self.table.version + 1, splits=splits, shards=shards
        )


def load_of(
    spot: HotSpot, rate: float, cpu: float, planning: PlanningConfig
) -> tuple[float, float]:
    """The (rate, cpu) to plan for: what is measured, scaled up for a forecast or an event."""
    units = max(rate / planning.shard_capacity_rps, cpu / planning.shard_capacity_cpu)
    if spot.signal not in ("forecast", "calendar") or spot.load <= units:
        return rate, cpu
    if units <= 0:
        return spot.load * planning.shard_capacity_rps, spot.load * planning.shard_capacity_cpu
    scale = spot.load / units
    return rate * scale, cpu * scale


def relieve(ws: Workspace, spot: HotSpot, rate: float, cpu: float) -> bool:
    """Act on one hot spot: quarantine, pin, move or split it; or say why not.

    Returns whether the spot is dealt with this round (changed, or blocked by settle or churn).
    """
    p, campaign = spot.partition, spot.campaign
    where = f"partition {p}" + (f" campaign {campaign!r}" if campaign else "")
    current = ws.route(p, campaign)
    if ws.settling(p, campaign):
        ws.notes.append(f"{where} moved less than {ws.planning.settle_seconds:g} s ago: settling")
        return True
    if not ws.can_change():
        ws.notes.append(f"{where} waits: the churn limit of {ws.planning.churn_limit} is reached")
        return True
    if spot.signal == "cpu_per_request" and campaign is not None:
        quarantine(ws, spot, current, rate, cpu)
        return True
    plan_rate, plan_cpu = load_of(spot, rate, cpu, ws.planning)
    cap = ws.planning
    units = max(plan_rate / cap.shard_capacity_rps, plan_cpu / cap.shard_capacity_cpu)
    k = ws.ways(units)
    # Plan against what the owners will carry: today's load plus the growth being planned for.
    extra_rate, extra_cpu = (plan_rate - rate) / len(current), (plan_cpu - cpu) / len(current)
    worst = max(ws.util(n, extra_rate, extra_cpu) for n in current)
    if worst <= cap.target_utilisation:
        ws.notes.append(
            f"{where} is hot but {', '.join(current)} stays at {worst:.0%}, under the "
            f"{cap.target_utilisation:.0%} target: no move needed"
        )
        return False
    split = (p, campaign) in ws.splits
    if split and len(current) >= k:
        ws.notes.append(f"{where} is already split {len(current)} ways, enough for its load")
        return False
    kind: ActionKind = "split"
    if k == 1 and not split:
        kind = "migrate"
    elif campaign is None:
        k = max(k, 2)  # a partition-wide split needs two shards; one shard is a move
    # TODO(#3): a wider re-split takes k fresh shards; keeping the current ones would churn less.
    targets = ws.place(plan_rate, plan_cpu, set(current), spot.reason, k)
    if not targets:
        ws.notes.append(
            f"{where} needs {k} shard(s) of {units:.0%} / {k} each and none can take it "
            "without going over target; waiting for the warm pool"
        )
        return False
    ws.shift(current, targets, rate, cpu)
    shards = tuple(targets)
    if campaign is None and kind == "migrate":
        ws.owners[p] = shards[0]
    else:
        ws.splits[(p, campaign)] = shards
    verb = "move" if kind == "migrate" else f"split {k} ways"
    reason = f"{verb} {where} from {', '.join(current)} to {', '.join(shards)}: {spot.reason}"
    ws.record(
        Action(kind, reason, p, campaign, current, shards, handover_cost(ws.cost, len(shards)))
    )
    return True


def quarantine(
    ws: Workspace, spot: HotSpot, current: tuple[str, ...], rate: float, cpu: float
) -> None:
    """Pin a campaign whose requests turned expensive to the least-loaded sandbox shard."""
    p, campaign = spot.partition, spot.campaign
    sandboxes = sorted(
        (n for n in ws.order if ws.tier[n] == "sandbox"), key=lambda n: (ws.util(n), ws.order[n])
    )
    if any(ws.tier.get(n) == "sandbox" for n in current):
        ws.notes.append(f"campaign {campaign!r} is already quarantined on {', '.join(current)}")
        return
    if not sandboxes:
        ws.notes.append(
            f"campaign {campaign!r} should be quarantined but there is no sandbox shard"
        )
        return
    target = (sandboxes[0],)
    ws.shift(current, target, rate, cpu)
    ws.splits[(p, campaign)] = target
    reason = f"quarantine campaign {campaign!r} on sandbox shard {target[0]}: {spot.reason}"
    ws.record(Action("quarantine", reason, p, campaign, current, target, handover_cost(ws.cost, 1)))
