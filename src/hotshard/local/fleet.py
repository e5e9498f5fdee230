"""The local fleet: bidder processes in three tiers, and the actuator that grows and shrinks it.

On Kubernetes a shard is a StatefulSet pod with a CPU limit; here it is a ``hotshard bidder``
process, placed in its own cgroup with a CPU quota when the machine allows
(:mod:`hotshard.local.cgroups`). :class:`LocalFleet` owns every bidder process of a demo run:
it starts the base shards, the warm pool of overflow shards and the sandbox shard, and, as the
control loop's :class:`~hotshard.control.actuator.Actuator`, starts new warm shards in the
background when the engine claims some, adds them to the routing table once ready, and stops
overflow shards that the table no longer routes anything to (highest ordinals first).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from hotshard.control.actuator import PoolChange
from hotshard.engine.model import PoolState
from hotshard.local.cgroups import CpuLimiter
from hotshard.local.processes import ServiceError, ServiceProcess, free_port
from hotshard.routing import RoutingTable, Shard
from hotshard.routing.table import Tier

log = logging.getLogger(__name__)

STARTUP_CORES = 0.5
"""A starting bidder's quota: its start costs ~0.65 s of CPU (imports, the corpus), which
unlimited took a full core of this 2-core box for most of a second, stalling every other
process; at half a core it is ready in ~1.3 s and leaves the rest a core and a half."""
VERSION_TIMEOUT_S = 0.3
"""A /readyz probe that takes longer than this counts as 'not there yet'."""


@dataclass(frozen=True)
class FleetShape:
    """How many shards of each tier a run starts with, and each tier's CPU quota in cores."""

    base: int = 3
    warm: int = 3
    sandbox: int = 1
    base_cores: float = 0.15
    overflow_cores: float = 0.15
    sandbox_cores: float = 0.1

    def cores(self, tier: Tier) -> float:
        return {"base": self.base_cores, "overflow": self.overflow_cores}.get(
            tier, self.sandbox_cores
        )


@dataclass
class ShardProcess:
    name: str
    tier: Tier
    service: ServiceProcess
    started_at: float
    stopped_at: float | None = None


@dataclass
class LocalFleet:
    """Every bidder process of one run, and the actuator operations on them."""

    run_dir: Path
    routing_file: Path
    shape: FleetShape
    limiter: CpuLimiter | None
    bidder_args: tuple[str, ...] = ()
    """Extra flags for every bidder, e.g. ``--no-resource-guard`` for a containment-off pass."""
    shards: dict[str, ShardProcess] = field(default_factory=dict)
    history: list[ShardProcess] = field(default_factory=list)
    """Every shard process ever started, for shard-seconds."""
    _starting: dict[str, asyncio.Task[ShardProcess]] = field(default_factory=dict)
    _ordinal: dict[str, int] = field(
        default_factory=lambda: {"base": 0, "overflow": 0, "sandbox": 0}
    )
    _session: aiohttp.ClientSession | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _spawning: dict[str, ServiceProcess] = field(default_factory=dict)
    """Services being started in a worker thread, so that ``stop_all`` can reach them too."""
    _closed: bool = False

    # -- processes ------------------------------------------------------------------------

    def _next_name(self, tier: Tier) -> str:
        n = self._ordinal[tier]
        self._ordinal[tier] = n + 1
        return f"{tier}-{n}"

    def start_shard(self, tier: Tier, name: str | None = None) -> ShardProcess:
        """Start one bidder (blocking until ready) and put it under its tier's CPU quota."""
        name = name or self._next_name(tier)
        port = free_port()
        service = ServiceProcess(
            name,
            [
                "bidder",
                "--shard",
                name,
                "--port",
                str(port),
                "--routing-file",
                str(self.routing_file),
                *self.bidder_args,
            ],
            port=port,
            log_path=self.run_dir / "logs" / f"{name}.log",
        )
        with self._lock:
            if self._closed:
                raise ServiceError(f"not starting {name}: the fleet is stopping")
            self._spawning[name] = service
        try:
            service.start(on_spawn=lambda pid: self._limit(name, pid, STARTUP_CORES))
        except BaseException:
            with self._lock:
                self._spawning.pop(name, None)
            raise
        assert service.proc is not None
        self._limit(name, service.proc.pid, self.shape.cores(tier))
        shard = ShardProcess(name, tier, service, time.time())
        with self._lock:
            self._spawning.pop(name, None)
            closed = self._closed
            if not closed:
                self.shards[name] = shard
                self.history.append(shard)
        # NB: a start runs in a thread that Ctrl-C cannot cancel; if the fleet was stopped
        # meanwhile, this process is the thread's to stop, or it would outlive the demo.
        if closed:
            service.stop()
            if self.limiter is not None:
                self.limiter.release(name)
            raise ServiceError(f"stopped {name} at once: the fleet stopped while it started")
        return shard

    def _limit(self, name: str, pid: int, cores: float) -> None:
        if self.limiter is None:
            return
        try:
            self.limiter.limit(name, pid, cores)
        except OSError as exc:
            log.warning("could not put %s under a CPU quota: %s", name, exc)

    def exited(self) -> dict[str, int]:
        """Shards of the fleet whose process ended without being stopped, with exit codes."""
        out = {}
        for name, shard in list(self.shards.items()):
            proc = shard.service.proc
            code = proc.poll() if proc is not None else None
            if code is not None and name in self.shards:  # NB: not one being stopped just now
                out[name] = code
        return out

    def stop_shard(self, name: str) -> None:
        shard = self.shards.pop(name, None)
        if shard is None:
            return
        shard.service.stop()
        shard.stopped_at = time.time()
        if self.limiter is not None:
            self.limiter.release(name)

    def stop_all(self) -> None:
        with self._lock:
            self._closed = True
            spawning = list(self._spawning.values())
        for service in spawning:
            service.stop()  # its starting thread sees the fleet closed and stops it again if late
        for name in list(self.shards):
            self.stop_shard(name)

    def initial_shards(self) -> list[Shard]:
        """Start the run's starting fleet, in parallel; return the table entries for them."""
        shape = self.shape
        counts: tuple[tuple[Tier, int], ...] = (
            ("base", shape.base),
            ("overflow", shape.warm),
            ("sandbox", shape.sandbox),
        )
        named = [(tier, self._next_name(tier)) for tier, n in counts for _ in range(n)]
        # NB: a bidder spends about a second importing before it is ready; starting them side by
        # side makes the fleet ready in about that second instead of one per shard.
        with ThreadPoolExecutor(max_workers=len(named)) as pool:
            started = list(pool.map(lambda tn: self.start_shard(*tn), named))
        return [self._entry(s) for s in started]

    @staticmethod
    def _entry(shard: ShardProcess) -> Shard:
        return Shard(name=shard.name, tier=shard.tier, url=shard.service.url)

    def urls(self) -> dict[str, str]:
        return {name: s.service.url for name, s in self.shards.items()}

    def count(self) -> int:
        return len(self.shards)

    def shard_seconds(self, until: float) -> float:
        return sum((s.stopped_at or until) - s.started_at for s in self.history)

    # -- actuator -------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        return len(self._starting)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=VERSION_TIMEOUT_S)
            )
        return self._session

    async def _version(self, name: str) -> int | None:
        shard = self.shards.get(name)
        if shard is None:
            return None
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError, OSError):
            async with self._client().get(shard.service.url + "/readyz") as resp:
                return int((await resp.json(content_type=None))["version"])
        return None

    async def shard_versions(self, shards: Iterable[str]) -> Mapping[str, int]:
        names = list(shards)
        versions = await asyncio.gather(*(self._version(n) for n in names))
        return {n: v for n, v in zip(names, versions, strict=True) if v is not None}

    async def reconcile_pool(self, table: RoutingTable, warm_target: int) -> RoutingTable | None:
        listed = {s.name for s in table.shards}
        ready = [
            self._starting.pop(n).result() for n, t in list(self._starting.items()) if t.done()
        ]
        added = [self._entry(s) for s in ready if s.name not in listed]
        idle = list(PoolState.from_table(table).idle)
        missing = warm_target - len(idle) - len(added) - len(self._starting)
        # NB: one start at a time: each takes half a core for ~1.3 s, and three at once took
        # most of this 2-core box in the very seconds the spike was being moved.
        if missing > 0 and not self._starting:
            name = self._next_name("overflow")
            self._starting[name] = asyncio.create_task(
                asyncio.to_thread(self.start_shard, "overflow", name)
            )
        surplus = len(idle) + len(added) - warm_target
        removed: set[str] = set()
        if surplus > 0 and not added:
            # NB: highest ordinals go first, so the pool keeps a stable set of low names.
            removed = set(sorted(idle, key=_ordinal_of, reverse=True)[:surplus])
        if not added and not removed:
            return None
        data = table.model_dump()
        data["version"] = table.version + 1
        data["shards"] = [s for s in data["shards"] if s["name"] not in removed]
        data["shards"] += [s.model_dump() for s in added]
        return RoutingTable.model_validate(data)

    async def released(self, table: RoutingTable) -> PoolChange:
        listed = {s.name for s in table.shards}
        gone = [n for n in self.shards if n not in listed and n not in self._starting]
        for name in gone:
            await asyncio.to_thread(self.stop_shard, name)
        return PoolChange(stopped=tuple(gone))

    async def aclose(self) -> None:
        # NB: a start runs in a thread that cannot be cancelled; wait for it (bounded by the
        # ready timeout) so that stop_all sees its process instead of leaving an orphan.
        if self._starting:
            await asyncio.gather(*self._starting.values(), return_exceptions=True)
        self._starting.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None


def _ordinal_of(name: str) -> int:
    match = re.search(r"(\d+)$", name)
    return int(match.group(1)) if match else 0
