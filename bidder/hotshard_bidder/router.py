"""``hotshard router``: the fleet's front door.

The router reads a request once (one JSON parse), finds its campaign key with the same
:class:`KeyExtractor` as the bidders, counts it in the heavy-hitter sketch, sets its deadline
(``tmax`` clamped to ``--max-deadline-ms``, else ``--default-deadline-ms``) and hands it to
:class:`~hotshard_bidder.forwarding.Forwarder`. The answer carries ``X-Hotshard-Shard`` (who
answered), ``X-Hotshard-Cost-Us`` (the shard's CPU) and ``X-Hotshard-Routing-Version`` (the
router's table version that routed the final attempt). Requests the router cannot route (bad
JSON, no key, too large) are answered by the router itself with 400/413 and a reason.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from prometheus_client import disable_created_metrics

from hotshard.routing import RoutingSnapshot
from hotshard_bidder.admission import RETRY_AFTER_S, Admission
from hotshard_bidder.forwarding import Answer, Forwarder, error_answer
from hotshard_bidder.router_metrics import RouterMetrics
from hotshard_bidder.serving import (
    VERSION_HEADER,
    TableWatch,
    install_uvloop,
    json_response,
    open_service,
    read_body,
    serve,
    tick,
)
from hotshard_bidder.settings import (
    COMMON_FIELDS,
    RouterSettings,
    add_common_flags,
)
from hotshard_bidder.shedding import HotKeyShedder

log = logging.getLogger(__name__)

HOT_ROLL_INTERVAL_S = 0.25
"""How often the heavy-hitter window is checked, so an idle router still publishes on time."""
KEEPALIVE_S = 30.0
"""Idle keep-alive connections to shards live 30 s: well under aiohttp's 75 s server timeout."""


class RouterApp:
    """Request handling of the router and the state it keeps between requests."""

    def __init__(self, settings: RouterSettings, watch: TableWatch) -> None:
        self.settings = settings
        self.watch = watch
        self.extractor = settings.key_extractor()
        self.metrics = RouterMetrics(settings.hot_k, self._partition_of)
        self.metrics.set_version(watch.holder.current.version)
        watch.holder.on_swap(self._on_swap)
        self.forwarder: Forwarder | None = None
        self.admission = Admission(settings.max_inflight)
        self.shedder = HotKeyShedder(settings.hot_key_limit_rps, self.metrics.hot)

    def _partition_of(self, campaign: str) -> int:
        return self.watch.holder.current.partition(campaign)

    def _on_swap(self, old: RoutingSnapshot, new: RoutingSnapshot) -> None:
        self.metrics.set_version(new.version)
        log.info("router adopted routing table version %d (was %d)", new.version, old.version)

    async def start_session(self, app: web.Application) -> None:
        connector = aiohttp.TCPConnector(
            limit=0,
            limit_per_host=self.settings.connections_per_shard,
            keepalive_timeout=KEEPALIVE_S,
        )
        session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None),  # every request has its own deadline
            auto_decompress=False,
            skip_auto_headers=("User-Agent",),
        )
        self.forwarder = Forwarder(
            self.watch.holder,
            self.watch.watcher,
            session,
            self.metrics,
            breaker_failures=self.settings.breaker_failures,
            breaker_cooloff=self.settings.breaker_cooloff,
        )

    async def close_session(self, app: web.Application) -> None:
        if self.forwarder is not None:
            await self.forwarder.session.close()

    def build(self) -> web.Application:
        app = web.Application(client_max_size=self.settings.max_body_bytes)
        app.on_startup.append(self.start_session)
        app.on_cleanup.append(self.close_session)
        app.router.add_post("/openrtb2/auction", self.auction)
        app.router.add_post("/", self.auction)
        app.router.add_get("/hot", self.hot)
        app.router.add_get("/metrics", self.prometheus)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        return app

    def deadline_ms(self, doc: Any) -> int:
        """The request's time budget: its ``tmax`` clamped to the maximum, else the default."""
        tmax = doc.get("tmax") if isinstance(doc, dict) else None
        if isinstance(tmax, int) and not isinstance(tmax, bool) and tmax > 0:
            return min(tmax, self.settings.max_deadline_ms)
        return self.settings.default_deadline_ms

    async def auction(self, request: web.Request) -> web.Response:
        loop = asyncio.get_running_loop()
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
        body = answer.body if answer.status != 204 else None
        return web.Response(status=answer.status, body=body, headers=answer.headers)

    async def _route(self, request: web.Request, arrived: float) -> tuple[Answer, int]:
        limit = self.settings.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            return error_answer(413, f"body over the {limit}-byte limit"), 0
        try:
            body = await read_body(request)
        except web.HTTPRequestEntityTooLarge:
            return error_answer(413, f"body over the {limit}-byte limit"), 0
        if isinstance(body, str):
            return error_answer(408, body), 0
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return error_answer(400, f"malformed JSON: {exc}"), 0
        if not isinstance(doc, dict):
            return error_answer(400, "a BidRequest must be a JSON object"), 0
        campaign = self.extractor.campaign(request.headers, doc)
        if campaign is None:
            return error_answer(400, f"no campaign key; looked in {self.extractor.describe()}"), 0
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
        assert self.forwarder is not None, "the session starts with the app"
        return await self.forwarder.forward(
            body,
            campaign,
            partition,
            self.extractor.secondary(doc),
            arrived + budget_ms / 1000.0,
            deadline_ms,
        )

    async def hot(self, request: web.Request) -> web.Response:
        return json_response(200, self.metrics.hot_json())

    async def prometheus(self, request: web.Request) -> web.Response:
        breakers = self.forwarder.breakers if self.forwarder is not None else {}
        return web.Response(
            body=self.metrics.exposition(breakers),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )

    async def healthz(self, request: web.Request) -> web.Response:
        return json_response(200, {"alive": True})

    async def readyz(self, request: web.Request) -> web.Response:
        ready = self.forwarder is not None
        version = self.watch.holder.current.version
        return json_response(200 if ready else 503, {"ready": ready, "version": version})


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
    if opened is None:
        return 2
    settings, watch = opened
    install_uvloop()
    # NB: *_created series double the exposition and nobody queries them.
    disable_created_metrics()  # type: ignore[no-untyped-call]
    router = RouterApp(settings, watch)

    async def run() -> None:
        await serve(
            router.build(),
            settings.host,
            settings.port,
            "router",
            [watch.watcher.run, lambda: tick(HOT_ROLL_INTERVAL_S, router.metrics.hot.roll)],
        )

    asyncio.run(run())
    return 0
