"""The cgroup writer, against a temporary directory standing in for the cgroup filesystem."""

from __future__ import annotations

from pathlib import Path

import pytest

from hotshard.local.cgroups import PERIOD_US, open_limiter


def fake_v1(root: Path) -> Path:
    cpu = root / "cpu"
    cpu.mkdir()
    (cpu / "cpu.cfs_quota_us").write_text("-1")
    (cpu / "cgroup.procs").write_text("")
    return cpu


def test_v1_quota_period_and_pid_are_written(tmp_path: Path) -> None:
    cpu = fake_v1(tmp_path)
    limiter, why = open_limiter("run1", tmp_path)
    assert limiter is not None
    assert why == ""
    path = limiter.limit("base-0", 4242, 0.25)
    assert path == cpu / "hotshard-run1" / "base-0"
    assert (path / "cpu.cfs_period_us").read_text() == str(PERIOD_US)
    assert (path / "cpu.cfs_quota_us").read_text() == str(PERIOD_US // 4)
    assert (path / "cgroup.procs").read_text() == "4242"


def test_close_removes_every_cgroup_and_moves_pids_out(tmp_path: Path) -> None:
    cpu = fake_v1(tmp_path)
    limiter, _ = open_limiter("run2", tmp_path)
    assert limiter is not None
    limiter.limit("base-0", 11, 0.5)
    limiter.limit("overflow-0", 12, 0.5)
    limiter.close()
    assert not (cpu / "hotshard-run2").exists()
    # A process still listed in a shard's cgroup is handed back to the parent first.
    assert (cpu / "cgroup.procs").read_text() in {"11", "12"}


def test_v2_writes_cpu_max(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (tmp_path / "cgroup.procs").write_text("")
    limiter, _ = open_limiter("run3", tmp_path)
    assert limiter is not None
    assert limiter.version == 2
    assert (tmp_path / "hotshard-run3" / "cgroup.subtree_control").read_text() == "+cpu"
    path = limiter.limit("sandbox-0", 77, 0.1)
    assert (path / "cpu.max").read_text() == f"{PERIOD_US // 10} {PERIOD_US}"
    limiter.close()
    assert not (tmp_path / "hotshard-run3").exists()


def test_no_controller_means_unlimited_with_a_reason(tmp_path: Path) -> None:
    limiter, why = open_limiter("run4", tmp_path)
    assert limiter is None
    assert "without CPU limits" in why


def test_v2_without_cpu_controller_is_refused(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("memory pids\n")
    limiter, why = open_limiter("run5", tmp_path)
    assert limiter is None
    assert "cpu controller" in why


def test_quota_must_be_positive(tmp_path: Path) -> None:
    fake_v1(tmp_path)
    limiter, _ = open_limiter("run6", tmp_path)
    assert limiter is not None
    with pytest.raises(ValueError, match="positive"):
        limiter.limit("base-0", 1, 0)
