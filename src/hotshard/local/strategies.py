"""The five strategies of ``make bench`` as settings of one local-mode pass.

``make bench`` replays a scenario on the same local fleet once per strategy
(:class:`hotshard.strategies.Strategy`). A pass is :func:`hotshard.local.demo.run_pass`; what
differs between strategies is gathered here in one :class:`PassStrategy`: the fleet it starts
with, the flags of its bidders and router, the engine the control loop asks each second, whether
the loop may write tables, and where the load generators send (the router, or a proxy the
benchmark starts in front of the shards).

The HPA-like strategy needs an engine of its own, :class:`HpaEngine`: a
:class:`~hotshard.control.loop.DecisionEngine` that asks the pure autoscaler
(:class:`hotshard.strategies.HpaAutoscaler`) for a replica count on the shards' mean CPU and
re-spreads the partitions evenly over that many shards (:func:`respread_owners`), moving as few
as it can, as consistent hashing over a scaled deployment would. The control loop hands its
tables over in the same two phases as hotshard's, and the fleet starts and stops its shards.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hotshard.control.loop import DecisionEngine
from hotshard.engine.config import CalendarEvent, EngineConfig
from hotshard.engine.core import Engine
from hotshard.engine.model import Action, CostSummary, Decision, Observation, PoolState
from hotshard.local.fleet import FleetShape
from hotshard.local.scenario import TrafficPlan
from hotshard.routing import RoutingTable
from hotshard.strategies import HpaAutoscaler, HpaSettings, Strategy

FrontDoor = Callable[[contextlib.AsyncExitStack[bool | None], Path, Mapping[str, str]], str]
"""Starts a proxy in front of the shards (their URLs by name) on the pass's exit stack and
returns its base URL; the load generators send there instead of to the router."""

SECONDS_PER_TRACE_MINUTE = 60.0
"""A trace minute is 60 s of real time; a scenario replaying it in 1 s compresses time 60x."""
CALENDAR_LEAD_S = 5.0
"""The calendar splits 5 s ahead: a hand-over (under 1 s) and a warm-shard refill (about 2 s
here) fit in it, and the quick scenario's 8 s before the spike hold it."""
NO_GUARD = ("--no-resource-guard",)
"""The bidders' CPU-token guard is hotshard's; the other strategies run without it."""
SERVE_ANY_ENV = {"HOTSHARD_BIDDER_SERVE_ANY_PARTITION": "true"}


@dataclass(frozen=True)
class PassStrategy:
    """Everything about one pass that depends on the strategy."""

    strategy: Strategy
    shape: FleetShape
    mitigate: bool
    """Whether the control loop writes tables (off: it observes and records only)."""
    build_engine: Callable[[float], DecisionEngine]
    """Given the wall-clock time the first request is due, the engine the loop asks."""
    bidder_args: tuple[str, ...] = ()
    bidder_env: Mapping[str, str] = field(default_factory=dict)
    shed_hot_keys: bool = False
    """Whether the router sheds a hot campaign's excess (hotshard's first line of defence)."""
    front_door: FrontDoor | None = None

    @property
    def name(self) -> str:
        return self.strategy.value

    @property
    def title(self) -> str:
        return f"{self.strategy.value}: {self.strategy.description}"

    def entry_url(
        self,
        stack: contextlib.AsyncExitStack[bool | None],
        run_dir: Path,
        shard_urls: Mapping[str, str],
        router_url: str,
    ) -> str:
        """Where the load generators send: the front door if there is one, else the router."""
        if self.front_door is None:
            return router_url
        return self.front_door(stack, run_dir, shard_urls)

    @contextlib.contextmanager
    def environment(self) -> Iterator[None]:
        """Set ``bidder_env`` for the processes the pass starts, and restore it afterwards."""
        saved = {k: os.environ.get(k) for k in self.bidder_env}
        os.environ.update(self.bidder_env)
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def time_compression(plan: TrafficPlan) -> float:
    """How much faster than real time the scenario runs (60x at one trace minute a second)."""
    spike = plan.scenario.spike
    per_minute = spike.seconds_per_minute if spike is not None else 1.0
    # NB: a scenario without a spike (the advertiser bug) runs on the same demo clock.
    return SECONDS_PER_TRACE_MINUTE / per_minute


def calendar_events(plan: TrafficPlan, first_send: float) -> tuple[CalendarEvent, ...]:
    """The plan's calendar on the engine's clock (wall-clock seconds)."""
    return tuple(
        CalendarEvent(
            name=e.name,
            start=first_send + e.start,
            end=first_send + e.end,
            campaigns=e.campaigns,
            expected_factor=e.expected_factor,
        )
        for e in plan.calendar
    )


def hotshard_config(
    base: EngineConfig, plan: TrafficPlan, first_send: float | None
) -> EngineConfig:
    """``base`` with prediction off (``first_send`` None) or on with the plan's calendar."""
    if first_send is None:
        prediction = base.prediction.model_copy(update={"enabled": False})
    else:
        prediction = base.prediction.model_copy(
            update={
                "enabled": True,
                "calendar": calendar_events(plan, first_send),
                "calendar_lead_seconds": CALENDAR_LEAD_S,
            }
        )
    return base.model_copy(update={"prediction": prediction})


def build_strategy(
    strategy: Strategy,
    plan: TrafficPlan,
    engine_config: EngineConfig,
    *,
    bounded_front: FrontDoor | None = None,
) -> PassStrategy:
    """The pass settings of ``strategy`` for ``plan``; ``engine_config`` is the demo's."""
    shape = FleetShape()
    # NB: the baselines start with the base shards only: a warm pool is hotshard's idea, and
    # its shard-seconds are charged to hotshard alone.
    bare = FleetShape(warm=0, sandbox=0)
    reactive = hotshard_config(engine_config, plan, None)
    if strategy is Strategy.STATIC:
        return PassStrategy(strategy, bare, False, lambda _: Engine(reactive), NO_GUARD)
    if strategy is Strategy.HPA:
        settings = HpaSettings(
            time_compression=time_compression(plan),
            min_replicas=bare.base,
            # NB: no more shards than hotshard's whole fleet holds at the start.
            max_replicas=shape.base + shape.warm + shape.sandbox,
        )
        hpa = HpaEngine(HpaAutoscaler(settings), shape.base_cores)
        return PassStrategy(strategy, bare, True, lambda _: hpa, NO_GUARD)
    if strategy is Strategy.BOUNDED_LOAD:
        if bounded_front is None:
            raise ValueError("the bounded-load strategy needs a proxy in front of the shards")
        return PassStrategy(
            strategy,
            bare,
            False,
            lambda _: Engine(reactive),
            NO_GUARD,
            bidder_env=SERVE_ANY_ENV,
            front_door=bounded_front,
        )
    if strategy is Strategy.HOTSHARD_REACTIVE:
        return PassStrategy(strategy, shape, True, lambda _: Engine(reactive), shed_hot_keys=True)
    return PassStrategy(
        strategy,
        shape,
        True,
        lambda first_send: Engine(hotshard_config(engine_config, plan, first_send)),
        shed_hot_keys=True,
    )


# -- the HPA-like engine ------------------------------------------------------------------


@dataclass(frozen=True)
class ScaleEvent:
    """One change of the HPA's desired replica count."""

    time: float
    replicas: int
    desired: int
    mean_utilisation: float


class HpaEngine:
    """Uniform scale-out on mean CPU, as a :class:`~hotshard.control.loop.DecisionEngine`.

    Replicas are the base and overflow shards in the table plus those starting. Each step the
    autoscaler names a desired count; when ready shards and that count disagree, the partitions
    are re-spread over the first ``desired`` shards (base first, then by ordinal), and the warm
    pool target asks the fleet for the shards still missing or lets it stop the idle ones.
    """

    # TODO(#8): a scale-out's hand-over has run only in unit tests: in neither bench scenario
    # does one saturated shard of three lift the mean CPU over the 50 % target.
    def __init__(self, autoscaler: HpaAutoscaler, shard_cores: float) -> None:
        self.autoscaler = autoscaler
        self.shard_cores = shard_cores
        self.events: list[ScaleEvent] = []
        self._desired: int | None = None

    def step(self, observation: Observation, table: RoutingTable, pool: PoolState) -> Decision:
        replicas = sorted([*pool.base, *pool.overflow], key=_replica_rank)
        shards = observation.shards
        utilisations = [
            shards[s].cpu / self.shard_cores if s in shards else 0.0 for s in replicas
        ] + [0.0] * pool.pending  # NB: the HPA counts a starting pod as idle when scaling up
        current = len(replicas) + pool.pending
        desired = self.autoscaler.tick(observation.time, current, utilisations)
        mean = sum(utilisations) / len(utilisations) if utilisations else 0.0
        if desired != self._desired:
            self.events.append(ScaleEvent(observation.time, current, desired, mean))
            self._desired = desired
        keep = replicas[: min(desired, len(replicas))]
        serving = [s for s in replicas if s not in pool.idle]
        reason = (
            f"HPA: mean CPU {mean:.0%} of the request over {current} replica(s), target "
            f"{self.autoscaler.settings.target_utilisation:.0%}: {desired} desired"
        )
        actions: list[Action] = []
        desired_table = None
        if set(keep) != set(serving):
            owners = respread_owners(table.owners(), keep)
            before = table.owners()
            gaining = sorted({o for o, b in zip(owners, before, strict=True) if o != b})
            desired_table = table.with_owners(owners, version=table.version + 1)
            actions.append(Action("migrate", reason, source=tuple(serving), target=tuple(gaining)))
        missing = max(0, desired - len(keep))
        if missing:
            actions.append(Action("claim_shard", f"{reason}; starting {missing} shard(s)"))
        cost = CostSummary(len(table.shards), 0.0, len(pool.idle), 0.0, 0, 0.0, 0.0)
        return Decision(desired_table, tuple(actions), (), {}, reason, cost, missing)


def _replica_rank(name: str) -> tuple[int, int]:
    match = re.search(r"(\d+)$", name)
    return (0 if name.startswith("base") else 1, int(match.group(1)) if match else 0)


def respread_owners(owners: Sequence[str], shards: Sequence[str]) -> list[str]:
    """Owners that give each of ``shards`` an even share, moving as few partitions as it can.

    Every shard ends with ``P // n`` or one more partitions (the extra ones go to the shards
    that hold most already). A partition moves only when its owner is not among ``shards`` or
    holds more than its share; an over-full shard gives up the tail of its partitions, and the
    freed partitions fill the short shards in order, so a new shard takes contiguous runs next
    to its neighbours', as a new node on a hash ring takes arcs.
    """
    if not shards:
        raise ValueError("cannot spread partitions over no shards")
    n, total = len(shards), len(owners)
    held: dict[str, list[int]] = {s: [] for s in shards}
    freed: list[int] = []
    for p, owner in enumerate(owners):
        held.get(owner, freed).append(p)
    by_size = sorted(shards, key=lambda s: (-len(held[s]), shards.index(s)))
    quota = {s: total // n + (1 if i < total % n else 0) for i, s in enumerate(by_size)}
    for s in shards:
        excess = len(held[s]) - quota[s]
        if excess > 0:
            freed += held[s][-excess:]
            del held[s][-excess:]
    freed.sort()
    result = list(owners)
    for s in shards:
        short = quota[s] - len(held[s])
        for p in freed[:short]:
            result[p] = s
        freed = freed[short:]
    return result
