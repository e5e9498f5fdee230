"""Per-campaign state on one shard: the budget lease and its pacing.

A campaign has a budget per second. When its partition is split k ways, every shard serving
it holds a *lease* of ``budget / k`` (k from :meth:`RoutingSnapshot.ways`), so the shards
together never spend more than the budget. Lease changes are the dangerous moment, because
shards adopt a new table at slightly different times. So a change never raises a shard's
share at once: at each table swap the shard records, for every partition (and split campaign)
whose share changed, a *cap* of ``min(old share, new share)`` that holds until the whole second
after a hand-over grace. A shard that newly gains a campaign thus starts its lease at that next
whole second (its old share was 0), a merge waits the same way, and a shrink applies at once.
Within a second, spend is paced: by a fraction ``f`` of the second, at most
``lease * (f + PACING_SLACK)`` may be spent, so a burst at the top of the second cannot drain it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from hotshard.routing import RoutingSnapshot

K = TypeVar("K", bound=Hashable)

PACING_SLACK = 0.1
"""Spend may run 10% of the lease ahead of an even spread, so a quiet start is not punished."""
HANDOVER_GRACE_S = 0.25
"""Upper bound on how long after us another shard may still act on the previous table: it
adopts a new table within one poll (50 ms) or at once when a router sends a newer version;
250 ms is five polls. A share that starts or grows waits for the whole second after this."""


@dataclass(slots=True)
class CampaignState:
    """Budget accounting of one campaign on this shard."""

    campaign: str
    partition: int
    version: int = 0
    lease: float = 0.0
    recheck_at: float = math.inf
    second: int = 0
    spent: float = 0.0


@dataclass(frozen=True, slots=True)
class ShareCap:
    """This shard's share of a campaign's budget may not exceed ``share`` before ``until``."""

    until: int
    share: float


def _share(me: str, shards: tuple[str, ...]) -> float:
    return 1.0 / len(shards) if me in shards else 0.0


class CampaignBook:
    """All campaign states of one shard, kept consistent with the routing table it serves by.

    Register :meth:`note_swap` with the :class:`SnapshotHolder` so that every change of this
    shard's share is capped until it is safe.
    """

    def __init__(
        self,
        shard: str,
        budget_per_second: float,
        clock: Callable[[], float] = time.time,
        grace: float = HANDOVER_GRACE_S,
    ) -> None:
        self.shard = shard
        self.budget_per_second = budget_per_second
        self.clock = clock
        self.grace = grace
        self.states: dict[str, CampaignState] = {}
        self._partition_caps: dict[int, ShareCap] = {}
        self._campaign_caps: dict[tuple[int, str], ShareCap] = {}

    # -- table changes ----------------------------------------------------------------------

    def next_safe_second(self) -> int:
        """The first whole second in which no shard can still be spending on an older table."""
        return math.floor(self.clock() + self.grace) + 1

    def note_swap(self, old: RoutingSnapshot, new: RoutingSnapshot) -> None:
        """Cap every share that ``old`` -> ``new`` changes until the next safe second."""
        now, until = self.clock(), self.next_safe_second()
        self._partition_caps = self._capped(
            self._partition_caps,
            ((p, old.shards_for(p), new.shards_for(p)) for p in range(new.partitions)),
            now,
            until,
        )
        campaigns = set(new.campaign_splits) | set(old.campaign_splits)
        self._campaign_caps = self._capped(
            self._campaign_caps,
            ((k, old.shards_for(*k), new.shards_for(*k)) for k in campaigns),
            now,
            until,
        )

    def _capped(
        self,
        caps: dict[K, ShareCap],
        changes: Iterable[tuple[K, tuple[str, ...], tuple[str, ...]]],
        now: float,
        until: int,
    ) -> dict[K, ShareCap]:
        live = {k: cap for k, cap in caps.items() if cap.until > now}
        for key, before, after in changes:
            if before == after:
                continue
            share = min(_share(self.shard, before), _share(self.shard, after))
            previous = live.get(key)
            if previous is not None:
                share = min(share, previous.share)
            live[key] = ShareCap(until, share)
        return live

    def cap(self, partition: int, campaign: str, now: float) -> ShareCap | None:
        """The tightest cap in force on this campaign's share now, if any."""
        found = None
        for cap in (
            self._partition_caps.get(partition),
            self._campaign_caps.get((partition, campaign)),
        ):
            if cap is not None and cap.until > now and (found is None or cap.share < found.share):
                found = cap
        return found

    # -- the request path -------------------------------------------------------------------

    def state(self, campaign: str, partition: int, snapshot: RoutingSnapshot) -> CampaignState:
        """The campaign's state, with its lease brought up to ``snapshot`` and to now."""
        state = self.states.get(campaign)
        if state is None:
            state = self.states[campaign] = CampaignState(campaign, partition)
        now = self.clock()
        if state.version != snapshot.version or now >= state.recheck_at:
            self._update_lease(state, snapshot, now)
        return state

    def _update_lease(self, state: CampaignState, snapshot: RoutingSnapshot, now: float) -> None:
        state.version = snapshot.version
        share = _share(self.shard, snapshot.shards_for(state.partition, state.campaign))
        cap = self.cap(state.partition, state.campaign, now)
        if cap is not None and cap.share < share:
            share, state.recheck_at = cap.share, float(cap.until)
        else:
            state.recheck_at = math.inf
        state.lease = self.budget_per_second * share

    def try_spend(self, state: CampaignState, amount: float) -> bool:
        """Spend ``amount`` if the lease and the pacing curve allow it."""
        now = self.clock()
        second = int(now)
        if second != state.second:
            state.second = second
            state.spent = 0.0
        paced = state.lease * min(1.0, (now - second) + PACING_SLACK)
        if state.spent + amount > paced:
            return False
        state.spent += amount
        return True
