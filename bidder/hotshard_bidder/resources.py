"""The bidder's resource guard: one place where a campaign's cost is checked, charged and judged.

The auction handler asks two things of it per request: before the work, :meth:`ResourceGuard.admit`
(tokens, the resource breaker, and the cost predicted from the request's fingerprint) and which
configuration version evaluates the request (graduated rollout); after the work,
:meth:`ResourceGuard.settle` with the measured CPU (charge the tokens, feed the profiler and the
breaker, judge the rollout, roll back when a spike followed a change). Everything the guard does
to a campaign is an *event* with a time and a reason (``GET /resources``): the demo's report and
an operator read containment from there.

State for one campaign lives in one :class:`CampaignResources` entry, and the per-request
scratch values (version picked, prediction, profiling flag) are kept on it between ``admit`` and
``settle``: the handler runs both without yielding to the event loop, so no other request can
interleave, and the request path allocates nothing new for a normal campaign. When the rules
run in a worker thread (:meth:`ResourceGuard.off_loop`) the handler keeps the scratch values
across the yield (:meth:`CampaignResources.hold`, :meth:`CampaignResources.resume`). On the
sandbox tier a request may cost ``sandbox_request_seconds``, elsewhere ``max_request_seconds``.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from hotshard_bidder.breaker import BreakerState
from hotshard_bidder.openrtb import BidRequestView
from hotshard_bidder.profiling import CostProfile, ProfilePolicy, Profiler, fingerprint, shape_of
from hotshard_bidder.resource_breaker import ResourceBreaker, ResourceBreakerPolicy
from hotshard_bidder.rollout import Rollout, RolloutPolicy
from hotshard_bidder.targeting import CampaignConfig, CompiledRules, ConfigHistory, ConfigVersion
from hotshard_bidder.tokens import TokenBucket, TokenPolicy

THROTTLED = "throttled"
TRIPPED = "tripped"
MAX_EVENTS = 1000
"""Events kept per shard: containment is rare, and the newest thousand say what happened."""
JUDGE_INTERVAL_S = 0.1
"""A rollout is judged at most ten times a second: its evidence changes no faster."""
EPISODE_GAP_S = 1.0
"""Refusals less than a second apart belong to one throttling episode (one event)."""
PROBE_INTERVAL_S = 1.0
"""A campaign none of whose requests has run for this long may run one whose cost is only
guessed (:meth:`ResourceGuard._probe`): the ``Retry-After: 1`` its refusals carry."""


class GuardPolicy(BaseModel):
    """Every knob of the resource guard; the bidder's settings carry one of these."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(
        default=True,
        description="Off: costs are still measured and reported, nothing is refused or undone.",
    )
    tokens: TokenPolicy = Field(default_factory=TokenPolicy)
    breaker: ResourceBreakerPolicy = Field(default_factory=ResourceBreakerPolicy)
    profile: ProfilePolicy = Field(default_factory=ProfilePolicy)
    rollout: RolloutPolicy = Field(default_factory=RolloutPolicy)


@dataclass(slots=True)
class CampaignResources:
    """Everything the guard keeps for one campaign on this shard."""

    campaign: str
    bucket: TokenBucket
    breaker: ResourceBreaker
    profile: CostProfile = field(default_factory=CostProfile)
    history: ConfigHistory | None = None
    rollout: Rollout | None = None
    active: int = 0
    """The version every request gets when no rollout is in progress."""
    requests: int = 0
    cpu_seconds: float = 0.0
    throttled: int = 0
    predicted_refusals: int = 0
    probes: int = 0
    """Requests of an unseen shape let through on a guess (:data:`PROBE_INTERVAL_S`)."""
    tripped: int = 0
    last_refusal: float = -1e18
    last_ran: float = -1e18
    """When a request of the campaign last ran here (settled), or was let through as a probe."""
    next_judge: float = 0.0
    # Per-request scratch, valid from admit() to settle():
    version: int = 0
    rules: CompiledRules | None = None
    predicted: float = 0.0
    shape: tuple[Any, ...] = ()
    key: int = 0
    profiling: bool = False

    def hold(self) -> Scratch:
        """This request's scratch values, to keep across a yield to the event loop."""
        return (self.version, self.rules, self.predicted, self.shape, self.key, self.profiling)

    def resume(self, scratch: Scratch) -> None:
        """Put back what :meth:`hold` kept, just before ``settle``."""
        (self.version, self.rules, self.predicted, self.shape, self.key, self.profiling) = scratch


Scratch = tuple[int, CompiledRules | None, float, tuple[Any, ...], int, bool]


class ResourceGuard:
    """The resource state of every campaign on one shard."""

    def __init__(
        self,
        shard: str,
        policy: GuardPolicy | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.shard = shard
        self.policy = policy or GuardPolicy()
        self.clock = clock
        self.profiler = Profiler(self.policy.profile)
        self.campaigns: dict[str, CampaignResources] = {}
        self.events: deque[dict[str, Any]] = deque(maxlen=MAX_EVENTS)
        self.rollbacks = 0
        """Configuration versions rolled back here since start (exported as a counter)."""
        self.sandboxed = False
        self.max_request = self.policy.tokens.max_request_seconds
        """The per-request bound in force: relaxed on the sandbox tier (:meth:`set_tier`)."""

    def set_tier(self, tier: str) -> None:
        """Follow the routing table's tier for this shard (it can change with a new table)."""
        tokens = self.policy.tokens
        self.sandboxed = tier == "sandbox"
        self.max_request = (
            tokens.sandbox_request_seconds if self.sandboxed else tokens.max_request_seconds
        )

    def off_loop(self, res: CampaignResources) -> bool:
        """Whether this request's rules should run in the worker thread, where an expensive
        evaluation holds up only its own request: the campaign is anomalous, or the version
        evaluating it is new and not yet judged good (so even its first request, the one that
        would show it is expensive, does not stall the event loop)."""
        rules = res.rules
        if not self.policy.enabled or rules is None or rules.trivial:
            return False
        rollout = res.rollout
        unproven = (
            rollout is not None
            and res.version == rollout.current
            and not rollout.promoted
            and not rollout.rolled_back
        )
        return res.profile.anomalous or unproven

    @staticmethod
    def current_cost(res: CampaignResources) -> float:
        """What a request of a shape not seen yet costs now: the recent cost of the version
        evaluating it when a rollout watches (the fast average mixes a bad canary with the
        cheap rest, and its normal past), else the fast average."""
        rollout = res.rollout
        if rollout is not None:
            tally = rollout.new if res.version == rollout.current else rollout.old
            if tally.requests:
                return tally.recent
        return res.profile.fast

    @staticmethod
    def demanded(res: CampaignResources) -> float:
        """What a refused request asked for (its prediction, else the campaign's recent cost);
        zero on a graduated canary, whose damage its share bounds and its rollout undoes: a
        move to the sandbox for it would take the last good version's requests along."""
        rollout = res.rollout
        if rollout is not None and res.version == rollout.current and rollout.share < 1.0:
            return 0.0
        return res.predicted or res.profile.fast

    def entry(self, campaign: str, now: float) -> CampaignResources:
        found = self.campaigns.get(campaign)
        if found is None:
            bucket = TokenBucket.full(self.policy.tokens, now)
            # NB: on the sandbox tier the burst holds one request of the relaxed bound, or the
            # bound would be relaxed in name only.
            bucket.burst = bucket.tokens = max(bucket.burst, self.max_request)
            found = self.campaigns[campaign] = CampaignResources(
                campaign, bucket, ResourceBreaker(self.policy.breaker, updated=now)
            )
        return found

    def note(self, now: float, kind: str, campaign: str, reason: str, **extra: Any) -> None:
        self.events.append(
            {"time": now, "shard": self.shard, "kind": kind, "campaign": campaign}
            | extra
            | {"reason": reason}
        )

    # -- the request path -------------------------------------------------------------------

    def admit(self, res: CampaignResources, view: BidRequestView, now: float) -> str | None:
        """``None`` if the request may run (``res.rules`` then evaluates it), else why not."""
        res.version = res.rollout.pick() if res.rollout is not None else res.active
        res.rules = res.history.get(res.version).compiled if res.history is not None else None
        res.profiling = self.profiler.should_profile(res.profile)
        res.predicted = 0.0
        bucket = res.bucket
        if res.profiling or bucket.tokens < bucket.burst * 0.5:
            res.shape = shape_of(view)
            res.key = fingerprint(res.shape, res.campaign, res.version)
            # NB: a shape never seen under an anomalous campaign is predicted at the campaign's
            # current cost, so a bad version does not run once per request shape to be learnt.
            known = self.profiler.costs.predict(res.key)
            guessed = not known and res.profile.anomalous
            res.predicted = known or (self.current_cost(res) if guessed else 0.0)
            res.profiling = True
        else:
            guessed = False
        if not self.policy.enabled:
            return None
        if not res.breaker.allow(now):
            res.tripped += 1
            return TRIPPED
        if guessed and self._probe(res, now):
            return None
        if res.predicted <= self.max_request and bucket.admit(now, res.predicted):
            return None
        if res.breaker.state is BreakerState.HALF_OPEN:
            res.breaker.probing = False  # NB: the probe was refused by tokens; let another try
        res.throttled += 1
        if res.predicted > min(bucket.tokens, self.max_request):
            res.predicted_refusals += 1
        if now - res.last_refusal > EPISODE_GAP_S:
            self.note(
                now,
                "throttle",
                res.campaign,
                f"refused before running: {bucket.tokens * 1e3:.1f} ms of CPU tokens left (a "
                f"{bucket.rate:.2f}-core budget), or this request's predicted "
                f"{res.predicted * 1e3:.1f} ms is over the "
                f"{self.max_request * 1e3:.0f} ms a request may cost here",
                version=res.version,
            )
        res.last_refusal = now
        if res.rollout is not None and res.predicted > 0:
            # NB: a refused request is evidence too: its cost is predicted from measured ones.
            res.rollout.record(res.version, res.predicted)
            if now >= res.next_judge:
                res.next_judge = now + JUDGE_INTERVAL_S
                self._judge(res, now)
        if res.breaker.record(now, res.predicted, ran=False):
            self._tripped(res, now)
        return THROTTLED

    def _probe(self, res: CampaignResources, now: float) -> bool:
        """Whether to run a request whose cost is only guessed, to measure it.

        A guess is not evidence. A campaign made anomalous by one expensive request would
        otherwise have every request of another shape refused at the guessed cost, never run,
        never measured: refused for good while its ``Retry-After`` says one second. So when
        none of its requests has run for :data:`PROBE_INTERVAL_S` and its bucket has tokens,
        one runs, and the cost of its shape is learnt (the tokens then charge what it spent).
        A bad version still runs at most one request a second this way, not one per shape."""
        if now - res.last_ran < PROBE_INTERVAL_S:
            return False
        res.bucket.refill(now)
        if res.bucket.tokens <= 0:
            return False
        if res.predicted <= min(res.bucket.tokens, self.max_request):
            return False  # NB: it would be admitted anyway; keep the probe for when it is not
        res.last_ran = now
        res.probes += 1
        return True

    def retry_after(self, res: CampaignResources, refusal: str, now: float) -> str:
        if refusal == TRIPPED:
            return str(max(1, round(res.breaker.retry_in(now) + 0.5)))
        return res.bucket.retry_after_header(res.predicted)

    def settle(
        self, res: CampaignResources, cost: float, rules: float, now: float, ran_out: float = 0.0
    ) -> None:
        """Charge a finished request's measured ``cost`` (``rules``: CPU of its rules, if timed).

        ``ran_out``: the time bound its rules ran out of, if they did. Under a tight quota its
        thread got only part of it as CPU, yet on a free core it would burn all of it, so its
        fingerprint and cost average learn ``max(cost, ran_out)``: what it asks for. The tokens
        and the breaker charge what was spent."""
        res.requests += 1
        res.cpu_seconds += cost
        res.last_ran = now
        asked = max(cost, ran_out)
        if res.profiling:
            self.profiler.costs.learn(res.key, asked)
            self.profiler.record_sample(res.profile, cost, rules, res.shape)
        if self.profiler.observe(res.profile, asked, now):
            self.note(
                now,
                "anomaly",
                res.campaign,
                f"cost per request {res.profile.fast * 1e6:.0f} µs against a normal "
                f"{self.profiler.reference(res.profile) * 1e6:.0f} µs; profiling every request",
                version=res.version,
            )
        if res.rollout is not None:
            res.rollout.record(res.version, cost)
        if not self.policy.enabled:
            return
        res.bucket.charge(cost)
        if res.breaker.record(now, cost, ran=True):
            self._tripped(res, now)
        if res.rollout is not None and now >= res.next_judge:
            res.next_judge = now + JUDGE_INTERVAL_S
            self._judge(res, now)

    def _tripped(self, res: CampaignResources, now: float) -> None:
        rate = res.breaker.rate(now)
        self.note(
            now,
            "trip",
            res.campaign,
            f"asked for {rate:.2f} cores of CPU (limit {self.policy.breaker.trip_cores:.2f}); "
            f"refusing its requests for {res.breaker.cooloff:.0f} s",
        )

    # -- configuration ----------------------------------------------------------------------

    def configure(self, campaign: str, config: CampaignConfig) -> ConfigVersion:
        """Store a new version of ``campaign``'s configuration and start rolling it out."""
        now = self.clock()
        res = self.entry(campaign, now)
        if res.history is None:
            res.history = ConfigHistory(campaign)
        previous = res.history.last_good(len(res.history.versions))
        stored = res.history.store(config, now)
        graduated = config.rollout == "graduated" and self.policy.enabled
        res.rollout = Rollout.start(
            previous.version,
            stored.version,
            now,
            self.profiler.reference(res.profile),
            graduated=graduated,
            policy=self.policy.rollout,
        )
        res.active = stored.version
        self.note(
            now,
            "config",
            campaign,
            f"version {stored.version} stored ({config.rollout} rollout, starting at "
            f"{res.rollout.share:.0%} of requests; last good is version {previous.version})",
            version=stored.version,
        )
        return stored

    def judge_due(self, now: float) -> None:
        """Judge every rollout in progress that is due, requests or not: a campaign moved to the
        sandbox sends no more requests here, yet is rolled back on the evidence it left."""
        for res in self.campaigns.values():
            rollout = res.rollout
            if rollout is None or rollout.rolled_back or rollout.promoted:
                continue
            if self.policy.enabled and now >= res.next_judge:
                res.next_judge = now + JUDGE_INTERVAL_S
                self._judge(res, now)

    def _judge(self, res: CampaignResources, now: float) -> None:
        rollout, history = res.rollout, res.history
        assert rollout is not None
        assert history is not None
        share = rollout.share
        verdict = rollout.judge(now, self.policy.rollout)
        if verdict.kind == "hold":
            return
        current = history.get(rollout.current)
        if verdict.kind == "rollback":
            self.rollbacks += 1
            current.verdict, current.why = "bad", verdict.reason
            res.active = rollout.previous
            res.profile.anomalous, res.profile.anomalous_since = False, None
            res.profile.fast = res.profile.baseline  # NB: the bad version's average is void
        elif verdict.kind == "promote":
            current.verdict = "good"
        self.note(
            now,
            verdict.kind,
            res.campaign,
            verdict.reason,
            version=rollout.current,
            share=share,
            to=verdict.share,
        )

    def describe(self, campaign: str) -> dict[str, Any] | None:
        res = self.campaigns.get(campaign)
        if res is None:
            return None
        rollout = res.rollout
        shown = ("previous", "current", "share", "promoted", "rolled_back")
        return {
            "campaign": campaign,
            "active": res.active,
            "rollout": None if rollout is None else {k: getattr(rollout, k) for k in shown},
            "versions": res.history.describe() if res.history is not None else [],
        }

    def report(self) -> dict[str, Any]:
        """Cost per campaign and every containment event, for ``GET /resources``."""
        return {
            "shard": self.shard,
            "enabled": self.policy.enabled,
            "sandboxed": self.sandboxed,
            "time": self.clock(),
            "shard_baseline_us": round(self.profiler.shard_baseline * 1e6, 1),
            "fingerprints": len(self.profiler.costs),
            "campaigns": {
                name: {
                    "requests": r.requests,
                    "cpu_seconds": round(r.cpu_seconds, 6),
                    "us_per_request": round(r.cpu_seconds / r.requests * 1e6, 1)
                    if r.requests
                    else None,
                    "throttled": r.throttled,
                    "predicted_refusals": r.predicted_refusals,
                    "probes": r.probes,
                    "tripped": r.tripped,
                    "breaker": r.breaker.state.value,
                    "active_version": r.active,
                    "profile": r.profile.describe(),
                }
                for name, r in self.campaigns.items()
            },
            "events": list(self.events),
        }
