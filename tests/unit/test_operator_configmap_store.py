"""The ConfigMap routing store: CAS on resourceVersion, 409 -> StaleTokenError, and the watch."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest

from hotshard.routing import RoutingTable, Shard
from hotshard.routing.configmap_store import (
    TABLE_KEY,
    ConfigMapRoutingStore,
    ConfigMapTableWatcher,
)
from hotshard.routing.store import SnapshotHolder, StaleTokenError
from hotshard.routing.table import RoutingError, RoutingSnapshot


class FakeApiError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


class FakeCoreV1:
    """One namespace of ConfigMaps with the API server's resourceVersion semantics."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.rv = 100
        self.replaces = 0

    def _stamp(self, body: dict[str, Any]) -> dict[str, Any]:
        self.rv += 1
        stored = copy.deepcopy(body)
        stored["metadata"]["resourceVersion"] = str(self.rv)
        self.objects[stored["metadata"]["name"]] = stored
        return copy.deepcopy(stored)

    def read_namespaced_config_map(self, name: str, namespace: str) -> Any:
        if name not in self.objects:
            raise FakeApiError(404)
        return copy.deepcopy(self.objects[name])

    def create_namespaced_config_map(self, namespace: str, body: Any) -> Any:
        if body["metadata"]["name"] in self.objects:
            raise FakeApiError(409)
        return self._stamp(body)

    def replace_namespaced_config_map(self, name: str, namespace: str, body: Any) -> Any:
        self.replaces += 1
        current = self.objects[name]["metadata"]["resourceVersion"]
        if body["metadata"].get("resourceVersion") != current:
            raise FakeApiError(409)
        return self._stamp(body)

    def list_namespaced_config_map(self, namespace: str, **kwargs: Any) -> Any:
        raise AssertionError("the watch is faked; list is never called directly")


SHARDS = [Shard(name=f"base-{i}", url=f"http://127.0.0.1:{9101 + i}") for i in range(2)]


def first_table() -> RoutingTable:
    return RoutingTable.even(SHARDS, partitions=16)


def next_table(table: RoutingTable) -> RoutingTable:
    owners = table.owners()
    owners[0] = "base-1"
    return table.with_owners(owners, version=table.version + 1)


@pytest.fixture
def api() -> FakeCoreV1:
    return FakeCoreV1()


@pytest.fixture
def store(api: FakeCoreV1) -> ConfigMapRoutingStore:
    return ConfigMapRoutingStore(api, "bidding", "fleet-routing", labels={"app": "hotshard"})


def test_initialize_then_read_round_trips(store: ConfigMapRoutingStore, api: FakeCoreV1) -> None:
    token = store.initialize(first_table())
    table, read_token = store.read()
    assert (table, read_token, token) == (first_table(), "101", "101")
    stored = api.objects["fleet-routing"]
    assert stored["metadata"]["annotations"]["hotshard.io/routing-version"] == "1"
    assert stored["metadata"]["labels"] == {"app": "hotshard"}
    with pytest.raises(FileExistsError):
        store.initialize(first_table())


def test_replace_with_current_token_advances(store: ConfigMapRoutingStore) -> None:
    token = store.initialize(first_table())
    new_token = store.replace(next_table(first_table()), token)
    table, read_token = store.read()
    assert (table.version, table.owners()[0], read_token) == (2, "base-1", new_token)
    assert new_token == "102"


def test_replace_keeps_the_owner_reference_and_labels(
    store: ConfigMapRoutingStore, api: FakeCoreV1
) -> None:
    owner = {"apiVersion": "hotshard.io/v1alpha1", "kind": "PartitionMap", "name": "m", "uid": "u1"}
    token = store.initialize(first_table(), owner_references=[owner])
    api.objects[store.name]["metadata"]["labels"]["team"] = "bidding"  # set by someone else
    store.replace(next_table(first_table()), token)
    meta = api.objects[store.name]["metadata"]
    # A PUT without them would drop both, and the ConfigMap would outlive its PartitionMap.
    assert meta["ownerReferences"] == [owner]
    assert meta["labels"]["team"] == "bidding"


def test_stale_token_is_refused_without_a_write(
    store: ConfigMapRoutingStore, api: FakeCoreV1
) -> None:
    token = store.initialize(first_table())
    store.replace(next_table(first_table()), token)
    with pytest.raises(StaleTokenError):
        store.replace(next_table(first_table()), token)
    assert api.replaces == 1  # the second writer was stopped before sending anything


def test_a_concurrent_write_between_read_and_replace_is_a_409(
    store: ConfigMapRoutingStore, api: FakeCoreV1
) -> None:
    token = store.initialize(first_table())
    real_read = api.read_namespaced_config_map

    def read_then_race(name: str, namespace: str) -> Any:
        obj = real_read(name, namespace)
        other = copy.deepcopy(api.objects[name])
        api._stamp(other)  # someone else writes after our read, before our replace
        return obj

    api.read_namespaced_config_map = read_then_race  # type: ignore[method-assign]
    with pytest.raises(StaleTokenError, match="written concurrently"):
        store.replace(next_table(first_table()), token)
    assert api.objects["fleet-routing"]["metadata"]["resourceVersion"] == "102"


def test_version_must_increase(store: ConfigMapRoutingStore) -> None:
    token = store.initialize(first_table())
    with pytest.raises(RoutingError, match="version must increase"):
        store.replace(first_table(), token)


def test_watch_offers_newer_tables_and_skips_bad_ones(
    store: ConfigMapRoutingStore, api: FakeCoreV1
) -> None:
    store.initialize(first_table())
    holder = SnapshotHolder(RoutingSnapshot(first_table()))
    v2 = next_table(first_table())
    good = {"metadata": {"resourceVersion": "105"}, "data": {TABLE_KEY: v2.to_json()}}
    bad = {"metadata": {"resourceVersion": "106"}, "data": {TABLE_KEY: '{"version": 3}'}}
    seen: list[dict[str, Any]] = []
    watcher: ConfigMapTableWatcher

    def stream(fn: Any, namespace: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
        seen.append(kwargs)
        yield {"type": "MODIFIED", "object": good}
        yield {"type": "MODIFIED", "object": bad}
        watcher.stop()
        yield {"type": "MODIFIED", "object": good}

    watcher = ConfigMapTableWatcher(store, holder, stream, api.list_namespaced_config_map)
    watcher.follow()
    assert holder.current.version == 2
    assert seen == [
        {
            "field_selector": "metadata.name=fleet-routing",
            "resource_version": "101",
            "timeout_seconds": 60,
        }
    ]


def test_watch_error_event_means_re_list(store: ConfigMapRoutingStore, api: FakeCoreV1) -> None:
    store.initialize(first_table())
    holder = SnapshotHolder(RoutingSnapshot(first_table()))
    watcher = ConfigMapTableWatcher(store, holder, lambda *a, **k: iter(()), lambda: None)
    assert watcher.apply_event({"type": "ERROR", "object": {"code": 410}}) is None
    assert watcher.apply_event({"type": "DELETED", "object": {}}) is None
    assert holder.current.version == 1
