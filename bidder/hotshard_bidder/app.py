"""The bidder shard's HTTP handlers: from request bytes to a bid, a no-bid or a reasoned refusal.

One auction request goes through, in order: size limit (413), deadline (504 when the router's
deadline has already passed), admission (429), JSON and OpenRTB checks (400), campaign key
(400), table version (503 when the router is ahead of us and we cannot catch up at once),
ownership (421 naming the owner), the campaign's CPU tokens and resource breaker (429, see
:mod:`.resources`), its targeting rules, then pricing under the campaign's budget lease (200 or
204). The CPU time of the work is measured with ``time.thread_time()``, charged to the campaign
and returned in ``X-Hotshard-Cost-Us`` on every answer, refusals included. The rules of a
campaign flagged anomalous run in a worker thread at the lowest CPU priority, so that its
expensive requests do not stall the event loop that serves the shard's other campaigns; the
predicted cost of a request refused for its cost is counted as refused demand, which the
control loop reads to move the campaign to the sandbox tier. Campaign configurations are read
and written at ``/campaigns/{campaign}/config``; costs and containment events are at
``/resources``. No client input can produce a 500: a catch-all answers 400, and logs the first
such surprise once, since it is a bug of ours. The HTTP layer (:mod:`.http_server`) answers
what never reaches a handler itself: bodies over the limit (413) or too slow to arrive (408),
and malformed HTTP (400); :meth:`BidderApp.count_refusal` counts those in the metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from hotshard.routing.keys import key_problem
from hotshard_bidder import scoring
from hotshard_bidder.admission import RETRY_AFTER_S, Admission
from hotshard_bidder.campaigns import CampaignBook
from hotshard_bidder.http_server import Handler, Request, Response
from hotshard_bidder.metrics import NO_PARTITION, BidderMetrics
from hotshard_bidder.openrtb import BadRequest, Bid, build_response, check_request, parse_json
from hotshard_bidder.resources import THROTTLED, CampaignResources, ResourceGuard
from hotshard_bidder.serving import (
    COST_HEADER,
    DEADLINE_HEADER,
    JSON,
    RETRY_MS_HEADER,
    SHARD_HEADER,
    VERSION_HEADER,
    TableWatch,
    json_response,
)
from hotshard_bidder.settings import BidderSettings
from hotshard_bidder.targeting import OFF_LOOP_EVAL_SECONDS, CampaignConfig

log = logging.getLogger(__name__)

ESTIMATE_HEADER = "X-Hotshard-Cost-Estimate-Us"
"""On a 429 for CPU tokens: what the refused request was predicted to cost."""
CATCH_UP_RETRY_MS = 20
"""How long a router should wait before retrying a 503 "table behind": a few file polls."""
MAX_WAITING_RULES = 3
"""Requests that may wait for the rules worker: at its 30 ms bound a fourth would wait ~100 ms,
the common tmax, so it is refused (429) instead."""
JUDGE_EVERY_S = 0.25
"""Rollouts are judged at least this often without requests: a campaign moved to the sandbox
is rolled back here within a quarter second of the evidence being complete."""
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_HTTP_REFUSALS = {413: "too_large"}
"""The metrics outcome of a request the HTTP layer refused; any other status is a bad request."""
WORKER_NICE = 19
"""The rules worker runs at the lowest priority: inside the shard's cgroup the kernel gives the
event loop's thread the CPU first, and the worker only what is left."""


def _lower_priority() -> None:
    # NB: on Linux a thread id names one thread: this lowers the worker only, not the process.
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WORKER_NICE)


def _int_header(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


class BidderApp:
    """One shard's request handling and the state it keeps between requests."""

    def __init__(self, settings: BidderSettings, watch: TableWatch) -> None:
        self.shard = settings.shard
        self.settings = settings
        self.watch = watch
        self.extractor = settings.key_extractor()
        self.metrics = BidderMetrics(settings.shard)
        self.admission = Admission(settings.max_inflight)
        self.book = CampaignBook(settings.shard, settings.budget_per_second)
        self.rounds = settings.work_rounds
        self.serve_any_partition = settings.serve_any_partition  # a benchmark switch
        self.guard = ResourceGuard(settings.shard, settings.guard_policy())
        self.guard.set_tier(watch.holder.current.tiers.get(settings.shard, "base"))
        self.rules_worker = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"rules-{settings.shard}", initializer=_lower_priority
        )
        self._waiting_rules = 0
        self._reported_bug = False
        watch.holder.on_swap(self._on_swap)
        self.metrics.set_version(watch.holder.current.version)

    def _on_swap(self, old: Any, new: Any) -> None:
        self.book.note_swap(old, new)
        self.guard.set_tier(new.tiers.get(self.shard, "base"))
        self.metrics.set_version(new.version)
        log.info("shard %s adopted routing table version %d", self.shard, new.version)

    def routes(self) -> dict[tuple[str, str], Handler]:
        """What :class:`~hotshard_bidder.http_server.HttpServer` serves for this shard."""
        return {
            ("POST", "/openrtb2/auction"): self.auction,
            ("POST", "/"): self.auction,
            ("GET", "/metrics"): self.prometheus,
            ("GET", "/stats"): self.stats,
            ("GET", "/healthz"): self.healthz,
            ("GET", "/readyz"): self.readyz,
            ("PUT", "/campaigns/{campaign}/config"): self.put_config,
            ("GET", "/campaigns/{campaign}/config"): self.get_config,
            ("GET", "/resources"): self.resources,
        }

    def count_refusal(self, status: int) -> None:
        """Count a request the HTTP layer answered itself (413, 408, 400)."""
        self.metrics.record(NO_PARTITION, _HTTP_REFUSALS.get(status, "bad_request"), 0.0, 0.0)

    async def judge_periodically(self) -> None:
        """Judge the rollouts that are due, every ``JUDGE_EVERY_S``, until cancelled."""
        while True:
            await asyncio.sleep(JUDGE_EVERY_S)
            self.guard.judge_due(time.time())

    def close(self) -> None:
        """Stop the rules worker; a rule evaluation in progress runs out its bound."""
        self.rules_worker.shutdown(wait=False, cancel_futures=True)

    # -- the auction ------------------------------------------------------------------------

    async def auction(self, request: Request) -> Response:
        started = time.perf_counter()
        self.admission.enter()
        try:
            # Yield once so requests the server has already accepted are counted as in flight.
            await asyncio.sleep(0)
            return await self._serve(request, started)
        except Exception as exc:
            if not self._reported_bug:
                self._reported_bug = True
                log.exception("unexpected failure serving a request (reported once)")
            return self._refuse(
                400, "bad_request", f"request could not be served: {exc!r}", started
            )
        finally:
            self.admission.leave()

    def _headers(self, version: int, cpu: float | None = None) -> dict[str, str]:
        headers = {SHARD_HEADER: self.shard, VERSION_HEADER: str(version)}
        if cpu is not None:
            headers[COST_HEADER] = str(round(cpu * 1e6))
        return headers

    def _refuse(
        self,
        status: int,
        outcome: str,
        reason: str,
        started: float,
        *,
        partition: str = NO_PARTITION,
        cpu: float = 0.0,
        extra: dict[str, str] | None = None,
        payload: dict[str, Any] | None = None,
    ) -> Response:
        version = self.watch.holder.current.version
        self.metrics.record(partition, outcome, cpu, time.perf_counter() - started)
        headers = self._headers(version, cpu)
        if extra:
            headers.update(extra)
        return json_response(status, {"error": reason, **(payload or {})}, headers)

    async def _serve(self, request: Request, started: float) -> Response:
        deadline = _int_header(request.headers.get(DEADLINE_HEADER))
        if deadline is not None and deadline <= time.time() * 1000:
            return self._refuse(
                504, "expired", "the request's deadline passed before work began", started
            )
        if self.admission.overloaded():
            return self._refuse(
                429,
                "overloaded",
                f"over {self.admission.limit} requests in flight; retry",
                started,
                extra={"Retry-After": str(RETRY_AFTER_S)},
            )
        return await self._bid(request, started)

    async def _bid(self, request: Request, started: float) -> Response:
        cpu_start = time.thread_time()
        try:
            view = check_request(parse_json(request.body))
        except BadRequest as exc:
            return self._refuse(
                400, "bad_request", str(exc), started, cpu=time.thread_time() - cpu_start
            )
        campaign = self.extractor.campaign(request.headers, view.doc)
        if campaign is None:
            return self._refuse(
                400,
                "bad_request",
                f"no campaign key; looked in {self.extractor.describe()}",
                started,
                cpu=time.thread_time() - cpu_start,
            )
        problem = key_problem(campaign)
        if problem is not None:
            return self._refuse(
                400, "bad_request", problem, started, cpu=time.thread_time() - cpu_start
            )
        snapshot = self.watch.holder.current
        wanted = _int_header(request.headers.get(VERSION_HEADER))
        if wanted is not None and wanted > snapshot.version:
            reading = time.thread_time()
            self.watch.watcher.refresh()
            self.watch.watcher.poke()
            snapshot = self.watch.holder.current
            # NB: reading the new table is the shard's work, not this campaign's: charged to
            # it, one read could empty its CPU tokens and get its next requests refused.
            cpu_start += time.thread_time() - reading
            if wanted > snapshot.version:
                return self._refuse(
                    503,
                    "retry",
                    f"routing table version {snapshot.version} is behind {wanted}",
                    started,
                    cpu=time.thread_time() - cpu_start,
                    extra={"Retry-After": "1", RETRY_MS_HEADER: str(CATCH_UP_RETRY_MS)},
                )
        partition = snapshot.partition(campaign)
        label = str(partition)
        owner = snapshot.route(partition, campaign, self.extractor.secondary(view.doc))
        if owner != self.shard and not self.serve_any_partition:
            return self._refuse(
                421,
                "misdirected",
                f"partition {partition} is served by {owner}",
                started,
                partition=label,
                cpu=time.thread_time() - cpu_start,
                payload={"owner": owner, "version": snapshot.version, "partition": partition},
            )
        now = time.time()
        res = self.guard.entry(campaign, now)
        refusal = self.guard.admit(res, view, now)
        if (
            refusal is None
            and self.guard.off_loop(res)
            and self._waiting_rules >= MAX_WAITING_RULES
        ):
            refusal = THROTTLED
            res.throttled += 1
        if refusal is not None:
            self.metrics.record_refused(label, campaign, self.guard.demanded(res))
            return self._refuse(
                429,
                refusal,
                f"campaign {campaign!r} is over its CPU budget on {self.shard} ({refusal})",
                started,
                partition=label,
                cpu=time.thread_time() - cpu_start,
                extra={
                    "Retry-After": self.guard.retry_after(res, refusal, now),
                    ESTIMATE_HEADER: str(round(res.predicted * 1e6)),
                },
            )
        bids = []
        worker_cpu = 0.0
        rules = res.rules
        timeouts = rules.timeouts if rules is not None else 0
        if rules is not None and self.guard.off_loop(res):
            paused = time.thread_time()
            matched, worker_cpu = await self._match_off_loop(res, view.doc)
            # NB: the loop's thread served other requests meanwhile: not this one's CPU.
            cpu_start += time.thread_time() - paused
            rules_cpu, bound = worker_cpu, OFF_LOOP_EVAL_SECONDS
            now = time.time()
        else:
            matched = rules is None or rules.matches(view.doc)
            rules_cpu = time.thread_time() - cpu_start if res.profiling else 0.0
            bound = rules.max_eval_seconds if rules is not None else 0.0
        ran_out = rules is not None and rules.timeouts > timeouts
        if matched:
            state = self.book.state(campaign, partition, snapshot)
            shared = scoring.request_features(view)
            device = scoring.device_value(view.doc)
            for imp in view.imps:
                price, media = scoring.price_imp(imp, shared, campaign, self.rounds, device)
                if price > 0.0 and self.book.try_spend(state, price / 1000.0):
                    bids.append(Bid(imp.id, price, media))
        response_body = build_response(view.id, campaign, self.shard, bids) if bids else b""
        cpu = time.thread_time() - cpu_start + worker_cpu
        self.guard.settle(res, cpu, rules_cpu, now, ran_out=bound if ran_out else 0.0)
        outcome = "bid" if bids else "nobid"
        self.metrics.record(label, outcome, cpu, time.perf_counter() - started, campaign)
        headers = self._headers(snapshot.version, cpu)
        if not bids:
            return Response(204, b"", headers)
        headers["Content-Type"] = JSON
        return Response(200, response_body, headers)

    async def _match_off_loop(
        self, res: CampaignResources, doc: dict[str, Any]
    ) -> tuple[bool, float]:
        """Evaluate the request's rules in the worker thread: (matched, the worker's CPU)."""
        rules = res.rules
        assert rules is not None
        # NB: other requests of the campaign run admit() while this one waits; its scratch
        # values are put back before settle(), which runs with no yield after this.
        scratch = res.hold()
        self._waiting_rules += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self.rules_worker, rules.matches_off_loop, doc)
        finally:
            self._waiting_rules -= 1
            res.resume(scratch)

    # -- operations -------------------------------------------------------------------------

    async def prometheus(self, request: Request) -> Response:
        self.metrics.set_inflight(self.admission.inflight)
        self.metrics.set_version(self.watch.holder.current.version)
        self.metrics.set_rollbacks(self.guard.rollbacks)
        return Response(200, self.metrics.exposition(), {"Content-Type": METRICS_TYPE})

    async def stats(self, request: Request) -> Response:
        self.metrics.set_rollbacks(self.guard.rollbacks)
        return json_response(
            200, self.metrics.stats(self.watch.holder.current.version, self.admission.inflight)
        )

    async def put_config(self, request: Request) -> Response:
        """Store a new version of a campaign's configuration; 400 names what is wrong."""
        campaign = request.params["campaign"]
        problem = key_problem(campaign)
        if problem is not None:
            return json_response(400, {"error": problem})
        try:
            config = CampaignConfig.model_validate_json(request.body)
        except ValueError as exc:
            return json_response(400, {"error": f"invalid campaign configuration: {exc}"})
        stored = self.guard.configure(campaign, config)
        log.info("campaign %s configuration version %d stored", campaign, stored.version)
        return json_response(200, {"campaign": campaign, **stored.describe()})

    async def get_config(self, request: Request) -> Response:
        campaign = request.params["campaign"]
        found = self.guard.describe(campaign)
        if found is None:
            return json_response(404, {"error": f"no state for campaign {campaign!r} here"})
        return json_response(200, found)

    async def resources(self, request: Request) -> Response:
        return json_response(200, self.guard.report())

    async def healthz(self, request: Request) -> Response:
        return json_response(200, {"alive": True, "shard": self.shard})

    async def readyz(self, request: Request) -> Response:
        snapshot = self.watch.holder.current
        known = self.shard in snapshot.urls
        payload = {
            "ready": True,
            "shard": self.shard,
            "version": snapshot.version,
            "in_table": known,
        }
        return json_response(200, payload)
