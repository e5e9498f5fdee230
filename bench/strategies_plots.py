"""The strategy benchmark's plots: one PNG per scenario, every strategy on the same axes.

Three panels share the time axis (seconds since the first request, the spike shaded): p99 per
second of the other campaigns (were they protected?), p99 per second of the hot campaigns, and
the shards each strategy ran (what the protection cost). Each strategy is drawn from its
median pass (:func:`bench.strategies_report.representative`), with matplotlib's Agg backend.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from hotshard.strategies import ORDER

from .strategies_report import representative

COLOURS = {
    "static": "tab:grey",
    "hpa": "tab:purple",
    "bounded-load": "tab:brown",
    "hotshard-reactive": "tab:blue",
    "hotshard-predictive": "tab:green",
}


def plot_scenario(name: str, scenario: Mapping[str, Any], out: Path) -> Path:
    """Draw ``strategies-<name>.png`` into ``out``; return its path."""
    passes = scenario["passes"]
    fig, axes = plt.subplots(3, 1, figsize=(10, 9), sharex=True)
    panels = (
        ("other", "p99, other campaigns (ms)", True),
        ("hot", "p99, hot campaigns (ms)", True),
        ("shards", "shards running", False),
    )
    for ax, (series, label, log) in zip(axes, panels, strict=True):
        for strategy in ORDER:
            if not passes.get(strategy.value):
                continue
            summary = representative(passes[strategy.value])
            points = summary.get("series", {}).get(series, [])
            xs, ys = [p[0] for p in points], [p[1] for p in points]
            colour = COLOURS.get(strategy.value)
            if series == "shards":
                ax.step(xs, ys, where="post", label=strategy.value, color=colour)
            else:
                ax.plot(xs, ys, label=strategy.value, color=colour, linewidth=1.2)
        ax.axvspan(scenario["spike_start"], scenario["spike_end"], color="tab:red", alpha=0.08)
        if log:
            ax.set_yscale("log")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="upper right", fontsize="small")
    axes[0].set_title(f"{name}: strategies side by side (the `during` phase shaded)")
    axes[-1].set_xlabel("seconds since the first request")
    fig.tight_layout()
    path = out / f"strategies-{name}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
