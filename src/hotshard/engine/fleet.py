"""A modelled fleet: what each shard would carry, given partition loads and a routing table.

Tests, benchmarks and the simulation need shard totals consistent with the table the engine just
produced, without running bidders. :func:`model_shard_loads` routes every partition's load to
its owner, spreads a split partition evenly over its shards, and takes a pinned or split
campaign's load off its partition's shards and onto its own. It is the engine's own arithmetic
run forwards, so a plan can be checked against the loads it would create.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from hotshard.engine.model import CampaignLoad, Observation, PartitionLoad, ShardLoad
from hotshard.routing import RoutingSnapshot, RoutingTable


def model_shard_loads(
    table: RoutingTable,
    partitions: Mapping[int, PartitionLoad],
    campaigns: Sequence[CampaignLoad] = (),
    *,
    latency: float = 0.01,
) -> dict[str, ShardLoad]:
    """Per shard in ``table``: summed rate, CPU, memory and queue; ``latency`` for every shard."""
    snapshot = RoutingSnapshot(table)
    names = [s.name for s in table.shards]
    index = {n: i for i, n in enumerate(names)}
    sums = np.zeros((4, len(names)))
    if partitions:
        ids = np.fromiter(partitions.keys(), dtype=np.intp, count=len(partitions))
        loads = np.array([(x.rate, x.cpu, x.memory, x.queue) for x in partitions.values()]).reshape(
            len(partitions), 4
        )
        owner_of = np.array([index[o] for o in snapshot.owners], dtype=np.intp)
        for row in range(4):
            sums[row] = np.bincount(owner_of[ids], weights=loads[:, row], minlength=len(names))
        for p, shards in snapshot.partition_splits.items():
            load = partitions.get(p)
            if load is not None:
                _move(sums, index, (snapshot.owners[p],), shards, (load.rate, load.cpu))
    for c in campaigns:
        pinned = snapshot.campaign_splits.get((c.partition, c.campaign))
        if pinned is not None:
            _move(sums, index, snapshot.shards_for(c.partition), pinned, (c.rate, c.cpu))
    np.maximum(sums, 0.0, out=sums)
    return {
        n: ShardLoad(
            rate=float(sums[0, i]),
            cpu=float(sums[1, i]),
            memory=float(sums[2, i]),
            latency=latency,
            queue=float(sums[3, i]),
        )
        for i, n in enumerate(names)
    }


def _move(
    sums: np.ndarray,
    index: Mapping[str, int],
    source: tuple[str, ...],
    target: tuple[str, ...],
    load: tuple[float, float],
) -> None:
    for group, sign in ((source, -1.0), (target, 1.0)):
        for name in group:
            sums[0, index[name]] += sign * load[0] / len(group)
            sums[1, index[name]] += sign * load[1] / len(group)


def model_observation(
    time: float,
    table: RoutingTable,
    partitions: Mapping[int, PartitionLoad],
    campaigns: Sequence[CampaignLoad] = (),
    *,
    age_seconds: float = 0.0,
) -> Observation:
    """An observation whose shard totals follow ``table``, as a real fleet's would."""
    shards = model_shard_loads(table, partitions, campaigns)
    return Observation(time, partitions, shards, tuple(campaigns), age_seconds)
