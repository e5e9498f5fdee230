"""Scenarios: what traffic the demo replays, described in a YAML file built from real data.

A scenario names a real key distribution for campaign popularity (which campaigns exist and how
often each is asked for), a base request rate, and a spike whose *shape* is cut from a real
traffic trace, time-compressed, that takes a few named campaigns to ``factor`` times their
normal rate. The demo's built-in scenario is a file like any other (``scenarios/``), so a user
replays their own trace by writing one. This module owns the file's schema, its validation
(a bad file is rejected with the field named) and its compilation into a :class:`TrafficPlan`:
weights for the steady campaigns and a per-second rate for the hot ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hotshard import datasets
from hotshard_bidder.targeting import CampaignConfig

BUILTIN_DIR = Path(__file__).resolve().parents[3] / "scenarios"
DEFAULT_SCENARIO = "election-night"


class ScenarioError(ValueError):
    """A scenario file is unreadable or invalid; the message names the file and the field."""


def _refuse_repeats(names: list[str], what: str) -> None:
    """Raise, naming them, when ``names`` repeat: the field's error then says which ones."""
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"{what} names must be unique; repeated: " + ", ".join(repeated))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InlineCampaign(_Strict):
    """One campaign of an inline key distribution."""

    name: str = Field(min_length=1, description="Campaign key, as sent in X-Hotshard-Campaign.")
    weight: float = Field(gt=0, description="Relative popularity; weights need not sum to 1.")


class CampaignSource(_Strict):
    """Where campaign keys and their popularity come from."""

    dataset: Literal["wikipedia_top100_election", "azure_functions", "inline"] = Field(
        description="wikipedia_top100_election: article names weighted by their views on "
        "2016-11-09; azure_functions: function hashes weighted by a day of invocations; "
        "inline: the `keys` list below."
    )
    limit: int | None = Field(
        default=None, ge=1, description="Keep only the `limit` most popular keys."
    )
    keys: tuple[InlineCampaign, ...] = Field(
        default=(), description="The distribution itself, when `dataset` is inline."
    )

    @field_validator("keys")
    @classmethod
    def _unique_keys(cls, keys: tuple[InlineCampaign, ...]) -> tuple[InlineCampaign, ...]:
        # NB: a repeated name would silently keep only its last weight in the distribution.
        _refuse_repeats([k.name for k in keys], "campaign")
        return keys

    @model_validator(mode="after")
    def _check_keys(self) -> Self:
        if self.dataset == "inline" and not self.keys:
            raise ValueError("dataset 'inline' needs a non-empty `keys` list")
        if self.dataset != "inline" and self.keys:
            raise ValueError(f"`keys` is only read when dataset is 'inline', not {self.dataset!r}")
        return self


class Spike(_Strict):
    """A spike on a few campaigns, shaped like a stretch of a real trace."""

    campaigns: tuple[str, ...] = Field(min_length=1, description="The campaigns that turn hot.")
    factor: float = Field(
        default=1000.0, gt=1, description="Peak rate of each hot campaign over its normal rate."
    )
    trace: Literal["worldcup98", "azure_functions", "inline"] = Field(
        description="Which real per-minute series gives the spike its shape."
    )
    start: str | None = Field(
        default=None, description="worldcup98: the first minute, e.g. '1998-05-18 12:15:00'."
    )
    function: str | None = Field(
        default=None, description="azure_functions: the function hash whose series is used."
    )
    first_minute: int = Field(
        default=0, ge=0, description="azure_functions: index of the first minute (0-based)."
    )
    values: tuple[float, ...] = Field(
        default=(), description="inline: the per-minute counts themselves."
    )
    minutes: int = Field(ge=1, le=1440, description="How many trace minutes the spike lasts.")
    seconds_per_minute: float = Field(
        default=1.0, gt=0, le=60, description="Time compression: one trace minute lasts this long."
    )

    @field_validator("campaigns")
    @classmethod
    def _unique_campaigns(cls, campaigns: tuple[str, ...]) -> tuple[str, ...]:
        # NB: a repeated name would count its normal rate twice in the spike's rate.
        _refuse_repeats(list(campaigns), "campaign")
        return campaigns

    @model_validator(mode="after")
    def _check_trace(self) -> Self:
        needs = {"worldcup98": "start", "azure_functions": "function", "inline": "values"}
        field = needs[self.trace]
        if not getattr(self, field):
            raise ValueError(f"trace {self.trace!r} needs `{field}`")
        return self


class ConfigChange(_Strict):
    """An advertiser changes a campaign's configuration while the scenario runs."""

    offset_seconds: float = Field(
        ge=-600, le=1800, description="When, in seconds after the `during` phase begins."
    )
    campaign: str = Field(min_length=1, description="The campaign whose configuration changes.")
    config: CampaignConfig = Field(description="The new version, as PUT to every bidder.")


class CalendarEntry(_Strict):
    """A known event for the engine's calendar; only ``make bench``'s predictive pass reads it."""

    name: str = Field(min_length=1, description="The event's name, as decisions quote it.")
    offset_seconds: float = Field(
        default=0.0, ge=-600, le=1800, description="Start, in seconds after `during` begins."
    )
    seconds: float | None = Field(
        default=None, gt=0, le=1800, description="How long it lasts; default the `during` phase."
    )
    campaigns: tuple[str, ...] = Field(
        default=(), description="The campaigns expected hot; default the spike's."
    )
    expected_factor: float | None = Field(
        default=None, gt=1, description="Expected rate over normal; default the spike's factor."
    )


class Phases(_Strict):
    """How long the quiet stretches around the spike last."""

    before_seconds: float = Field(gt=0, le=600, description="Steady traffic before the spike.")
    during_seconds: float | None = Field(
        default=None, gt=0, le=1800, description="Length of `during` in a scenario with no spike."
    )
    after_seconds: float = Field(
        gt=0, le=1800, description="Steady traffic after the spike (the cooldown runs here)."
    )


class QuickRun(_Strict):
    """The shorter timings ``--quick`` uses; the traffic is otherwise the same."""

    before_seconds: float = Field(gt=0, le=600)
    spike_minutes: int | None = Field(default=None, ge=1, le=1440)
    during_seconds: float | None = Field(default=None, gt=0, le=1800)
    after_seconds: float = Field(gt=0, le=1800)


class Scenario(_Strict):
    """A replayable traffic scenario. Every field is described in ``docs/scenarios.md``."""

    name: str = Field(min_length=1, pattern=r"^[a-z0-9][-a-z0-9]*$")
    description: str = ""
    base_rate: float = Field(
        gt=0, le=5000, description="Requests per second over all campaigns, without the spike."
    )
    campaigns: CampaignSource
    spike: Spike | None = None
    phases: Phases
    config_changes: tuple[ConfigChange, ...] = Field(
        default=(), description="Campaign configuration changes, e.g. an advertiser's bug."
    )
    calendar: tuple[CalendarEntry, ...] = Field(
        default=(), description="Known events for the engine's calendar (`make bench` only)."
    )
    quick: QuickRun | None = None

    @model_validator(mode="after")
    def _check_shape(self) -> Self:
        if self.spike is None and not self.config_changes:
            raise ValueError("a scenario needs a `spike`, `config_changes`, or both")
        if self.spike is None and self.phases.during_seconds is None:
            raise ValueError("without a `spike`, `phases.during_seconds` says how long it lasts")
        for entry in self.calendar if self.spike is None else ():
            if not entry.campaigns or entry.expected_factor is None:
                raise ValueError(
                    f"calendar entry {entry.name!r} needs `campaigns` and `expected_factor` "
                    "in a scenario with no `spike` to take them from"
                )
        return self

    def quickened(self) -> Scenario:
        """The same scenario with its ``quick`` timings, or itself when it has none."""
        if self.quick is None:
            return self
        spike = self.spike
        if spike is not None and self.quick.spike_minutes is not None:
            spike = spike.model_copy(update={"minutes": self.quick.spike_minutes})
        phases = Phases(
            before_seconds=self.quick.before_seconds,
            during_seconds=self.quick.during_seconds or self.phases.during_seconds,
            after_seconds=self.quick.after_seconds,
        )
        return self.model_copy(update={"spike": spike, "phases": phases})


@dataclass(frozen=True)
class PlannedEvent:
    """A calendar entry with its defaults filled in; times in seconds since the run's start."""

    name: str
    start: float
    end: float
    campaigns: tuple[str, ...]
    expected_factor: float


@dataclass(frozen=True)
class TrafficPlan:
    """A scenario compiled to rates: what the load generators send, second by second."""

    scenario: Scenario
    weights: dict[str, float]
    """Normal share of every campaign (hot ones included), summing to 1."""
    hot: tuple[str, ...]
    spike_start: float
    spike_end: float
    duration: float
    hot_rates: tuple[float, ...]
    """Requests per second of all hot campaigns together, one value per second of the run."""
    config_changes: tuple[ConfigChange, ...] = ()
    calendar: tuple[PlannedEvent, ...] = ()

    @property
    def other_rate(self) -> float:
        """Steady rate of the campaigns that never turn hot."""
        return self.scenario.base_rate * sum(
            w for k, w in self.weights.items() if k not in self.hot
        )

    @property
    def hot_normal_rate(self) -> float:
        return self.scenario.base_rate * sum(self.weights[k] for k in self.hot)

    def other_weights(self) -> dict[str, float]:
        return {k: w for k, w in self.weights.items() if k not in self.hot}

    def hot_weights(self) -> dict[str, float]:
        return {k: self.weights[k] for k in self.hot}

    def phase_of(self, t: float) -> str:
        """``before``, ``during`` or ``after`` for a time in seconds since the run's start."""
        if t < self.spike_start:
            return "before"
        return "during" if t < self.spike_end else "after"


def load_scenario(source: str | Path) -> Scenario:
    """Read a scenario from a file path, or by name from the built-in ``scenarios/`` folder."""
    path = Path(source)
    if not path.exists() and path.suffix == "" and (BUILTIN_DIR / f"{source}.yaml").exists():
        path = BUILTIN_DIR / f"{source}.yaml"
    try:
        document = yaml.safe_load(path.read_text())
    except OSError as exc:
        names = ", ".join(sorted(p.stem for p in BUILTIN_DIR.glob("*.yaml")))
        builtin = f" (built-in scenarios: {names})" if path.suffix == "" else ""
        raise ScenarioError(f"cannot read scenario {path}: {exc.strerror or exc}{builtin}") from exc
    except UnicodeDecodeError as exc:
        why = f"{exc.reason} at byte {exc.start}"
        raise ScenarioError(f"scenario {path} is not UTF-8 text: {why}") from exc
    except yaml.YAMLError as exc:
        raise ScenarioError(f"scenario {path} is not valid YAML: {exc}") from exc
    return parse_scenario(document, where=str(path))


def parse_scenario(document: object, *, where: str = "scenario") -> Scenario:
    """Validate a parsed YAML document; errors name each bad field by its dotted path."""
    if not isinstance(document, dict):
        raise ScenarioError(f"{where}: the top level must be a mapping of fields")
    try:
        return Scenario.model_validate(document)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = ".".join(str(part) for part in err["loc"]) or "(top level)"
            message = err["msg"].removeprefix("Value error, ")
            problems.append(f"field `{field}`: {message}")
        raise ScenarioError(f"{where} is invalid: " + "; ".join(problems)) from None


def read_key_weights(source: CampaignSource) -> dict[str, float]:
    """The campaign distribution as ``{campaign: share}``, most popular first, summing to 1."""
    pairs: Sequence[tuple[str, float]]
    if source.dataset == "wikipedia_top100_election":
        pairs = [(name, float(views)) for name, views in datasets.wikipedia_top100_election()]
    elif source.dataset == "azure_functions":
        pairs = [
            (name, float(sum(counts))) for name, counts in datasets.azure_functions_per_minute()
        ]
    else:
        pairs = [(k.name, k.weight) for k in source.keys]
    ranked = sorted((p for p in pairs if p[1] > 0), key=lambda p: -p[1])[: source.limit]
    total = sum(w for _, w in ranked)
    return {name: w / total for name, w in ranked}


def read_spike_shape(spike: Spike) -> list[float]:
    """The spike's per-minute counts, cut from its trace."""
    if spike.trace == "inline":
        counts = list(spike.values)
    elif spike.trace == "worldcup98":
        series = datasets.worldcup98_per_minute()
        labels = [minute for minute, _ in series]
        wanted = spike.start if spike.start and len(spike.start) > 16 else f"{spike.start}:00"
        try:
            first = labels.index(wanted)
        except ValueError:
            raise ScenarioError(
                f"field `spike.start`: minute {spike.start!r} is not in the World Cup 98 trace"
            ) from None
        counts = [float(c) for _, c in series[first : first + spike.minutes]]
    else:
        functions = dict(datasets.azure_functions_per_minute())
        if spike.function not in functions:
            raise ScenarioError(
                f"field `spike.function`: {spike.function!r} is not in the Azure Functions trace"
            )
        series_af = functions[spike.function]
        counts = [
            float(c) for c in series_af[spike.first_minute : spike.first_minute + spike.minutes]
        ]
    if len(counts) < spike.minutes:
        counts += [counts[-1] if counts else 0.0] * (spike.minutes - len(counts))
    counts = counts[: spike.minutes]
    if max(counts) <= 0:
        raise ScenarioError("field `spike`: the chosen stretch of the trace is all zeros")
    return counts


def compile_plan(scenario: Scenario) -> TrafficPlan:
    """Turn a scenario into per-second rates for the steady and the hot campaigns."""
    weights = read_key_weights(scenario.campaigns)
    spiked = scenario.spike.campaigns if scenario.spike is not None else ()
    missing = [c for c in spiked if c not in weights]
    if missing:
        raise ScenarioError(
            "field `spike.campaigns`: not in the campaign distribution: " + ", ".join(missing)
        )
    spike = scenario.spike
    changed = tuple(dict.fromkeys(c.campaign for c in scenario.config_changes))
    missing = [c for c in changed if c not in weights]
    if missing:
        raise ScenarioError(
            "field `config_changes`: not in the campaign distribution: " + ", ".join(missing)
        )
    # NB: with no spike the changed campaigns are the "hot" group, sent at their flat rate.
    counts = read_spike_shape(spike) if spike is not None else [1.0]
    peak = max(counts)
    hot = tuple(spike.campaigns) if spike is not None else changed
    normal = scenario.base_rate * sum(weights[c] for c in hot)
    spike_start = scenario.phases.before_seconds
    spike_length = (
        spike.minutes * spike.seconds_per_minute
        if spike is not None
        else float(scenario.phases.during_seconds or 0.0)
    )
    spike_end = spike_start + spike_length
    duration = spike_end + scenario.phases.after_seconds
    rates = []
    for second in range(math.ceil(duration)):
        if spike is not None and spike_start <= second < spike_end:
            minute = int((second - spike_start) / spike.seconds_per_minute)
            # NB: the trace's own peak maps to `factor`; its quiet minutes stay near 1x.
            multiplier = 1.0 + (spike.factor - 1.0) * counts[minute] / peak
            rates.append(normal * multiplier)
        else:
            rates.append(normal)
    calendar = plan_calendar(scenario, weights, spike_start, spike_end)
    return TrafficPlan(
        scenario=scenario,
        weights=weights,
        hot=hot,
        spike_start=spike_start,
        spike_end=spike_end,
        duration=duration,
        hot_rates=tuple(rates),
        config_changes=scenario.config_changes,
        calendar=calendar,
    )


def plan_calendar(
    scenario: Scenario, weights: dict[str, float], spike_start: float, spike_end: float
) -> tuple[PlannedEvent, ...]:
    """The scenario's calendar with the spike's campaigns, factor and length as defaults."""
    spike = scenario.spike
    events = []
    for entry in scenario.calendar:
        campaigns = entry.campaigns or (spike.campaigns if spike else ())
        missing = [c for c in campaigns if c not in weights]
        if missing:
            raise ScenarioError(
                f"field `calendar`: entry {entry.name!r} names campaigns not in the campaign "
                "distribution: " + ", ".join(missing)
            )
        start = spike_start + entry.offset_seconds
        length = entry.seconds if entry.seconds is not None else spike_end - spike_start
        factor = entry.expected_factor or (spike.factor if spike else 1.0)
        events.append(PlannedEvent(entry.name, start, start + length, campaigns, factor))
    return tuple(events)
