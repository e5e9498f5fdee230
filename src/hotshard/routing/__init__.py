"""The routing contract shared by the router, the bidders and the control plane."""

from hotshard.routing.hashing import DEFAULT_PARTITIONS, partition_of, split_slot, stable_hash
from hotshard.routing.table import (
    Migration,
    MigrationPhase,
    PartitionRange,
    RoutingError,
    RoutingSnapshot,
    RoutingTable,
    Shard,
    Split,
    check_successor,
    check_table,
)

__all__ = [
    "DEFAULT_PARTITIONS",
    "Migration",
    "MigrationPhase",
    "PartitionRange",
    "RoutingError",
    "RoutingSnapshot",
    "RoutingTable",
    "Shard",
    "Split",
    "check_successor",
    "check_table",
    "partition_of",
    "split_slot",
    "stable_hash",
]
