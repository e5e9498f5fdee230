"""``hotshard router``: the fleet's front door.

The router reads a request once (one JSON parse), finds its campaign key with the same
:class:`KeyExtractor` as the bidders, counts it in the heavy-hitter sketch, sets its deadline
(``tmax`` clamped to ``--max-deadline-ms``, else ``--default-deadline-ms``) and hands it to
:class:`~hotshard_bidder.forwarding.Forwarder`. The answer carries ``X-Hotshard-Shard`` (who
answered), ``X-Hotshard-Cost-Us`` (the shard's CPU) and ``X-Hotshard-Routing-Version`` (the
router's table version that routed the final attempt). Requests the router cannot route (bad
JSON, no key, too large) are answered by the router itself with 400/413 and a reason.

It serves HTTP with :mod:`hotshard_bidder.http_server` and forwards with
:mod:`hotshard_bidder.shard_client` (httptools on uvloop, no framework): at the front door the
HTTP layer is most of the cost, and these cost a fraction of aiohttp's (``docs/http-stack.md``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from prometheus_client import disable_created_metrics

from hotshard.routing import RoutingSnapshot
from hotshard.routing.keys import key_problem
from hotshard_bidder.admission import RETRY_AFTER_S, Admission
from hotshard_bidder.fair_shedding import ShardAllowanceSettings
from hotshard_bidder.forwarding import Answer, Forwarder, error_answer
from hotshard_bidder.http_server import Handler, HttpServer, Request, Response
from hotshard_bidder.router_metrics import RouterMetrics
from hotshard_bidder.serving import (
    VERSION_HEADER,
    TableWatch,
    install_uvloop,
    load_settings,
    open_service,
    serve,
    tick,
)
from hotshard_bidder.settings import (
    COMMON_FIELDS,
    RouterSettings,
    add_common_flags,
)
from hotshard_bidder.shard_client import ShardClients
from hotshard_bidder.shedding import HotKeyShedder

log = logging.getLogger(__name__)

HOT_ROLL_INTERVAL_S = 0.25
"""How often the heavy-hitter window is checked, so an idle router still publishes on time."""
KEEPALIVE_S = 30.0
"""Idle keep-alive connections to shards live 30 s: well under the shards' 75 s idle timeout."""
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class RouterApp:
    """Request handling of the router and the state it keeps between requests.

    Build it inside the running event loop: it and its forwarder keep that loop.
    """

    def __init__(
        self,
        settings: RouterSettings,
        watch: TableWatch,
        allowance: ShardAllowanceSettings | None = None,
    ) -> None:
        self.settings = settings
        self.watch = watch
        self.extractor = settings.key_extractor()
        self.metrics = RouterMetrics(settings.hot_k, self._partition_of)
        self.metrics.set_version(watch.holder.current.version)
        watch.holder.on_swap(self._on_swap)
        self.loop = asyncio.get_running_loop()
        self.clients = ShardClients(settings.connections_per_shard, KEEPALIVE_S)
        self.forwarder = Forwarder(
            watch.holder,
            watch.watcher,
            self.clients,
            self.metrics,
            breaker_failures=settings.breaker_failures,
            breaker_cooloff=settings.breaker_cooloff,
            allowance=(allowance or ShardAllowanceSettings()).build(),
        )
        self.admission = Admission(settings.max_inflight)
        self.shedder = HotKeyShedder(settings.hot_key_limit_rps, self.metrics.hot)

    def _partition_of(self, campaign: str) -> int:
        return self.watch.holder.current.partition(campaign)

    def _on_swap(self, old: RoutingSnapshot, new: RoutingSnapshot) -> None:
        self.metrics.set_version(new.version)
        log.info("router adopted routing table version %d (was %d)", new.version, old.version)

    def routes(self) -> dict[tuple[str, str], Handler]:
        return {
            ("POST", "/openrtb2/auction"): self.auction,
            ("POST", "/"): self.auction,
            ("GET", "/hot"): self.hot,
            ("GET", "/metrics"): self.prometheus,
            ("GET", "/healthz"): self.healthz,
            ("GET", "/readyz"): self.readyz,
        }

    def count_refusal(self, status: int) -> None:
        """Count a request the HTTP layer answered itself (408 slow body, 413, bad HTTP)."""
        outcome = {408: "http_408", 413: "too_large"}.get(status, "bad_request")
        self.metrics.record(outcome, "none", 0.0)

    def deadline_ms(self, doc: Any) -> int:
        """The request's time budget: its ``tmax`` clamped to the maximum, else the default."""
        tmax = doc.get("tmax") if isinstance(doc, dict) else None
        if isinstance(tmax, int) and not isinstance(tmax, bool) and tmax > 0:
            return min(tmax, self.settings.max_deadline_ms)
        return self.settings.default_deadline_ms

    async def auction(self, request: Request) -> Response:
        loop = self.loop
        arrived = loop.time()
        self.admission.enter()
        try:
            if self.admission.overloaded():
                limit = self.admission.limit
                retry = {"Retry-After": str(RETRY_AFTER_S)}
                answer = error_answer(429, f"router has over {limit} requests in flight", **retry)
                version = 0
            else:
                answer, version = await self._route(request, arrived)
        except Exception as exc:  # a bug of ours must still answer, never vanish
            log.exception("unexpected failure routing a request")
            answer, version = error_answer(502, f"router failure: {exc!r}"), 0
        finally:
            self.admission.leave()
        self.metrics.record(answer.outcome, answer.shard, loop.time() - arrived)
        answer.headers[VERSION_HEADER] = str(version or self.watch.holder.current.version)
        return Response(answer.status, answer.body, answer.headers)

    async def _route(self, request: Request, arrived: float) -> tuple[Answer, int]:
        try:
            doc = orjson.loads(request.body)
        except orjson.JSONDecodeError as exc:
            return error_answer(400, f"malformed JSON: {exc}"), 0
        if not isinstance(doc, dict):
            return error_answer(400, "a BidRequest must be a JSON object"), 0
        campaign = self.extractor.campaign(request.headers, doc)
        if campaign is None:
            return error_answer(400, f"no campaign key; looked in {self.extractor.describe()}"), 0
        problem = key_problem(campaign)  # NB: the bidders' own check, so both refuse alike
        if problem is not None:
            return error_answer(400, problem), 0
        self.metrics.hot.add(campaign)
        partition = self.watch.holder.current.partition(campaign)  # fixed across table versions
        if self.shedder.enabled and not self.shedder.allow(
            campaign, lambda: self.watch.holder.current.ways(partition, campaign), time.time()
        ):
            per_shard = self.settings.hot_key_limit_rps
            answer = error_answer(
                429,
                f"campaign {campaign!r} is over its {per_shard:g} req/s per-shard allowance at the "
                "router; its excess is shed until it is split",
                **{"Retry-After": str(RETRY_AFTER_S)},
            )
            answer.label = "shed"
            return answer, 0
        budget_ms = self.deadline_ms(doc)
        deadline_ms = int(time.time() * 1000) + budget_ms
        return await self.forwarder.forward(
            request.body,
            campaign,
            partition,
            self.extractor.secondary(doc),
            arrived + budget_ms / 1000.0,
            deadline_ms,
        )

    async def hot(self, request: Request) -> Response:
        return Response.json(200, self.metrics.hot_json())

    async def prometheus(self, request: Request) -> Response:
        body = self.metrics.exposition(self.forwarder.breakers)
        return Response(200, body, {"Content-Type": METRICS_TYPE})

    async def healthz(self, request: Request) -> Response:
        return Response.json(200, {"alive": True})

    async def readyz(self, request: Request) -> Response:
        return Response.json(200, {"ready": True, "version": self.watch.holder.current.version})


async def serve_router(
    router: RouterApp, background: list[Callable[[], Coroutine[Any, Any, None]]]
) -> bool:
    """Serve until SIGTERM/SIGINT, then answer what is in flight and stop; ``False`` when the
    router could not listen (the reason is logged)."""
    settings = router.settings
    server = HttpServer(router.routes(), settings.max_body_bytes, router.count_refusal, "router")
    try:
        return await serve(server, settings.host, settings.port, "router", background)
    finally:
        router.clients.close()


def configure(parser: argparse.ArgumentParser) -> None:
    add_common_flags(parser)
    parser.add_argument(
        "--default-deadline-ms", type=int, help="deadline of a request without tmax (default 100)"
    )
    parser.add_argument("--max-deadline-ms", type=int, help="clamp on tmax (default 500)")
    parser.add_argument(
        "--breaker-failures",
        type=int,
        help="consecutive failures that open a shard's breaker (default 5)",
    )
    parser.add_argument(
        "--breaker-cooloff",
        type=float,
        help="seconds an open breaker waits before a probe (default 1.0)",
    )
    parser.add_argument("--hot-k", type=int, help="campaigns in the hot top-k (default 20)")
    parser.add_argument(
        "--connections-per-shard", type=int, help="keep-alive pool size per shard (default 64)"
    )
    parser.add_argument(
        "--max-inflight", type=int, help="requests in progress beyond which 429 (default 256)"
    )
    parser.add_argument(
        "--hot-key-limit-rps",
        type=float,
        help="req/s one campaign may send per shard serving it before its excess is shed "
        "(default 0: off)",
    )
    parser.add_argument(
        "--shard-inflight-limit",
        type=int,
        help="requests in flight to one shard beyond which the campaign with the largest share "
        "of its recent requests is shed (default 0: off; 4 suits a shard of 0.15-1 core)",
    )
    parser.add_argument(
        "--shard-shed-share",
        type=float,
        help="share of a shard's recent requests a campaign must hold to be shed there "
        "(default 0.25)",
    )


def main(args: argparse.Namespace) -> int:
    fields = (
        *COMMON_FIELDS,
        "default_deadline_ms",
        "max_deadline_ms",
        "breaker_failures",
        "breaker_cooloff",
        "hot_k",
        "connections_per_shard",
        "max_inflight",
        "hot_key_limit_rps",
    )
    opened = open_service(RouterSettings, args, fields, "router")
    # NB: loaded even when the others were bad, so that one run names every bad flag.
    allowance = load_settings(
        ShardAllowanceSettings, args, ("shard_inflight_limit", "shard_shed_share"), "router"
    )
    if opened is None or allowance is None:
        return 2
    settings, watch = opened
    install_uvloop()
    # NB: *_created series double the exposition and nobody queries them.
    disable_created_metrics()  # type: ignore[no-untyped-call]

    async def run() -> bool:
        router = RouterApp(settings, watch, allowance)
        roll = router.metrics.hot.roll
        background = [watch.watcher.run, lambda: tick(HOT_ROLL_INTERVAL_S, roll)]
        return await serve_router(router, background)

    return 0 if asyncio.run(run()) else 1
