"""The demo's verdict: ``summary.json``, ``report.md`` and the plots, from what a run recorded.

Everything a reader needs to judge a run is computed here from three records: the control
loop's timeline (when a hot spot was detected, when tables were written), the load generators'
reports (latency and errors per phase, who answered) and the per-second samples the demo took
(shards in use, rate per shard). The acceptance criteria of local mode are read off
``summary.json``, so its fields are defined once, in :func:`summarise_pass`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hotshard.control.timeline import Entry
from hotshard.local.traffic import PHASES, GroupResult
from hotshard.markdown import format_cell as _fmt


@dataclass(frozen=True)
class Sample:
    """One second of the run as the demo saw it."""

    t: float
    """Seconds since the first request was due."""
    shards: int
    shard_rates: dict[str, float]
    hot: tuple[str, ...] = ()


@dataclass
class PassRecord:
    """Everything one pass (mitigated or baseline) recorded."""

    mitigate: bool
    t0: float
    """Wall-clock time of the first intended request."""
    spike_start: float
    spike_end: float
    groups: dict[str, GroupResult]
    timeline: list[Entry]
    samples: list[Sample]
    base_owners: set[str]
    """Shards that owned the hot campaigns before the spike."""
    shard_seconds: float
    spike_partitions: frozenset[int] = frozenset()
    """Virtual partitions of the spiking campaigns: only their detection counts."""
    notes: list[str] = field(default_factory=list)
    resources: dict[str, Any] = field(default_factory=dict)
    """Resource figures (:func:`hotshard.local.resource_run.summarise_resources`), if any."""


def _since(t0: float, entry: Entry) -> float:
    return entry.time - t0


def _names_spike(entry: Entry, partitions: frozenset[int]) -> bool:
    """Whether a timeline entry's hot list names one of the spike's partitions."""
    if not partitions:
        return True  # a scenario with no spike: any detection counts
    named = {int(h.split("/")[0].split(" ")[0]) for h in entry.hot}
    return bool(named & partitions)


def summarise_pass(record: PassRecord) -> dict[str, Any]:
    """The acceptance numbers of one pass."""
    spike_wall = record.t0 + record.spike_start
    # NB: half a second of slack: the generators' clocks and the loop's tick are not aligned.
    after = spike_wall - 0.5
    detect = next(
        (
            e
            for e in record.timeline
            if e.kind == "detect" and e.time >= after and _names_spike(e, record.spike_partitions)
        ),
        None,
    )
    hot = record.groups["hot"]
    hot_report = hot.report
    # The first hot request a shard that did not own the hot campaigns answered well, timed by
    # the load generator as it got the answer (negative when a prediction split ahead).
    handed = min(
        (at for s, at in hot.first_answer.items() if s not in record.base_owners and s != "-"),
        default=None,
    )
    shard_counts = [s.shards for s in record.samples] or [0]
    peak = max(shard_counts)
    end = shard_counts[-1]
    p99 = {
        group: {phase: result.phases[phase].p99_ms for phase in PHASES}
        for group, result in sorted(record.groups.items())
    }
    errors = {
        group: {phase: result.phases[phase].errors for phase in PHASES}
        for group, result in sorted(record.groups.items())
    }
    return {
        "mitigation": record.mitigate,
        "detect_seconds": round(detect.time - spike_wall, 2) if detect else None,
        "mitigate_seconds": round(handed - record.spike_start, 2) if handed is not None else None,
        "lost_requests": sum(g.report.lost for g in record.groups.values()),
        "errors": errors,
        "sent": sum(g.report.sent for g in record.groups.values()),
        "p99_ms": p99,
        "shards_peak": peak,
        "shards_end": end,
        "scaled_down": end < peak,
        "shard_seconds": round(record.shard_seconds, 1),
        "hot_answered_by": dict(hot_report.shards),
        # NB: "-" is the router itself: mostly the 429s it sheds while a hot campaign is over
        # its allowance, fast explicit answers instead of a queue on the shard.
        "hot_answered_by_router": hot_report.shards.get("-", 0),
        "generator_fell_behind": any(
            g.report.generator_fell_behind for g in record.groups.values()
        ),
        **record.resources,
    }


def build_summary(
    main: PassRecord, baseline: PassRecord | None, scenario: str, notes: list[str]
) -> dict[str, Any]:
    summary = summarise_pass(main)
    summary["scenario"] = scenario
    summary["notes"] = notes
    summary["baseline"] = summarise_pass(baseline) if baseline is not None else None
    return summary


def write_report(
    out: Path, summary: dict[str, Any], main: PassRecord, baseline: PassRecord | None
) -> list[Path]:
    """Write ``summary.json``, ``report.md`` and the plots into ``out``; return the files."""
    from hotshard.local.plots import plot_pass

    out.mkdir(parents=True, exist_ok=True)
    files = [out / "summary.json", out / "report.md"]
    files[0].write_text(json.dumps(summary, indent=2) + "\n")
    timeline = [{**e.as_dict(), "t": round(_since(main.t0, e), 2)} for e in main.timeline]
    (out / "timeline.json").write_text(json.dumps(timeline, indent=1) + "\n")
    files.append(out / "timeline.json")
    files += plot_pass(main, out, prefix="")
    if baseline is not None:
        files += plot_pass(baseline, out, prefix="baseline-")
    files[1].write_text(render_markdown(summary, main))
    return files


def render_markdown(summary: dict[str, Any], main: PassRecord) -> str:
    base = summary.get("baseline") or {}
    ours = "with hotshard" if summary["mitigation"] else "mitigation off (observe only)"
    lines = [
        f"# hotshard demo: {summary['scenario']}",
        "",
        f"| measure | {ours} | baseline (mitigation off) |",
        "| --- | --- | --- |",
    ]
    for key in (
        "detect_seconds",
        "mitigate_seconds",
        "lost_requests",
        "shards_peak",
        "shards_end",
        "scaled_down",
        "shard_seconds",
    ):
        lines.append(f"| {key} | {_fmt(summary.get(key))} | {_fmt(base.get(key))} |")
    for label, key in (("p99 ms", "p99_ms"), ("errors", "errors")):
        for group in ("other", "hot"):
            for phase in PHASES:
                ours = summary[key].get(group, {}).get(phase)
                theirs = base.get(key, {}).get(group, {}).get(phase)
                lines.append(f"| {label}, {group}, {phase} | {_fmt(ours)} | {_fmt(theirs)} |")
    lines.append(
        f"| hot requests answered by the router itself | "
        f"{_fmt(summary.get('hot_answered_by_router'))} | "
        f"{_fmt(base.get('hot_answered_by_router'))} |"
    )
    shed = summary.get("hot_answered_by_router") or 0
    hot_errors = sum(summary["errors"].get("hot", {}).values())
    if shed and shed * 2 >= hot_errors:
        lines += [
            "",
            f"Errors for the hot campaigns with hotshard are mostly ({shed} of {hot_errors}) the",
            "router's deliberate 429s: while a hot campaign is over its allowance (a quarter of a",
            "shard per shard serving it) the router sheds its excess with a fast, explicit answer",
            "instead of letting it queue on the shard that the other campaigns share",
            "(docs/dataplane.md). Without hotshard the same excess waits on that shard until its",
            "deadline.",
        ]
    if summary.get("config_changes"):
        from hotshard.local.resource_run import render_resources

        lines += render_resources(summary, base)
    lines += ["", "## Notes", ""] + [f"- {n}" for n in summary.get("notes", [])]
    lines += [
        "",
        "## Plots",
        "",
        "![rate per shard](rate-per-shard.png)",
        "![p99 hot vs other](p99.png)",
        "![shards in use](shards.png)",
        "![decisions](decisions.png)",
        "",
        "## Decisions",
        "",
        "| t (s) | kind | version | reason |",
        "| --- | --- | --- | --- |",
    ]
    for e in main.timeline:
        lines.append(
            f"| {_since(main.t0, e):.1f} | {e.kind} | {_fmt(e.version)} | {_fmt(e.reason)} |"
        )
    return "\n".join(lines) + "\n"
