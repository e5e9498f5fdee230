"""Campaign configuration: targeting rules an advertiser writes, versioned, evaluated per request.

A campaign's configuration says which requests it wants: site or app domains (and domains it
refuses), countries, device types, page-URL patterns, and private-marketplace deals. The bidder
evaluates it on every request of the campaign, before pricing. Advertisers change their
configuration at run time (``PUT /campaigns/{id}/config``); every version is kept, so a bad one
can be rolled back to the last good one and the history says who changed what and why.

Rules are validated and compiled once, when a version is stored (patterns compiled, lists
turned into sets); the request path only runs the compiled form. Evaluation is real work and a
careless rule makes it expensive for real: a page-URL pattern with nested, overlapping
quantifiers backtracks catastrophically, and a list of tens of thousands of patterns is tried
one by one. The CPU is burnt, never slept, but bounded: every pattern runs with the time left
of ``max_eval_seconds`` (the ``regex`` module's per-match timeout), and a request whose rules
run out of time does not match (the campaign does not bid) and is counted as timed out.
:meth:`CompiledRules.matches_off_loop` is the same evaluation for a worker thread: it releases
the GIL while a pattern runs and has its own bound, so the event loop keeps serving the shard's
other campaigns meanwhile.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

import regex
from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_EVAL_SECONDS = 0.02
"""One request's rules may burn at most 20 ms of CPU: a fifth of the common 100 ms tmax, so even
a pathological configuration leaves the request time to be answered."""
OFF_LOOP_EVAL_SECONDS = 0.03
"""Rules run in the worker thread (an anomalous campaign's) may take 30 ms: they hold up only
their own request, and 30 ms still answers within the common 100 ms tmax after waiting behind
one other evaluation."""
PATTERN_CHECK_EVERY = 64
"""How many patterns of a long list run between two looks at the clock: a look costs ~50 ns,
a cheap pattern ~1 µs, so the deadline is overshot by well under a millisecond."""

Rollout = Literal["graduated", "immediate"]


class TargetingRules(BaseModel):
    """What requests a campaign wants. An empty list means "no restriction" for that rule."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    domains: tuple[str, ...] = Field(
        default=(), description="Bid only on these site domains or app bundles (or subdomains)."
    )
    blocked_domains: tuple[str, ...] = Field(
        default=(), description="Never bid on these site domains or app bundles."
    )
    countries: tuple[str, ...] = Field(
        default=(), description="ISO 3166-1 alpha-3 codes of device.geo.country to bid on."
    )
    device_types: tuple[int, ...] = Field(
        default=(), description="OpenRTB device.devicetype values to bid on."
    )
    page_patterns: tuple[str, ...] = Field(
        default=(),
        description="Regular expressions; the page URL (else app store URL, bundle, domain) "
        "must match one of them.",
    )
    deals: tuple[str, ...] = Field(
        default=(), description="Private-marketplace deal ids (imp.pmp.deals[].id) to bid on."
    )
    deals_only: bool = Field(
        default=False, description="Bid only on imps carrying one of `deals` (no open auction)."
    )

    @field_validator("page_patterns")
    @classmethod
    def _compiles(cls, patterns: tuple[str, ...]) -> tuple[str, ...]:
        for i, pattern in enumerate(patterns):
            try:
                regex.compile(pattern)
            except regex.error as exc:
                raise ValueError(f"page_patterns[{i}] is not a valid pattern: {exc}") from None
        return patterns


class CampaignConfig(BaseModel):
    """The body of ``PUT /campaigns/{id}/config``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rules: TargetingRules = Field(default_factory=TargetingRules)
    rollout: Rollout = Field(
        default="graduated",
        description="graduated: a small share of the campaign's traffic first, widening while "
        "its cost stays normal; immediate: all traffic at once (an urgent edit).",
    )
    note: str = Field(default="", max_length=500, description="Who changed what, for the log.")


def _host_of(doc: dict[str, Any]) -> str:
    site = doc.get("site")
    if isinstance(site, dict):
        domain = site.get("domain")
        if isinstance(domain, str):
            return domain.lower()
    app = doc.get("app")
    if isinstance(app, dict):
        bundle = app.get("bundle") or app.get("domain")
        if isinstance(bundle, str):
            return bundle.lower()
    return ""


def page_of(doc: dict[str, Any]) -> str:
    """The string page patterns are matched against: the page URL, else the app's identity."""
    site = doc.get("site")
    if isinstance(site, dict):
        for key in ("page", "domain"):
            value = site.get(key)
            if isinstance(value, str):
                return value
    app = doc.get("app")
    if isinstance(app, dict):
        for key in ("storeurl", "bundle", "domain"):
            value = app.get(key)
            if isinstance(value, str):
                return value
    return ""


def _in_domains(host: str, domains: frozenset[str]) -> bool:
    if host in domains:
        return True
    dot = host.find(".")
    while dot != -1:
        if host[dot + 1 :] in domains:
            return True
        dot = host.find(".", dot + 1)
    return False


def _deal_ids(imp: dict[str, Any]) -> set[str]:
    pmp = imp.get("pmp")
    deals = pmp.get("deals") if isinstance(pmp, dict) else None
    if not isinstance(deals, list):
        return set()
    return {d["id"] for d in deals if isinstance(d, dict) and isinstance(d.get("id"), str)}


@dataclass(slots=True)
class CompiledRules:
    """A rule set ready for the request path; counts its own evaluations and time-outs."""

    rules: TargetingRules
    max_eval_seconds: float = MAX_EVAL_SECONDS
    domains: frozenset[str] = frozenset()
    blocked: frozenset[str] = frozenset()
    countries: frozenset[str] = frozenset()
    device_types: frozenset[int] = frozenset()
    patterns: tuple[Any, ...] = ()
    deals: frozenset[str] = frozenset()
    trivial: bool = True
    evaluations: int = 0
    timeouts: int = 0

    @classmethod
    def compile(
        cls, rules: TargetingRules, max_eval_seconds: float = MAX_EVAL_SECONDS
    ) -> CompiledRules:
        return cls(
            rules=rules,
            max_eval_seconds=max_eval_seconds,
            domains=frozenset(d.lower() for d in rules.domains),
            blocked=frozenset(d.lower() for d in rules.blocked_domains),
            countries=frozenset(c.upper() for c in rules.countries),
            device_types=frozenset(rules.device_types),
            patterns=tuple(regex.compile(p) for p in rules.page_patterns),
            deals=frozenset(rules.deals),
            trivial=rules == TargetingRules(),
        )

    def matches(self, doc: dict[str, Any]) -> bool:
        """Whether the request is one the campaign wants. Bounded by ``max_eval_seconds``."""
        return self._evaluate(doc, self.max_eval_seconds, concurrent=False)

    def matches_off_loop(self, doc: dict[str, Any]) -> tuple[bool, float]:
        """:meth:`matches` for a worker thread: whether it matched, and the thread's CPU time.

        Patterns run with the GIL released and ``OFF_LOOP_EVAL_SECONDS`` of time.
        """
        started = time.thread_time()
        matched = self._evaluate(doc, OFF_LOOP_EVAL_SECONDS, concurrent=True)
        return matched, time.thread_time() - started

    def _evaluate(self, doc: dict[str, Any], bound: float, *, concurrent: bool) -> bool:
        if self.trivial:
            return True
        self.evaluations += 1
        if self.domains or self.blocked:
            host = _host_of(doc)
            if self.blocked and _in_domains(host, self.blocked):
                return False
            if self.domains and not _in_domains(host, self.domains):
                return False
        device = doc.get("device")
        device = device if isinstance(device, dict) else {}
        if self.countries:
            geo = device.get("geo")
            country = geo.get("country") if isinstance(geo, dict) else None
            if not isinstance(country, str) or country.upper() not in self.countries:
                return False
        if self.device_types and device.get("devicetype") not in self.device_types:
            return False
        if self.deals_only_unmet(doc):
            return False
        return not self.patterns or self._page_matches(page_of(doc), bound, concurrent)

    def deals_only_unmet(self, doc: dict[str, Any]) -> bool:
        if not self.rules.deals_only:
            return False
        imps = doc.get("imp") or ()
        return not any(isinstance(i, dict) and _deal_ids(i) & self.deals for i in imps)

    def _page_matches(self, page: str, bound: float, concurrent: bool) -> bool:
        deadline = time.monotonic() + bound
        for i, pattern in enumerate(self.patterns):
            if i % PATTERN_CHECK_EVERY == 0 and i and time.monotonic() >= deadline:
                self.timeouts += 1
                return False
            left = deadline - time.monotonic()
            if left <= 0:
                self.timeouts += 1
                return False
            try:
                if pattern.search(page, concurrent=concurrent, timeout=left):
                    return True
            except TimeoutError:
                self.timeouts += 1
                return False
        return False


@dataclass(slots=True)
class ConfigVersion:
    """One stored version of a campaign's configuration."""

    version: int
    config: CampaignConfig
    compiled: CompiledRules
    created_at: float
    origin: str
    """``put`` for an advertiser's change, ``rollback`` for a restore by the bidder."""
    verdict: str = "new"
    """``new`` (being rolled out), ``good`` (fully rolled out with normal cost) or ``bad``."""
    why: str = ""

    def describe(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "created_at": self.created_at,
            "origin": self.origin,
            "verdict": self.verdict,
            "why": self.why,
            "rollout": self.config.rollout,
            "note": self.config.note,
            "rules": self.config.rules.model_dump(),
            "evaluations": self.compiled.evaluations,
            "timeouts": self.compiled.timeouts,
        }


DEFAULT_CONFIG = CampaignConfig(note="no configuration stored: bid on every request")


@dataclass
class ConfigHistory:
    """Every version of one campaign's configuration, oldest first; version 0 is the default."""

    campaign: str
    max_eval_seconds: float = MAX_EVAL_SECONDS
    versions: list[ConfigVersion] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.versions:
            default = self._make(0, DEFAULT_CONFIG, 0.0, "default")
            default.verdict = "good"
            self.versions.append(default)

    def _make(self, number: int, config: CampaignConfig, now: float, origin: str) -> ConfigVersion:
        compiled = CompiledRules.compile(config.rules, self.max_eval_seconds)
        return ConfigVersion(number, config, compiled, now, origin)

    @property
    def latest(self) -> ConfigVersion:
        return self.versions[-1]

    def get(self, number: int) -> ConfigVersion:
        return self.versions[number]

    def store(self, config: CampaignConfig, now: float, origin: str = "put") -> ConfigVersion:
        """Keep ``config`` as the next version and return it."""
        stored = self._make(len(self.versions), config, now, origin)
        self.versions.append(stored)
        return stored

    def last_good(self, before: int) -> ConfigVersion:
        """The newest version older than ``before`` not known to be bad (version 0 at worst).

        A version still ``new`` counts: a shard that never served the campaign (the sandbox it
        was just moved to) could judge none, and the advertiser's last intention not shown bad
        is a better fallback than bidding on everything.
        """
        for stored in reversed(self.versions[:before]):
            if stored.verdict != "bad":
                return stored
        return self.versions[0]

    def describe(self) -> list[dict[str, Any]]:
        return [v.describe() for v in self.versions]
