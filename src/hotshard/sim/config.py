"""What a simulated fleet is made of: its size, its shards, its queues, and the calibration.

Two scales share one model. ``small`` reproduces the local fleet of ``hotshard demo`` and
``make bench`` (three base shards under a 0.15-core quota, three warm, one sandbox, V=4096, the
scenario's own rate), so the model can be checked against measurements. ``large`` is the
problem's scale: 10M requests/s over hundreds of 8-core shards and V=65536. Each number is
set, and explained, here; ``docs/simulation.md`` restates them.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from hotshard.datasets import REPO_ROOT
from hotshard_bidder.corpus import RequestCorpus
from hotshard_bidder.settings import RouterSettings

Scale = Literal["small", "large"]
DATAPLANE_RESULTS = REPO_ROOT / "bench" / "results" / "dataplane.json"
FALLBACK_COST_US = 250.0
"""Used only when bench/results/dataplane.json is missing: the demo's own estimate."""


class FleetModel(BaseModel):
    """One simulated fleet and its traffic; every field is an assumption stated in the docs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    scale: Scale
    total_rps: float | None = Field(
        description="Requests/s without the spike; None keeps the scenario's own base_rate."
    )
    partitions: int = Field(ge=1, le=1 << 20)
    base_shards: int = Field(ge=1)
    warm_shards: int = Field(ge=0, description="Warm overflow shards hotshard starts with.")
    sandbox_shards: int = Field(default=1, ge=0)
    cores: float = Field(gt=0, description="CPU quota of one shard, in cores.")
    cost_us: float = Field(gt=0, description="CPU microseconds one request costs a shard.")
    capacity_fraction: float = Field(
        default=0.6,
        gt=0,
        le=1,
        description="The engine's shard_capacity_rps as a share of what the quota can serve, "
        "as in the demo (350 rps is 60 % of a 0.15-core quota at ~250 µs).",
    )
    head_share: float = Field(
        default=1.0,
        gt=0,
        le=1,
        description="Share of traffic in the scenario's named campaigns; the rest is a tail "
        "spread over every partition.",
    )
    tail_campaigns_per_partition: int = Field(
        default=64, ge=1, description="Azure Functions daily totals summed into one partition."
    )
    deadlines: tuple[tuple[float, float], ...] = Field(
        default=((0.1, 1.0),),
        description="(seconds, share of requests): when the router gives up on a request and "
        "answers 504, which the load generator records at that latency. A request's deadline is "
        "its tmax clamped to 500 ms, else 100 ms; the builders below use the mix of the corpus "
        "the load generator sends (corpus_deadlines).",
    )
    proxy_timeout_s: float = Field(
        default=0.1,
        gt=0,
        description="Bounded-load's proxy answers 504 at this one timeout for every request: "
        "HAProxy cannot read a body's tmax, so make bench gives it the router's default "
        "deadline.",
    )
    max_inflight: int = Field(
        default=64, ge=1, description="The bidder's in-flight limit; beyond it, a 429."
    )
    hot_key_share: float = Field(
        default=0.25,
        gt=0,
        description="hotshard's router sheds a campaign's excess over this share of a shard "
        "per shard serving it (the demo's HOT_KEY_SHARE).",
    )
    shard_start_s: float = Field(
        default=1.0,
        ge=0,
        description="Seconds for a new shard to be ready: a pod's 60 s cold start at the "
        "scenario's 60x time compression (one trace minute per second).",
    )
    metrics_delay_s: int = Field(
        default=1, ge=0, description="The engine sees the second before: a 1 s scrape."
    )
    cooldown_s: float = Field(default=10.0, ge=0, description="The demo's scale-down wait.")
    settle_s: float = Field(default=5.0, ge=0, description="The demo's settle time.")
    bug_extra_cost_us: float = Field(
        default=20000.0,
        gt=0,
        description="Extra CPU per request of the buggy campaign: the bidder's 20 ms bound on "
        "one request's rules (hotshard_bidder.targeting), 200x the rules' usual 0.1 ms.",
    )
    seed: int = 7

    @field_validator("deadlines")
    @classmethod
    def _a_mix(cls, value: tuple[tuple[float, float], ...]) -> tuple[tuple[float, float], ...]:
        if not value or any(d <= 0 or w <= 0 for d, w in value):
            raise ValueError("deadlines: positive (seconds, share) pairs")
        if not math.isclose(sum(w for _, w in value), 1.0, abs_tol=1e-9):
            raise ValueError("deadlines: the shares must add up to 1")
        return value

    @property
    def servers(self) -> int:
        """Parallel servers per shard: one per whole core (a fractional quota is one slow one)."""
        return max(1, math.floor(self.cores))

    @property
    def capacity_rps(self) -> float:
        """Requests/s at 100 % of the quota, for requests of the base cost."""
        return self.cores / (self.cost_us * 1e-6)

    @property
    def engine_capacity_rps(self) -> float:
        return self.capacity_fraction * self.capacity_rps

    @property
    def queue_bound_s(self) -> float:
        """Seconds of work the in-flight limit holds: beyond it arrivals get a 429."""
        if self.scale == "small":
            return self.max_inflight * self.cost_us * 1e-6 / self.cores
        # NB: a big shard's limit is set to hold the same time of work as the local bidder's
        # 64 requests under 0.15 core (about one deadline), not the same count.
        return self.max_inflight * self.cost_us * 1e-6 / 0.15


def calibrate_cost_us(path: Path = DATAPLANE_RESULTS) -> tuple[float, str]:
    """CPU µs per request of one bidder, from the data-plane benchmark, and how it was read.

    Takes every clean run (no errors, the load generator kept up), sums the shards' CPU per
    answered request (the load is spread over the shards of the run), and returns the median.
    """
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return FALLBACK_COST_US, f"{path} unreadable: the demo's estimate, {FALLBACK_COST_US:g} µs"
    samples = []
    for runs in report.get("runs", {}).values():
        for run in runs.values():
            if run.get("errors") or run.get("generator_fell_behind"):
                continue
            cpu = run.get("cpu_us_per_request", {})
            samples.append(sum(v for k, v in cpu.items() if k.startswith("shard-")))
    if not samples:
        return FALLBACK_COST_US, f"no clean run in {path}: {FALLBACK_COST_US:g} µs"
    cost = float(statistics.median(samples))
    note = (
        f"median of {len(samples)} clean runs of bench/results/dataplane.json "
        f"(shard CPU per answered request, {min(samples):g}-{max(samples):g} µs): {cost:g} µs"
    )
    return cost, note


def corpus_deadlines() -> tuple[tuple[float, float], ...]:
    """The deadlines of the requests the load generator sends, as (seconds, share) pairs.

    The generator draws each request's body uniformly from the OpenRTB corpus
    (``hotshard_bidder.corpus``), and the router sets its deadline from the body's ``tmax``,
    clamped to ``max_deadline_ms``, or ``default_deadline_ms`` without one. Of the 58 bodies,
    35 carry no tmax (100 ms) and 16 ask for 500 ms or more (clamped to 500 ms).
    """
    fields = RouterSettings.model_fields
    default = fields["default_deadline_ms"].default
    clamp = fields["max_deadline_ms"].default
    corpus = RequestCorpus.load()
    counts = Counter(
        default if t.tmax_ms is None else min(t.tmax_ms, clamp) for t in corpus.templates
    )
    return tuple((ms / 1000.0, n / len(corpus)) for ms, n in sorted(counts.items()))


def small_model(cost_us: float) -> FleetModel:
    """The local fleet of ``hotshard demo`` (``FleetShape`` and ``engine_config`` there)."""
    return FleetModel(
        scale="small",
        total_rps=None,
        partitions=4096,
        base_shards=3,
        warm_shards=3,
        cores=0.15,
        cost_us=cost_us,
        deadlines=corpus_deadlines(),
    )


def large_model(cost_us: float, total_rps: float = 10e6) -> FleetModel:
    """10M requests/s on 8-core shards filled to 40 % at the base rate."""
    cores = 16.0  # NB: a large bidder pod; 16 cores keep the fleet at hundreds of shards.
    base_fill = 0.4  # NB: the engine's target is 70 % of 60 % of a quota: 42 %; start below it.
    shards = math.ceil(total_rps * cost_us * 1e-6 / (cores * base_fill))
    return FleetModel(
        scale="large",
        total_rps=total_rps,
        partitions=65536,
        base_shards=shards,
        warm_shards=8,
        cores=cores,
        cost_us=cost_us,
        deadlines=corpus_deadlines(),
        # NB: sized so the book's biggest campaign (Donald_Trump, 16.8 % of the named traffic)
        # is a quarter of a shard, the most the router lets one campaign have unshed; the
        # 100 named campaigns are then the head of a book of thousands.
        head_share=0.25 * 0.6 * cores / (cost_us * 1e-6) / (0.168 * total_rps),
    )
