"""The PartitionMap resource: its spec and status as pydantic models, the one source of truth.

The CRD's OpenAPI schema (`crds/`), the reference page (`docs/partitionmap-reference.md`)
and the operator's own parsing all come from these classes, so a field is declared, bounded,
defaulted and documented in exactly one place. Each attribute's docstring becomes its
description, which is what `kubectl explain partitionmap.spec...` prints.

Cross-field rules that the API server must enforce are attached as CEL rules
(`x-kubernetes-validations`) next to the fields they guard; :func:`validate_spec` checks the
same rules in Python for specs that reach the operator some other way (local mode, old CRDs).
"""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from hotshard.routing.hashing import DEFAULT_PARTITIONS

GROUP = "hotshard.io"
VERSION = "v1alpha1"
KIND = "PartitionMap"
PLURAL = "partitionmaps"
QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti|k|M|G|T)?$"


def _rules(*pairs: tuple[str, str]) -> dict[str, Any]:
    """CEL rules for the CRD, each with the message the API server returns when it fails."""
    return {"x-kubernetes-validations": [{"rule": r, "message": m} for r, m in pairs]}


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=True,
    )


class Quantities(_Model):
    """CPU and memory requests as Kubernetes quantities."""

    cpu: str = Field(default="500m", pattern=QUANTITY)
    """CPU, in cores or millicores (`500m` is half a core)."""
    memory: str = Field(default="512Mi", pattern=QUANTITY)
    """Memory, with a binary suffix (`512Mi`)."""


class Limits(_Model):
    """The most a container may use, as Kubernetes quantities."""

    cpu: str = Field(default="1", pattern=QUANTITY)
    """CPU limit; above it the container is throttled by its cgroup."""
    memory: str = Field(default="1Gi", pattern=QUANTITY)
    """Memory limit; above it the container is killed and restarted."""


class BidderResources(_Model):
    """Requests and limits of each bidder container."""

    requests: Quantities = Field(default_factory=Quantities)
    """What the scheduler reserves for each bidder pod."""
    limits: Limits = Field(default_factory=Limits)
    """The most each bidder pod may use."""


class BidderTemplate(_Model):
    """The bidder pods that every tier runs."""

    image: str = Field(min_length=1, max_length=512)
    """Container image of the bidder, e.g. `ghcr.io/example/hotshard:0.1.0`."""
    port: int = Field(default=9100, ge=1, le=65535)
    """Port the bidder serves OpenRTB and `/metrics` on."""
    resources: BidderResources = Field(default_factory=BidderResources)
    """Resource requests and limits of the bidder container."""


class BaseTier(_Model):
    """Shards that own the virtual partitions in calm traffic."""

    replicas: int = Field(default=4, ge=1, le=1000)
    """Number of base shards. The scale subresource (`kubectl scale pmap`) sets this field."""


class OverflowTier(_Model):
    """Pre-warmed shards that hot partitions are split onto."""

    model_config = ConfigDict(
        json_schema_extra=_rules(
            ("self.warm <= self.maximum", "tiers.overflow.warm must not exceed maximum")
        )
    )

    warm: int = Field(default=2, ge=0, le=1000)
    """Shards kept started and idle so that a split takes seconds, not a pod start."""
    maximum: int = Field(default=16, ge=0, le=1000)
    """The most overflow shards that may run at once, warm or serving."""


class SandboxTier(_Model):
    """Shards with tight CPU limits where campaigns that burn too much CPU are quarantined."""

    replicas: int = Field(default=1, ge=0, le=100)
    """Number of sandbox shards; 0 turns quarantine off."""
    cpu_limit: str = Field(default="250m", pattern=QUANTITY)
    """CPU limit of each sandbox pod, enforced by its cgroup."""


class Tiers(_Model):
    """Capacity tiers of the fleet."""

    base: BaseTier = Field(default_factory=BaseTier)
    """The base tier."""
    overflow: OverflowTier = Field(default_factory=OverflowTier)
    """The overflow tier and its warm pool."""
    sandbox: SandboxTier = Field(default_factory=SandboxTier)
    """The sandbox tier."""


class SignalWeights(_Model):
    """How much each signal counts in a partition's health score; they need not sum to 1."""

    rate: float = Field(default=0.4, ge=0, le=1)
    """Weight of the request rate against its baseline."""
    cpu: float = Field(default=0.3, ge=0, le=1)
    """Weight of CPU time per second against its baseline."""
    memory: float = Field(default=0.1, ge=0, le=1)
    """Weight of memory against its baseline."""
    latency: float = Field(default=0.2, ge=0, le=1)
    """Weight of p99 latency against the latency budget."""


class Detection(_Model):
    """When a virtual partition counts as hot."""

    model_config = ConfigDict(
        json_schema_extra=_rules(
            ("self.window >= self.interval", "detection.window must be at least detection.interval")
        )
    )

    interval: float = Field(default=1.0, ge=0.25, le=60)
    """Seconds between two detection ticks. 1 s matches the Prometheus scrape interval."""
    window: float = Field(default=10.0, ge=0.25, le=600)
    """Seconds of history each signal is averaged over."""
    factor: float = Field(default=3.0, ge=1, le=1000)
    """A partition is hot when its score exceeds this multiple of its own baseline."""
    floor: float = Field(default=50.0, ge=0)
    """Requests per second below which a partition is never hot, whatever its ratio."""
    sustain: int = Field(default=3, ge=1, le=600)
    """Consecutive hot ticks needed before acting, so one noisy scrape moves nothing."""
    weights: SignalWeights = Field(default_factory=SignalWeights)
    """Weights of the signals in the health score."""


class CalendarEvent(_Model):
    """A known traffic event (a broadcast, a launch) to split ahead of."""

    name: str = Field(min_length=1, max_length=63)
    """Name of the event, shown in status and Events."""
    start: str = Field(json_schema_extra={"format": "date-time"})
    """When the traffic is expected to start (RFC 3339)."""
    duration: float = Field(default=3600.0, gt=0, le=7 * 86400)
    """Seconds the event lasts."""
    campaigns: list[str] = Field(min_length=1, max_length=100)
    """Campaign keys expected to run hot."""
    expected_factor: float = Field(default=10.0, ge=1, le=100000)
    """Expected traffic multiple over the campaigns' baseline."""


class Prediction(_Model):
    """Splitting ahead of a spike from a forecast and a calendar."""

    enabled: bool = True
    """Whether to act on forecasts; detection on observed load always runs."""
    horizon: float = Field(default=30.0, ge=1, le=3600)
    """Seconds ahead the forecast looks; 30 s covers a pod start with margin."""
    calendar: list[CalendarEvent] = Field(default_factory=list, max_length=100)
    """Known events to prepare for before they start."""


class ScaleDown(_Model):
    """Giving capacity back after a spike."""

    cooldown: float = Field(default=900.0, ge=0, le=86400)
    """Seconds a split is held after the partition cools; 15 min rides out a second wave."""


class Budget(_Model):
    """What the fleet may cost."""

    max_shards: int = Field(default=64, ge=1, le=2000)
    """The most shards of all tiers that may run at once."""
    shard_hour_cost: float = Field(default=0.10, ge=0)
    """Cost of one shard for one hour, in your currency; used for `status.costSoFar`."""


class Metrics(_Model):
    """Where the operator reads the fleet's signals."""

    prometheus_url: str = Field(
        default="http://prometheus-operated.monitoring.svc:9090", pattern=r"^https?://"
    )
    """Base URL of the Prometheus HTTP API that scrapes the bidders."""
    stale_after: float = Field(default=5.0, ge=1, le=600)
    """Seconds after which samples count as stale; with stale data the operator holds still."""


class Routing(_Model):
    """Where the routing table is published."""

    config_map_name: str | None = Field(
        default=None, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
    )
    """Name of the routing ConfigMap; `<name>-routing` when unset."""


class PartitionMapSpec(_Model):
    """The desired shape of one bidding fleet and how hotshard reshards it."""

    model_config = ConfigDict(
        json_schema_extra=_rules(
            (
                "self.tiers.base.replicas + self.tiers.overflow.maximum"
                " + self.tiers.sandbox.replicas <= self.budget.maxShards",
                "base replicas + overflow maximum + sandbox replicas must not exceed"
                " budget.maxShards",
            ),
            (
                "self.tiers.base.replicas <= self.virtualPartitions",
                "tiers.base.replicas must not exceed virtualPartitions",
            ),
        )
    )

    virtual_partitions: int = Field(
        default=DEFAULT_PARTITIONS,
        ge=1,
        le=1 << 20,
        json_schema_extra=_rules(
            ("self == oldSelf", "virtualPartitions is immutable; create a new PartitionMap")
        ),
    )
    """Number of virtual partitions campaign keys hash onto. Fixed for the life of the fleet."""
    bidder: BidderTemplate
    """The bidder pods every tier runs."""
    tiers: Tiers = Field(default_factory=Tiers)
    """Capacity tiers: base, overflow and sandbox."""
    detection: Detection = Field(default_factory=Detection)
    """How hot partitions are detected."""
    prediction: Prediction = Field(default_factory=Prediction)
    """How spikes are anticipated."""
    scale_down: ScaleDown = Field(default_factory=ScaleDown)
    """How capacity is given back."""
    budget: Budget = Field(default_factory=Budget)
    """Limits on shards and cost."""
    metrics: Metrics = Field(default_factory=Metrics)
    """Where the signals come from."""
    routing: Routing = Field(default_factory=Routing)
    """Where the routing table is published."""

    @model_validator(mode="after")
    def _check(self) -> Self:
        validate_spec(self)
        return self


class SpecError(ValueError):
    """A spec breaks a cross-field rule; the message says which and how to fix it."""


def validate_spec(spec: PartitionMapSpec) -> None:
    """Raise :class:`SpecError` for the first CEL rule of the CRD that `spec` breaks."""
    t = spec.tiers
    if t.overflow.warm > t.overflow.maximum:
        raise SpecError("tiers.overflow.warm must not exceed maximum")
    if spec.detection.window < spec.detection.interval:
        raise SpecError("detection.window must be at least detection.interval")
    if t.base.replicas + t.overflow.maximum + t.sandbox.replicas > spec.budget.max_shards:
        raise SpecError(
            "base replicas + overflow maximum + sandbox replicas must not exceed budget.maxShards"
        )
    if t.base.replicas > spec.virtual_partitions:
        raise SpecError("tiers.base.replicas must not exceed virtualPartitions")


def routing_config_map_name(name: str, spec: PartitionMapSpec) -> str:
    """The routing ConfigMap of PartitionMap `name`."""
    return spec.routing.config_map_name or f"{name}-routing"


Signal = Literal["rate", "cpu", "memory", "latency", "forecast", "calendar"]
