"""The simulation's verdict: the same table as the local benchmark, with ratios against hotshard.

Owns the shape of ``bench/results/simulation.json`` and ``simulation.md`` and the small-scale
check: :func:`compare_with_local` reads the local benchmark's ``bench/results/strategies.json``
(when ``make bench`` has written it) and puts each measure of the simulation next to it.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hotshard.markdown import format_cell
from hotshard.strategies import ORDER, REFERENCE

ROWS: tuple[tuple[str, str], ...] = (
    ("detect s", "detect_seconds"),
    ("mitigate s", "mitigate_seconds"),
    ("lost (timeouts)", "lost"),
    ("429s", "rejected_429"),
    ("shard-seconds", "shard_seconds"),
    ("shards peak", "shards_peak"),
)
LOWER_IS_BETTER = {"lost", "rejected_429", "shard_seconds", "p99"}


def _fmt(value: Any) -> str:
    return format_cell(value, ".4g")  # the model's values carry no more than 4 digits of meaning


def _ratio(value: Any, reference: Any) -> str:
    if value is None or reference is None:
        return ""
    if reference == 0:
        return " (hotshard 0)" if value else ""
    return f" ({value / reference:.3g}x)"


def measures(summary: dict[str, Any]) -> list[tuple[str, Any]]:
    """The rows of the table for one strategy, in order."""
    rows: list[tuple[str, Any]] = [(label, summary.get(key)) for label, key in ROWS]
    for group in ("other", "neighbours", "hot"):
        for phase in ("before", "during", "after"):
            rows.append((f"p99 ms {group} {phase}", summary["p99_ms"][group][phase]))
    rows.append(("lost + 429 other", summary["failed_other"]))
    return rows


def render_scenario(name: str, results: dict[str, dict[str, Any]]) -> list[str]:
    """One markdown table: a column per strategy, ratios against hotshard in brackets."""
    order = [s.value for s in ORDER if s.value in results]
    ref = results.get(REFERENCE.value)
    lines = [
        f"### {name}",
        "",
        "| measure | " + " | ".join(order) + " |",
        "| --- | " + " | ".join("---:" for _ in order) + " |",
    ]
    ref_rows = dict(measures(ref)) if ref else {}
    labels = [label for label, _ in measures(results[order[0]])]
    for label in labels:
        cells = []
        for s in order:
            value = dict(measures(results[s]))[label]
            ratio = "" if s == REFERENCE.value else _ratio(value, ref_rows.get(label))
            if label.startswith(("detect", "mitigate", "shards peak")):
                ratio = ""
            cells.append(_fmt(value) + ratio)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    lines += verdict(results)
    return lines


def verdict(results: dict[str, dict[str, Any]]) -> list[str]:
    """Where hotshard wins and where it does not, said plainly."""
    ref = results.get(REFERENCE.value)
    if ref is None:
        return []
    out = []
    ours_p99 = ref["p99_ms"]["other"]["during"]
    for s, r in results.items():
        if s == REFERENCE.value:
            continue
        theirs = r["p99_ms"]["other"]["during"]
        nb_ours, nb_theirs = (
            ref["p99_ms"]["neighbours"]["during"],
            r["p99_ms"]["neighbours"]["during"],
        )
        p99_win = ours_p99 is not None and theirs is not None and ours_p99 <= theirs
        lost_win = ref["lost"] <= r["lost"]
        out.append(
            f"- vs {s}: other campaigns' p99 during the event "
            f"{'better or equal' if p99_win else '**worse**'} ({_fmt(ours_p99)} vs "
            f"{_fmt(theirs)} ms; neighbours {_fmt(nb_ours)} vs {_fmt(nb_theirs)} ms); "
            f"lost {'fewer or equal' if lost_win else '**more**'} "
            f"({ref['lost']} vs {r['lost']}); shard-seconds {ref['shard_seconds']} vs "
            f"{r['shard_seconds']}."
        )
    return out


def write_results(report: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """``simulation.json`` and ``simulation.md`` in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "simulation.json"
    md_path = out_dir / "simulation.md"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# Simulation: hotshard against the strategies users run today",
        "",
        f"Written by `{report['command']}` on {report['when']}; "
        f"wall time {report['wall_seconds']:.1f} s. Model and assumptions: docs/simulation.md.",
        "",
    ]
    for scale, run in report["scales"].items():
        m = run["model"]
        lines += [
            f"## Scale {scale}: {_fmt(run['rate_rps'])} requests/s, {m['base_shards']} base shards "
            f"of {m['cores']:g} cores, V={m['partitions']}",
            "",
            f"CPU per request {m['cost_us']:g} µs ({run['calibration']}).",
            "",
        ]
        if run.get("timings", "full") != "full":
            lines += [f"Scenario timings: {run['timings']} (`--quick`).", ""]
        for name, results in run["scenarios"].items():
            lines += render_scenario(name, results)
            lines.append("")
        if run.get("local_comparison"):
            lines += ["### Against the local fleet", ""] + run["local_comparison"] + [""]
    md_path.write_text("\n".join(lines))
    return json_path, md_path


def compare_with_local(
    simulated: dict[str, dict[str, Any]], local_path: Path, tolerance: float
) -> list[str]:
    """Rows comparing the small-scale simulation with ``make bench``'s strategies.json.

    ``simulated`` is ``{scenario: {strategy: summary}}``. The local file is ``make bench``'s:
    ``{"scenarios": {scenario: {"passes": {strategy: [summary, ...]}}}}``, one summary per round,
    with the same keys as ours (``p99_ms``, ``detect_seconds``); a measure's local value is its
    median over the rounds, as ``bench/results/strategies.md`` reports it. Older layouts
    (``"strategies"`` instead of ``"passes"``, one summary instead of a list) are read too.
    """
    try:
        local = json.loads(local_path.read_text())
    except (OSError, ValueError) as exc:
        return [f"- no comparison: {local_path} is not readable ({exc.__class__.__name__})"]
    scenarios = local.get("scenarios", local)
    lines = [
        f"Tolerance: a measure agrees when within {tolerance:.0%} of the local value, or both "
        "are under the 10 ms / 10-request noise floor.",
        "",
        "| scenario | strategy | measure | simulated | local | agrees |",
        "| --- | --- | --- | ---: | ---: | --- |",
    ]
    agree = total = 0
    for scenario, strategies in simulated.items():
        theirs = scenarios.get(scenario, {})
        if isinstance(theirs, dict):
            theirs = theirs.get("passes", theirs.get("strategies", theirs))
        for strategy, ours in strategies.items():
            other = theirs.get(strategy) if isinstance(theirs, dict) else None
            rounds = [other] if isinstance(other, dict) else other
            if not isinstance(rounds, list) or not rounds:
                continue
            for label, ours_v, local_v, floor in _pairs(ours, rounds):
                if ours_v is None or local_v is None:
                    continue
                ok = abs(ours_v - local_v) <= tolerance * max(abs(local_v), 1e-9) or (
                    ours_v <= floor and local_v <= floor
                )
                agree += ok
                total += 1
                lines.append(
                    f"| {scenario} | {strategy} | {label} | {_fmt(ours_v)} | {_fmt(local_v)} | "
                    f"{'yes' if ok else 'no'} |"
                )
    lines += ["", f"{agree} of {total} measures agree within the tolerance."]
    return lines


def _pairs(ours: dict[str, Any], rounds: list[dict[str, Any]]) -> list[tuple[str, Any, Any, float]]:
    # NB: only per-phase p99s and detection are compared, the measures the check is defined on;
    # counts (lost, 429s, shard-seconds) are in each side's own table.
    out: list[tuple[str, Any, Any, float]] = []
    for group in ("other", "hot"):
        for phase in ("before", "during", "after"):
            a = ours.get("p99_ms", {}).get(group, {}).get(phase)
            b = _median((r.get("p99_ms") or {}).get(group, {}).get(phase) for r in rounds)
            out.append((f"p99 ms {group} {phase}", a, b, 10.0))
    b = _median(r.get("detect_seconds") for r in rounds)
    out.append(("detect s", ours.get("detect_seconds"), b, 1.0))
    return out


def _median(values: Iterable[Any]) -> float | None:
    """The median of the rounds that have the measure, or ``None`` if none does."""
    have = [float(v) for v in values if isinstance(v, int | float)]
    return statistics.median(have) if have else None
