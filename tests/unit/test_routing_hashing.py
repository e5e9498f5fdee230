"""The campaign hash is the same in every process: golden values, checked in fresh interpreters."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from hotshard.routing import partition_of, split_slot, stable_hash

GOLDEN = {
    # key: (stable_hash, partition_of with 4096 partitions, split_slot over 4 ways)
    "campaign-1": (3434791118023754697, 969, 0),
    "campaign-42": (5761166367011052135, 2663, 0),
    "acme-superbowl": (13380696300487722602, 1642, 1),
    "": (8940604754494582973, 189, 2),
}

_PROBE = (
    "import json, sys\n"
    "from hotshard.routing import partition_of, split_slot, stable_hash\n"
    "keys = json.loads(sys.argv[1])\n"
    "print(json.dumps({k: [stable_hash(k), partition_of(k), split_slot(k, 4)] for k in keys}))\n"
)


def hashes_in_subprocess(seed: str) -> dict[str, list[int]]:
    env = {**os.environ, "PYTHONHASHSEED": seed}
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(list(GOLDEN))],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    result: dict[str, list[int]] = json.loads(out.stdout)
    return result


@pytest.mark.parametrize(("key", "golden"), GOLDEN.items())
def test_hash_matches_golden_values(key: str, golden: tuple[int, int, int]) -> None:
    assert (stable_hash(key), partition_of(key), split_slot(key, 4)) == golden


def test_two_processes_with_different_hash_seeds_agree_with_the_golden_values() -> None:
    first = hashes_in_subprocess("1")
    second = hashes_in_subprocess("12345")
    expected = {k: list(v) for k, v in GOLDEN.items()}
    assert first == expected
    assert second == expected


def test_partition_and_slot_stay_in_range() -> None:
    keys = [f"campaign-{i}" for i in range(2000)]
    assert all(0 <= partition_of(k, 7) < 7 for k in keys)
    slots = [split_slot(k, 3) for k in keys]
    assert set(slots) == {0, 1, 2}
    # The split hash spreads a campaign's requests evenly: each slot gets 1/3 +- 5%.
    assert all(abs(slots.count(s) / len(slots) - 1 / 3) < 0.05 for s in range(3))
