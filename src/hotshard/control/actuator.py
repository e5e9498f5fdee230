"""What the control loop can do to the fleet, as a protocol: local processes or Kubernetes pods.

The loop decides with the engine and writes routing tables itself (through a
:class:`~hotshard.routing.store.RoutingStore`); everything else that touches capacity goes
through an :class:`Actuator`: claiming and refilling warm shards, releasing shards that carry
nothing, and asking shards which table version they run (the loop waits for the new owners to
load the *prepare* table before it commits). Local mode implements it with bidder processes
(:mod:`hotshard.local.fleet`); the operator will implement it with StatefulSet replicas.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from hotshard.routing import RoutingTable


@dataclass(frozen=True)
class PoolChange:
    """What an actuator did to the pool in one call, for the timeline."""

    started: tuple[str, ...] = ()
    stopped: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.started or self.stopped)


class Actuator(Protocol):
    """Capacity and shard-facing operations of the control loop."""

    @property
    def pending(self) -> int:
        """Shards asked for and not ready yet."""
        ...

    async def shard_versions(self, shards: Iterable[str]) -> Mapping[str, int]:
        """The routing-table version each named shard runs now (missing: did not answer)."""
        ...

    async def reconcile_pool(self, table: RoutingTable, warm_target: int) -> RoutingTable | None:
        """Keep ``warm_target`` idle overflow shards and stop shards nothing routes to.

        Returns the table to write next when shards must be added to or removed from the
        table's shard list (the loop writes it by compare-and-swap), else ``None``.
        """
        ...

    async def released(self, table: RoutingTable) -> PoolChange:
        """Stop processes of shards that ``table`` (now written) no longer lists."""
        ...
