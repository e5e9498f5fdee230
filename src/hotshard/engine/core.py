"""The engine: one call a second, from an observation and the current table to a decision.

:class:`Engine` owns the state that spans seconds (windows, baselines, streaks, the heat map,
fitted forecasts, settle and cooldown clocks) and runs the stages in order: fail-static checks,
ingest, detect, forecast, plan, price. It does no I/O and never reads the clock; time comes in
with the observation, so the same sequence of inputs always yields the same decisions.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from hotshard.engine.capacity import IntArray, rebalance, scale_down, tend_pool
from hotshard.engine.config import EngineConfig
from hotshard.engine.cost import recommend_warm_pool, summarise_cost
from hotshard.engine.detection import (
    D_CPU,
    D_RATE,
    Detector,
    aggregate_campaigns,
    detection_signals,
    find_hot_spots,
)
from hotshard.engine.growth import spot_growth
from hotshard.engine.model import (
    CampaignLoad,
    Decision,
    HotSpot,
    Observation,
    PoolState,
    ShardHealth,
)
from hotshard.engine.planning import PlanMemory, Workspace
from hotshard.engine.prediction import Forecaster, calendar_hot_spots, forecast_hot_spots
from hotshard.engine.relief import relieve
from hotshard.engine.reporting import assess_health, explain, hold
from hotshard.engine.windows import (
    CPU,
    LATENCY,
    MEMORY,
    QUEUE,
    RATE,
    ShardWindows,
    Window,
    partition_block,
)
from hotshard.routing import RoutingTable

DEMAND_HISTORY = 64
"""Rounds of shard claims the warm-pool recommender remembers: weeks of spikes."""
SHED_NOISE = 0.1
"""A campaign's router count over its partition's served rate by less than this share of it is
timing, not shedding: the routers count whole 1 s windows, the bidders' rate is an irate."""


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
        self._shard_seconds = 0.0
        self._violation_seconds = 0.0

    # -- public ---------------------------------------------------------------------------

    def step(self, observation: Observation, table: RoutingTable, pool: PoolState) -> Decision:
        """Decide what to do about one second of metrics."""
        cfg = self.config
        now = observation.time
        warm_target = self.warm_pool_target(pool)
        if observation.age_seconds > cfg.detection.stale_after_seconds:
            return self._hold_for(
                f"metrics are {observation.age_seconds:.0f} s stale (limit "
                f"{cfg.detection.stale_after_seconds:g} s): holding the current table",
                table,
                pool,
                warm_target,
            )
        if not observation.partitions and not observation.shards:
            return self._hold_for(
                "no metrics arrived: holding the current table", table, pool, warm_target
            )
        if self._last_time is not None and now <= self._last_time:
            return self._hold_for(
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

        window.write(now, partition_block(observation.partitions, table.partitions))
        self._write_shards(observation, now, names, owner_idx, window)
        detection = detector.update(detection_signals(window.latest()), now, dt)
        campaigns = aggregate_campaigns(observation.campaigns, table.partitions)
        hot = find_hot_spots(detection, campaigns, detector, cfg.planning, now)

        rate = detection.values[D_RATE]
        cpu = detection.values[D_CPU]
        shard_rate, shard_cpu = self._shard_loads(names)
        shard_memory, shard_latency, queue = (
            self._shard_signal(names, s) for s in (MEMORY, LATENCY, QUEUE)
        )
        reported = set(observation.shards) if observation.shards else set(names)
        health = assess_health(
            cfg,
            table,
            pool,
            reported,
            owner_idx,
            hot,
            (shard_rate, shard_cpu, shard_memory, shard_latency, queue),
        )
        missing = [n for n in names if health[n].state == "missing" and n not in pool.idle]
        if missing:
            return self._hold_for(
                f"no metrics for shard(s) {', '.join(missing[:5])}: holding the current table",
                table,
                pool,
                warm_target,
                hot,
                health,
            )
        if table.migrations:
            return self._hold_for(
                f"a hand-over of {len(table.migrations)} route(s) is in progress: holding",
                table,
                pool,
                warm_target,
                hot,
                health,
            )

        resident_rate, resident_cpu = self._resident(table, rate, cpu, campaigns)
        last_rate, last_cpu = (
            dict(zip(names, self.shard_window.mean_recent(names, s, 1), strict=True))
            for s in (RATE, CPU)
        )
        ws = Workspace(
            table,
            pool.idle,
            dict(zip(names, shard_rate, strict=True)),
            dict(zip(names, shard_cpu, strict=True)),
            cfg.planning,
            cfg.cost,
            self.memory,
            now,
            latest=(last_rate, last_cpu),
        )
        # Load before symptoms: a shard's latency is relieved by moving what loads it.
        spots = sorted(hot, key=lambda s: s.signal in ("latency", "memory"))
        if cfg.prediction.enabled:
            predicted = self._predict(
                window, detector, rate, (resident_rate, resident_cpu), ws, campaigns, now
            )
            # A partition with a hot campaign, or one split away, rises with that campaign, whose
            # own route is planned for its growth: its total is no forecast for the rest of it.
            own = {s.partition for s in hot if s.campaign} | {
                s.partition for s in table.splits if s.campaign
            }
            spots += [s for s in predicted if s.signal != "forecast" or s.partition not in own]
        # One change per partition per round; a spot that needed no change (the shard had
        # room) lets a later spot of the same partition, such as its forecast, have a say.
        acted: set[int] = set()
        for spot in spots:
            if spot.partition in acted:
                continue
            shed = 0.0
            if spot.campaign is not None:
                seen = campaigns.get((spot.partition, spot.campaign))
                r = seen.rate if seen else float(detector.baseline[D_RATE, spot.partition])
                c = seen.cpu if seen else float(detector.baseline[D_CPU, spot.partition])
                # The routers count a campaign's requests before they shed its excess; what
                # its whole partition served is all that reached the bidders.
                unserved = r - float(rate[spot.partition]) if seen else 0.0
                shed = unserved if unserved > SHED_NOISE * r else 0.0
            else:
                r, c = float(resident_rate[spot.partition]), float(resident_cpu[spot.partition])
            growth = spot_growth(spot, rate, window.ago(1)[RATE], detector.baseline[D_RATE], cfg)
            if relieve(ws, spot, r, c, growth, shed):
                acted.add(spot.partition)
        hot_keys = frozenset((s.partition, s.campaign) for s in spots)
        sustained = self._sustained_over(names)
        rebalance(ws, resident_rate, resident_cpu, owner_idx, names, sustained, hot_keys)
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
        latency = dict(zip(names, shard_latency.tolist(), strict=True))
        self._shard_seconds += len(table.shards) * dt
        self._violation_seconds += dt * sum(
            v > cfg.cost.latency_budget_seconds for v in latency.values()
        )
        cost = summarise_cost(
            cfg.cost,
            health,
            latency,
            len(ws.idle),
            ws.actions,
            shard_seconds=self._shard_seconds,
            violation_seconds=self._violation_seconds,
        )
        return Decision(
            table=new_table,
            actions=tuple(ws.actions),
            hot=tuple(spots),
            health=health,
            reason=explain(ws.actions, ws.notes, spots),
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
        resident: tuple[np.ndarray, np.ndarray],
        ws: Workspace,
        campaigns: Mapping[tuple[int, str], CampaignLoad],
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
            window.rows,
            now,
            campaigns,
            detector.baseline[D_RATE],
            detector.baseline[D_CPU],
            cfg.planning,
        )
        spots += forecast_hot_spots(
            forecasts,
            rate,
            resident,
            owner_util,
            detector.baseline[D_RATE],
            detector.hot_factor(now),
            cfg.planning,
            cfg.prediction,
        )
        return spots

    def _hold_for(
        self,
        reason: str,
        table: RoutingTable,
        pool: PoolState,
        warm_target: int,
        hot: list[HotSpot] | None = None,
        health: Mapping[str, ShardHealth] | None = None,
    ) -> Decision:
        return hold(
            reason,
            table,
            pool,
            warm_target,
            self.config.cost,
            hot or [],
            health or {},
            shard_seconds=self._shard_seconds,
            violation_seconds=self._violation_seconds,
        )
