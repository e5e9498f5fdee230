"""``hotshard demo --scenario advertiser-bug --quick``: a resource hot spot found and contained.

The real thing, as in ``test_demo.py``: bidder processes under cgroup quotas, the router, the
control loop, the load generators; one campaign's configuration turns pathological while its
rate stays flat, and another campaign's configuration changes go through a graduated rollout.
Then the same scenario with containment off (mitigation and the bidders' resource guard) for
comparison. About a minute and three quarters.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DEMO_TIMEOUT_S = 300
"""Three times the quick scenario's ~100 s: a busy machine is slower, a hung one must end."""
BAD = "Melania_Trump"
GRADUAL = "Donald_Trump"


@pytest.fixture(scope="module")
def summary(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("advertiser-bug")
    args = ["demo", "--scenario", "advertiser-bug", "--quick", "--report", str(root / "report")]
    done = subprocess.run(
        [sys.executable, "-m", "hotshard.cli", *args],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "## Resource hot spots" in (root / "report" / "report.md").read_text()
    result: dict[str, Any] = json.loads((root / "report" / "summary.json").read_text())
    return result


def test_the_bad_campaign_is_found_by_its_cost_within_three_seconds(
    summary: dict[str, Any],
) -> None:
    assert summary["resource_detect_seconds"] is not None
    assert 0 <= summary["resource_detect_seconds"] <= 3
    rate = summary["changed_campaign_rate"]
    # The rate did not move: only the resource signal can have found it.
    assert rate["during"] == pytest.approx(rate["before"], rel=0.1)


def test_it_is_contained_and_rolled_back_to_the_last_good_version(
    summary: dict[str, Any],
) -> None:
    assert summary["contained_by"], "nothing contained the bad campaign"
    assert summary["rolled_back"] is True
    changes = [(c["campaign"], c["rollout"]) for c in summary["config_changes"]]
    assert changes == [
        (GRADUAL, "graduated"),
        (BAD, "immediate"),
        (BAD, "immediate"),
        (GRADUAL, "graduated"),
    ]
    good, bad = summary["config_changes"][1:3]
    assert bad["shards_told"] == 7
    assert "back to version 1" in bad["rollback_reason"]
    assert good["rolled_back"] is False


def test_the_engine_moves_the_throttled_campaign_to_the_sandbox_unless_rolled_back_first(
    summary: dict[str, Any],
) -> None:
    bad = summary["config_changes"][2]
    # The bidder throttles it first, so it spends little; its refused demand is what the
    # engine sees, by cost per request, and it quarantines the campaign on the sandbox tier.
    assert "throttle" in bad["contained_by"]
    if "sandbox" not in bad["contained_by"]:
        # NB: the bidder's rollback works on its own evidence; the engine looks at Prometheus
        # once a second. On a slow machine (2026-12-04: the engine at 4.1 s, the rollback at
        # 3.0 s) the rollback can come first, and then nothing costly is left to move. The move
        # itself is also covered by tests/e2e/test_advertiser_bug.py and the engine's units.
        assert bad["rolled_back"] is True
        detected = bad["engine_detect_seconds"]
        assert detected is None or detected >= bad["rollback_seconds"] - 1.0
        return
    assert "sandbox" in summary["contained_by"]
    assert bad["engine_detect_seconds"] is not None
    assert bad["sandbox_seconds"] >= bad["engine_detect_seconds"]
    moves = [e for e in summary["containment_events"] if e["kind"] == "sandbox"]
    assert moves
    assert moves[0]["campaign"] == BAD
    assert "sandbox-0" in moves[0]["reason"]


def test_a_graduated_change_widens_while_normal_and_a_bad_one_stops_at_its_canary(
    summary: dict[str, Any],
) -> None:
    benign, bad = summary["config_changes"][0], summary["config_changes"][3]
    assert benign["rolled_back"] is False
    assert benign["widened_to"] is not None
    assert benign["widened_to"] >= 0.4  # 5% -> 10% -> 20% -> 40% at least, stage by stage
    assert bad["rolled_back"] is True
    assert bad["rollback_share"] == 0.05  # caught while it served its 5% canary only
    assert bad["widened_to"] is None
    assert "back to version 1" in bad["rollback_reason"]


def test_nothing_is_lost_and_every_campaign_has_a_cost(summary: dict[str, Any]) -> None:
    assert summary["lost_requests"] == 0
    costs = summary["cost_per_campaign"]
    assert BAD in costs
    assert all(c["requests"] > 0 and c["cpu_seconds"] > 0 for c in costs.values())


def test_containment_off_shows_the_damage(summary: dict[str, Any]) -> None:
    base = summary["baseline"]
    assert base is not None
    assert base["rolled_back"] is False
    assert base["contained_by"] == []
    ours, theirs = summary["cost_per_campaign"][BAD], base["cost_per_campaign"][BAD]
    # With containment its requests are refused or rolled back on the base shard; what runs
    # expensively runs on the sandbox shard, under its own quota.
    assert theirs["us_per_request"] > 2 * ours["us_per_request"]
    assert base["p99_ms"]["other"]["during"] > summary["p99_ms"]["other"]["during"]
    assert base["errors"]["other"]["during"] > summary["errors"]["other"]["during"]
