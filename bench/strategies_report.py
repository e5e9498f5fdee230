"""The strategy benchmark's verdict: the comparison table, ratios against hotshard, who wins.

:mod:`bench.strategies` runs the passes and keeps one summary per strategy and scenario (the
fields of :func:`hotshard.local.report.summarise_pass` plus status counts and per-second
series). This module turns those summaries into rows of measures, each with its ratio to the
reference strategy (hotshard with prediction), decides for each hotshard variant whether it
beats every baseline on the two acceptance measures, and renders ``strategies.md``. It is pure:
dictionaries in, dictionaries and text out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hotshard.strategies import ORDER, REFERENCE, Strategy

Summary = Mapping[str, Any]


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


def build_rows(summaries: Mapping[str, Summary], reference: str) -> list[dict[str, Any]]:
    """One row per measure: each strategy's value and its ratio to ``reference``'s."""
    ref = summaries.get(reference, {})
    rows = []
    for m in MEASURES:
        values = {name: m.read(s) for name, s in summaries.items()}
        rows.append(
            {
                "measure": m.key,
                "label": m.label,
                "values": values,
                "ratios": {name: ratio(v, m.read(ref)) for name, v in values.items()},
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


def judge(summaries: Mapping[str, Summary]) -> dict[str, dict[str, dict[str, str]]]:
    """For each hotshard variant and acceptance measure: the outcome against each baseline."""
    measures = {m.key: m for m in MEASURES}
    hotshard = [s for s in ORDER if s.is_hotshard and s.value in summaries]
    baselines = [s for s in ORDER if not s.is_hotshard and s.value in summaries]
    return {
        h.value: {
            key: {
                b.value: compare(
                    measures[key].read(summaries[h.value]), measures[key].read(summaries[b.value])
                )
                for b in baselines
            }
            for key in ACCEPTANCE
        }
        for h in hotshard
    }


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _cell(value: float | None, r: float | None, is_reference: bool) -> str:
    if is_reference or value is None:
        return _fmt(value)
    return f"{_fmt(value)} ({_fmt(r)}x)" if r is not None else f"{_fmt(value)} (n/a)"


def render_table(summaries: Mapping[str, Summary], reference: str) -> list[str]:
    """The markdown table of one scenario: a column per strategy, ratios in brackets."""
    names = [s.value for s in ORDER if s.value in summaries]
    lines = [
        "| measure | " + " | ".join(names) + " |",
        "| --- |" + " --- |" * len(names),
    ]
    for row in build_rows(summaries, reference):
        cells = [_cell(row["values"][n], row["ratios"][n], n == reference) for n in names]
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    return lines


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
    for name, scenario in results.get("scenarios", {}).items():
        summaries = scenario["strategies"]
        lines += ["", f"## {name}", ""]
        lines += render_table(summaries, reference)
        shares = [
            f"{n} {summaries[n]['hot_off_home_share']:.0%}"
            for n in (s.value for s in ORDER)
            if n in summaries and summaries[n].get("hot_off_home_share") is not None
        ]
        if shares:
            lines += ["", "Hot requests answered away from their home shard: " + ", ".join(shares)]
        lines += ["", "Acceptance (issue #8): hotshard beats every other strategy on p99 of the"]
        lines += ["other campaigns during the spike and on lost requests.", ""]
        lines += render_verdict(judge(summaries))
        lines += ["", f"![{name}](strategies-{name}.png)"]
    run = results.get("run", {})
    lines += [
        "",
        "## How this was run",
        "",
        f"`{run.get('command', 'make bench')}` on {run.get('cores', '?')} cores, load average "
        f"{_fmt(run.get('load_before'))} before and {_fmt(run.get('load_after'))} after; "
        f"{_fmt(run.get('minutes'))} minutes in all. One pass per strategy and scenario, in the "
        "order of the columns; the machine was shared, so compare ratios, not absolute "
        "latencies. Method and limits: docs/benchmarks.md.",
    ]
    return "\n".join(lines) + "\n"


def strategy_names(selected: Sequence[str] | None) -> list[Strategy]:
    """The strategies to run, in table order; all of them when ``selected`` is empty."""
    if not selected:
        return list(ORDER)
    chosen = {Strategy(s) for s in selected}
    return [s for s in ORDER if s in chosen]
