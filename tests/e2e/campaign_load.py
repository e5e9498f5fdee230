"""Run the load generator with named campaigns and shares, and write its JSON report.

``hotshard loadgen`` draws campaign keys from Zipf (``campaign-1`` ...) or a built-in real
popularity; a spike of *one chosen campaign*, different for each scenario so each lands on a
partition of its own, needs named keys. This runs the same generator (the scenario spec local
mode uses) from a JSON spec in a process of its own, so its event loop does not share time
with the test's.

Usage: ``python tests/e2e/campaign_load.py SPEC_JSON REPORT_JSON``; SPEC_JSON holds
:class:`~hotshard.local.traffic.ScenarioLoadSpec` fields (``target``, ``profile``, ``duration``,
``names``, ``shares``, ``hot`` ...).
"""

from __future__ import annotations

import sys
from pathlib import Path

from hotshard.local.traffic import ScenarioLoadSpec
from hotshard_bidder.loadgen import run_load_sync


def main(spec_path: Path, out: Path) -> int:
    spec = ScenarioLoadSpec.model_validate_json(spec_path.read_text())
    report = run_load_sync(spec)
    out.write_text(report.model_dump_json(indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
