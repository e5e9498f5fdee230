"""The routing table in a Kubernetes ConfigMap: compare-and-swap on resourceVersion, and a watch.

On a cluster the routing table lives in one ConfigMap, written by the operator and read by
every router and bidder. :class:`ConfigMapRoutingStore` offers the same ``read``/``replace``
contract as the file store, with the object's ``resourceVersion`` as the token: a replace sends
it back as a precondition, and the API server answers 409 Conflict if anyone wrote in between,
which becomes :class:`StaleTokenError` so the caller re-reads and re-plans.

Readers watch the object through the API rather than a mounted file, because the kubelet
refreshes mounted ConfigMaps only every minute or so. :class:`ConfigMapTableWatcher` feeds
each newer table to a :class:`SnapshotHolder`, exactly as the file watcher does.

NB: this module never imports the ``kubernetes`` package: the routing layer stays free of
cluster libraries (an import-linter contract). The caller passes a ``CoreV1Api`` (or a fake)
and, for watching, a ``watch.Watch().stream``-like function.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from hotshard.routing.store import SnapshotHolder, StaleTokenError
from hotshard.routing.table import RoutingTable, check_successor

log = logging.getLogger(__name__)

TABLE_KEY = "routing-table.json"
"""The ConfigMap data key that holds the table's JSON."""
CONFLICT = 409
GONE = 410


class ConfigMapApi(Protocol):
    """The three calls of ``kubernetes.client.CoreV1Api`` this store uses."""

    def read_namespaced_config_map(self, name: str, namespace: str) -> Any: ...

    def replace_namespaced_config_map(self, name: str, namespace: str, body: Any) -> Any: ...

    def create_namespaced_config_map(self, namespace: str, body: Any) -> Any: ...


WatchStream = Callable[..., Iterable[Mapping[str, Any]]]
"""``kubernetes.watch.Watch().stream``: yields ``{"type": ..., "object": ...}`` events."""


def _status_of(exc: BaseException) -> int | None:
    status = getattr(exc, "status", None)
    return status if isinstance(status, int) else None


def _field(obj: Any, snake: str, camel: str) -> Any:
    """Read a field from a client model object or a plain dict, whichever we were given."""
    if isinstance(obj, Mapping):
        return obj.get(camel, obj.get(snake))
    return getattr(obj, snake, None)


def _owner_dict(ref: Any) -> dict[str, Any]:
    """An owner reference as the API's JSON, from a client model object or a plain dict."""
    if isinstance(ref, Mapping):
        return dict(ref)
    out = {
        "apiVersion": ref.api_version,
        "kind": ref.kind,
        "name": ref.name,
        "uid": ref.uid,
    }
    for snake, camel in (
        ("controller", "controller"),
        ("block_owner_deletion", "blockOwnerDeletion"),
    ):
        value = getattr(ref, snake, None)
        if value is not None:
            out[camel] = value
    return out


def parse_config_map(obj: Any) -> tuple[RoutingTable, str]:
    """The table in a ConfigMap object and the object's resourceVersion."""
    data = _field(obj, "data", "data") or {}
    meta = _field(obj, "metadata", "metadata")
    text = data.get(TABLE_KEY)
    if text is None:
        raise ValueError(f"ConfigMap has no {TABLE_KEY!r} key")
    return RoutingTable.from_json(text), str(_field(meta, "resource_version", "resourceVersion"))


def build_config_map(
    name: str,
    table: RoutingTable,
    *,
    resource_version: str | None = None,
    labels: Mapping[str, str] | None = None,
    owner_references: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The ConfigMap body that publishes ``table``; with ``resource_version`` it is a CAS."""
    meta: dict[str, Any] = {"name": name, "labels": dict(labels or {})}
    meta["annotations"] = {"hotshard.io/routing-version": str(table.version)}
    if resource_version is not None:
        meta["resourceVersion"] = resource_version
    if owner_references:
        meta["ownerReferences"] = owner_references
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta,
        "data": {TABLE_KEY: table.to_json()},
    }


class ConfigMapRoutingStore:
    """A :class:`~hotshard.routing.store.RoutingStore` backed by one ConfigMap."""

    def __init__(
        self,
        api: ConfigMapApi,
        namespace: str,
        name: str,
        *,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.name = name
        self.labels = dict(labels or {})

    def read(self) -> tuple[RoutingTable, str]:
        obj = self.api.read_namespaced_config_map(self.name, self.namespace)
        return parse_config_map(obj)

    def initialize(
        self, table: RoutingTable, owner_references: list[dict[str, Any]] | None = None
    ) -> str:
        """Create the ConfigMap with its first table; a 409 means it already exists."""
        body = build_config_map(
            self.name, table, labels=self.labels, owner_references=owner_references
        )
        try:
            created = self.api.create_namespaced_config_map(self.namespace, body)
        except Exception as exc:
            if _status_of(exc) == CONFLICT:
                raise FileExistsError(
                    f"ConfigMap {self.namespace}/{self.name} already holds a routing table"
                ) from exc
            raise
        return parse_config_map(created)[1]

    def replace(self, table: RoutingTable, token: str) -> str:
        obj = self.api.read_namespaced_config_map(self.name, self.namespace)
        current, current_token = parse_config_map(obj)
        if current_token != token:
            raise StaleTokenError(f"ConfigMap {self.namespace}/{self.name} changed since read")
        check_successor(current, table)
        # NB: a PUT replaces the whole object: whatever metadata is not sent is dropped, and a
        # ConfigMap without its owner reference would outlive its PartitionMap.
        meta = _field(obj, "metadata", "metadata")
        owners = _field(meta, "owner_references", "ownerReferences")
        body = build_config_map(
            self.name,
            table,
            resource_version=token,
            labels={**dict(_field(meta, "labels", "labels") or {}), **self.labels},
            owner_references=[_owner_dict(o) for o in owners] if owners else None,
        )
        try:
            replaced = self.api.replace_namespaced_config_map(self.name, self.namespace, body)
        except Exception as exc:
            # NB: the early compare above is only an optimisation; this 409 is the real guard.
            if _status_of(exc) == CONFLICT:
                raise StaleTokenError(
                    f"ConfigMap {self.namespace}/{self.name} was written concurrently"
                ) from exc
            raise
        return parse_config_map(replaced)[1]


class ConfigMapTableWatcher:
    """Watches the routing ConfigMap through the API and offers each table to a holder.

    ``follow`` blocks (the kubernetes client's watch is synchronous), so run it in a thread:
    ``await asyncio.to_thread(watcher.follow)``; ``stop`` ends it after the current event or
    at the end of the current watch window (``window_s``, 60 s: short enough that a lost
    connection is noticed within a minute, long enough to cost one request a minute).
    """

    def __init__(
        self,
        store: ConfigMapRoutingStore,
        holder: SnapshotHolder,
        stream: WatchStream,
        list_function: Callable[..., Any],
        *,
        window_s: int = 60,
    ) -> None:
        self.store = store
        self.holder = holder
        self.stream = stream
        self.list_function = list_function
        self.window_s = window_s
        self._stopped = threading.Event()

    def stop(self) -> None:
        self._stopped.set()

    def refresh(self) -> str | None:
        """Read the ConfigMap now and offer its table; return its resourceVersion."""
        try:
            table, token = self.store.read()
        except Exception as exc:  # a bad table is held off; the good one keeps serving
            log.error(
                "routing ConfigMap %s/%s is unreadable, keeping version %d: %s",
                self.store.namespace,
                self.store.name,
                self.holder.current.version,
                exc,
            )
            return None
        self.holder.offer(table)
        return token

    def apply_event(self, event: Mapping[str, Any]) -> str | None:
        """Offer the table in one watch event; return its resourceVersion, or None to re-list."""
        kind, obj = event.get("type"), event.get("object")
        if kind == "ERROR":
            code = _field(obj, "code", "code")
            log.info("routing watch ended with status %s; re-reading", code)
            return None
        if kind not in ("ADDED", "MODIFIED"):
            return None
        try:
            table, token = parse_config_map(obj)
        except ValueError as exc:
            log.error("routing ConfigMap update is invalid, keeping the current table: %s", exc)
            return None
        self.holder.offer(table)
        return token

    def follow(self) -> None:
        """Read, then watch from that resourceVersion; re-read after any break or 410 Gone."""
        while not self._stopped.is_set():
            token = self.refresh()
            try:
                for event in self.stream(
                    self.list_function,
                    self.store.namespace,
                    field_selector=f"metadata.name={self.store.name}",
                    resource_version=token,
                    timeout_seconds=self.window_s,
                ):
                    if self._stopped.is_set():
                        return
                    if self.apply_event(event) is None and event.get("type") == "ERROR":
                        break
            except Exception as exc:
                if _status_of(exc) != GONE:
                    log.warning("routing watch failed, re-reading: %s", exc)
                    self._stopped.wait(1.0)  # 1 s: back off from a failing API server
