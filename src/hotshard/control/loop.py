"""The control loop: observe, decide with the engine, hand over in two phases, keep the pool.

Local mode and the Kubernetes operator run this same loop; only the edges differ (a
:class:`~hotshard.control.sources.MetricsSource`, a routing store, an
:class:`~hotshard.control.actuator.Actuator`). The engine in the middle is pure. Each
:meth:`ControlLoop.tick`:

1. settles a hand-over an earlier tick (or a crashed process) left half-done in the table, from
   the table alone: a hand-over in phase *commit* already has its new owners serving, so it is
   *finished* (migrations dropped, routes kept); one in phase *prepare* is *rolled back*,
   because nothing vouches that its new owners ever loaded it; then observes the last second;
2. asks the engine for a decision against the table it just read (and its CAS token);
3. if the decision carries a new table, and mitigation is on, and the data is fresh, hands it
   over in two phases: write the *prepare* table by compare-and-swap, wait until the new owners
   run it (or a short timeout), write *commit*, then *final*. When a write finds the table
   changed underneath (:class:`~hotshard.routing.store.StaleTokenError`) the loop re-reads the
   table and asks the engine again; it never overwrites what it has not seen;
4. lets the actuator keep the warm pool at the engine's target and stop shards nothing routes to.

Every decision that matters is recorded in a :class:`Timeline` with its reason, which is what
the demo's report and the operator's Events are made of.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from hotshard.control.actuator import Actuator
from hotshard.control.sources import MetricsSource
from hotshard.control.timeline import EntryKind, Timeline
from hotshard.engine.model import Decision, Observation, PoolState
from hotshard.routing import MigrationPhase, RoutingTable
from hotshard.routing.store import RoutingStore, StaleTokenError

log = logging.getLogger(__name__)


class DecisionEngine(Protocol):
    def step(self, observation: Observation, table: RoutingTable, pool: PoolState) -> Decision: ...


class HandoverPlan(Protocol):
    """The tables of a two-phase hand-over; a phase that is not needed is ``None``."""

    @property
    def prepare(self) -> RoutingTable | None: ...

    @property
    def commit(self) -> RoutingTable | None: ...

    @property
    def final(self) -> RoutingTable | None: ...


Planner = Callable[[RoutingTable, RoutingTable], HandoverPlan]


def default_planner() -> Planner:
    from hotshard.routing.migration import plan_handover

    planner: Planner = plan_handover
    return planner


class LoopSettings(BaseModel):
    """How the loop acts on the engine's decisions."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mitigate: bool = Field(
        default=True, description="Off: observe and record decisions, write nothing."
    )
    interval_s: float = Field(
        default=1.0, gt=0, description="One tick a second, the resolution of the metrics."
    )
    prepare_timeout_s: float = Field(
        # NB: shards poll the table file every 50 ms; 1 s is twenty polls, and waiting longer
        # would hold a hot partition on its overloaded shard for nothing.
        default=1.0,
        gt=0,
        description="Longest wait for new owners to load the prepare table before commit.",
    )
    stale_after_s: float = Field(
        # NB: five missed scrapes; matches the engine's own default so both guards agree.
        default=5.0,
        gt=0,
        description="Older metrics never lead to a table write, whatever the engine says.",
    )
    max_replans: int = Field(
        default=3, ge=0, description="Re-plans after a lost compare-and-swap within one tick."
    )


@dataclass(frozen=True)
class Settled:
    """A hand-over found half-done at the start of a tick, and the table that settled it."""

    outcome: Literal["finished", "rolled_back"]
    found: RoutingTable
    written: RoutingTable


@dataclass
class TickResult:
    """What one tick saw and did, for the live view."""

    observation: Observation
    decision: Decision
    written: tuple[int, ...] = ()
    settled: Settled | None = None
    """The half-done hand-over this tick settled before planning, if any."""


class ControlLoop:
    """One control loop over one fleet; call :meth:`tick` once a second, or :meth:`run`."""

    def __init__(
        self,
        engine: DecisionEngine,
        source: MetricsSource,
        store: RoutingStore,
        actuator: Actuator,
        settings: LoopSettings | None = None,
        *,
        planner: Planner | None = None,
        timeline: Timeline | None = None,
    ) -> None:
        self.engine = engine
        self.source = source
        self.store = store
        self.actuator = actuator
        self.settings = settings or LoopSettings()
        self.planner = planner or default_planner()
        self.timeline = timeline or Timeline()
        self.last: TickResult | None = None
        self._hot_partitions: frozenset[int] = frozenset()

    async def _read(self) -> tuple[RoutingTable, str]:
        # NB: in a thread: a ConfigMap store makes blocking API calls, and the loop shares its
        # event loop with kopf's handlers (or the demo's live view).
        return await asyncio.to_thread(self.store.read)

    async def _replace(self, table: RoutingTable, token: str) -> str:
        return await asyncio.to_thread(self.store.replace, table, token)

    async def tick(self, now: float | None = None) -> TickResult:
        now = time.time() if now is None else now
        table, token = await self._read()
        settled: Settled | None = None
        if table.migrations and self.settings.mitigate:
            table, token, settled = await self._settle(table, token)
        await self.actuator.released(table)
        observation = await self.source.observe(now)
        decision = self._decide(observation, table)
        self._record_decision(now, decision)
        written: list[int] = []
        if decision.table is not None:
            if not self.settings.mitigate:
                self.timeline.add(
                    now, "observe", f"mitigation off, would act: {decision.reason}", decision
                )
            elif observation.age_seconds > self.settings.stale_after_s:
                self.timeline.add(
                    now,
                    "hold",
                    f"metrics are {observation.age_seconds:.1f} s old; holding the table",
                )
            else:
                written += await self._apply(observation, decision, table, token)
        if self.settings.mitigate:
            written += await self._keep_pool(decision.warm_pool_target)
        self.last = TickResult(observation, decision, tuple(written), settled)
        return self.last

    async def run(self, stop: asyncio.Event) -> None:
        """Tick every ``interval_s`` until ``stop`` is set; a failing tick is logged, not fatal."""
        while not stop.is_set():
            started = time.monotonic()
            try:
                await self.tick()
            except Exception as exc:  # NB: one bad tick must not end the loop; it holds instead.
                log.exception("control loop tick failed")
                self.timeline.add(time.time(), "error", f"tick failed: {exc!r}")
            delay = max(0.0, self.settings.interval_s - (time.monotonic() - started))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)

    # -- deciding -------------------------------------------------------------------------

    def _decide(self, observation: Observation, table: RoutingTable) -> Decision:
        pool = PoolState.from_table(table, pending=self.actuator.pending)
        return self.engine.step(observation, table, pool)

    def _record_decision(self, now: float, decision: Decision) -> None:
        # NB: a detection is recorded whenever a partition turns hot, not only when the fleet
        # turns hot: a second hot spot while the first is still hot is news too.
        hot = frozenset(h.partition for h in decision.hot)
        if hot - self._hot_partitions:
            self.timeline.add(now, "detect", decision.reason, decision)
        elif not hot and self._hot_partitions:
            self.timeline.add(now, "calm", decision.reason, decision)
        self._hot_partitions = hot

    async def _settle(
        self, table: RoutingTable, token: str
    ) -> tuple[RoutingTable, str, Settled | None]:
        """Finish (phase commit) or roll back (phase prepare) a hand-over left half-done.

        The new owners of a commit table already serve and the old ones answer "moved", so
        going back would move the traffic twice; the new owners of a prepare table may never
        have loaded it, so the old owners keep the routes. A table mixing both is rolled back.
        Either is one compare-and-swap; if another writer wins, the tick plans on its table.
        """
        from hotshard.routing.migration import rollback

        outcome: Literal["finished", "rolled_back"]
        if all(m.phase is MigrationPhase.COMMIT for m in table.migrations):
            new, outcome = finish_handover(table), "finished"
            kind: EntryKind = "final"
            reason = (
                f"v{new.version}: finished the hand-over of v{table.version}, whose new owners"
                " already served"
            )
        else:
            new, outcome, kind = rollback(table), "rolled_back", "hold"
            reason = f"v{new.version}: rolled back the unfinished hand-over of v{table.version}"
        try:
            token = await self._replace(new, token)
        except StaleTokenError:
            fresh, fresh_token = await self._read()
            return fresh, fresh_token, None
        self.timeline.add(time.time(), kind, reason, version=new.version)
        return new, token, Settled(outcome, table, new)

    # -- acting ---------------------------------------------------------------------------

    async def _apply(
        self,
        observation: Observation,
        decision: Decision,
        table: RoutingTable,
        token: str,
    ) -> list[int]:
        """Hand ``decision.table`` over; on a lost CAS, re-read and re-plan, up to a limit."""
        desired: RoutingTable | None = decision.table
        for attempt in range(self.settings.max_replans + 1):
            if desired is None:
                return []
            written: list[int] = []
            try:
                await self._hand_over(table, token, desired, decision, written)
                return written
            except StaleTokenError:
                self.timeline.add(
                    time.time(),
                    "conflict",
                    f"the routing table changed while writing version {desired.version} "
                    f"(attempt {attempt + 1}); re-reading and re-planning",
                )
                table, token = await self._read()
                decision = self._decide(observation, table)
                desired = decision.table
        self.timeline.add(
            time.time(), "hold", "gave up after repeated conflicts; next tick retries"
        )
        return []

    async def _hand_over(
        self,
        current: RoutingTable,
        token: str,
        desired: RoutingTable,
        decision: Decision,
        written: list[int],
    ) -> None:
        plan = self.planner(current, desired)
        phases: tuple[tuple[EntryKind, RoutingTable | None], ...] = (
            ("prepare", plan.prepare),
            ("commit", plan.commit),
            ("final", plan.final),
        )
        for phase, table in phases:
            if table is None:
                continue
            token = await self._replace(table, token)
            written.append(table.version)
            self.timeline.add(
                time.time(), phase, f"v{table.version}: {decision.reason}", decision, table.version
            )
            if phase == "prepare":
                await self._await_version(new_owners(table), table.version)

    async def _await_version(self, shards: Iterable[str], version: int) -> None:
        """Wait until every shard runs ``version`` or newer, or the prepare timeout passes."""
        names = set(shards)
        deadline = time.monotonic() + self.settings.prepare_timeout_s
        while names:
            versions = await self.actuator.shard_versions(names)
            names = {n for n in names if versions.get(n, 0) < version}
            if not names or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.05)  # one table poll of the shards
        if names:
            log.warning("shards %s did not load version %d in time", sorted(names), version)

    async def _keep_pool(self, warm_target: int) -> list[int]:
        table, token = await self._read()
        proposed = await self.actuator.reconcile_pool(table, warm_target)
        if proposed is None:
            return []
        try:
            await self._replace(proposed, token)
        except StaleTokenError:
            return []  # someone else wrote first; the next tick looks again
        added = sorted({s.name for s in proposed.shards} - {s.name for s in table.shards})
        removed = sorted({s.name for s in table.shards} - {s.name for s in proposed.shards})
        parts = []
        if added:
            parts.append("added warm shard(s) " + ", ".join(added))
        if removed:
            parts.append("released shard(s) " + ", ".join(removed))
        self.timeline.add(
            time.time(),
            "pool",
            f"v{proposed.version}: "
            + "; ".join(parts or ["pool table updated"])
            + f" (warm pool target {warm_target})",
            version=proposed.version,
        )
        return [proposed.version]


def finish_handover(table: RoutingTable) -> RoutingTable:
    """The final table of a hand-over in phase commit: the same routes, no migrations."""
    data = table.model_dump()
    data["version"] = table.version + 1
    data["migrations"] = []
    return RoutingTable.model_validate(data)


def new_owners(table: RoutingTable) -> set[str]:
    """Shards that take something over in ``table``'s migrations."""
    return {name for m in table.migrations for name in m.target if name not in m.source}
