"""The routing table: who serves which virtual partition, split or migration, at which version.

This is the contract that routers, bidders and the control plane (local mode or the operator)
share. A campaign key hashes onto one of ``partitions`` virtual partitions; ``ranges`` give
each virtual partition one owning shard; ``splits`` spread one hot partition, or one hot
campaign inside it, over several shards by a secondary hash of the user or request id; and
``migrations`` say which of those assignments is being handed over, and in which phase.

A table is immutable and validated as a whole. :class:`RoutingSnapshot` compiles it into flat
lookups for the request path, so routing a request costs a hash and two dictionary look-ups.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hotshard.routing.hashing import DEFAULT_PARTITIONS, partition_of, split_slot

Tier = Literal["base", "overflow", "sandbox"]
SHARD_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class RoutingError(ValueError):
    """A routing table is invalid: the message names the rule it breaks."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Shard(_Frozen):
    """One bidder shard that the table may route to."""

    name: str = Field(pattern=SHARD_NAME, max_length=63, description="Unique shard name.")
    tier: Tier = Field(default="base", description="Capacity tier: base, overflow or sandbox.")
    url: str = Field(description="Base URL the router forwards to, e.g. http://127.0.0.1:9101.")


class PartitionRange(_Frozen):
    """Virtual partitions ``first..last`` (inclusive) are owned by ``shard``."""

    first: int = Field(ge=0)
    last: int = Field(ge=0)
    shard: str


class Split(_Frozen):
    """A partition (``campaign`` unset) or one campaign in it, spread over ``shards``.

    A request picks its shard by a secondary hash of its user id (or request id) modulo the
    number of shards. A campaign split over a single shard pins that campaign elsewhere, which
    is how a campaign is quarantined to the sandbox tier.
    """

    partition: int = Field(ge=0)
    campaign: str | None = Field(default=None, min_length=1)
    shards: tuple[str, ...] = Field(min_length=1)


class MigrationPhase(StrEnum):
    """Phases of a two-phase hand-over."""

    PREPARE = "prepare"
    """The source still serves; the targets warm up and take their budget leases."""
    COMMIT = "commit"
    """The targets serve; the source answers "moved" (421) and finishes what is in flight."""


class Migration(_Frozen):
    """A hand-over of a partition (or one campaign in it) from ``source`` to ``target`` shards."""

    partition: int = Field(ge=0)
    campaign: str | None = Field(default=None, min_length=1)
    source: tuple[str, ...] = Field(min_length=1)
    target: tuple[str, ...] = Field(min_length=1)
    phase: MigrationPhase


class RoutingTable(_Frozen):
    """A complete, versioned routing table. Its JSON schema is ``schemas/routing-table.json``."""

    version: int = Field(ge=1, description="Monotonically increasing; never goes back.")
    partitions: int = Field(default=DEFAULT_PARTITIONS, ge=1, le=1 << 20)
    shards: tuple[Shard, ...] = Field(min_length=1)
    ranges: tuple[PartitionRange, ...] = Field(min_length=1)
    splits: tuple[Split, ...] = ()
    migrations: tuple[Migration, ...] = ()

    @model_validator(mode="after")
    def _check(self) -> Self:
        check_table(self)
        return self

    # -- building -------------------------------------------------------------------------

    @classmethod
    def even(
        cls, shards: Sequence[Shard], *, partitions: int = DEFAULT_PARTITIONS, version: int = 1
    ) -> RoutingTable:
        """Spread ``partitions`` evenly over the base-tier ``shards`` in contiguous ranges."""
        base = [s for s in shards if s.tier == "base"] or list(shards)
        ranges = []
        for i, shard in enumerate(base):
            first = i * partitions // len(base)
            last = (i + 1) * partitions // len(base) - 1
            if last >= first:
                ranges.append(PartitionRange(first=first, last=last, shard=shard.name))
        return cls(
            version=version, partitions=partitions, shards=tuple(shards), ranges=tuple(ranges)
        )

    def owners(self) -> list[str]:
        """The owning shard of every virtual partition, indexed by partition."""
        owners = [""] * self.partitions
        for r in self.ranges:
            owners[r.first : r.last + 1] = [r.shard] * (r.last - r.first + 1)
        return owners

    def with_owners(self, owners: Sequence[str], **changes: object) -> RoutingTable:
        """A copy with ``ranges`` rebuilt from a per-partition owner list, plus ``changes``."""
        data = self.model_dump()
        data["ranges"] = [r.model_dump() for r in ranges_from_owners(owners)]
        data.update(changes)
        return RoutingTable.model_validate(data)

    def shard(self, name: str) -> Shard:
        for s in self.shards:
            if s.name == name:
                return s
        raise KeyError(name)

    # -- files ----------------------------------------------------------------------------

    def to_json(self) -> str:
        return self.model_dump_json(indent=None, exclude_defaults=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> RoutingTable:
        return cls.model_validate_json(text)


def ranges_from_owners(owners: Sequence[str]) -> list[PartitionRange]:
    """Compress a per-partition owner list into contiguous ranges."""
    ranges: list[PartitionRange] = []
    start = 0
    for i in range(1, len(owners) + 1):
        if i == len(owners) or owners[i] != owners[start]:
            ranges.append(PartitionRange(first=start, last=i - 1, shard=owners[start]))
            start = i
    return ranges


def check_table(table: RoutingTable) -> None:
    """Raise :class:`RoutingError` naming the first rule that ``table`` breaks."""
    names = [s.name for s in table.shards]
    known = set(names)
    if len(known) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise RoutingError(f"shard names must be unique; repeated: {', '.join(dupes)}")

    def need_known(where: str, shards: Iterable[str]) -> None:
        unknown = [s for s in shards if s not in known]
        if unknown:
            raise RoutingError(f"{where} names unknown shard(s): {', '.join(unknown)}")

    def need_partition(where: str, partition: int) -> None:
        if partition >= table.partitions:
            raise RoutingError(
                f"{where} names partition {partition}, outside 0..{table.partitions - 1}"
            )

    expected = 0
    for r in sorted(table.ranges, key=lambda r: r.first):
        if r.last < r.first:
            raise RoutingError(f"range {r.first}..{r.last} ends before it starts")
        if r.first > expected:
            raise RoutingError(f"partitions {expected}..{r.first - 1} are unowned")
        if r.first < expected:
            raise RoutingError(f"partition {r.first} is owned by more than one range")
        need_known(f"range {r.first}..{r.last}", [r.shard])
        expected = r.last + 1
    if expected < table.partitions:
        raise RoutingError(f"partitions {expected}..{table.partitions - 1} are unowned")
    if expected > table.partitions:
        raise RoutingError(f"ranges reach partition {expected - 1}, beyond {table.partitions - 1}")

    seen: set[tuple[int, str | None]] = set()
    for s in table.splits:
        where = f"split of partition {s.partition}" + (
            f" campaign {s.campaign!r}" if s.campaign else ""
        )
        need_partition(where, s.partition)
        need_known(where, s.shards)
        if (s.partition, s.campaign) in seen:
            raise RoutingError(f"{where} appears twice")
        seen.add((s.partition, s.campaign))
        if len(set(s.shards)) != len(s.shards):
            raise RoutingError(f"{where} repeats a shard")
        if s.campaign is None and len(s.shards) < 2:
            raise RoutingError(f"{where} needs at least two shards; move the range instead")
        if s.campaign is not None and partition_of(s.campaign, table.partitions) != s.partition:
            raise RoutingError(
                f"{where}: campaign {s.campaign!r} hashes to partition "
                f"{partition_of(s.campaign, table.partitions)}, not {s.partition}"
            )

    snapshot = RoutingSnapshot.__new__(RoutingSnapshot)
    snapshot._compile(table)
    moving: set[tuple[int, str | None]] = set()
    for m in table.migrations:
        where = f"migration of partition {m.partition}" + (
            f" campaign {m.campaign!r}" if m.campaign else ""
        )
        need_partition(where, m.partition)
        need_known(where, (*m.source, *m.target))
        if (m.partition, m.campaign) in moving:
            raise RoutingError(f"{where} appears twice")
        moving.add((m.partition, m.campaign))
        if m.source == m.target:
            raise RoutingError(f"{where} has the same source and target")
        routed = snapshot.shards_for(m.partition, m.campaign)
        expect = m.source if m.phase is MigrationPhase.PREPARE else m.target
        if routed != expect:
            raise RoutingError(
                f"{where} in phase {m.phase.value} must route to {list(expect)}, "
                f"but the table routes it to {list(routed)}"
            )


def check_successor(current: RoutingTable, proposed: RoutingTable) -> None:
    """Raise :class:`RoutingError` unless ``proposed`` may replace ``current``."""
    if proposed.version <= current.version:
        raise RoutingError(
            f"version must increase: proposed {proposed.version}, current {current.version}"
        )
    if proposed.partitions != current.partitions:
        raise RoutingError(
            f"the number of virtual partitions is fixed at {current.partitions}; "
            f"proposed {proposed.partitions}"
        )


@dataclass(slots=True)
class RoutingSnapshot:
    """A table compiled for the request path. Build once per table version, share freely."""

    table: RoutingTable
    version: int
    partitions: int
    owners: list[str]
    urls: dict[str, str]
    tiers: dict[str, str]
    partition_splits: dict[int, tuple[str, ...]]
    campaign_splits: dict[tuple[int, str], tuple[str, ...]]
    migrations: dict[tuple[int, str | None], Migration]

    def __init__(self, table: RoutingTable) -> None:
        self._compile(table)

    def _compile(self, table: RoutingTable) -> None:
        self.table = table
        self.version = table.version
        self.partitions = table.partitions
        self.owners = table.owners()
        self.urls = {s.name: s.url for s in table.shards}
        self.tiers = {s.name: s.tier for s in table.shards}
        self.partition_splits = {s.partition: s.shards for s in table.splits if s.campaign is None}
        self.campaign_splits = {
            (s.partition, s.campaign): s.shards for s in table.splits if s.campaign is not None
        }
        self.migrations = {(m.partition, m.campaign): m for m in table.migrations}

    def partition(self, campaign: str) -> int:
        return partition_of(campaign, self.partitions)

    def shards_for(self, partition: int, campaign: str | None = None) -> tuple[str, ...]:
        """The shard(s) serving ``campaign`` (or the partition as a whole when ``None``)."""
        if campaign is not None:
            pinned = self.campaign_splits.get((partition, campaign))
            if pinned is not None:
                return pinned
        spread = self.partition_splits.get(partition)
        if spread is not None:
            return spread
        return (self.owners[partition],)

    def route(self, partition: int, campaign: str, secondary: str) -> str:
        """The one shard that serves this request."""
        shards = self.shards_for(partition, campaign)
        if len(shards) == 1:
            return shards[0]
        return shards[split_slot(secondary, len(shards))]

    def ways(self, partition: int, campaign: str) -> int:
        """How many shards share this campaign's traffic, and so its budget."""
        return len(self.shards_for(partition, campaign))


def write_schema(path: Path) -> None:
    """Write the table's JSON schema, which the repository publishes in ``schemas/``."""
    schema = RoutingTable.model_json_schema()
    path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
