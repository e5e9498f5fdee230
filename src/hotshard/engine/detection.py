"""When is a virtual partition, or one campaign in it, hot.

Each partition is compared with its own past, not with its neighbours: a moving baseline per
partition and signal (exponentially weighted, half-life configurable) and a bar at ``hot_factor``
times that baseline. A signal is over when it clears both the bar and an absolute floor, and hot
once it has stayed over for ``sustain_seconds``. While a signal is over, its baseline learns
much more slowly, so a long spike does not become the new normal within minutes.

Five signals are watched: rate, CPU, CPU per request, memory and latency. CPU per request is the
resource hot spot: a campaign whose requests suddenly cost 100x the CPU at an unchanged rate.
The campaign-level view comes from the routers' and bidders' top-k reports: when one campaign
carries most of a hot partition's load, the hot spot is that campaign. A heat map remembers past
offenders and lowers their bar.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from hotshard.engine.config import DetectionConfig, PlanningConfig
from hotshard.engine.model import CampaignLoad, HotSpot, Signal
from hotshard.engine.windows import CPU, LATENCY, MEMORY, RATE, FloatArray
from hotshard.routing import partition_of

BoolArray = npt.NDArray[np.bool_]

DETECTED: tuple[Signal, ...] = ("rate", "cpu", "cpu_per_request", "memory", "latency")
D_RATE, D_CPU, D_CPR, D_MEMORY, D_LATENCY = range(len(DETECTED))
UNITS = {"rate": "req/s", "cpu": "cpu-s/s", "cpu_per_request": "cpu-s/req", "memory": "B"}


@dataclass(frozen=True, slots=True)
class Detection:
    """One step's verdict for every partition; arrays are ``(signals, partitions)``."""

    values: FloatArray
    baseline: FloatArray
    hot: BoolArray

    def hot_partitions(self) -> npt.NDArray[np.intp]:
        return np.flatnonzero(self.hot.any(axis=0))


def detection_signals(latest: npt.NDArray[np.float32]) -> FloatArray:
    """The five detected signals from a window bucket (NaN where unreported)."""
    rate = latest[RATE].astype(np.float64)
    cpu = latest[CPU].astype(np.float64)
    cpr = np.divide(cpu, rate, out=np.full_like(rate, np.nan), where=rate > 0)
    return np.stack([rate, cpu, cpr, latest[MEMORY], latest[LATENCY]]).astype(np.float64)


class Detector:
    """Baselines, over-the-bar streaks and the heat map for ``partitions`` partitions."""

    def __init__(self, config: DetectionConfig, partitions: int) -> None:
        self.config = config
        shape = (len(DETECTED), partitions)
        self.baseline = np.zeros(shape)
        self.seeded = np.zeros(partitions, dtype=bool)
        self.updates = 0
        self.count = np.zeros(partitions)
        self.streak = np.zeros(shape)
        self.last_hot = np.full(partitions, -np.inf)
        self.campaign_last_hot: dict[str, float] = {}
        c = config
        # NB: CPU per request has no floor of its own (a CPU floor in cpu-s/s against a value in
        # cpu-s/req would ask for 50 ms a request); the partition's CPU floor gates it in update.
        self._floors = np.array(
            [c.floor_rps, c.floor_cpu, 0.0, c.floor_memory_bytes, c.floor_latency_seconds]
        )[:, None]

    def heat(self, now: float) -> FloatArray:
        """Per partition, 1.0 if hot just now, halving every ``heat_half_life_seconds``."""
        return np.asarray(0.5 ** ((now - self.last_hot) / self.config.heat_half_life_seconds))

    def hot_factor(self, now: float) -> FloatArray:
        """Per partition, the bar over baseline: ``hot_factor``, lowered by the heat map."""
        c = self.config
        return np.maximum(c.min_hot_factor, c.hot_factor * (1 - c.heat_discount * self.heat(now)))

    def campaign_heat(self, campaign: str, now: float) -> float:
        last = self.campaign_last_hot.get(campaign)
        if last is None:
            return 0.0
        return float(0.5 ** ((now - last) / self.config.heat_half_life_seconds))

    def update(self, values: FloatArray, now: float, dt: float) -> Detection:
        """Judge one bucket of :func:`detection_signals` and learn from it."""
        c = self.config
        present = np.isfinite(values)
        observed = present[D_RATE]
        v = np.where(present, values, 0.0)
        if self.updates:
            # A partition first reported after the first bucket had no traffic until now (a
            # metrics series appears with its first request): its rate and CPU baselines are
            # zero, so a campaign that wakes up at 1000x is a surge, not its new normal.
            late = observed & ~self.seeded
            self.baseline[:, late] = v[:, late]
            self.baseline[D_RATE, late] = 0.0
            self.baseline[D_CPU, late] = 0.0
            self.seeded |= late
        self.updates += 1
        judged = observed & self.seeded
        factor = self.hot_factor(now)
        above_floor = v >= self._floors
        # CPU per request only counts where the CPU itself is worth a look.
        above_floor[D_CPR] &= v[D_CPU] >= c.floor_cpu
        over = (v >= factor * self.baseline) & above_floor & present & judged
        self.streak = np.where(over, self.streak + dt, 0.0)
        surge = over & (v >= c.surge_factor * self.baseline)
        hot = (self.streak >= c.sustain_seconds - 1e-9) | surge
        detection = Detection(values=v, baseline=self.baseline.copy(), hot=hot)
        # Learn: a normal step moves the baseline by alpha, an over-the-bar step by far less.
        # NB: until a partition has seen as many buckets as the EWMA's memory, the baseline is
        # the running mean of what it saw: a noisy first bucket is not the baseline for minutes.
        alpha = np.maximum(1.0 - 0.5 ** (dt / c.baseline_half_life_seconds), 1.0 / (self.count + 1))
        rate = np.where(over, alpha * c.hot_baseline_slowdown, alpha) * (present & judged)
        self.count += observed
        self.baseline += rate * (v - self.baseline)
        fresh = observed & ~self.seeded
        self.baseline[:, fresh] = v[:, fresh]
        self.seeded |= observed
        self.last_hot[hot.any(axis=0)] = now
        return detection

    def remember_campaigns(self, campaigns: Iterable[str], now: float) -> None:
        for name in campaigns:
            self.campaign_last_hot[name] = now
        # NB: bounded: keep the 4,096 most recent offenders, far more than ever run hot at once.
        if len(self.campaign_last_hot) > 4096:
            keep = sorted(self.campaign_last_hot.items(), key=lambda kv: (-kv[1], kv[0]))[:4096]
            self.campaign_last_hot = dict(keep)


def aggregate_campaigns(
    reports: Iterable[CampaignLoad], partitions: int
) -> dict[tuple[int, str], CampaignLoad]:
    """Merge top-k reports: routers see the rate, bidders the CPU; keep the larger of each.

    A report whose campaign does not hash to its partition is dropped: routing it would be
    impossible, and it means the reporter uses another partition count.
    """
    merged: dict[tuple[int, str], CampaignLoad] = {}
    for r in reports:
        if partition_of(r.campaign, partitions) != r.partition:
            continue
        key = (r.partition, r.campaign)
        old = merged.get(key)
        if old is None:
            merged[key] = r
        else:
            merged[key] = CampaignLoad(
                r.campaign, r.partition, max(old.rate, r.rate), max(old.cpu, r.cpu)
            )
    return dict(sorted(merged.items()))


def shard_units(rate: float, cpu: float, planning: PlanningConfig) -> float:
    """A load in shards at full capacity: the larger of its rate and CPU shares."""
    return max(rate / planning.shard_capacity_rps, cpu / planning.shard_capacity_cpu)


def describe(signal: Signal, value: float, baseline: float) -> str:
    if signal == "latency":
        return f"latency {value * 1000:.0f} ms against a baseline of {baseline * 1000:.0f} ms"
    if signal == "memory":
        return f"memory {value / 2**20:.0f} MiB against a baseline of {baseline / 2**20:.0f} MiB"
    unit = UNITS[signal]
    label = signal.replace("_", " ")
    return f"{label} {value:.4g} {unit} against a baseline of {baseline:.4g} {unit}"


def find_hot_spots(
    detection: Detection,
    campaigns: dict[tuple[int, str], CampaignLoad],
    detector: Detector,
    planning: PlanningConfig,
    now: float,
) -> list[HotSpot]:
    """Turn the hot mask into :class:`HotSpot` records, campaign-level where one dominates."""
    by_partition: dict[int, list[CampaignLoad]] = {}
    for (partition, _), report in campaigns.items():
        by_partition.setdefault(partition, []).append(report)
    spots: list[HotSpot] = []
    share = detector.config.campaign_share
    for p in detection.hot_partitions().tolist():
        hot = detection.hot[:, p]
        v = detection.values[:, p]
        base = detection.baseline[:, p]
        ratios = v / np.maximum(base, 1e-12)
        # A resource hot spot wins when the cost per request grew more than the rate (or the
        # rate is not hot at all): it needs a sandbox, not room. NB: the rate can be hot too
        # with a flat offered load, when callers retry the requests a bidder refused for cost.
        if hot[D_CPR] and (not hot[D_RATE] or ratios[D_CPR] >= ratios[D_RATE]):
            s = D_CPR
        else:
            s = int(np.argmax(np.where(hot, ratios, -np.inf)))
        signal = DETECTED[s]
        score = float(min(ratios[s], 1e6))
        load = shard_units(v[D_RATE], v[D_CPU], planning)
        what = describe(signal, float(v[s]), float(base[s]))
        campaign = None
        reports = by_partition.get(p, [])
        for cl in sorted(reports, key=lambda x: (-max(x.rate, x.cpu), x.campaign)):
            # Repeat offenders need a smaller share to be singled out.
            heat = detector.campaign_heat(cl.campaign, now)
            bar = share * (1 - detector.config.heat_discount * heat)
            rate_share = cl.rate / v[D_RATE] if v[D_RATE] > 0 else 0.0
            cpu_share = cl.cpu / v[D_CPU] if v[D_CPU] > 0 else 0.0
            key_share = cpu_share if signal == "cpu_per_request" else max(rate_share, cpu_share)
            if key_share >= bar:
                campaign = cl.campaign
                load = shard_units(cl.rate, cl.cpu, planning)
                # The campaign's load (router) and the partition's (bidders) are measured
                # apart, at different instants, so the share can read above 100%.
                carried = "nearly all" if key_share >= 0.995 else f"{key_share:.0%}"
                what += f"; campaign {cl.campaign!r} carries {carried} of it"
                break
        reason = f"partition {p} is hot on {signal.replace('_', ' ')}: {what}"
        spots.append(HotSpot(p, campaign, signal, score, reason, load))
    detector.remember_campaigns([s.campaign for s in spots if s.campaign is not None], now)
    spots.sort(key=lambda s: (-s.score, s.partition, s.campaign or ""))
    return spots


def compound_score(
    rate: FloatArray,
    cpu: FloatArray,
    memory: FloatArray,
    latency: FloatArray,
    detection: DetectionConfig,
    planning: PlanningConfig,
    latency_budget: float,
) -> FloatArray:
    """The weighted health score; each signal over its capacity, so 1.0 means full."""
    w = detection.weights
    return np.asarray(
        w.rate * rate / planning.shard_capacity_rps
        + w.cpu * cpu / planning.shard_capacity_cpu
        + w.memory * memory / planning.shard_capacity_memory_bytes
        + w.latency * latency / latency_budget
    )
