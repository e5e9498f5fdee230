"""The two-phase hand-over between two routing tables, as pure functions.

The engine says where traffic should go (a desired table); this module says how to get there
without losing a request. :func:`plan_handover` turns a current and a desired table into three
tables to publish in order, each one version higher than the last:

1. ``prepare``: the current routing, plus a :class:`Migration` in phase ``prepare`` for every
   route that changes. The old owners keep serving; the new owners warm up and take their
   budget leases.
2. ``commit``: the desired routing, with the same migrations in phase ``commit``. The new owners
   serve; an old owner answers "moved" and finishes what it has in flight.
3. ``final``: the desired routing with no migrations: the hand-over is over.

Both intermediate tables carry the union of old and new shards, so no route ever names a shard
that is not in its table. :func:`rollback` undoes a hand-over from either phase.
"""

from __future__ import annotations

from dataclasses import dataclass

from hotshard.routing.table import (
    Migration,
    MigrationPhase,
    RoutingError,
    RoutingSnapshot,
    RoutingTable,
    Shard,
    Split,
    ranges_from_owners,
)

Route = tuple[int, str | None, tuple[str, ...], tuple[str, ...]]
"""A changed route: partition, campaign (``None`` for the whole partition), source, target."""


@dataclass(frozen=True, slots=True)
class Handover:
    """The three tables of a two-phase hand-over, to publish in this order."""

    prepare: RoutingTable
    commit: RoutingTable
    final: RoutingTable

    @property
    def migrations(self) -> tuple[Migration, ...]:
        return self.prepare.migrations


def changed_routes(current: RoutingTable, desired: RoutingTable) -> list[Route]:
    """Every (partition, campaign) whose shards differ between the tables, partitions first."""
    if current.partitions != desired.partitions:
        raise RoutingError(
            f"cannot hand over between {current.partitions} and {desired.partitions} partitions"
        )
    old, new = RoutingSnapshot(current), RoutingSnapshot(desired)
    routes: list[Route] = []
    for p in range(current.partitions):
        a, b = old.shards_for(p), new.shards_for(p)
        if a != b:
            routes.append((p, None, a, b))
    pinned = sorted(set(old.campaign_splits) | set(new.campaign_splits))
    for p, campaign in pinned:
        a, b = old.shards_for(p, campaign), new.shards_for(p, campaign)
        if a != b:
            routes.append((p, campaign, a, b))
    return routes


def plan_handover(current: RoutingTable, desired: RoutingTable) -> Handover:
    """The prepare, commit and final tables that take ``current`` to ``desired``.

    ``desired``'s own version is ignored: the three tables take ``current.version + 1, + 2, + 3``.
    """
    if current.migrations:
        raise RoutingError(
            f"table v{current.version} already has a hand-over in progress; "
            "finish or roll it back first"
        )
    routes = changed_routes(current, desired)
    shards = _union(current.shards, desired.shards)

    def migrations(phase: MigrationPhase) -> tuple[Migration, ...]:
        return tuple(
            Migration(partition=p, campaign=c, source=a, target=b, phase=phase)
            for p, c, a, b in routes
        )

    v = current.version
    prepare = RoutingTable(
        version=v + 1,
        partitions=current.partitions,
        shards=shards,
        ranges=current.ranges,
        splits=current.splits,
        migrations=migrations(MigrationPhase.PREPARE),
    )
    commit = RoutingTable(
        version=v + 2,
        partitions=current.partitions,
        shards=shards,
        ranges=desired.ranges,
        splits=desired.splits,
        migrations=migrations(MigrationPhase.COMMIT),
    )
    final = RoutingTable(
        version=v + 3,
        partitions=current.partitions,
        shards=desired.shards,
        ranges=desired.ranges,
        splits=desired.splits,
    )
    return Handover(prepare, commit, final)


def rollback(table: RoutingTable) -> RoutingTable:
    """Undo the hand-over in ``table``: every migrating route goes back to its source.

    In phase ``prepare`` the sources still serve, so the migrations are simply dropped; in phase
    ``commit`` the source routes are restored. The result is one version higher.
    """
    if not table.migrations:
        raise RoutingError(f"table v{table.version} has no hand-over to roll back")
    owners = table.owners()
    splits = {(s.partition, s.campaign): s.shards for s in table.splits}
    committed = [m for m in table.migrations if m.phase is MigrationPhase.COMMIT]
    # Whole partitions first: a campaign's route is judged against its partition's route.
    for m in sorted(
        committed, key=lambda m: (m.campaign is not None, m.partition, m.campaign or "")
    ):
        _set_route(owners, splits, m.partition, m.campaign, m.source)
    ordered = sorted(splits.items(), key=lambda kv: (kv[0][0], kv[0][1] or ""))
    return RoutingTable(
        version=table.version + 1,
        partitions=table.partitions,
        shards=table.shards,
        ranges=tuple(ranges_from_owners(owners)),
        splits=tuple(Split(partition=p, campaign=c, shards=s) for (p, c), s in ordered),
    )


def _set_route(
    owners: list[str],
    splits: dict[tuple[int, str | None], tuple[str, ...]],
    partition: int,
    campaign: str | None,
    shards: tuple[str, ...],
) -> None:
    """Route ``partition`` (or one campaign in it) to ``shards`` in an owners/splits pair."""
    if campaign is None:
        if len(shards) == 1:
            owners[partition] = shards[0]
            splits.pop((partition, None), None)
        else:
            splits[(partition, None)] = shards
        return
    follows = splits.get((partition, None), (owners[partition],))
    if shards == follows:
        splits.pop((partition, campaign), None)
    else:
        splits[(partition, campaign)] = shards


def _union(first: tuple[Shard, ...], second: tuple[Shard, ...]) -> tuple[Shard, ...]:
    known = {s.name for s in first}
    return first + tuple(s for s in second if s.name not in known)
