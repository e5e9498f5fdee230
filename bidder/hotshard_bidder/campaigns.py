"""Per-campaign state on one shard: the budget lease, pacing and CPU charged.

A campaign has a budget per second. When its partition is split k ways, every shard serving
it holds a *lease* of ``budget / k`` (k from :meth:`RoutingSnapshot.ways`), so the shards
together never spend more than the budget. Lease changes are the dangerous moment: the shard
that gains a campaign through a table change (a move, a split) starts its lease only at the
next whole second, by which time the previous owner's spend for the current second is final;
a lease that grows (a merge) also waits for the next second; a lease that shrinks applies at
once. Within a second, spend is paced: by a fraction ``f`` of the second, at most
``lease * (f + PACING_SLACK)`` may be spent, so a burst at the top of the second cannot drain it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from hotshard.routing import RoutingSnapshot

PACING_SLACK = 0.1
"""Spend may run 10% of the lease ahead of an even spread, so a quiet start is not punished."""
GAIN_MEMORY_S = 10.0
"""How long a recorded gain is kept; far longer than the one second it matters for."""


@dataclass(slots=True)
class CampaignState:
    """Budget and cost accounting of one campaign on this shard."""

    campaign: str
    partition: int
    version: int = 0
    lease: float = 0.0
    next_lease: float = 0.0
    next_from: int = 0
    second: int = 0
    spent: float = 0.0
    bids: int = 0
    cpu_seconds: float = 0.0

    def roll(self, second: int) -> None:
        """Start accounting for ``second``; adopt a pending lease whose time has come."""
        if second != self.second:
            self.second = second
            self.spent = 0.0
        if self.next_from and second >= self.next_from:
            self.lease = self.next_lease
            self.next_from = 0

    def allowance(self, now: float) -> float:
        """What may still be spent now under the lease and the pacing curve."""
        self.roll(int(now))
        paced = self.lease * min(1.0, (now - self.second) + PACING_SLACK)
        return paced - self.spent


class CampaignBook:
    """All campaign states of one shard, kept consistent with the routing table it serves by.

    Register :meth:`note_swap` with the :class:`SnapshotHolder` so that partitions (and split
    campaigns) this shard newly gains are known, with the whole second their lease starts.
    """

    def __init__(
        self,
        shard: str,
        budget_per_second: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.shard = shard
        self.budget_per_second = budget_per_second
        self.clock = clock
        self.states: dict[str, CampaignState] = {}
        self._gained_partitions: dict[int, int] = {}
        self._gained_campaigns: dict[tuple[int, str], int] = {}

    # -- table changes ----------------------------------------------------------------------

    def note_swap(self, old: RoutingSnapshot, new: RoutingSnapshot) -> None:
        """Record what this shard gains from ``old`` to ``new``: its lease starts next second."""
        start = math.floor(self.clock()) + 1
        me = self.shard
        for p in range(new.partitions):
            if me in new.shards_for(p) and me not in old.shards_for(p):
                self._gained_partitions[p] = start
        for p, campaign in set(new.campaign_splits) | set(old.campaign_splits):
            if me in new.shards_for(p, campaign) and me not in old.shards_for(p, campaign):
                self._gained_campaigns[(p, campaign)] = start
        self._forget_old_gains(start)

    def _forget_old_gains(self, start: int) -> None:
        horizon = start - GAIN_MEMORY_S
        self._gained_partitions = {
            p: at for p, at in self._gained_partitions.items() if at >= horizon
        }
        self._gained_campaigns = {
            k: at for k, at in self._gained_campaigns.items() if at >= horizon
        }

    def gained_at(self, partition: int, campaign: str) -> int:
        """The whole second from which this shard may spend for ``campaign`` (0: always)."""
        return max(
            self._gained_partitions.get(partition, 0),
            self._gained_campaigns.get((partition, campaign), 0),
        )

    # -- the request path -------------------------------------------------------------------

    def state(self, campaign: str, partition: int, snapshot: RoutingSnapshot) -> CampaignState:
        """The campaign's state, with its lease brought up to ``snapshot``'s version."""
        state = self.states.get(campaign)
        if state is None:
            state = self.states[campaign] = CampaignState(campaign, partition)
        if state.version != snapshot.version:
            self._update_lease(state, snapshot)
        return state

    def _update_lease(self, state: CampaignState, snapshot: RoutingSnapshot) -> None:
        now = self.clock()
        target = self.budget_per_second / snapshot.ways(state.partition, state.campaign)
        gained = self.gained_at(state.partition, state.campaign)
        fresh = state.version == 0
        state.version = snapshot.version
        if gained > now:
            # Newly gained: nothing this second, the full lease from the gain's second on.
            state.lease, state.next_lease, state.next_from = 0.0, target, gained
        elif fresh or target <= state.lease:
            state.lease, state.next_lease, state.next_from = target, target, 0
        else:
            # A growing lease (a merge) waits for the other shards' spend to become final.
            state.next_lease, state.next_from = target, math.floor(now) + 1

    def try_spend(self, state: CampaignState, amount: float) -> bool:
        """Spend ``amount`` if the lease and pacing allow it."""
        if amount > state.allowance(self.clock()):
            return False
        state.spent += amount
        state.bids += 1
        return True

    def charge_cpu(self, state: CampaignState, seconds: float) -> None:
        state.cpu_seconds += seconds
