"""The fleet-wide passes of a planning round: relieve full shards, give back, tend the pool.

Hot spots are handled one by one in :mod:`hotshard.engine.relief`. What remains is the fleet
as a whole: a shard can be over target with no single hot partition (many grew a little), and it
is relieved by moving its largest ordinary partitions, each only where it fits, base shards
first. Hot partitions are never moved this way, and a shard whose load is a hot route the
planner placed there is left to that route's widening: moving its neighbours one percent at a
time would be a cascade that fixes nothing. When the spike is over,
capacity goes back with hysteresis: a split is merged, or a moved partition sent home, only after
``cooldown_seconds`` during which its home shard would have stayed under ``lower_threshold``
with it. Overflow shards idle for a cooldown beyond the warm-pool target are released, highest
ordinal first, and the pool is refilled up to its target within ``max_shards``.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from hotshard.engine.cost import handover_cost, shard_delta_cost
from hotshard.engine.model import Action, ActionKind, CampaignLoad
from hotshard.engine.planning import RouteKey, Workspace, ordinal
from hotshard.engine.windows import FloatArray

IntArray = npt.NDArray[np.intp]

MAX_TRIES_PER_SHARD = 32
"""Partitions tried per over-target shard per round: the largest ones matter, the rest wait."""


def rebalance(
    ws: Workspace,
    rate: FloatArray,
    cpu: FloatArray,
    owner_idx: IntArray,
    names: list[str],
    sustained: set[str],
    hot_spots: frozenset[RouteKey] = frozenset(),
) -> None:
    """Move the largest ordinary partitions (not hot) off shards over target for the whole
    sustain period (``sustained``), where each one fits. Shards that carry a hot route the
    planner placed, or one that just moved and is settling, are left to that route."""
    p_cfg = ws.planning
    target = p_cfg.target_utilisation
    hot = {p for p, _ in hot_spots}
    hot_routes = {n for (p, _), shards in ws.splits.items() if p in hot for n in shards}
    for p, c in hot_spots:
        if ws.settling(p, c):
            hot_routes.update(ws.route(p, c))
    over = [n for n in reversed(ws.serving()) if n in sustained and ws.util(n) > target]
    for name in [n for n in over if n in hot_routes]:
        ws.notes.append(
            f"shard {name} is over target with a hot route on it: that route is widened or "
            "settles, its neighbours stay"
        )
    over = [n for n in over if n not in hot_routes]
    units = np.maximum(rate / p_cfg.shard_capacity_rps, cpu / p_cfg.shard_capacity_cpu)
    for name in over:
        members = np.flatnonzero(owner_idx == names.index(name))
        order = members[np.lexsort((members, -units[members]))][:MAX_TRIES_PER_SHARD]
        # Movable: ordinary (hot load goes to warm shards, by relief), not settling, and
        # neither empty nor too big for any one shard (that is a split's job).
        movable = [
            p
            for p in order.tolist()
            if ws.owners[p] == name
            and (p, None) not in ws.splits
            and p not in hot
            and not ws.settling(p, None)
            and 0 < units[p] <= target
        ]
        if ws.util(name) - float(units[movable].sum()) > target:
            ws.notes.append(
                f"shard {name} is at {ws.util(name):.0%} and moving all of its {len(movable)} "
                "largest movable partitions would not bring it under target: no neighbour moves"
            )
            continue
        for p in movable:
            if ws.util(name) <= target:
                break
            if not ws.can_change():
                ws.notes.append(f"shard {name} is over target; the churn limit defers the rest")
                return
            why = f"shard {name} is at {ws.util(name):.0%}, over the {target:.0%} target"
            dest = ws.place(float(rate[p]), float(cpu[p]), {name}, why)
            if not dest:
                continue
            ws.owners[p] = dest[0]
            ws.shift((name,), dest, float(rate[p]), float(cpu[p]))
            reason = (
                f"move partition {p} ({units[p]:.0%} of a shard) from {name} to {dest[0]}: {why}"
            )
            ws.record(
                Action("migrate", reason, p, None, (name,), (dest[0],), handover_cost(ws.cost, 1))
            )


def scale_down(
    ws: Workspace,
    hot: set[int],
    rate: FloatArray,
    cpu: FloatArray,
    campaigns: dict[tuple[int, str], CampaignLoad],
    home: list[str],
    moved: list[int],
) -> None:
    """Merge calm splits and send calm ``moved`` partitions home, after the cooldown."""
    cfg = ws.planning
    memory = ws.memory
    entries: list[tuple[RouteKey, tuple[str, ...], float, float]] = []
    for (p, c), shards in sorted(ws.splits.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
        if c is None:
            entries.append(((p, None), shards, float(rate[p]), float(cpu[p])))
        else:
            seen = campaigns.get((p, c))
            load = (seen.rate, seen.cpu) if seen else (0.0, 0.0)
            entries.append(((p, c), shards, *load))
    for p in moved:
        entries.append(((p, None), (ws.owners[p],), float(rate[p]), float(cpu[p])))
    present: set[RouteKey] = set()
    for key, shards, r, cpu_load in entries:
        p, campaign = key
        present.add(key)
        if campaign is not None or key in ws.splits:
            dest = ws.route(p, None) if campaign is not None else (ws.owners[p],)
        else:
            dest = (home[p],)
        calm = p not in hot and all(
            ws.util(n, r / len(dest), cpu_load / len(dest)) <= cfg.lower_threshold for n in dest
        )
        if not calm:
            memory.calm_since.pop(key, None)
            continue
        since = memory.calm_since.setdefault(key, ws.now)
        if ws.now - since < cfg.cooldown_seconds or not ws.can_change() or ws.settling(p, campaign):
            continue
        where = f"partition {p}" + (f" campaign {campaign!r}" if campaign else "")
        calm_for = f"calm for {duration(ws.now - since)} and {', '.join(dest)} stays under "
        calm_for += f"{cfg.lower_threshold:.0%} with it"
        ws.shift(shards, dest, r, cpu_load)
        if key in ws.splits:
            del ws.splits[key]
            kind: ActionKind = "merge"
            reason = (
                f"merge {where} back from {', '.join(shards)} onto {', '.join(dest)}: {calm_for}"
            )
        else:
            ws.owners[p] = dest[0]
            kind = "migrate"
            reason = f"move {where} home from {shards[0]} to {dest[0]}: {calm_for}"
        memory.calm_since.pop(key, None)
        memory.merged_at[key] = ws.now
        ws.record(Action(kind, reason, p, campaign, shards, dest, handover_cost(ws.cost, 1)))
    for key in [k for k in memory.calm_since if k not in present]:
        del memory.calm_since[key]
    for key in [k for k, t in memory.merged_at.items() if ws.now - t > cfg.cooldown_seconds]:
        del memory.merged_at[key]


def duration(seconds: float) -> str:
    """``45 s`` under two minutes, ``15 min`` beyond: a cooldown reads in its own unit."""
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def tend_pool(ws: Workspace, warm_target: int, pending: int, size: int, release: bool) -> None:
    """Release idle overflow shards beyond the warm target; ask for shards below it."""
    cfg = ws.planning
    used = set(ws.owners)
    for shards in ws.splits.values():
        used.update(shards)
    idle = [n for n in ws.order if ws.tier[n] == "overflow" and n not in used]
    for name in [n for n in ws.memory.idle_since if n not in idle]:
        del ws.memory.idle_since[name]
    for name in idle:
        ws.memory.idle_since.setdefault(name, ws.now)
    excess = len(idle) - warm_target
    if release and excess > 0:
        ready = [n for n in idle if ws.now - ws.memory.idle_since[n] >= cfg.cooldown_seconds]
        for name in sorted(ready, key=ordinal, reverse=True)[:excess]:
            ws.released.append(name)
            reason = (
                f"release overflow shard {name}: {len(idle)} idle, {warm_target} wanted warm; "
                "highest ordinal goes first"
            )
            ws.record(
                Action("release_shard", reason, source=(name,), cost=shard_delta_cost(ws.cost, -1))
            )
        idle = [n for n in idle if n not in ws.released]
    # Below the warm target, or short of what this round's hot spots lacked: ask for more.
    missing = min(max(warm_target - len(idle), ws.shortfall) - pending, cfg.max_shards - size)
    lacked = f", {ws.shortfall} lacked by hot spots" if ws.shortfall else ""
    for i in range(max(0, missing)):
        reason = (
            f"ask for a warm overflow shard ({i + 1} of {missing}): {len(idle)} idle and "
            f"{pending} starting, {warm_target} wanted{lacked}, {size} of at most "
            f"{cfg.max_shards} shards"
        )
        ws.record(Action("refill_pool", reason, cost=shard_delta_cost(ws.cost, 1)))
