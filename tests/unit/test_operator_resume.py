"""Crash safety: an operator restarted mid-migration settles it from the ConfigMap alone, and a
failing API call degrades a tick instead of ending the daemon. Fakes from the loop-step tests.
"""

from __future__ import annotations

from typing import Any

from test_operator_configmap_store import FakeApiError
from test_operator_loopstep import HOT, REF, SPEC, Rig

from hotshard.routing import MigrationPhase, RoutingTable
from hotshard.routing.migration import plan_handover
from hotshard_operator.loopstep import LoopStep
from hotshard_operator.reconcile import ensure_fleet
from hotshard_operator.status import PartitionMapStatus, find_condition


async def _restart_with(rig: Rig, phase: MigrationPhase) -> tuple[RoutingTable, LoopStep]:
    """Leave a split half-done in the ConfigMap, as a crashed operator would; restart."""
    await ensure_fleet(REF, SPEC, PartitionMapStatus(), rig.cluster, rig.store)
    await rig.tick(rig.step(), 1)
    table, token = rig.store.read()
    owners = table.owners()
    owners[HOT] = "fleet-overflow-0"
    handover = plan_handover(table, table.with_owners(owners))
    token = rig.store.replace(handover.prepare, token)
    if phase is MigrationPhase.COMMIT:
        rig.store.replace(handover.commit, token)
    rig.status = await ensure_fleet(REF, SPEC, PartitionMapStatus(), rig.cluster, rig.store)
    return table, rig.step()


async def test_a_restart_in_phase_prepare_rolls_back() -> None:
    rig = Rig()
    before, step = await _restart_with(rig, MigrationPhase.PREPARE)
    progressing = find_condition(rig.status.conditions, "Progressing")
    assert progressing is not None
    assert progressing.reason == "MigrationInFlight"
    status = await rig.tick(step, 1)
    table, _ = rig.store.read()
    assert not table.migrations
    assert table.owners() == before.owners()  # the old owner serves again
    assert table.version == before.version + 2  # prepare, then the rollback
    assert rig.cluster.events[0][:2] == ("Warning", "SplitRolledBack")
    assert status.last_decision is not None
    assert status.last_decision.action == "hold"


async def test_a_restart_in_phase_commit_finishes_the_split() -> None:
    rig = Rig()
    before, step = await _restart_with(rig, MigrationPhase.COMMIT)
    status = await rig.tick(step, 1)
    table, _ = rig.store.read()
    assert not table.migrations
    assert table.owners()[HOT] == "fleet-overflow-0"  # the new owner keeps it
    assert table.version == before.version + 3  # prepare, commit, then the finish
    assert rig.cluster.events[0][:2] == ("Normal", "SplitCommitted")
    assert "finished the hand-over left in phase commit" in rig.cluster.events[0][2]
    progressing = find_condition(status.conditions, "Progressing")
    assert progressing is not None
    # The finished split used a warm shard; a new one is starting to refill the pool.
    assert (progressing.reason, progressing.message) == (
        "WarmingShards",
        "1 shard(s) starting",
    )
    assert rig.cluster.scaled[-1] == ("overflow", 3)


async def test_an_api_error_in_a_tick_degrades_instead_of_ending_the_daemon() -> None:
    rig = Rig()
    step = await rig.start()

    def broken(name: str, namespace: str) -> Any:
        raise FakeApiError(500)

    rig.api.read_namespaced_config_map = broken  # type: ignore[method-assign]
    status = await rig.tick(step, 1)
    degraded = find_condition(status.conditions, "Degraded")
    assert degraded is not None
    assert (degraded.status, degraded.reason) == ("True", "TickFailed")
    assert "HTTP 500" in degraded.message
