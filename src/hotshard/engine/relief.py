"""Where one hot spot goes: quarantine, pin, move, split or widen it, or say why not.

Hot load goes to pre-warmed capacity. A hot partition or campaign is placed on overflow-tier
shards (idle warm shards first, then overflow shards already serving), never on a base shard
while the overflow tier can take it; only when it cannot does the planner fall back to the
least-loaded shard of any tier that stays under target, and it asks the pool for the warm shards
it lacked. When nothing fits under target, a hot spot that overloads its shard still leaves it
for the idle warm shards there are, over target, rather than wait there for a refill. A campaign
hotter than one shard is split ``k = ceil(load / (capacity x target))`` ways; a rising one is
sized for its growth (:mod:`hotshard.engine.growth`), and if the warm pool is too small for
that, for its load of the instant. A split that turns out too narrow is widened: it keeps its
shards and adds more, so traffic already on warm shards stays put, and because it only ever
adds, it may happen while the route settles. A rising surge leaves its base shard at once,
before it fills it. A campaign whose requests turned expensive is quarantined, and stays on the
sandbox tier while only its cost shows: the latency, CPU or memory of a quarantined campaign is
the sandbox's tight quota doing its job, not a reason to spread it back onto shards that serve
other campaigns. Only its rate (or a forecast) is planned as usual.
"""

from __future__ import annotations

import math

from hotshard.engine.config import PlanningConfig
from hotshard.engine.cost import handover_cost
from hotshard.engine.detection import shard_units
from hotshard.engine.growth import STEADY, Growth
from hotshard.engine.model import Action, ActionKind, HotSpot
from hotshard.engine.planning import Workspace

Attempt = tuple[tuple[float, float], bool, str]
"""A sizing to try: the (rate, cpu) to place, whether any tier may take it, and why that size."""
Placement = tuple[list[str], tuple[float, float], str]
"""Chosen shards, the (rate, cpu) they take between them, and why that size (may be empty)."""

SANDBOX_HOLDS = frozenset({"cpu_per_request", "cpu", "latency", "memory"})
"""Signals that leave a quarantined campaign where it is (its rate is planned as usual)."""


def load_of(
    spot: HotSpot, rate: float, cpu: float, planning: PlanningConfig
) -> tuple[float, float]:
    """The (rate, cpu) to plan for: what is measured, scaled up for a forecast or an event."""
    units = shard_units(rate, cpu, planning)
    if spot.signal not in ("forecast", "calendar") or spot.load <= units:
        return rate, cpu
    if units <= 0:
        return spot.load * planning.shard_capacity_rps, spot.load * planning.shard_capacity_cpu
    scale = spot.load / units
    return rate * scale, cpu * scale


def held_back(ws: Workspace, where: str, p: int, campaign: str | None, widen: bool) -> bool:
    """Whether settle or churn holds this spot this round (noted); widening skips the settle."""
    if ws.settling(p, campaign) and not widen:
        ws.notes.append(f"{where} moved less than {ws.planning.settle_seconds:g} s ago: settling")
        return True
    if not ws.can_change():
        ws.notes.append(f"{where} waits: the churn limit of {ws.planning.churn_limit} is reached")
        return True
    return False


def relieve(
    ws: Workspace,
    spot: HotSpot,
    rate: float,
    cpu: float,
    growth: Growth = STEADY,
    shed: float = 0.0,
) -> bool:
    """Act on one hot spot. Returns whether it is dealt with this round (changed, or held by
    settle or churn); ``False`` lets a later spot of the same partition have a say.

    ``shed`` is the part of ``rate`` (req/s) that never reached the spot's owners: the router
    refused it while the campaign was over its allowance. The owners' measured load does not
    hold it, yet serving the campaign means carrying it, so it counts towards the need to move;
    otherwise the router's stopgap would hide the very hot spot it stands in for."""
    p, campaign = spot.partition, spot.campaign
    key = (p, campaign)
    where = f"partition {p}" + (f" campaign {campaign!r}" if campaign else "")
    current = ws.route(p, campaign)
    cap = ws.planning
    if spot.signal == "cpu_per_request" and campaign is not None:
        if not held_back(ws, where, p, campaign, widen=False):
            quarantine(ws, spot, current, rate, cpu)
        return True
    if spot.signal in SANDBOX_HOLDS and any(ws.tier.get(n) == "sandbox" for n in current):
        ws.notes.append(
            f"{where} is quarantined on {', '.join(current)}: its {spot.signal} there is the "
            "sandbox's quota at work, not a reason to move it"
        )
        return True
    # Latency or memory over its bar is a symptom: the load that causes it is relieved first
    # (spots come load first), and the partition itself is placed as ordinary load.
    symptom = spot.signal in ("latency", "memory")
    plan_rate, plan_cpu = load_of(spot, rate, cpu, cap)
    grown = (max(plan_rate, rate * growth.factor), max(plan_cpu, cpu * growth.factor))
    # Need: the owners' peak with the spot's forecast or calendar growth on top (measured
    # growth only sizes the plan, so a noisy plateau does not keep widening a split).
    extra_rate = (plan_rate - rate + shed) / len(current)
    extra_cpu = (plan_cpu - cpu) / len(current)
    worst = max(ws.peak(n, extra_rate, extra_cpu) for n in current)
    need = worst > cap.target_utilisation
    # Ours: a route the planner made (a split, a pin, or a route on overflow shards, which only
    # the planner fills, such as a campaign whose whole partition moved there); it is widened
    # in place. Anything else still sits on its home shard.
    ours = key in ws.splits or all(ws.tier[n] == "overflow" for n in current)
    merged = ws.memory.merged_at.get(key, -math.inf)
    isolate = (
        growth.surge
        and not ours
        and ws.now - merged >= cap.cooldown_seconds
        and any(ws.tier[n] == "base" for n in current)
    )
    if not need and not isolate:
        if ours and any(ws.tier[n] == "base" for n in current) and ws.idle:
            return evacuate(ws, spot, current, rate, cpu)
        with_shed = f" with the {shed:.4g} req/s the router sheds" if shed > 0 else ""
        ws.notes.append(
            f"{where} is hot but {', '.join(current)} stays at {worst:.0%}{with_shed}, under the "
            f"{cap.target_utilisation:.0%} target: no move needed"
        )
        return False
    widen = ours and need
    if held_back(ws, where, p, campaign, widen):
        return True
    keep = list(current) if ours else []
    least = len(keep) + 1 if widen else (2 if campaign is None and key in ws.splits else 1)
    attempts: list[Attempt] = [((grown[0], grown[1]), False, growth.why)]
    attempts.append(
        ((plan_rate, plan_cpu), False, "sized for its load now: too few warm shards for growth")
    )
    if need:
        attempts += [
            ((grown[0], grown[1]), True, "no warm shard can take it: the least-loaded shards"),
            ((plan_rate, plan_cpu), True, "no warm shard can take it: the least-loaded shards"),
        ]
    # While choosing, the spot's load is off its current shards; it is put back if nothing fits.
    ws.shift(current, (), rate, cpu)
    exclude = set(current) - set(keep)
    placed = choose_shards(ws, attempts, least, keep, exclude, symptom)
    if placed is None and need and not symptom:
        placed = spread_thin(ws, (plan_rate, plan_cpu), least, keep, exclude)
    if placed is None:
        ws.shift((), current, rate, cpu)
        k = max(least, ws.ways(ws.units(plan_rate, plan_cpu)))
        if isolate and not need:
            ws.notes.append(
                f"{where} is surging but no warm shard can take it; {', '.join(current)} stays "
                f"at {worst:.0%}, under the {cap.target_utilisation:.0%} target"
            )
        else:
            ws.notes.append(
                f"{where} needs {k} shard(s) of {ws.units(plan_rate, plan_cpu):.0%} / {k} each "
                "and none can take it without going over target; waiting for the warm pool"
            )
        return False
    chosen, (r, c), sized = placed
    k = len(chosen)
    for name in chosen:
        if name in ws.idle:
            ws.claim(name, spot.reason)
    targets = tuple(chosen)
    ws.shift((), targets, 0.0, 0.0, into=(r, c))
    kind: ActionKind = "migrate" if k == 1 and key not in ws.splits else "split"
    if campaign is None and kind == "migrate":
        ws.owners[p] = targets[0]
    else:
        ws.splits[key] = targets
    kept = widen and bool(set(keep) & set(targets))  # a widening that could keep no shard moves
    verb = "move" if kind == "migrate" else ("widen" if kept else "split") + f" {k} ways"
    why = spot.reason + (f"; {sized}" if sized else "")
    if isolate and not need:
        why += f"; a rising surge leaves {', '.join(current)} before it fills it"
    elif shed > 0:
        why += (
            f"; with the {shed:.4g} req/s of it the router sheds, {', '.join(current)} would "
            f"run at {worst:.0%}"
        )
    reason = f"{verb} {where} from {', '.join(current)} to {', '.join(targets)}: {why}"
    ws.record(Action(kind, reason, p, campaign, current, targets, handover_cost(ws.cost, k)))
    return True


def choose_shards(
    ws: Workspace,
    attempts: list[Attempt],
    least: int,
    keep: list[str],
    exclude: set[str],
    symptom: bool,
) -> Placement | None:
    """The first attempt whose ``k`` shares each fit a shard under target (``keep`` first, then
    the hot pools, or the ordinary ones for a symptom); the first attempt's lack is the warm
    pool's shortfall."""
    for index, ((r, c), any_tier, sized) in enumerate(attempts):
        k = max(least, ws.ways(ws.units(r, c)))
        pools = ws.ordinary_pools() if symptom else ws.hot_pools(any_tier)
        chosen = ws.choose(r / k, c / k, k, [keep, *pools], exclude)
        if index == 0 and len(chosen) < k:
            ws.shortfall += k - len(chosen)
        if len(chosen) == k:
            return chosen, (r, c), sized
    return None


def spread_thin(
    ws: Workspace, load: tuple[float, float], least: int, keep: list[str], exclude: set[str]
) -> Placement | None:
    """Too few warm shards for a hot spot at target: it still goes to the idle warm shards
    there are (up to the ``k`` it needs, ``keep`` first), each over target, if that adds a
    shard. They serve no one else, so only the hot spot shares their overload, and each share
    is smaller than what it carried; its old shard's other partitions are relieved at once."""
    k = max(least, ws.ways(ws.units(*load)))
    spare = [n for n in ws.idle if n not in exclude and n not in keep]
    chosen = [*keep, *spare][:k]
    if len(chosen) <= len(keep) or len(chosen) < least:
        return None
    sized = (
        f"too few warm shards: {len(chosen)} of the {k} it needs at the "
        f"{ws.planning.target_utilisation:.0%} target, each over it, until the pool refills"
    )
    return chosen, load, sized


def evacuate(
    ws: Workspace, spot: HotSpot, current: tuple[str, ...], rate: float, cpu: float
) -> bool:
    """Move the shares of a hot route that fell back onto base shards to warm shards that are
    idle again (a refill arrived), keeping its overflow shards; same number of ways."""
    p, campaign = spot.partition, spot.campaign
    where = f"partition {p}" + (f" campaign {campaign!r}" if campaign else "")
    if held_back(ws, where, p, campaign, widen=False):
        return True
    k = len(current)
    keep = [n for n in current if ws.tier[n] != "base"]
    ws.shift(current, (), rate, cpu)
    chosen = ws.choose(rate / k, cpu / k, k, [keep, *ws.hot_pools(any_tier=False)], set())
    if len(chosen) < k:
        ws.shift((), current, rate, cpu)
        return False
    for name in chosen:
        if name in ws.idle:
            ws.claim(name, spot.reason)
    targets = tuple(chosen)
    ws.shift((), targets, rate, cpu)
    ws.splits[(p, campaign)] = targets
    left = ", ".join(n for n in current if n not in targets)
    reason = (
        f"move {where} off base shard(s) {left}, from {', '.join(current)} to "
        f"{', '.join(targets)}: warm shards are idle again and hot load belongs on them"
    )
    kind: ActionKind = "split" if k > 1 else "migrate"
    ws.record(Action(kind, reason, p, campaign, current, targets, handover_cost(ws.cost, k)))
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
