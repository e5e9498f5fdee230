"""The strategy benchmark's verdict: the comparison table, ratios against hotshard, who wins.

:mod:`bench.strategies` runs the passes and keeps one summary per pass (the fields of
:func:`hotshard.local.report.summarise_pass` plus status counts and per-second series), one or
more passes per strategy and scenario. This module turns them into rows of measures, each the
median over a strategy's passes with its ratio to the reference strategy's median (hotshard
with prediction), decides for each hotshard variant whether it beats every baseline on the two
acceptance measures, and renders ``strategies.md``. It is pure: dictionaries in, dictionaries
and text out.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hotshard.markdown import format_cell as _fmt
from hotshard.strategies import ORDER, REFERENCE, Strategy

Summary = Mapping[str, Any]
Passes = Mapping[str, Sequence[Summary]]
"""Every pass's summary, by strategy name."""


@dataclass(frozen=True)
class Measure:
    key: str
    label: str
    read: Callable[[Summary], float | None]


def _p99(group: str, phase: str) -> Callable[[Summary], float | None]:
    return lambda s: s.get("p99_ms", {}).get(group, {}).get(phase)


def _field(name: str) -> Callable[[Summary], float | None]:
    return lambda s: s.get(name)


MEASURES: tuple[Measure, ...] = (
    Measure("other_p99_during", "p99 other campaigns, during (ms)", _p99("other", "during")),
    Measure("other_p99_after", "p99 other campaigns, after (ms)", _p99("other", "after")),
    Measure("hot_p99_during", "p99 hot campaigns, during (ms)", _p99("hot", "during")),
    Measure("lost_requests", "lost requests (never answered)", _field("lost_requests")),
    Measure("rejected_429", "429 answers (shed or throttled)", _field("rejected_429")),
    Measure("timeouts", "timeouts (504 + client timeouts)", _field("timeouts")),
    Measure("errors_total", "errors (any answer but 200/204, or none)", _field("errors_total")),
    Measure("detect_seconds", "time to detect (s)", _field("detect_seconds")),
    Measure("mitigate_seconds", "time to mitigate (s)", _field("mitigate_seconds")),
    Measure("shard_seconds", "shard-seconds", _field("shard_seconds")),
    Measure("shards_peak", "shards, peak", _field("shards_peak")),
)
"""Every measure is better lower; the table lists them in this order."""

ACCEPTANCE = ("other_p99_during", "lost_requests")
"""Issue #8: hotshard must beat every other strategy on these, in both scenarios."""


def ratio(value: float | None, reference: float | None) -> float | None:
    """``value / reference``, or ``None`` when either is missing or the reference is 0."""
    if value is None or reference is None or reference == 0:
        return None
    return round(value / reference, 2)


def median_of(measure: Measure, passes: Sequence[Summary]) -> float | None:
    """The measure's median over the passes that have it, or ``None`` if none does."""
    values = [v for v in (measure.read(s) for s in passes) if v is not None]
    return round(statistics.median(values), 3) if values else None


def spread_of(measure: Measure, passes: Sequence[Summary]) -> tuple[float, float] | None:
    values = [v for v in (measure.read(s) for s in passes) if v is not None]
    return (min(values), max(values)) if len(values) > 1 else None


def build_rows(passes: Passes, reference: str) -> list[dict[str, Any]]:
    """One row per measure: each strategy's median, its range, and its ratio to ``reference``'s."""
    rows = []
    for m in MEASURES:
        values = {name: median_of(m, runs) for name, runs in passes.items()}
        ref = values.get(reference)
        rows.append(
            {
                "measure": m.key,
                "label": m.label,
                "values": values,
                "spread": {name: spread_of(m, runs) for name, runs in passes.items()},
                "ratios": {name: ratio(v, ref) for name, v in values.items()},
            }
        )
    return rows


def compare(ours: float | None, theirs: float | None) -> str:
    """``win``, ``tie`` or ``loss`` for a lower-is-better measure; ``n/a`` if one is missing."""
    if ours is None or theirs is None:
        return "n/a"
    if ours < theirs:
        return "win"
    return "tie" if ours == theirs else "loss"


def judge(passes: Passes) -> dict[str, dict[str, dict[str, str]]]:
    """For each hotshard variant and acceptance measure: its median against each baseline's."""
    measures = {m.key: m for m in MEASURES}
    hotshard = [s.value for s in ORDER if s.is_hotshard and passes.get(s.value)]
    baselines = [s.value for s in ORDER if not s.is_hotshard and passes.get(s.value)]
    return {
        h: {
            key: {
                b: compare(median_of(measures[key], passes[h]), median_of(measures[key], passes[b]))
                for b in baselines
            }
            for key in ACCEPTANCE
        }
        for h in hotshard
    }


def _cell(
    value: float | None, r: float | None, spread: tuple[float, float] | None, is_reference: bool
) -> str:
    text = _fmt(value)
    if value is not None and not is_reference:
        text += f" ({_fmt(r)}x)" if r is not None else " (n/a)"
    if spread is not None:
        text += f" [{_fmt(spread[0])}-{_fmt(spread[1])}]"
    return text


def render_table(passes: Passes, reference: str) -> list[str]:
    """The markdown table of one scenario: a column per strategy, ratios in brackets."""
    names = [s.value for s in ORDER if passes.get(s.value)]
    lines = [
        "| measure | " + " | ".join(names) + " |",
        "| --- |" + " --- |" * len(names),
    ]
    for row in build_rows(passes, reference):
        cells = [
            _cell(row["values"][n], row["ratios"][n], row["spread"][n], n == reference)
            for n in names
        ]
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    return lines


def representative(runs: Sequence[Summary]) -> Summary:
    """The pass whose p99 of the other campaigns during the spike is the median one."""
    ranked = sorted(runs, key=lambda s: MEASURES[0].read(s) or 0.0)
    return ranked[(len(ranked) - 1) // 2]


def render_verdict(verdict: Mapping[str, Mapping[str, Mapping[str, str]]]) -> list[str]:
    """One line per hotshard variant and acceptance measure, naming every strategy not beaten."""
    labels = {m.key: m.label for m in MEASURES}
    lines = []
    for variant, measures in verdict.items():
        for key, outcomes in measures.items():
            beaten = [b for b, o in outcomes.items() if o == "win"]
            others = [f"{b} ({o})" for b, o in outcomes.items() if o != "win"]
            status = "beats every baseline" if not others else "does NOT beat " + ", ".join(others)
            note = f"; beats {', '.join(beaten)}" if beaten and others else ""
            lines.append(f"- **{variant}**, {labels[key]}: {status}{note}.")
    return lines


def render_markdown(results: Mapping[str, Any]) -> str:
    """``strategies.md``: one table and one verdict per scenario, then how it was run."""
    reference = results.get("reference", REFERENCE.value)
    lines = [
        "# Strategies side by side (`make bench`)",
        "",
        f"Each cell: the value, and in brackets its ratio to **{reference}** (1.0 = the same;",
        "above 1 = worse than hotshard for every measure here, since all are better lower).",
        "`-`: not measured or does not apply (static hashing and bounded-load hashing detect",
        "nothing; time to mitigate is when a shard that did not own the hot campaigns first",
        "answered one of their requests). `n/a`: hotshard's own value is 0 or missing.",
        "",
        "Strategies: " + "; ".join(f"**{s.value}**: {s.description}" for s in ORDER) + ".",
    ]
    repeat = results.get("run", {}).get("repeat", 1)
    if repeat > 1:
        lines += ["", f"Every value is the median of {repeat} passes, [lowest-highest] after it."]
    for name, scenario in results.get("scenarios", {}).items():
        passes = scenario["passes"]
        lines += ["", f"## {name}", ""]
        lines += render_table(passes, reference)
        shares = [
            f"{n} {statistics.median(s.get('hot_off_home_share', 0.0) for s in passes[n]):.0%}"
            for n in (s.value for s in ORDER)
            if passes.get(n)
        ]
        if shares:
            lines += ["", "Hot requests answered away from their home shard: " + ", ".join(shares)]
        lines += ["", "Acceptance (issue #8): hotshard beats every other strategy on p99 of the"]
        lines += ["other campaigns during the spike and on lost requests.", ""]
        lines += render_verdict(judge(passes))
        lines += ["", f"![{name}](strategies-{name}.png)"]
    run = results.get("run", {})
    lines += [
        "",
        "## How this was run",
        "",
        f"`{run.get('command', 'make bench')}` on {run.get('cores', '?')} cores, load average "
        f"{_fmt(run.get('load_before'))} before and {_fmt(run.get('load_after'))} after; "
        f"{_fmt(run.get('minutes'))} minutes in all, {repeat} round(s) of one pass per strategy "
        "and scenario, each round starting one strategy later; the machine was shared, so compare "
        "ratios, not absolute latencies. Method and limits: docs/benchmarks.md.",
    ]
    return "\n".join(lines) + "\n"


def strategy_names(selected: Sequence[str] | None) -> list[Strategy]:
    """The strategies to run, in table order; all of them when ``selected`` is empty."""
    if not selected:
        return list(ORDER)
    chosen = {Strategy(s) for s in selected}
    return [s for s in ORDER if s in chosen]
