"""What the bidder and the router share to run: the table watch, the event loop, the HTTP shell.

Both services load the routing table from a :class:`FileRoutingStore` (or, on a cluster, the
routing ConfigMap: :mod:`hotshard_bidder.configmap_watch`), keep it current with a
:class:`TableFollower` feeding a :class:`SnapshotHolder`, serve HTTP with
:mod:`hotshard_bidder.http_server` on uvloop through :func:`serve` until SIGTERM or SIGINT, then
finish what is in flight and exit 0. Keeping that here leaves each service's module with only
its own request logic.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings, SettingsError

from hotshard.routing import RoutingSnapshot
from hotshard.routing.store import FileRoutingStore, FileTableWatcher, RoutingStore, SnapshotHolder
from hotshard_bidder.configmap_watch import ConfigMapRef, open_follower
from hotshard_bidder.http_server import HttpServer, Response
from hotshard_bidder.settings import (
    BidderSettings,
    RouterSettings,
    describe_errors,
    settings_from_args,
)

log = logging.getLogger(__name__)

JSON = "application/json"
SHARD_HEADER = "X-Hotshard-Shard"
VERSION_HEADER = "X-Hotshard-Routing-Version"
COST_HEADER = "X-Hotshard-Cost-Us"
DEADLINE_HEADER = "X-Hotshard-Deadline-Ms"
RETRY_MS_HEADER = "X-Hotshard-Retry-After-Ms"
SHUTDOWN_GRACE_S = 5.0
"""Time given to requests in flight at SIGTERM: far above any request's deadline."""


def json_response(status: int, payload: Any, headers: Mapping[str, str] | None = None) -> Response:
    """A JSON response serialized with orjson, with ``headers`` beside its content type."""
    response = Response.json(status, payload)
    if headers:
        response.headers.update(headers)
    return response


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
AnySettings = TypeVar("AnySettings", bound=BaseSettings)


def open_service(
    cls: type[ServiceSettings], args: argparse.Namespace, fields: tuple[str, ...], name: str
) -> tuple[ServiceSettings, TableWatch] | None:
    """Settings from flags and environment, and the routing table they point at.

    Returns ``None`` after logging what was wrong (bad settings, or a table that cannot be
    read), so that ``main`` exits with status 2 and a message instead of a traceback.
    """
    settings = load_settings(cls, args, fields, name)
    if settings is None:
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


def load_settings(
    cls: type[AnySettings], args: argparse.Namespace, fields: tuple[str, ...], name: str
) -> AnySettings | None:
    """``cls`` from flags and environment, or ``None`` after logging one line per mistake."""
    try:
        return settings_from_args(cls, args, fields)
    except ValidationError as exc:
        for line in describe_errors(cls, exc):
            log.error("invalid %s settings: %s", name, line)
    except SettingsError as exc:
        # NB: an environment value pydantic-settings cannot even decode (a tuple not in JSON).
        prefix = cls.model_config.get("env_prefix", "")
        log.error("invalid %s settings in the %s* environment: %s", name, prefix, exc)
    return None


def install_uvloop() -> None:
    """Use uvloop when it is installed; the stdlib loop works too, only slower."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        log.warning("uvloop is not installed; using the standard asyncio event loop")
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def serve(
    server: HttpServer,
    host: str,
    port: int,
    name: str,
    background: list[Callable[[], Coroutine[Any, Any, None]]],
) -> bool:
    """Serve with ``background`` tasks running beside the server until SIGTERM/SIGINT, then
    stop accepting, let the requests in flight answer and stop the tasks.

    Returns ``False``, after logging why, when it cannot listen on ``host:port`` (a name that
    does not resolve, a port in use, an address not on this machine), so ``main`` exits 1.
    """
    try:
        bound = await server.start(host, port)
    except OSError as exc:  # socket.gaierror is one too
        # NB: the loop's own text repeats the address; the errno's says only what went wrong.
        # A gaierror's errno is negative, an EAI_* code, and its strerror says it already.
        reason = os.strerror(exc.errno) if exc.errno and exc.errno > 0 else exc.strerror
        log.error("cannot listen on http://%s:%s: %s", host, port, reason or exc)
        return False
    log.info("%s listening on http://%s:%s", name, host, bound)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks = [asyncio.create_task(job()) for job in background]
    # NB: everything alive now (modules, settings, the table) lives as long as the process;
    # frozen, the collector stops re-walking it in every full collection under load.
    gc.freeze()
    try:
        await stop.wait()
        log.info("%s stopping: finishing requests in flight", name)
    finally:
        await server.shutdown(SHUTDOWN_GRACE_S)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
    log.info("%s stopped", name)
    return True


async def tick(interval: float, action: Callable[[], None]) -> None:
    """Call ``action`` every ``interval`` seconds, logging (not dying on) its errors."""
    while True:
        await asyncio.sleep(interval)
        try:
            action()
        except Exception:
            log.exception("periodic task %s failed; it will run again", action)
