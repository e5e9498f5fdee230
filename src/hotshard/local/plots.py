"""The demo's four plots, drawn with matplotlib's Agg backend (no display needed).

Rate per shard shows the spike landing on one shard and then spreading; p99 over time shows
whether the other campaigns were protected; shards in use shows the fleet growing and giving
capacity back; the decision timeline shows what the control loop did, and when.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from hotshard.local.report import PassRecord

KIND_ROWS = {"detect": 0, "calm": 0, "prepare": 1, "commit": 1, "final": 1, "pool": 2}
"""Rows of the decision plot: detection, hand-overs, pool changes; anything else on row 3."""


def _shade_spike(ax: Axes, record: PassRecord) -> None:
    ax.axvspan(record.spike_start, record.spike_end, color="tab:red", alpha=0.08, label="spike")


def plot_pass(record: PassRecord, out: Path, *, prefix: str) -> list[Path]:
    title = "with hotshard" if record.mitigate else "baseline (mitigation off)"
    files = [
        _rate_per_shard(record, out / f"{prefix}rate-per-shard.png", title),
        _p99(record, out / f"{prefix}p99.png", title),
        _shards(record, out / f"{prefix}shards.png", title),
        _decisions(record, out / f"{prefix}decisions.png", title),
    ]
    return files


def _finish(fig: Figure, ax: Axes, path: Path) -> Path:
    ax.set_xlabel("seconds since the first request")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _rate_per_shard(record: PassRecord, path: Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(9, 4))
    names = sorted({n for s in record.samples for n in s.shard_rates})
    for name in names:
        ax.plot(
            [s.t for s in record.samples],
            [s.shard_rates.get(name, 0.0) for s in record.samples],
            label=name,
        )
    _shade_spike(ax, record)
    ax.set_ylabel("requests/s")
    ax.set_title(f"Rate per shard, {title}")
    return _finish(fig, ax, path)


def _p99(record: PassRecord, path: Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(9, 4))
    for group, colour in (("other", "tab:blue"), ("hot", "tab:orange")):
        result = record.groups.get(group)
        if result is None:
            continue
        points = [(s.t, s.p99_ms) for s in result.report.timeline if s.answered]
        ax.plot([t for t, _ in points], [v for _, v in points], label=f"{group} p99", color=colour)
    ax.axhline(10, color="grey", linestyle="--", linewidth=1, label="10 ms goal")
    _shade_spike(ax, record)
    ax.set_yscale("log")
    ax.set_ylabel("p99 latency (ms)")
    ax.set_title(f"p99 per second, hot vs other campaigns, {title}")
    return _finish(fig, ax, path)


def _shards(record: PassRecord, path: Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(9, 3))
    ax.step(
        [s.t for s in record.samples],
        [s.shards for s in record.samples],
        where="post",
        label="bidder processes",
    )
    _shade_spike(ax, record)
    ax.set_ylabel("shards")
    ax.set_title(f"Shards in use, {title}")
    return _finish(fig, ax, path)


def _decisions(record: PassRecord, path: Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(9, 3.5))
    for entry in record.timeline:
        t = entry.time - record.t0
        row = KIND_ROWS.get(entry.kind, 3)
        ax.scatter([t], [row], marker="|", s=300)
        ax.annotate(
            entry.kind,
            (t, row),
            textcoords="offset points",
            xytext=(2, 6),
            fontsize=7,
            rotation=30,
        )
    _shade_spike(ax, record)
    ax.set_yticks([0, 1, 2, 3], ["detect/calm", "hand-over", "warm pool", "other"])
    ax.set_ylim(-0.5, 3.8)
    ax.set_title(f"Decisions, {title} (reasons in report.md)")
    return _finish(fig, ax, path)
