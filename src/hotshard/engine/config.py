"""Every knob of the engine, with its default and the reason for it.

The engine is configured by one pydantic model, :class:`EngineConfig`, so the operator can embed
it in the ``PartitionMap`` spec and local mode can read it from YAML. Each group owns one stage:
:class:`DetectionConfig` says when a partition is hot, :class:`PlanningConfig` what may be moved
and how far to fill a shard, :class:`PredictionConfig` how far ahead to look, and
:class:`CostConfig` what a shard-hour and a second over the latency budget are worth.
"""

from __future__ import annotations

from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SignalWeights(_Config):
    """Weights of the compound health score; each signal is first divided by its capacity."""

    rate: float = Field(default=0.3, ge=0, description="Requests per second over shard capacity.")
    cpu: float = Field(
        default=0.4, ge=0, description="CPU is what actually runs out first in a bidder."
    )
    memory: float = Field(default=0.2, ge=0, description="Memory over the shard's memory limit.")
    latency: float = Field(default=0.1, ge=0, description="Latency over the latency budget.")


class DetectionConfig(_Config):
    """When a partition, campaign or shard counts as hot."""

    hot_factor: float = Field(
        default=3.0,
        gt=1,
        description="Hot at 3x its own baseline: the daily curve moves a partition by less than "
        "2x in a minute, a real spike by far more.",
    )
    min_hot_factor: float = Field(
        default=1.5, gt=1, description="The heat map never lowers the bar below 1.5x baseline."
    )
    floor_rps: float = Field(
        default=20.0,
        ge=0,
        description="Below 20 requests/s a partition cannot hurt a shard, whatever its ratio.",
    )
    floor_cpu: float = Field(
        default=0.05,
        ge=0,
        description="Below 5% of a core a partition cannot hurt a shard, whatever its ratio.",
    )
    floor_memory_bytes: float = Field(
        default=64 * 2**20, ge=0, description="64 MiB: less is noise in a bidder's heap."
    )
    floor_latency_seconds: float = Field(
        default=0.02,
        ge=0,
        description="20 ms: faster partitions are fine even when 3x slower than usual.",
    )
    sustain_seconds: float = Field(
        default=2.0,
        ge=1,
        description="Two consecutive 1 s buckets: one bucket can be a scrape artefact; with one "
        "more second of scrape delay detection fires within 3 s of a spike's start.",
    )
    surge_factor: float = Field(
        default=10.0,
        ge=1,
        description="10x the baseline, over the floor, is no scrape artefact (flat load is within "
        "+-40%): hot at once, without waiting out `sustain_seconds`.",
    )
    baseline_half_life_seconds: float = Field(
        default=300.0,
        gt=0,
        description="Five minutes: a 30 s spike barely moves it, the daily curve is followed.",
    )
    hot_baseline_slowdown: float = Field(
        default=0.02,
        ge=0,
        le=1,
        description="While a signal is over the bar its baseline learns 50x slower, so it does "
        "not chase the spike but does accept a new normal after hours.",
    )
    campaign_share: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="A campaign carrying at least half its partition's load is the hot spot, "
        "so it, not the partition, is split or quarantined.",
    )
    window_seconds: int = Field(
        default=30,
        ge=4,
        le=600,
        description="30 one-second buckets: one forecast horizon of history, in bounded memory.",
    )
    stale_after_seconds: float = Field(
        default=5.0,
        gt=0,
        description="Metrics older than five scrapes are not trusted: the engine holds.",
    )
    heat_half_life_seconds: float = Field(
        default=86400.0,
        gt=0,
        description="A day: yesterday's offender is still suspect today, last week's is not.",
    )
    heat_discount: float = Field(
        default=0.4,
        ge=0,
        lt=1,
        description="A fully heated key is hot at 60% of the usual factor (3x -> 1.8x).",
    )
    weights: SignalWeights = Field(
        default=SignalWeights(), description="Weights of the compound health score."
    )


class CalendarEvent(_Config):
    """A known event (a match, an election night, an ad flight) that will heat some campaigns."""

    name: str = Field(min_length=1)
    start: float = Field(description="Start, in the engine's clock (seconds).")
    end: float = Field(description="End, in the engine's clock (seconds).")
    campaigns: tuple[str, ...] = Field(min_length=1, description="Campaign keys expected hot.")
    expected_factor: float = Field(gt=1, description="Expected rate over the campaign's normal.")

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.end <= self.start:
            raise ValueError(f"calendar event {self.name!r} ends before it starts")
        return self


class PredictionConfig(_Config):
    """The short-term forecast and the calendar."""

    enabled: bool = Field(
        default=True, description="Forecast and calendar on; off, the engine only reacts."
    )
    horizon_seconds: float = Field(
        default=30.0,
        gt=0,
        description="30 s: a warm-shard split takes a few seconds; looking further is guesswork.",
    )
    candidates: int = Field(
        default=16,
        ge=0,
        description="Only the 16 fastest-rising partitions are forecast; the rest are cheap.",
    )
    max_fits_per_step: int = Field(
        default=2,
        ge=0,
        description="A statsmodels Holt fit costs milliseconds; two per step keep a 1 s loop.",
    )
    refit_seconds: float = Field(
        default=30.0, gt=0, description="Fitted smoothing parameters are reused for 30 s."
    )
    flat_cv: float = Field(
        default=0.05,
        ge=0,
        description="A series whose spread is under 5% of its mean is flat: not forecast.",
    )
    min_trend_t: float = Field(
        default=3.0,
        ge=0,
        description="The window's rise must be three standard errors from flat before a "
        "forecast counts: noise alone gets there about once in a thousand tries.",
    )
    rise_factor: float = Field(
        default=1.5,
        ge=1,
        description="A forecast counts only once the rate is 1.5x its baseline: the rise has "
        "begun, and +-40% noise extrapolated 30 s ahead does not move anything.",
    )
    calendar: tuple[CalendarEvent, ...] = Field(
        default=(), description="Known events; none by default, the operator adds them."
    )
    calendar_lead_seconds: float = Field(
        default=60.0,
        ge=0,
        description="Split a minute ahead of a known event: a hand-over and a refill fit in it.",
    )


class PlanningConfig(_Config):
    """What the planner may change, how full a shard may get, and how fast it gives back."""

    target_utilisation: float = Field(
        default=0.7,
        gt=0,
        le=1,
        description="30% headroom absorbs a few seconds of growth and the forecast's error.",
    )
    lower_threshold: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="Merge back only where the home shard stays under 50%: 20 points below the "
        "target, so a merge cannot trigger the next split.",
    )
    churn_limit: int = Field(
        default=4,
        ge=1,
        description="Four routing changes per round keep hand-over traffic a small share.",
    )
    settle_seconds: float = Field(
        default=30.0,
        ge=0,
        description="A route that just changed is left alone for 30 s while its metrics settle.",
    )
    cooldown_seconds: float = Field(
        default=900.0,
        ge=0,
        description="15 minutes calm before giving capacity back: spikes come in waves.",
    )
    growth_trigger: float = Field(
        default=1.5,
        gt=1,
        description="A bucket 1.5x the one before is a rise, not noise (flat load stays within "
        "+-40%): only then is a hot spot sized for growth.",
    )
    growth_horizon_seconds: float = Field(
        default=5.0,
        ge=0,
        description="Size a rising hot spot for its load 5 s on: detection, a hand-over and the "
        "first metrics from its new shards, the soonest a plan can be corrected.",
    )
    growth_cap: float = Field(
        default=2.0,
        ge=1,
        description="Plan for at most a doubling: a spike that doubles needs no re-split, and a "
        "guess never claims more of the warm pool than that.",
    )
    isolate_surges: bool = Field(
        default=True,
        description="A rising surge (surge_factor over baseline, growth_trigger over the bucket "
        "before) leaves its base shard for a warm one at once, before it fills it.",
    )
    max_shards: int = Field(
        default=64,
        ge=1,
        description="Never ask for more shards in total: 64 is plenty on one machine; the "
        "operator takes its limit from the PartitionMap.",
    )
    min_warm_pool: int = Field(
        default=1, ge=0, description="Keep at least one warm overflow shard for the first spike."
    )
    shard_capacity_rps: float = Field(
        default=2000.0, gt=0, description="Requests per second one shard serves within budget."
    )
    shard_capacity_cpu: float = Field(
        default=1.0,
        gt=0,
        description="CPU-seconds per second one shard can use: its cgroup quota (one core).",
    )
    shard_capacity_memory_bytes: float = Field(
        default=2 * 2**30, gt=0, description="A shard's memory limit, 2 GiB."
    )

    @model_validator(mode="after")
    def _hysteresis(self) -> Self:
        if self.lower_threshold >= self.target_utilisation:
            raise ValueError(
                f"lower_threshold ({self.lower_threshold}) must sit below target_utilisation "
                f"({self.target_utilisation}), or scale-down would undo every split"
            )
        return self


class CostConfig(_Config):
    """Prices, in any one currency unit, for the cost model."""

    shard_hour_cost: float = Field(
        default=0.10, ge=0, description="One shard (a 1-core pod) for an hour, on demand."
    )
    violation_cost: float = Field(
        default=0.50,
        ge=0,
        description="One shard-second over the latency budget: its bids time out and are lost.",
    )
    handover_cost: float = Field(
        default=0.002,
        ge=0,
        description="One hand-over: a few buffered requests and a budget lease round trip.",
    )
    latency_budget_seconds: float = Field(
        default=0.1, gt=0, description="OpenRTB exchanges commonly give a bidder tmax=100 ms."
    )
    cold_start_seconds: float = Field(
        default=60.0,
        ge=0,
        description="A new pod takes about a minute to schedule, pull and warm up.",
    )
    spikes_per_hour: float = Field(
        default=0.5, ge=0, description="Expected spikes needing a shard, until history says more."
    )
    violation_tolerance_per_hour: float = Field(
        default=1.0,
        ge=0,
        description="The expected violation cost per hour one accepts to keep fewer warm shards.",
    )


class EngineConfig(_Config):
    """The whole engine configuration."""

    detection: DetectionConfig = DetectionConfig()
    planning: PlanningConfig = PlanningConfig()
    prediction: PredictionConfig = PredictionConfig()
    cost: CostConfig = CostConfig()
