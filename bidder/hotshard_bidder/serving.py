"""What the bidder and the router share to run: the table watch, the event loop, the HTTP shell.

Both services load the routing table from a :class:`FileRoutingStore` (or, on a cluster, the
routing ConfigMap: :mod:`hotshard_bidder.configmap_watch`), keep it current with a
:class:`TableFollower` feeding a :class:`SnapshotHolder`, and run on uvloop until SIGTERM or
SIGINT, then finish what is in flight and exit 0. The bidder serves aiohttp through
:func:`serve`; the router has its own, leaner HTTP layer (:mod:`hotshard_bidder.router_server`)
and shares the rest. Keeping that here leaves each service's module with only its own request
logic.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import orjson
from aiohttp import web
from pydantic import ValidationError

from hotshard.routing import RoutingSnapshot
from hotshard.routing.store import FileRoutingStore, FileTableWatcher, RoutingStore, SnapshotHolder
from hotshard_bidder.configmap_watch import ConfigMapRef, open_follower
from hotshard_bidder.settings import BidderSettings, RouterSettings, settings_from_args

log = logging.getLogger(__name__)

JSON = "application/json"
SHARD_HEADER = "X-Hotshard-Shard"
VERSION_HEADER = "X-Hotshard-Routing-Version"
COST_HEADER = "X-Hotshard-Cost-Us"
DEADLINE_HEADER = "X-Hotshard-Deadline-Ms"
RETRY_MS_HEADER = "X-Hotshard-Retry-After-Ms"
SHUTDOWN_GRACE_S = 5.0
"""Time given to requests in flight at SIGTERM: far above any request's deadline."""


def json_response(
    status: int, payload: Any, headers: Mapping[str, str] | None = None
) -> web.Response:
    """A JSON response serialized with orjson."""
    return web.Response(
        status=status, body=orjson.dumps(payload), content_type=JSON, headers=headers
    )


class TableFollower(Protocol):
    """What keeps a holder current, whether it polls a file or watches a ConfigMap."""

    def refresh(self) -> bool:
        """Adopt a newer table that is at hand now, without waiting; return whether one was."""
        ...

    def poke(self) -> None:
        """Ask the background task to look for a newer table at once (after a 421, say)."""
        ...

    async def run(self) -> None:
        """The background task that follows the table until cancelled."""
        ...


@dataclass
class TableWatch:
    """The routing table as one service sees it: store, current snapshot and its watcher."""

    store: RoutingStore
    holder: SnapshotHolder
    watcher: TableFollower

    @classmethod
    def from_settings(cls, settings: BidderSettings | RouterSettings) -> TableWatch:
        """The ConfigMap of ``routing_configmap`` when set, else the ``routing_file``."""
        if settings.routing_configmap is not None:
            store, follower = open_follower(ConfigMapRef.parse(settings.routing_configmap))
            return cls(store, follower.holder, follower)
        assert settings.routing_file is not None  # the settings require one of the two
        return cls.open(settings.routing_file, settings.poll_interval)

    @classmethod
    def open(cls, path: Path, poll_interval: float) -> TableWatch:
        """Load the table at ``path`` now; fail early (with the reason) if it is unreadable."""
        store = FileRoutingStore(path)
        table, _ = store.read()
        holder = SnapshotHolder(RoutingSnapshot(table))
        watcher = FileTableWatcher(store, holder, interval=poll_interval)
        watcher.refresh()
        return cls(store, holder, watcher)


ServiceSettings = TypeVar("ServiceSettings", BidderSettings, RouterSettings)


def open_service(
    cls: type[ServiceSettings], args: argparse.Namespace, fields: tuple[str, ...], name: str
) -> tuple[ServiceSettings, TableWatch] | None:
    """Settings from flags and environment, and the routing table they point at.

    Returns ``None`` after logging what was wrong (bad settings, or a table that cannot be
    read), so that ``main`` exits with status 2 and a message instead of a traceback.
    """
    prefix = cls.model_config.get("env_prefix", "")
    try:
        settings = settings_from_args(cls, args, fields)
    except ValidationError as exc:
        log.error("invalid %s settings (flags or %s* env):\n%s", name, prefix, exc)
        return None
    where = (
        f"ConfigMap {settings.routing_configmap}"
        if settings.routing_configmap is not None
        else str(settings.routing_file)
    )
    try:
        return settings, TableWatch.from_settings(settings)
    except (OSError, ValueError) as exc:
        log.error("cannot load the routing table from %s: %s", where, exc)
        return None


BODY_READ_TIMEOUT_S = 0.5
"""A body not fully received within 500 ms, the longest deadline a request may have, could not
be answered in time anyway: answer 408 and free the slot, so slow senders cannot hold the
in-flight budget that everyone else shares."""


async def read_body(request: web.Request) -> bytes | str:
    """The request's body, or the reason it could not be read (too slow, or the client left).

    ``web.HTTPRequestEntityTooLarge`` is left to the caller, which knows its limit.
    """
    try:
        async with asyncio.timeout(BODY_READ_TIMEOUT_S):
            return await request.read()
    except TimeoutError:
        return f"request body not received within {BODY_READ_TIMEOUT_S * 1000:.0f} ms"
    except ConnectionError as exc:
        return f"connection lost while reading the body: {exc}"


def install_uvloop() -> None:
    """Use uvloop when it is installed; the stdlib loop works too, only slower."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        log.warning("uvloop is not installed; using the standard asyncio event loop")
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def serve(
    app: web.Application,
    host: str,
    port: int,
    name: str,
    background: list[Callable[[], Coroutine[Any, Any, None]]],
) -> None:
    """Serve ``app`` with ``background`` tasks running beside it until SIGTERM/SIGINT."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024, reuse_address=True)
    await site.start()
    bound = runner.addresses[0][1] if runner.addresses else port
    log.info("%s listening on http://%s:%s", name, host, bound)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks = [asyncio.create_task(job()) for job in background]
    try:
        await stop.wait()
        log.info("%s stopping: finishing requests in flight", name)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await runner.shutdown()
        await asyncio.wait_for(runner.cleanup(), SHUTDOWN_GRACE_S)
    log.info("%s stopped", name)


async def tick(interval: float, action: Callable[[], None]) -> None:
    """Call ``action`` every ``interval`` seconds, logging (not dying on) its errors."""
    while True:
        await asyncio.sleep(interval)
        try:
            action()
        except Exception:
            log.exception("periodic task %s failed; it will run again", action)
