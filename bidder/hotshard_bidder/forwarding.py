"""Forwarding one request to its shard, with the retries a migration needs, inside its deadline.

This is where the router keeps its promise that every accepted request gets exactly one
answer before its deadline. :meth:`Forwarder.forward` runs all attempts under one timer at
the deadline; whatever happens inside (a slow shard, a refused connection, a sleep between
retries) the timer cancels it and the request gets an explicit 504. (The timer is a plain
``loop.call_at``: ``asyncio.timeout_at`` does the same but asks for the running loop twice, and
each ask is a ``getpid`` system call, on every request.) Answers the router reacts to:

- **421** (the shard no longer owns the partition): refresh the table, re-route, retry once.
- **503 with ``X-Hotshard-Retry-After-Ms``** (the shard's table is behind ours): wait that
  long and retry, as often as the deadline allows.
- **429** (the shard is overloaded): back off with jitter and retry while there is time, else
  pass the 429 on. A 429 that carries ``X-Hotshard-Cost-Estimate-Us`` is the shard refusing
  *this campaign's* request for its CPU budget (issue #7), not a busy shard: a retry would
  only be refused again and burn the budget check twice, so it is passed on at once.
- Before each attempt the shard's allowance (:mod:`hotshard_bidder.fair_shedding`) may shed
  the request with 429 (outcome ``shed``) when the shard is overrun and this request's
  campaign is the one overrunning it.
- A connection failure or a timeout counts against the shard's circuit breaker; an open breaker
  answers 503 at once instead of waiting on a shard that is down.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

import orjson

from hotshard.routing.keys import CAMPAIGN_HEADER
from hotshard.routing.store import SnapshotHolder
from hotshard_bidder.admission import RETRY_AFTER_S
from hotshard_bidder.breaker import CircuitBreaker
from hotshard_bidder.fair_shedding import ShardAllowance
from hotshard_bidder.router_metrics import NO_SHARD, RouterMetrics
from hotshard_bidder.serving import (
    COST_HEADER,
    DEADLINE_HEADER,
    RETRY_MS_HEADER,
    SHARD_HEADER,
    VERSION_HEADER,
    TableFollower,
)
from hotshard_bidder.shard_client import ShardClients, ShardConnectionError

AUCTION_PATH = "/openrtb2/auction"
DEFAULT_RETRY_MS = 20
"""Wait before retrying a 503 that gave no hint: a few table polls of a lagging shard."""
BACKOFF_BASE_S = 0.002
"""First 429 back-off: 2 ms, about twenty bids' worth of a shard's CPU, doubling per retry."""
MIN_ATTEMPT_S = 0.001
"""Do not start an attempt with less than 1 ms left: a loopback round trip alone takes that."""
ESTIMATE_HEADER = "X-Hotshard-Cost-Estimate-Us"
"""Set by a shard on a 429 for CPU tokens (hotshard_bidder.app): the refused request's cost."""
PASSED_HEADERS = (SHARD_HEADER, COST_HEADER, "Retry-After", RETRY_MS_HEADER, ESTIMATE_HEADER)
_PASSED = tuple((name.lower(), name) for name in (*PASSED_HEADERS, "Content-Type"))
OUTCOMES = {
    200: "bid",
    204: "nobid",
    400: "bad_request",
    413: "too_large",
    421: "misdirected",
    429: "overloaded",
    502: "shard_error",
    503: "unavailable",
    504: "deadline",
}


@dataclass(slots=True)
class Answer:
    """The one answer a request gets, whoever produced it."""

    status: int
    body: bytes
    headers: dict[str, str]
    shard: str = NO_SHARD
    label: str = ""
    """The outcome to count, when the status alone does not say it (a shed 429, say)."""

    @property
    def outcome(self) -> str:
        return self.label or OUTCOMES.get(self.status, f"http_{self.status}")


def error_answer(status: int, reason: str, shard: str = NO_SHARD, **extra: str) -> Answer:
    """An explicit error from the router itself, with the reason in a JSON body."""
    headers = {"Content-Type": "application/json", **extra}
    if shard != NO_SHARD:
        headers[SHARD_HEADER] = shard
    return Answer(status, orjson.dumps({"error": reason, "shard": shard}), headers, shard)


@dataclass(slots=True)
class _Trace:
    """Where a forward stands, so a deadline that cuts it short can say what it was doing."""

    shard: str = NO_SHARD
    version: int = 0
    waiting: bool = False
    expired: bool = False


class Forwarder:
    """Sends requests to shards through keep-alive pools, per the current snapshot.

    Build it inside the running event loop, which it keeps.
    """

    def __init__(
        self,
        holder: SnapshotHolder,
        watcher: TableFollower,
        clients: ShardClients,
        metrics: RouterMetrics,
        *,
        breaker_failures: int,
        breaker_cooloff: float,
        allowance: ShardAllowance | None = None,
    ) -> None:
        self.holder = holder
        self.watcher = watcher
        self.clients = clients
        self.metrics = metrics
        self.breaker_failures = breaker_failures
        self.breaker_cooloff = breaker_cooloff
        self.breakers: dict[str, CircuitBreaker] = {}
        self.allowance = allowance if allowance is not None and allowance.enabled else None
        self.loop = asyncio.get_running_loop()

    def breaker(self, shard: str) -> CircuitBreaker:
        breaker = self.breakers.get(shard)
        if breaker is None:
            breaker = CircuitBreaker(self.breaker_failures, self.breaker_cooloff)
            self.breakers[shard] = breaker
        return breaker

    async def forward(
        self,
        body: bytes,
        campaign: str,
        partition: int,
        secondary: str,
        deadline: float,
        deadline_ms: int,
    ) -> tuple[Answer, int]:
        """Forward until a final answer or ``deadline`` (loop time); return it and the version
        of the table that routed the final attempt. ``partition`` is the campaign's (the same
        in every table version: the holder refuses a table with another partition count)."""
        trace = _Trace()
        task = asyncio.current_task(self.loop)
        assert task is not None, "forward runs in a task"
        timer = self.loop.call_at(deadline, _expire, task, trace)
        try:
            answer = await self._attempts(
                trace, body, campaign, partition, secondary, deadline, deadline_ms
            )
        except asyncio.CancelledError:
            if not trace.expired:
                raise  # cancelled from outside (shutdown): not ours to answer
            task.uncancel()
            if trace.waiting:
                self.breaker(trace.shard).record_failure()
            doing = f"waiting for shard {trace.shard}" if trace.waiting else "between retries"
            answer = error_answer(504, f"deadline passed {doing}", trace.shard)
        finally:
            timer.cancel()
        return answer, trace.version

    async def _attempts(
        self,
        trace: _Trace,
        body: bytes,
        campaign: str,
        partition: int,
        secondary: str,
        deadline: float,
        deadline_ms: int,
    ) -> Answer:
        loop = self.loop
        snapshot = self.holder.current
        refreshed = False
        backoffs = 0
        while True:
            shard = snapshot.route(partition, campaign, secondary)
            trace.shard, trace.version = shard, snapshot.version
            # NB: before the breaker, whose half-open probe must not be spent on a shed request.
            allowance = self.allowance
            if allowance is not None and not allowance.admit(shard, campaign, loop.time()):
                limit = allowance.inflight_limit
                answer = error_answer(
                    429,
                    f"shard {shard} has over {limit} requests in flight and campaign "
                    f"{campaign!r} sent the largest share of them; it is shed until it is split",
                    **{"Retry-After": str(RETRY_AFTER_S)},
                )
                answer.label = "shed"
                return answer
            breaker = self.breaker(shard)
            if not breaker.allow():
                retry_after = max(1, round(breaker.retry_in()))
                return error_answer(
                    503,
                    f"circuit breaker of shard {shard} is open",
                    shard,
                    **{"Retry-After": str(retry_after)},
                )
            headers = {
                "Content-Type": "application/json",
                CAMPAIGN_HEADER: campaign,
                VERSION_HEADER: str(snapshot.version),
                DEADLINE_HEADER: str(deadline_ms),
            }
            trace.waiting = True
            if allowance is not None:
                allowance.sent(shard)
            try:
                pool = self.clients.pool(shard, snapshot.urls[shard])
                got = await pool.post(AUCTION_PATH, headers, body)
            except asyncio.CancelledError:
                raise  # the deadline: forward() answers it (trace.waiting is still set)
            except (ShardConnectionError, OSError) as exc:
                trace.waiting = False
                breaker.record_failure()
                return error_answer(
                    502, f"shard {shard} failed: {type(exc).__name__}: {exc}", shard
                )
            finally:
                if allowance is not None:
                    allowance.answered(shard)
            trace.waiting = False
            breaker.record_success()
            status = got.status

            if status == 421 and not refreshed:
                refreshed = True
                self.metrics.retried("misdirected")
                self.watcher.refresh()
                self.watcher.poke()
                snapshot = self.holder.current
                continue
            if status == 503 and _RETRY_MS in got.headers:
                wait = _retry_ms(got.headers) / 1000.0
                if loop.time() + wait + MIN_ATTEMPT_S < deadline:
                    self.metrics.retried("catching_up")
                    await asyncio.sleep(wait)
                    snapshot = self.holder.current
                    continue
            if status == 429 and _ESTIMATE not in got.headers:
                wait = BACKOFF_BASE_S * (2**backoffs) * random.uniform(0.5, 1.5)
                if loop.time() + wait + MIN_ATTEMPT_S < deadline:
                    backoffs += 1
                    self.metrics.retried("overloaded")
                    await asyncio.sleep(wait)
                    snapshot = self.holder.current
                    continue
            answered_by = got.headers.get(_SHARD, shard)
            return Answer(status, got.body, pass_headers(got.headers), answered_by)


def _expire(task: asyncio.Task[object], trace: _Trace) -> None:
    trace.expired = True
    task.cancel()


_RETRY_MS = RETRY_MS_HEADER.lower()
_ESTIMATE = ESTIMATE_HEADER.lower()
_SHARD = SHARD_HEADER.lower()


def _retry_ms(headers: dict[str, str]) -> int:
    try:
        return max(1, int(headers.get(_RETRY_MS, DEFAULT_RETRY_MS)))
    except ValueError:
        return DEFAULT_RETRY_MS


def pass_headers(got: dict[str, str]) -> dict[str, str]:
    """The shard's headers the client sees (``got`` has lower-case names, as parsed)."""
    return {name: got[lower] for lower, name in _PASSED if lower in got}
