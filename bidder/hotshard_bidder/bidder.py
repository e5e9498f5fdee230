"""``hotshard bidder``: run one bidder shard.

Flags override ``HOTSHARD_BIDDER_*`` environment variables, which override the defaults in
:class:`~hotshard_bidder.settings.BidderSettings`. The shard refuses to start without a
readable routing table, so ``/readyz`` answering means the table is loaded.
"""

from __future__ import annotations

import argparse
import asyncio
import logging

from prometheus_client import disable_created_metrics

from hotshard_bidder.app import BidderApp
from hotshard_bidder.http_server import HttpServer
from hotshard_bidder.serving import install_uvloop, open_service, serve, tick
from hotshard_bidder.settings import (
    COMMON_FIELDS,
    BidderSettings,
    add_common_flags,
)

log = logging.getLogger(__name__)

HOT_ROLL_INTERVAL_S = 0.25
"""How often the hot-campaign window is checked, so an idle shard still publishes on time."""


def configure(parser: argparse.ArgumentParser) -> None:
    add_common_flags(parser)
    parser.add_argument("--shard", help="this shard's name in the routing table (required)")
    parser.add_argument(
        "--max-inflight",
        type=int,
        help="requests in progress beyond which new ones get 429 (default 64)",
    )
    parser.add_argument(
        "--budget-per-second",
        type=float,
        help="default budget per campaign per second (default 50)",
    )
    parser.add_argument(
        "--work-rounds", type=int, help="scoring rounds per request, the CPU cost knob (default 24)"
    )
    parser.add_argument(
        "--no-resource-guard",
        dest="resource_guard",
        action="store_false",
        default=None,
        help="measure and report costs but never throttle, trip or roll back",
    )
    parser.add_argument(
        "--cpu-budget",
        type=float,
        help="CPU cores one campaign may use on this shard (default 0.25)",
    )


def main(args: argparse.Namespace) -> int:
    fields = (
        *COMMON_FIELDS,
        *("shard", "max_inflight", "budget_per_second", "work_rounds"),
        *("resource_guard", "cpu_budget"),
    )
    opened = open_service(BidderSettings, args, fields, "bidder")
    if opened is None:
        return 2
    settings, watch = opened
    if settings.shard not in watch.holder.current.urls:
        log.warning(
            "shard %s is not in routing table version %d; it will answer 421",
            settings.shard,
            watch.holder.current.version,
        )
    install_uvloop()
    # NB: *_created series double the exposition and nobody queries them.
    disable_created_metrics()  # type: ignore[no-untyped-call]
    bidder = BidderApp(settings, watch)

    async def run() -> bool:
        server = HttpServer(
            bidder.routes(), settings.max_body_bytes, bidder.count_refusal, "bidder"
        )
        background = [
            watch.watcher.run,
            bidder.judge_periodically,
            lambda: tick(HOT_ROLL_INTERVAL_S, bidder.metrics.hot.roll),
        ]
        try:
            name = f"bidder {settings.shard}"
            return await serve(server, settings.host, settings.port, name, background)
        finally:
            bidder.close()

    return 0 if asyncio.run(run()) else 1
