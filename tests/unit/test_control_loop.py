"""The control loop against fakes: two-phase writes, re-planning on conflict, stale data held."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path

from hotshard.control.actuator import PoolChange
from hotshard.control.loop import ControlLoop, LoopSettings
from hotshard.engine.model import CostSummary, Decision, Observation, PoolState
from hotshard.routing import MigrationPhase, RoutingTable, Shard
from hotshard.routing.store import FileRoutingStore

SHARDS = [
    Shard(name="base-0", tier="base", url="http://127.0.0.1:1"),
    Shard(name="base-1", tier="base", url="http://127.0.0.1:2"),
    Shard(name="overflow-0", tier="overflow", url="http://127.0.0.1:3"),
]
COST = CostSummary(0, 0.0, 0, 0.0, 0, 0.0, 0.0)


def moved(table: RoutingTable, partition: int, shard: str) -> RoutingTable:
    owners = table.owners()
    owners[partition] = shard
    return table.with_owners(owners, version=table.version + 1)


class FakeEngine:
    """Moves partition 0 to overflow-0 whenever it is not there yet; counts its calls."""

    def __init__(self) -> None:
        self.tables: list[RoutingTable] = []

    def step(self, observation: Observation, table: RoutingTable, pool: PoolState) -> Decision:
        self.tables.append(table)
        desired = None if table.owners()[0] == "overflow-0" else moved(table, 0, "overflow-0")
        return Decision(desired, (), (), {}, "move partition 0", COST, 0)


class FakeSource:
    def __init__(self, age: float = 0.5) -> None:
        self.age = age

    async def observe(self, now: float) -> Observation:
        return Observation(time=now, partitions={}, shards={}, age_seconds=self.age)

    async def aclose(self) -> None:
        return None


class FakeActuator:
    """Shards report whatever version the store holds; the pool never changes."""

    def __init__(self, store: FileRoutingStore) -> None:
        self.store = store
        self.asked: list[set[str]] = []

    @property
    def pending(self) -> int:
        return 0

    async def shard_versions(self, shards: Iterable[str]) -> Mapping[str, int]:
        names = set(shards)
        self.asked.append(names)
        version = self.store.read()[0].version
        return {n: version for n in names}

    async def reconcile_pool(self, table: RoutingTable, warm_target: int) -> RoutingTable | None:
        return None

    async def released(self, table: RoutingTable) -> PoolChange:
        return PoolChange()


class RacingStore(FileRoutingStore):
    """Another writer sneaks in a table change right before our first replace."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.raced = False
        self.written: list[RoutingTable] = []

    def replace(self, table: RoutingTable, token: str) -> str:
        if not self.raced:
            self.raced = True
            current, fresh = self.read()
            super().replace(moved(current, 5, "base-0"), fresh)
        result = super().replace(table, token)
        self.written.append(table)
        return result


def make_store(path: Path, cls: type[FileRoutingStore] = FileRoutingStore) -> FileRoutingStore:
    store = cls(path / "routing.json")
    store.initialize(RoutingTable.even(SHARDS, partitions=16))
    return store


async def test_a_new_table_is_written_prepare_commit_final(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    actuator = FakeActuator(store)
    loop = ControlLoop(FakeEngine(), FakeSource(), store, actuator)
    result = await loop.tick(1000.0)
    assert result.written == (2, 3, 4)
    table, _ = store.read()
    assert table.version == 4
    assert table.owners()[0] == "overflow-0"
    assert not table.migrations
    assert [e.kind for e in loop.timeline] == ["prepare", "commit", "final"]
    # Before committing, the loop asked the new owner which version it runs.
    assert actuator.asked[0] == {"overflow-0"}


async def test_prepare_table_marks_the_migration(tmp_path: Path) -> None:
    store = make_store(tmp_path, RacingStore)
    assert isinstance(store, RacingStore)
    store.raced = True  # no race in this test
    loop = ControlLoop(FakeEngine(), FakeSource(), store, FakeActuator(store))
    await loop.tick(1000.0)
    prepare = store.written[0]
    (migration,) = prepare.migrations
    assert migration.phase is MigrationPhase.PREPARE
    assert (migration.partition, migration.source, migration.target) == (
        0,
        ("base-0",),
        ("overflow-0",),
    )
    assert prepare.owners()[0] == "base-0"  # the old owner still serves during prepare


async def test_a_lost_compare_and_swap_is_replanned_not_overwritten(tmp_path: Path) -> None:
    store = make_store(tmp_path, RacingStore)
    engine = FakeEngine()
    loop = ControlLoop(engine, FakeSource(), store, FakeActuator(store))
    await loop.tick(1000.0)
    kinds = [e.kind for e in loop.timeline]
    assert kinds[0] == "conflict"
    # The engine was asked again, against the table the other writer left.
    assert [t.version for t in engine.tables] == [1, 2]
    final, _ = store.read()
    # Both changes survive: ours (partition 0) and the other writer's (partition 5).
    assert final.owners()[0] == "overflow-0"
    assert final.owners()[5] == "base-0"
    assert final.version == 5


async def test_stale_metrics_never_lead_to_a_write(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    loop = ControlLoop(FakeEngine(), FakeSource(age=math.inf), store, FakeActuator(store))
    result = await loop.tick(1000.0)
    assert result.written == ()
    assert store.read()[0].version == 1
    assert loop.timeline.last() is not None
    assert "holding the table" in loop.timeline.entries[-1].reason


async def test_observing_only_records_but_never_writes(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    loop = ControlLoop(
        FakeEngine(), FakeSource(), store, FakeActuator(store), LoopSettings(mitigate=False)
    )
    await loop.tick(1000.0)
    await loop.tick(1001.0)
    assert store.read()[0].version == 1
    assert [e.kind for e in loop.timeline] == ["observe", "observe"]


class StillEngine(FakeEngine):
    """Wants no change, so a tick's only write is the settling one."""

    def step(self, observation: Observation, table: RoutingTable, pool: PoolState) -> Decision:
        self.tables.append(table)
        return Decision(None, (), (), {}, "calm", COST, 0)


def leave_half_done(store: FileRoutingStore, phase: MigrationPhase) -> RoutingTable:
    """Write partition 12's move to overflow-0 up to ``phase``, as a crashed writer would."""
    from hotshard.routing.migration import plan_handover

    current, token = store.read()
    plan = plan_handover(current, moved(current, 12, "overflow-0"))
    assert plan.prepare is not None
    assert plan.commit is not None
    token = store.replace(plan.prepare, token)
    if phase is MigrationPhase.COMMIT:
        store.replace(plan.commit, token)
    return current


async def test_a_half_done_handover_in_phase_prepare_is_rolled_back(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    before = leave_half_done(store, MigrationPhase.PREPARE)
    engine = StillEngine()
    loop = ControlLoop(engine, FakeSource(), store, FakeActuator(store))
    tick = await loop.tick(1000.0)
    table, _ = store.read()
    assert table.version == 3  # v2 prepare, v3 the rollback
    assert not table.migrations
    assert table.owners()[12] == before.owners()[12] == "base-1"  # the old owner serves
    assert not engine.tables[0].migrations  # the engine plans on the settled table
    assert tick.settled is not None
    assert (tick.settled.outcome, tick.settled.found.version) == ("rolled_back", 2)
    (entry,) = loop.timeline.entries
    assert (entry.kind, entry.version) == ("hold", 3)
    assert entry.reason == "v3: rolled back the unfinished hand-over of v2"


async def test_a_half_done_handover_in_phase_commit_is_finished(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    leave_half_done(store, MigrationPhase.COMMIT)
    engine = StillEngine()
    loop = ControlLoop(engine, FakeSource(), store, FakeActuator(store))
    tick = await loop.tick(1000.0)
    table, _ = store.read()
    assert table.version == 4  # v2 prepare, v3 commit, v4 finished
    assert not table.migrations
    assert table.owners()[12] == "overflow-0"  # the new owner keeps what it already served
    assert engine.tables[0] == table
    assert tick.settled is not None
    assert (tick.settled.outcome, tick.settled.found.version) == ("finished", 3)
    (entry,) = loop.timeline.entries
    assert (entry.kind, entry.version) == ("final", 4)
    assert entry.reason == "v4: finished the hand-over of v3, whose new owners already served"


async def test_a_half_done_handover_is_rolled_back_before_planning(tmp_path: Path) -> None:
    from hotshard.routing.migration import plan_handover

    store = make_store(tmp_path)
    current, token = store.read()
    store.replace(plan_handover(current, moved(current, 12, "base-0")).prepare, token)
    engine = FakeEngine()
    loop = ControlLoop(engine, FakeSource(), store, FakeActuator(store))
    await loop.tick(1000.0)
    assert not engine.tables[0].migrations
    assert loop.timeline.entries[0].reason.startswith("v3: rolled back")
