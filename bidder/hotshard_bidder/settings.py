"""Settings of the two data-plane services, the bidder shard and the router.

Both read defaults from the environment through pydantic-settings (prefixes
``HOTSHARD_BIDDER_`` and ``HOTSHARD_ROUTER_``) and let command-line flags override them, so a
Kubernetes pod is configured by its env and a developer by flags. The settings are validated
once at start-up; nothing on the request path touches pydantic.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Self, TypeVar

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from hotshard.routing.keys import (
    CAMPAIGN_HEADER,
    DEFAULT_CAMPAIGN_POINTERS,
    KeyExtractor,
    parse_pointer,
)
from hotshard_bidder.resources import GuardPolicy
from hotshard_bidder.tokens import TokenPolicy

S = TypeVar("S", bound=BaseSettings)


class _KeySettings(BaseSettings):
    # NB: populate_by_name lets flags set routing_configmap by its field name despite its alias.
    model_config = SettingsConfigDict(populate_by_name=True)

    host: str = Field(default="127.0.0.1", description="Address to bind; loopback by default.")
    port: int = Field(default=0, ge=0, le=65535, description="Port to bind (0 picks a free one).")
    routing_file: Path | None = Field(
        default=None, description="The routing table file (FileRoutingStore)."
    )
    routing_configmap: str | None = Field(
        # One variable for both services: the operator points routers and bidders at one map.
        default=None,
        validation_alias="HOTSHARD_ROUTING_CONFIGMAP",
        description="`[namespace/]name` of the routing ConfigMap, watched through the API "
        "instead of a file; the namespace defaults to the pod's own.",
    )
    poll_interval: float = Field(
        # NB: 50 ms keeps a service one poll behind a commit, far inside a 100 ms deadline.
        default=0.05,
        gt=0,
        le=60,
        description="Seconds between checks of the routing file.",
    )
    campaign_header: str = Field(default=CAMPAIGN_HEADER)
    campaign_pointers: tuple[str, ...] = Field(default=DEFAULT_CAMPAIGN_POINTERS)
    max_body_bytes: int = Field(
        # NB: real OpenRTB requests are 0.5-12 KB; 64 KiB leaves room for big native requests
        # while capping what one client can make us buffer.
        default=64 * 1024,
        ge=1024,
        description="Bodies larger than this get 413.",
    )

    @field_validator("campaign_pointers")
    @classmethod
    def _pointers_parse(cls, pointers: tuple[str, ...]) -> tuple[str, ...]:
        # NB: checked here, not first in key_extractor(), so that a bad pointer is reported
        # with the other bad settings instead of escaping from the app's constructor.
        for pointer in pointers:
            parse_pointer(pointer)  # its PointerError is a ValueError: pydantic reports it
        return pointers

    @model_validator(mode="after")
    def _one_routing_source(self) -> Self:
        if (self.routing_file is None) == (self.routing_configmap is None):
            raise ValueError("give exactly one of --routing-file and --routing-configmap")
        return self

    def key_extractor(self) -> KeyExtractor:
        return KeyExtractor(header=self.campaign_header, campaign_pointers=self.campaign_pointers)


class BidderSettings(_KeySettings):
    """One bidder shard. Env prefix ``HOTSHARD_BIDDER_``."""

    model_config = SettingsConfigDict(env_prefix="HOTSHARD_BIDDER_")

    shard: str = Field(description="This shard's name in the routing table.")
    max_inflight: int = Field(
        # NB: at ~100 µs of CPU per bid, 64 queued requests are ~6 ms of work: beyond that a
        # request would wait longer than it is worth, so it is better refused (429) at once.
        default=64,
        ge=1,
        description="Requests in progress beyond which new ones get 429.",
    )
    budget_per_second: float = Field(
        default=50.0, gt=0, description="Default spend per campaign per second (CPM units/1000)."
    )
    work_rounds: int = Field(
        # NB: 24 rounds put the median bid at ~70 µs of CPU (50-150 µs over the corpus),
        # about what a small production model costs.
        default=24,
        ge=0,
        le=1000,
        description="Scoring rounds per imp (CPU cost knob).",
    )
    resource_guard: bool = Field(
        default=True,
        description="CPU-token budgets, the resource breaker and automatic rollback "
        "(docs/resource-hotspots.md); off, costs are still measured and reported.",
    )
    cpu_budget: float = Field(
        # NB: see TokenPolicy.rate_cores for why a quarter of a core.
        default=0.25,
        gt=0,
        le=64,
        description="CPU-seconds per second one campaign may spend on this shard.",
    )

    serve_any_partition: bool = Field(
        # NB: a benchmark switch, never for production: it turns off the ownership check, so
        # two shards can spend one campaign's budget at once (docs/benchmarks.md).
        default=False,
        description="Benchmark only: serve every partition, whatever the routing table says, so "
        "that a proxy hashing on its own (HAProxy's bounded-load hashing in `make bench`) can "
        "send any request to any shard. Set through HOTSHARD_BIDDER_SERVE_ANY_PARTITION.",
    )

    def guard_policy(self) -> GuardPolicy:
        tokens = TokenPolicy(rate_cores=self.cpu_budget)
        return GuardPolicy(enabled=self.resource_guard, tokens=tokens)


class RouterSettings(_KeySettings):
    """The router. Env prefix ``HOTSHARD_ROUTER_``."""

    model_config = SettingsConfigDict(env_prefix="HOTSHARD_ROUTER_")

    default_deadline_ms: int = Field(
        # NB: exchanges typically give bidders 100-300 ms all in; 100 ms is the common tmax.
        default=100,
        ge=1,
        le=10_000,
        description="Deadline when a request carries no tmax.",
    )
    max_deadline_ms: int = Field(
        # NB: some requests say tmax=5000; holding a connection that long only hides trouble.
        default=500,
        ge=1,
        le=60_000,
        description="Upper clamp on a request's tmax.",
    )
    breaker_failures: int = Field(
        # NB: 5 consecutive failures is past noise but still trips within a few ms at load.
        default=5,
        ge=1,
        description="Consecutive failures that open a shard's breaker.",
    )
    breaker_cooloff: float = Field(
        # NB: 1 s lets a restarting process come back before the half-open probe.
        default=1.0,
        gt=0,
        description="Seconds a breaker stays open before a probe.",
    )
    hot_k: int = Field(
        # NB: 20 campaigns covers any realistic simultaneous hot set and bounds label series.
        default=20,
        ge=1,
        le=1000,
        description="Campaigns kept by the heavy-hitter sketch.",
    )
    max_inflight: int = Field(
        # NB: 256 in flight at 2000 rps is over 100 ms of queue, the default deadline: past
        # that, a request would only wait to time out, so it is refused (429) at once.
        default=256,
        ge=1,
        description="Requests in progress beyond which new ones get 429.",
    )
    hot_key_limit_rps: float = Field(
        # NB: 0 (off) by default: the right figure is a share of one shard's capacity, which
        # only the deployment knows; local mode sets half a shard (docs/dataplane.md).
        default=0.0,
        ge=0,
        description="Requests per second one campaign may send to each shard serving it before "
        "the router sheds its excess with 429 (0: never shed).",
    )
    connections_per_shard: int = Field(
        # NB: 64 matches a bidder's default max-inflight; more would only queue in the shard.
        default=64,
        ge=1,
        description="Keep-alive pool size per shard.",
    )

    @model_validator(mode="after")
    def _default_within_max(self) -> Self:
        # NB: else a request without tmax would get longer than any tmax is allowed; which of
        # the two was meant cannot be guessed, so neither wins.
        if self.default_deadline_ms > self.max_deadline_ms:
            raise ValueError(
                f"--default-deadline-ms ({self.default_deadline_ms}) must not exceed "
                f"--max-deadline-ms ({self.max_deadline_ms})"
            )
        return self


def _default(name: str) -> Any:
    """The built-in default of a common setting, so that ``--help`` cannot drift from it."""
    return _KeySettings.model_fields[name].default


def add_common_flags(parser: argparse.ArgumentParser) -> None:
    """Flags both services share; each defaults to ``None`` so the env/default stays in force."""
    parser.add_argument(
        "--host",
        help=f"address to bind (default {_default('host')}, as in local mode; pods on "
        "Kubernetes bind 0.0.0.0)",
    )
    parser.add_argument("--port", type=int, help="port to bind (default 0: a free one)")
    parser.add_argument(
        "--routing-file", type=Path, help="routing table JSON file (this or --routing-configmap)"
    )
    parser.add_argument(
        "--routing-configmap", help="[namespace/]name of the routing ConfigMap to watch instead"
    )
    parser.add_argument(
        "--poll-interval",
        type=float,
        help=f"seconds between routing file checks (default {_default('poll_interval'):g})",
    )
    parser.add_argument(
        "--campaign-header", help=f"campaign key header (default {_default('campaign_header')})"
    )
    parser.add_argument(
        "--campaign-pointer",
        dest="campaign_pointers",
        action="append",
        metavar="POINTER",
        help="JSON pointer to the campaign key; repeat for a chain "
        f"(default {', '.join(_default('campaign_pointers'))})",
    )
    parser.add_argument(
        "--max-body-bytes",
        type=int,
        help=f"413 above this (default {_default('max_body_bytes')})",
    )


def settings_from_args(cls: type[S], args: argparse.Namespace, fields: tuple[str, ...]) -> S:
    """Build ``cls`` from the environment, with every flag the user gave taking precedence."""
    overrides: dict[str, Any] = {}
    for name in fields:
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = tuple(value) if isinstance(value, list) else value
    return cls(**overrides)


FLAGS = {"campaign_pointers": "--campaign-pointer", "resource_guard": "--no-resource-guard"}
"""Flags not named after their field by ``_`` -> ``-``."""


def describe_errors(cls: type[BaseSettings], exc: ValidationError) -> list[str]:
    """One line per error in ``exc``, naming the flag and the environment variable to fix.

    pydantic's own text names the field and ends with a link to its docs; a user typed a flag.
    """
    prefix = cls.model_config.get("env_prefix", "")
    aliases = {
        field.validation_alias: name
        for name, field in cls.model_fields.items()
        if isinstance(field.validation_alias, str)
    }
    lines = []
    for error in exc.errors():
        context = error.get("ctx", {})
        # NB: our validators' messages say all they mean; pydantic's own prefix adds nothing.
        message = str(context["error"]) if "error" in context else error["msg"]
        if not error["loc"]:
            lines.append(f"{message} (flags or {prefix}* env)")
            continue
        loc = str(error["loc"][0])
        name = aliases.get(loc, loc)
        flag = FLAGS.get(name, "--" + name.replace("_", "-"))
        field = cls.model_fields.get(name)
        alias = field.validation_alias if field is not None else None
        env = alias if isinstance(alias, str) else (prefix + name).upper()
        given = error["input"]
        if error["type"] not in ("missing", "value_error") and not isinstance(given, dict):
            shown = f"{given:g}" if isinstance(given, float) else repr(given)
            message = f"{message} (got {shown})"
        lines.append(f"{flag}: {message} (flag or {env} env)")
    return lines


COMMON_FIELDS = (
    "host",
    "port",
    "routing_file",
    "routing_configmap",
    "poll_interval",
    "campaign_header",
    "campaign_pointers",
    "max_body_bytes",
)
