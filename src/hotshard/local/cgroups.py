"""CPU quotas for local shards: the stand-in for a pod's CPU limit.

On Kubernetes a shard's CPU limit is what turns a hot partition into queueing and lost
deadlines; on one machine, without a limit, a hot bidder process would simply take a whole
core from its neighbours. Where the cgroup filesystem is writable, each shard of a demo run
gets its own cgroup with a CFS quota: ``cpu.cfs_quota_us``/``cpu.cfs_period_us`` under cgroup
v1's ``cpu`` controller, or ``cpu.max`` under cgroup v2. Elsewhere shards run unlimited and
:attr:`CpuLimiter.note` says so, so the demo can print it.

This module owns the run's cgroup directory (``hotshard-<run>/<shard>/``) from creation to
removal; nothing else writes there.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
PERIOD_US = 10_000
"""CFS period of 10 ms, not the kernel's default 100 ms: a shard that uses up its quota stalls
until the period ends, so the period bounds the stall (at 0.15 core: 8.5 ms, not 85 ms), which
is what keeps a throttled shard's p99 in the range a real pod with a CPU limit shows. A 0.1
core quota is then 1 ms, the kernel's minimum."""

_V1_FILES = ("cpu.cfs_quota_us", "cpu.cfs_period_us", "cgroup.procs")
_V2_FILES = ("cpu.max", "cgroup.procs", "cgroup.subtree_control")


@dataclass
class CpuLimiter:
    """Creates one cgroup per shard under ``base`` and removes them all in :meth:`close`."""

    version: Literal[1, 2]
    base: Path
    """The run's own directory, e.g. ``/sys/fs/cgroup/cpu/hotshard-<run>``."""
    parent_procs: Path
    """Where a still-running process is moved back to before its cgroup is removed."""
    created: dict[str, Path] = field(default_factory=dict)

    @property
    def note(self) -> str:
        return f"CPU quotas through cgroup v{self.version} under {self.base}"

    def limit(self, shard: str, pid: int, cores: float) -> Path:
        """Put process ``pid`` in the shard's cgroup, capped at ``cores`` CPUs."""
        if cores <= 0:
            raise ValueError(f"a CPU quota must be positive, not {cores}")
        path = self.created.get(shard)
        if path is None:
            path = self.base / shard
            path.mkdir(exist_ok=True)
            self.created[shard] = path
        quota = max(1000, round(cores * PERIOD_US))  # the kernel refuses quotas under 1 ms
        if self.version == 1:
            _write(path / "cpu.cfs_period_us", str(PERIOD_US))
            _write(path / "cpu.cfs_quota_us", str(quota))
        else:
            _write(path / "cpu.max", f"{quota} {PERIOD_US}")
        _write(path / "cgroup.procs", str(pid))
        return path

    def release(self, shard: str) -> None:
        """Remove the shard's cgroup (its process should have exited)."""
        path = self.created.pop(shard, None)
        if path is not None:
            _remove_cgroup(path, self.parent_procs)

    def close(self) -> None:
        """Remove every cgroup this run created, then the run's own directory."""
        for shard in list(self.created):
            self.release(shard)
        _remove_cgroup(self.base, self.parent_procs)


def open_limiter(run: str, root: Path = CGROUP_ROOT) -> tuple[CpuLimiter | None, str]:
    """A limiter for this run, or ``None`` and a sentence saying why shards run unlimited."""
    v1 = root / "cpu"
    try:
        if (v1 / "cpu.cfs_quota_us").exists():
            base = v1 / f"hotshard-{run}"
            base.mkdir(exist_ok=True)
            return CpuLimiter(1, base, v1 / "cgroup.procs"), ""
        if (root / "cgroup.controllers").exists():
            if "cpu" not in (root / "cgroup.controllers").read_text().split():
                return None, "cgroup v2 without the cpu controller: shards run without CPU limits"
            # NB: children get the cpu controller only if their parent delegates it.
            with contextlib.suppress(OSError):
                _write(root / "cgroup.subtree_control", "+cpu")
            base = root / f"hotshard-{run}"
            base.mkdir(exist_ok=True)
            _write(base / "cgroup.subtree_control", "+cpu")
            return CpuLimiter(2, base, root / "cgroup.procs"), ""
    except OSError as exc:
        return (
            None,
            f"cgroup filesystem not writable ({exc.strerror}): shards run without CPU limits",
        )
    return None, f"no cgroup cpu controller under {root}: shards run without CPU limits"


def _write(path: Path, value: str) -> None:
    # NB: cgroup files take one value per write(2); open without truncation games.
    with open(path, "w") as f:
        f.write(value)


def _remove_cgroup(path: Path, parent_procs: Path) -> None:
    """``rmdir`` a cgroup, first moving out any process still in it.

    On a real cgroup filesystem the control files vanish with the directory; a plain directory
    standing in for one in tests holds real files, which are removed first.
    """
    if not path.exists():
        return
    procs = path / "cgroup.procs"
    with contextlib.suppress(OSError):
        for line in procs.read_text().split():
            _write(parent_procs, line)
    try:
        os.rmdir(path)
        return
    except OSError as exc:
        if exc.errno != errno.ENOTEMPTY:
            log.warning("could not remove cgroup %s: %s", path, exc.strerror)
            return
    for name in (*_V1_FILES, *_V2_FILES):
        with contextlib.suppress(OSError):
            (path / name).unlink()
    try:
        os.rmdir(path)
    except OSError as exc:
        log.warning("could not remove cgroup %s: %s", path, exc.strerror)
