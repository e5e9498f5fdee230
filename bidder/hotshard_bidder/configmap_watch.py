"""Routers and bidders on a cluster follow the routing ConfigMap through the API server.

A mounted ConfigMap file lags a commit by up to a minute (the kubelet's sync period), far too
slow for a split that must land in seconds, so on a cluster each service watches the object
itself. The watch is :class:`~hotshard.routing.configmap_store.ConfigMapTableWatcher`, which
blocks (the kubernetes client is synchronous) and therefore runs in a daemon thread. This module
owns the hand-over from that thread to the event loop: the thread never touches the service's
:class:`SnapshotHolder`; it queues each newer table, and the loop adopts it, so swap listeners
(metrics, logs, the migration book) only ever run on the loop, as with the file watcher.

:class:`ConfigMapFollower` offers the same ``refresh``/``poke``/``run`` trio as
:class:`~hotshard.routing.store.FileTableWatcher`: ``refresh`` adopts at once whatever the watch
has already received (it never blocks on the network), ``poke`` asks for a fresh read through
the API soon (after a 421, say), ``run`` is the background task.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hotshard.routing import RoutingSnapshot
from hotshard.routing.configmap_store import (
    ConfigMapRoutingStore,
    ConfigMapTableWatcher,
    WatchStream,
)
from hotshard.routing.store import SnapshotHolder
from hotshard.routing.table import RoutingTable

log = logging.getLogger(__name__)

NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
"""Where a pod finds its own namespace; used when the setting names only the ConfigMap."""
READ_TIMEOUT_S = 5.0
"""Longest wait for one read of the ConfigMap; 5 s only cuts off a dead connection."""
WATCH_WINDOW_S = 60
"""Seconds each watch request stays open (see ConfigMapTableWatcher): a lost connection is
noticed within a minute, for one request a minute."""
MIN_REREAD_S = 0.1
"""Least time between two pokes' reads, so a burst of 421s costs at most ten reads a second."""


@dataclass(frozen=True)
class ConfigMapRef:
    """Which ConfigMap holds the routing table."""

    namespace: str
    name: str

    @classmethod
    def parse(cls, text: str, default_namespace: str | None = None) -> ConfigMapRef:
        """Read ``namespace/name``, or ``name`` in ``default_namespace`` (the pod's own)."""
        namespace, _, name = text.strip().rpartition("/")
        if not name:
            raise ValueError(f"routing ConfigMap {text!r} names no ConfigMap")
        return cls(namespace or default_namespace or pod_namespace(), name)

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


def pod_namespace() -> str:
    """``HOTSHARD_NAMESPACE`` (the chart sets it from the pod), the pod's own namespace file,
    else ``default``."""
    if os.environ.get("HOTSHARD_NAMESPACE"):
        return os.environ["HOTSHARD_NAMESPACE"]
    try:
        return NAMESPACE_FILE.read_text().strip() or "default"
    except OSError:
        return "default"


class _Relay(SnapshotHolder):
    """Stands in for the service's holder inside the watch thread: it only queues newer tables.

    Compiling a snapshot is left to the loop, so each table is compiled once, where it is used.
    """

    def __init__(self, target: SnapshotHolder, arrived: Callable[[RoutingTable], None]) -> None:
        super().__init__(target.current)
        self.target = target
        self.arrived = arrived

    def offer(self, table: RoutingTable) -> bool:
        self.current = self.target.current  # what the watcher's log lines should name
        if table.version <= self.current.version:
            return False
        self.arrived(table)
        return True


class ConfigMapFollower:
    """Keeps ``holder`` on the newest table of the routing ConfigMap (see the module doc)."""

    def __init__(
        self,
        store: ConfigMapRoutingStore,
        holder: SnapshotHolder,
        stream: WatchStream,
        list_function: Callable[..., Any],
        *,
        window_s: int = WATCH_WINDOW_S,
        min_reread_s: float = MIN_REREAD_S,
    ) -> None:
        self.holder = holder
        self.min_reread_s = min_reread_s
        self._pending: collections.deque[RoutingTable] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        relay = _Relay(holder, self._arrived)
        self.watcher = ConfigMapTableWatcher(store, relay, stream, list_function, window_s=window_s)

    def _arrived(self, table: RoutingTable) -> None:
        """Called from the watch (or read) thread: queue the table and wake the loop."""
        self._pending.append(table)
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.refresh)

    def refresh(self) -> bool:
        """Adopt every table that has arrived; returns whether a newer one was adopted."""
        adopted = False
        while self._pending:
            adopted = self.holder.offer(self._pending.popleft()) or adopted
        return adopted

    def read_now(self) -> bool:
        """Read the ConfigMap through the API (blocking) and adopt a newer table."""
        self.watcher.refresh()
        return self.refresh()

    def poke(self) -> None:
        """Ask :meth:`run` to read the ConfigMap again soon, not waiting for the watch."""
        self._wake.set()

    async def run(self) -> None:
        """Watch in a daemon thread; serve pokes; stop the watch when cancelled."""
        self._loop = asyncio.get_running_loop()
        # NB: a daemon thread, because a watch blocks for up to window_s and must not hold up
        # the process's exit; to_thread's pool would be joined at shutdown.
        thread = threading.Thread(
            target=self.watcher.follow, name="routing-configmap-watch", daemon=True
        )
        thread.start()
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                await asyncio.to_thread(self.watcher.refresh)
                self.refresh()
                await asyncio.sleep(self.min_reread_s)
        finally:
            self.watcher.stop()
            self._loop = None


class _TimedApi:
    """A ``CoreV1Api`` whose ConfigMap calls give up after ``READ_TIMEOUT_S``."""

    def __init__(self, api: Any) -> None:
        self.api = api

    def read_namespaced_config_map(self, name: str, namespace: str) -> Any:
        return self.api.read_namespaced_config_map(name, namespace, _request_timeout=READ_TIMEOUT_S)

    def replace_namespaced_config_map(self, name: str, namespace: str, body: Any) -> Any:
        return self.api.replace_namespaced_config_map(
            name, namespace, body, _request_timeout=READ_TIMEOUT_S
        )

    def create_namespaced_config_map(self, namespace: str, body: Any) -> Any:
        return self.api.create_namespaced_config_map(
            namespace, body, _request_timeout=READ_TIMEOUT_S
        )


def kubernetes_api() -> tuple[Any, WatchStream]:
    """A ``CoreV1Api`` and a watch-stream function: in-cluster config in a pod, else the
    kubeconfig (``KUBECONFIG`` or ``~/.kube/config``)."""
    from kubernetes import client, config, watch  # heavy; only services on a cluster need it

    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    else:
        config.load_kube_config()  # type: ignore[no-untyped-call]

    def stream(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        # NB: the client-side timeout outlives the server's watch window by 10 s, so a dead
        # connection ends the watch instead of hanging it.
        kwargs.setdefault("_request_timeout", kwargs.get("timeout_seconds", 0) + 10)
        return watch.Watch().stream(function, *args, **kwargs)  # type: ignore[no-untyped-call]

    return client.CoreV1Api(), stream


def open_follower(
    ref: ConfigMapRef,
    api: Any | None = None,
    stream: WatchStream | None = None,
) -> tuple[ConfigMapRoutingStore, ConfigMapFollower]:
    """Read the routing ConfigMap now and return its store and a follower holding its table.

    Raises ``OSError`` naming the ConfigMap when it cannot be read or holds no valid table, so
    a service fails at start with the reason, as it does for an unreadable routing file.
    """
    try:
        if api is None or stream is None:
            api, stream = kubernetes_api()
        store = ConfigMapRoutingStore(_TimedApi(api), ref.namespace, ref.name)
        table, _ = store.read()
    except Exception as exc:
        raise OSError(f"cannot read routing ConfigMap {ref}: {exc}") from exc
    holder = SnapshotHolder(RoutingSnapshot(table))
    follower = ConfigMapFollower(store, holder, stream, api.list_namespaced_config_map)
    return store, follower
