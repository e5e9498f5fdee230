"""The engine: one call a second, from an observation and the current table to a decision.

:class:`Engine` owns the state that spans seconds (windows, baselines, streaks, the heat map,
fitted forecasts, settle and cooldown clocks) and runs the stages in order: fail-static checks,
ingest, detect, forecast, plan, price. It does no I/O and never reads the clock; time comes in
with the observation, so the same sequence of inputs always yields the same decisions.
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import chain
from operator import attrgetter

import numpy as np

from hotshard.engine.capacity import IntArray, rebalance, scale_down, tend_pool
from hotshard.engine.config import EngineConfig
from hotshard.engine.cost import recommend_warm_pool, summarise_cost
from hotshard.engine.detection import (
    D_CPU,
    D_RATE,
    Detector,
    aggregate_campaigns,
    compound_score,
    detection_signals,
    find_hot_spots,
)
from hotshard.engine.model import (
    CampaignLoad,
    CostSummary,
    Decision,
    HealthState,
    HotSpot,
    Observation,
    PoolState,
    ShardHealth,
)
from hotshard.engine.planning import PlanMemory, Workspace, relieve
from hotshard.engine.prediction import Forecaster, calendar_hot_spots, forecast_hot_spots
from hotshard.engine.windows import CPU, LATENCY, MEMORY, QUEUE, RATE, SIGNALS, ShardWindows, Window
from hotshard.routing import RoutingTable

DEMAND_HISTORY = 64
"""Rounds of shard claims the warm-pool recommender remembers: weeks of spikes."""


class Engine:
    """Detect, forecast, plan and price, one observation at a time."""

    def __init__(self, config: EngineConfig | None = None) -> None:
        self.config = config or EngineConfig()
        self.memory = PlanMemory()
        self.forecaster = Forecaster(self.config.prediction)
        self.shard_window = ShardWindows(self.config.detection.window_seconds)
        self._partitions = 0
        self._window: Window | None = None
        self._detector: Detector | None = None
        self._last_time: float | None = None
        self._owner_cache: tuple[int, int, list[str], IntArray] | None = None
        self._home_cache: tuple[tuple[int, int], IntArray] | None = None

    # -- public ---------------------------------------------------------------------------

    def step(self, observation: Observation, table: RoutingTable, pool: PoolState) -> Decision:
        """Decide what to do about one second of metrics."""
        cfg = self.config
        now = observation.time
        warm_target = self.warm_pool_target(pool)
        if observation.age_seconds > cfg.detection.stale_after_seconds:
            return self._hold(
                f"metrics are {observation.age_seconds:.0f} s stale (limit "
                f"{cfg.detection.stale_after_seconds:g} s): holding the current table",
                table,
                pool,
                warm_target,
            )
        if not observation.partitions and not observation.shards:
            return self._hold(
                "no metrics arrived: holding the current table", table, pool, warm_target
            )
        if self._last_time is not None and now <= self._last_time:
            return self._hold(
                f"observation at t={now:g} is not newer than t={self._last_time:g}: holding",
                table,
                pool,
                warm_target,
            )
        dt = (
            1.0
            if self._last_time is None
            else min(now - self._last_time, cfg.detection.window_seconds)
        )
        self._last_time = now
        window, detector = self._state(table.partitions)
        names, owner_idx = self._owners(table)

        window.write(now, self._partition_block(observation, table.partitions))
        self._write_shards(observation, now, names, owner_idx, window)
        detection = detector.update(detection_signals(window.latest()), now, dt)
        campaigns = aggregate_campaigns(observation.campaigns, table.partitions)
        hot = find_hot_spots(detection, campaigns, detector, cfg.planning, now)

        rate = detection.values[D_RATE]
        cpu = detection.values[D_CPU]
        shard_rate, shard_cpu = self._shard_loads(names)
        health = self._health(
            observation, table, pool, names, owner_idx, hot, shard_rate, shard_cpu
        )
        missing = [n for n in names if health[n].state == "missing" and n not in pool.idle]
        if missing:
            return self._hold(
                f"no metrics for shard(s) {', '.join(missing[:5])}: holding the current table",
                table,
                pool,
                warm_target,
                hot,
                health,
            )
        if table.migrations:
            return self._hold(
                f"a hand-over of {len(table.migrations)} route(s) is in progress: holding",
                table,
                pool,
                warm_target,
                hot,
                health,
            )

        resident_rate, resident_cpu = self._resident(table, rate, cpu, campaigns)
        ws = Workspace(
            table,
            pool.idle,
            dict(zip(names, shard_rate, strict=True)),
            dict(zip(names, shard_cpu, strict=True)),
            cfg.planning,
            cfg.cost,
            self.memory,
            now,
        )
        spots = list(hot)
        if cfg.prediction.enabled:
            spots += self._predict(
                window,
                detector,
                rate,
                cpu,
                ws,
                campaigns,
                table.partitions,
                now,
            )
        # One change per partition per round; a spot that needed no change (the shard had
        # room) lets a later spot of the same partition, such as its forecast, have a say.
        acted: set[int] = set()
        for spot in spots:
            if spot.partition in acted:
                continue
            if spot.campaign is not None:
                seen = campaigns.get((spot.partition, spot.campaign))
                r = seen.rate if seen else float(detector.baseline[D_RATE, spot.partition])
                c = seen.cpu if seen else float(detector.baseline[D_CPU, spot.partition])
            else:
                r, c = float(resident_rate[spot.partition]), float(resident_cpu[spot.partition])
            if relieve(ws, spot, r, c):
                acted.add(spot.partition)
        rebalance(ws, resident_rate, resident_cpu, owner_idx, names, self._sustained_over(names))
        scaling_up = ws.changes > 0 or ws.claimed > 0
        if not scaling_up:
            hot_partitions = {s.partition for s in spots}
            moved = self._moved(table, owner_idx)
            scale_down(
                ws, hot_partitions, resident_rate, resident_cpu, campaigns, self.memory.home, moved
            )
        tend_pool(ws, warm_target, pool.pending, pool.size, release=not scaling_up)
        if ws.claimed:
            self.memory.demand = [*self.memory.demand, ws.claimed][-DEMAND_HISTORY:]
        new_table = ws.build()
        latency = {
            n: float(v) for n, v in zip(names, self._shard_signal(names, LATENCY), strict=True)
        }
        cost = summarise_cost(cfg.cost, health, latency, len(ws.idle), ws.actions)
        return Decision(
            table=new_table,
            actions=tuple(ws.actions),
            hot=tuple(spots),
            health=health,
            reason=self._explain(ws, spots, new_table, table),
            cost=cost,
            warm_pool_target=warm_target,
            notes=tuple(ws.notes),
        )

    def warm_pool_target(self, pool: PoolState) -> int:
        """How many idle warm overflow shards to keep, from the claims seen so far."""
        p = self.config.planning
        limit = max(0, p.max_shards - len(pool.base) - len(pool.sandbox))
        advice = recommend_warm_pool(self.memory.demand, self.config.cost, limit=limit)
        return min(limit, max(p.min_warm_pool, advice.size))

    # -- stages ---------------------------------------------------------------------------

    def _state(self, partitions: int) -> tuple[Window, Detector]:
        if self._window is None or self._detector is None or partitions != self._partitions:
            # NB: the partition count is fixed for a fleet's life; a new count starts afresh.
            self._partitions = partitions
            self._window = Window(partitions, self.config.detection.window_seconds)
            self._detector = Detector(self.config.detection, partitions)
            self.memory.home = []
        return self._window, self._detector

    def _owners(self, table: RoutingTable) -> tuple[list[str], IntArray]:
        cache = self._owner_cache
        if cache is not None and cache[0] == id(table) and cache[1] == table.version:
            return cache[2], cache[3]
        names = [s.name for s in table.shards]
        index = {n: i for i, n in enumerate(names)}
        owner_idx = np.empty(table.partitions, dtype=np.intp)
        for r in table.ranges:
            owner_idx[r.first : r.last + 1] = index[r.shard]
        if not self.memory.home:
            self.memory.home = self._home(table)
        self._owner_cache = (id(table), table.version, names, owner_idx)
        return names, owner_idx

    def _moved(self, table: RoutingTable, owner_idx: IntArray) -> list[int]:
        """Partitions away from their home shard (whose home is still in the table)."""
        key = (id(table), table.version)
        if self._home_cache is None or self._home_cache[0] != key:
            index = {s.name: i for i, s in enumerate(table.shards)}
            home = np.array([index.get(h, -1) for h in self.memory.home], dtype=np.intp)
            self._home_cache = (key, home)
        home_idx = self._home_cache[1]
        away = (owner_idx != home_idx) & (home_idx >= 0)
        split = [s.partition for s in table.splits if s.campaign is None]
        away[split] = False
        return np.flatnonzero(away).tolist()

    @staticmethod
    def _home(table: RoutingTable) -> list[str]:
        """The base owner of each partition: the first table's, else an even base layout."""
        base = [s for s in table.shards if s.tier == "base"] or list(table.shards)
        even = RoutingTable.even(base, partitions=table.partitions).owners()
        tiers = {s.name: s.tier for s in table.shards}
        return [o if tiers[o] == "base" else e for o, e in zip(table.owners(), even, strict=True)]

    @staticmethod
    def _partition_block(observation: Observation, partitions: int) -> np.ndarray:
        block = np.full((len(SIGNALS), partitions), np.nan)
        loads = observation.partitions
        if loads:
            ids = np.fromiter(loads.keys(), dtype=np.intp, count=len(loads))
            # NB: one C-level pass over the loads; a list of tuples costs three times as much.
            fields = attrgetter("rate", "cpu", "memory", "latency", "queue")
            flat = chain.from_iterable(map(fields, loads.values()))
            values = np.fromiter(flat, dtype=np.float64, count=len(loads) * len(SIGNALS))
            values = values.reshape(len(loads), len(SIGNALS))
            keep = (ids >= 0) & (ids < partitions)
            block[:, ids[keep]] = values[keep].T
        return block

    def _write_shards(
        self, obs: Observation, now: float, names: list[str], owner_idx: IntArray, window: Window
    ) -> None:
        if obs.shards:
            values: dict[str, tuple[float, ...]] = {
                n: (s.rate, s.cpu, s.memory, s.latency, s.queue) for n, s in obs.shards.items()
            }
        else:
            # NB: without shard totals, sum the partitions by owner (splits are not spread).
            latest = np.nan_to_num(window.latest().astype(np.float64))
            sums = [
                np.bincount(owner_idx, weights=latest[i], minlength=len(names)) for i in range(5)
            ]
            values = {n: tuple([float(s[i]) for s in sums]) for i, n in enumerate(names)}
        self.shard_window.write(now, values)

    def _shard_signal(self, names: list[str], signal: int) -> np.ndarray:
        buckets = int(np.ceil(self.config.detection.sustain_seconds))
        return self.shard_window.mean_recent(names, signal, buckets)

    def _sustained_over(self, names: list[str]) -> set[str]:
        """Shards over target in every bucket of the sustain period: one bucket is not enough."""
        p = self.config.planning
        buckets = int(np.ceil(self.config.detection.sustain_seconds))
        rate = self.shard_window.min_recent(names, RATE, buckets) / p.shard_capacity_rps
        cpu = self.shard_window.min_recent(names, CPU, buckets) / p.shard_capacity_cpu
        over = np.maximum(rate, cpu) > p.target_utilisation
        return {n for n, o in zip(names, over, strict=True) if o}

    def _shard_loads(self, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Shard rate and CPU over the sustain period, so one noisy bucket moves nothing."""
        return self._shard_signal(names, RATE), self._shard_signal(names, CPU)

    def _resident(
        self,
        table: RoutingTable,
        rate: np.ndarray,
        cpu: np.ndarray,
        campaigns: Mapping[tuple[int, str], CampaignLoad],
    ) -> tuple[np.ndarray, np.ndarray]:
        """Partition load that sits on the range owner: minus campaigns pinned or split away."""
        r, c = rate.copy(), cpu.copy()
        for s in table.splits:
            seen = campaigns.get((s.partition, s.campaign)) if s.campaign else None
            if seen is not None:
                r[s.partition] -= seen.rate
                c[s.partition] -= seen.cpu
        return np.maximum(r, 0.0), np.maximum(c, 0.0)

    def _predict(
        self,
        window: Window,
        detector: Detector,
        rate: np.ndarray,
        cpu: np.ndarray,
        ws: Workspace,
        campaigns: Mapping[tuple[int, str], CampaignLoad],
        partitions: int,
        now: float,
    ) -> list[HotSpot]:
        """Calendar events first (they are certain), then forecasts of the fastest risers."""
        cfg = self.config
        fc = self.forecaster
        candidates = fc.select(window, rate, detector.heat(now))
        forecasts = fc.forecast(window, candidates, now)
        owner_util = {p: ws.util(ws.owners[p]) for p in forecasts}
        spots = calendar_hot_spots(
            cfg.prediction,
            partitions,
            now,
            campaigns,
            detector.baseline[D_RATE],
            detector.baseline[D_CPU],
            cfg.planning,
        )
        factor = np.maximum(
            cfg.detection.min_hot_factor,
            cfg.detection.hot_factor * (1 - cfg.detection.heat_discount * detector.heat(now)),
        )
        spots += forecast_hot_spots(
            forecasts,
            rate,
            cpu,
            owner_util,
            detector.baseline[D_RATE],
            factor,
            cfg.planning,
            cfg.prediction,
        )
        return spots

    def _health(
        self,
        observation: Observation,
        table: RoutingTable,
        pool: PoolState,
        names: list[str],
        owner_idx: IntArray,
        hot: list[HotSpot],
        shard_rate: np.ndarray,
        shard_cpu: np.ndarray,
    ) -> dict[str, ShardHealth]:
        """Per shard: a compound score, the planner's utilisation and a state in words."""
        cfg = self.config
        reported = set(observation.shards) if observation.shards else set(names)
        mem = self._shard_signal(names, MEMORY)
        lat = self._shard_signal(names, LATENCY)
        queue = self._shard_signal(names, QUEUE)
        scores = compound_score(
            shard_rate,
            shard_cpu,
            mem,
            lat,
            cfg.detection,
            cfg.planning,
            cfg.cost.latency_budget_seconds,
        )
        hot_owners = {names[owner_idx[s.partition]] for s in hot}
        target = cfg.planning.target_utilisation
        out: dict[str, ShardHealth] = {}
        for i, shard in enumerate(table.shards):
            name = shard.name
            util = max(
                shard_rate[i] / cfg.planning.shard_capacity_rps,
                shard_cpu[i] / cfg.planning.shard_capacity_cpu,
            )
            facts = f"{util:.0%} used, {lat[i] * 1000:.0f} ms latency, {queue[i]:.0f} queued"
            state: HealthState
            if name not in reported:
                state, why = "missing", "no metrics reported"
            elif name in pool.idle:
                state, why = "idle", f"warm and idle ({facts})"
            elif util > target:
                state, why = "over", f"over the {target:.0%} target: {facts}"
            elif name in hot_owners:
                state, why = "hot", f"owns a hot partition: {facts}"
            else:
                state, why = "ok", facts
            out[name] = ShardHealth(name, shard.tier, state, float(scores[i]), float(util), why)
        return out

    # -- words ----------------------------------------------------------------------------

    def _hold(
        self,
        reason: str,
        table: RoutingTable,
        pool: PoolState,
        warm_target: int,
        hot: list[HotSpot] | None = None,
        health: Mapping[str, ShardHealth] | None = None,
    ) -> Decision:
        """A decision that changes nothing, with the reason why."""
        price = self.config.cost.shard_hour_cost
        cost = CostSummary(
            shards=len(table.shards),
            shard_cost_per_hour=len(table.shards) * price,
            idle_warm_shards=len(pool.idle),
            idle_warm_cost_per_hour=len(pool.idle) * price,
            violation_shards=0,
            violation_cost_per_hour=0.0,
            action_cost=0.0,
        )
        return Decision(None, (), tuple(hot or ()), dict(health or {}), reason, cost, warm_target)

    @staticmethod
    def _explain(
        ws: Workspace, spots: list[HotSpot], new: RoutingTable | None, old: RoutingTable
    ) -> str:
        """One sentence: what was decided and why, or why nothing was."""
        if ws.actions:
            first = ws.actions[0].reason
            more = len(ws.actions) - 1
            tail = f" (and {more} more action{'s' if more > 1 else ''})" if more else ""
            version = f"; table v{new.version}" if new is not None else ""
            return f"{first[0].upper()}{first[1:]}{tail}{version}"
        if spots:
            n = len(spots)
            why = ws.notes[0] if ws.notes else spots[0].reason
            return f"{n} hot spot{'s' if n > 1 else ''}, no change: {why}"
        return (
            f"nothing is hot and all {len(old.shards)} shards are within target: "
            "holding the current table"
        )
