"""``hotshard demo --quick`` end to end, judged by the acceptance values in ``summary.json``.

This runs the real thing: bidder processes under cgroup quotas, the router, Prometheus when it
is installed, the control loop and the load generators replaying the election-night scenario,
then a baseline pass with mitigation off. It takes about two minutes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DEMO_TIMEOUT_S = 300
"""Twice the quick demo's two minutes: a busy machine is slower, a hung one must still end."""


def run_demo(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hotshard.cli", "demo", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT_S,
        check=False,
        env=None if env is None else os.environ | env,
    )


@pytest.fixture(scope="module")
def summary(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("demo")
    done = run_demo("--quick", "--report", str(root / "report"), cwd=root)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for name in ("report.md", "rate-per-shard.png", "p99.png", "shards.png", "decisions.png"):
        assert (root / "report" / name).stat().st_size > 0, name
    result: dict[str, Any] = json.loads((root / "report" / "summary.json").read_text())
    return result


def test_the_spike_is_detected_within_three_seconds(summary: dict[str, Any]) -> None:
    assert summary["detect_seconds"] is not None
    assert summary["detect_seconds"] <= 3


def test_a_new_owner_serves_the_hot_campaigns_within_five_seconds_of_detection(
    summary: dict[str, Any],
) -> None:
    assert summary["mitigate_seconds"] is not None
    assert summary["mitigate_seconds"] <= summary["detect_seconds"] + 5


def test_no_request_is_lost(summary: dict[str, Any]) -> None:
    assert summary["lost_requests"] == 0


CALM_P99_BOUND_MS = 15.0
"""The goal is 10 ms (met in every run measured on 2026-12-03: 3.0-5.7 ms over six runs,
docs/local-mode.md); the test allows 15 ms so that a CI machine's noise does not fail it, while
a fleet that stays degraded after the spike (the baseline's p99 is over 100 ms during it) still
does."""


def skip_on_a_host_too_slow_for_the_fleet(summary: dict[str, Any]) -> None:
    """The latency claims presuppose a host on which the fleet, unmitigated and before any
    spike, is calm. The shards' CPU quotas are fixed, so a host that runs Python several times
    slower fills them with the calm traffic alone (2026-12-04: a baseline calm p99 of 37 ms, and
    the others at 94 ms before the spike in the mitigated pass, code of the day before alike).
    There the latency comparisons say nothing about hotshard: they are skipped, saying why."""
    calm = summary["baseline"]["p99_ms"]["other"]["before"]
    if calm >= CALM_P99_BOUND_MS:
        pytest.skip(
            f"the baseline's calm p99 is {calm} ms, over {CALM_P99_BOUND_MS} ms with no spike "
            "and no mitigation: this host is too slow for the demo's fixed shard quotas "
            "(they are not sized from a calibration: docs/local-mode.md#limits)"
        )


def test_other_campaigns_keep_p99_low_before_and_after_the_spike(summary: dict[str, Any]) -> None:
    assert set(summary["p99_ms"]["other"]) == {"before", "during", "after"}
    skip_on_a_host_too_slow_for_the_fleet(summary)
    for phase in ("before", "after"):
        p99 = summary["p99_ms"]["other"][phase]
        assert p99 < CALM_P99_BOUND_MS, f"other campaigns' p99 in phase {phase} was {p99} ms"


def test_mitigation_protects_the_other_campaigns_during_the_spike(
    summary: dict[str, Any],
) -> None:
    # NB: the 10 ms goal is a measured figure (5.2-11.1 ms over six runs, docs/local-mode.md),
    # not a timed assertion; what must hold on any machine is that mitigation cuts the damage
    # the baseline shows in the same run.
    assert summary["errors"]["other"]["during"] <= summary["baseline"]["errors"]["other"]["during"]
    skip_on_a_host_too_slow_for_the_fleet(summary)
    ours = summary["p99_ms"]["other"]["during"]
    theirs = summary["baseline"]["p99_ms"]["other"]["during"]
    assert ours < theirs / 2, f"other p99 during: {ours} ms with hotshard, {theirs} ms without"


def test_capacity_is_given_back_after_the_cooldown(summary: dict[str, Any]) -> None:
    assert summary["scaled_down"] is True
    assert summary["shards_end"] < summary["shards_peak"]


def test_the_baseline_shows_the_damage(summary: dict[str, Any]) -> None:
    base = summary["baseline"]
    assert base is not None
    assert base["mitigate_seconds"] is None  # nothing moved with mitigation off
    worse_hot = base["p99_ms"]["hot"]["during"] > summary["p99_ms"]["hot"]["during"]
    worse_other = base["p99_ms"]["other"]["during"] > summary["p99_ms"]["other"]["during"]
    errors = sum(base["errors"]["hot"].values()) + sum(base["errors"]["other"].values())
    assert worse_hot or worse_other or errors > 0


def test_a_malformed_scenario_is_rejected_naming_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: bad\nbase_rate: 100\ncampaigns: {dataset: wikipedia_top100_election}\n"
        "spike: {campaigns: [Joe_Biden], trace: worldcup98, start: '1998-05-18 12:15:00',"
        " minutes: 10, factor: lots}\nphases: {before_seconds: 5, after_seconds: 5}\n"
    )
    done = run_demo("--scenario", str(bad), cwd=tmp_path)
    assert done.returncode == 2
    assert "field `spike.factor`" in done.stderr
    assert done.stdout == ""


def test_a_missing_data_folder_is_one_line_naming_the_variable(tmp_path: Path) -> None:
    nowhere = tmp_path / "no-data"
    done = run_demo("--quick", cwd=tmp_path, env={"HOTSHARD_DATA": str(nowhere)})
    assert done.returncode == 2
    assert done.stderr == (
        f"hotshard demo: cannot find the shared data folder (tried {nowhere}); set "
        "HOTSHARD_DATA to the folder that holds openrtb/ and traces/\n"
    )
    assert not (tmp_path / "demo-report").exists()
