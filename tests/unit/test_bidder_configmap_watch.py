"""Routers and bidders following the routing ConfigMap: settings, start-up read, watch events
handed to the loop, and a poke that re-reads without waiting for the watch."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from hotshard.routing import RoutingTable, Shard
from hotshard.routing.configmap_store import TABLE_KEY
from hotshard.routing.table import RoutingSnapshot
from hotshard_bidder import configmap_watch
from hotshard_bidder.configmap_watch import ConfigMapFollower, ConfigMapRef, open_follower
from hotshard_bidder.serving import TableWatch
from hotshard_bidder.settings import BidderSettings, RouterSettings

SHARDS = [Shard(name=f"base-{i}", url=f"http://127.0.0.1:{9101 + i}") for i in range(2)]
WAIT_STEPS = 500
"""Bounded polling for the watch thread: 500 x 10 ms, only ever reached if the code hangs."""


def table(version: int) -> RoutingTable:
    first = RoutingTable.even(SHARDS, partitions=16)
    if version == 1:
        return first
    owners = first.owners()
    owners[0] = "base-1"
    return first.with_owners(owners, version=version)


def config_map(t: RoutingTable, rv: int) -> dict[str, Any]:
    return {"metadata": {"resourceVersion": str(rv)}, "data": {TABLE_KEY: t.to_json()}}


class FakeApi:
    """The ConfigMap calls the follower makes; records the keyword arguments of reads."""

    def __init__(self, t: RoutingTable | None) -> None:
        self.stored = None if t is None else config_map(t, 100)
        self.read_kwargs: list[dict[str, Any]] = []

    def read_namespaced_config_map(self, name: str, namespace: str, **kwargs: Any) -> Any:
        self.read_kwargs.append(kwargs)
        if self.stored is None:
            raise RuntimeError("HTTP 404: configmaps not found")
        return self.stored

    def list_namespaced_config_map(self, namespace: str, **kwargs: Any) -> Any:
        raise AssertionError("the watch is faked; list is never called directly")


class FakeWatch:
    """A watch stream fed by the test; it ends (as a server's window does) once closed."""

    def __init__(self) -> None:
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.closed = threading.Event()

    def stream(self, function: Any, namespace: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
        while not self.closed.is_set():
            with contextlib.suppress(queue.Empty):
                yield self.events.get(timeout=0.01)


async def wait_for_version(follower: ConfigMapFollower, version: int) -> None:
    for _ in range(WAIT_STEPS):
        if follower.holder.current.version >= version:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"holder stuck at {follower.holder.current.version}, wanted {version}")


@pytest.fixture
def watch() -> Iterator[FakeWatch]:
    fake = FakeWatch()
    yield fake
    fake.closed.set()


def test_ref_parses_namespace_and_defaults_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOTSHARD_NAMESPACE", "from-env")
    assert ConfigMapRef.parse("fleet-routing") == ConfigMapRef("from-env", "fleet-routing")
    assert ConfigMapRef.parse("bidding/fleet-routing") == ConfigMapRef("bidding", "fleet-routing")
    assert ConfigMapRef.parse("fleet-routing", "ns") == ConfigMapRef("ns", "fleet-routing")
    assert str(ConfigMapRef.parse("fleet-routing", "ns")) == "ns/fleet-routing"
    with pytest.raises(ValueError, match="names no ConfigMap"):
        ConfigMapRef.parse("bidding/")


def test_settings_take_the_configmap_from_one_shared_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HOTSHARD_ROUTING_CONFIGMAP", "bidding/fleet-routing")
    assert RouterSettings().routing_configmap == "bidding/fleet-routing"
    bidder = BidderSettings(shard="base-0")
    assert (bidder.routing_configmap, bidder.routing_file) == ("bidding/fleet-routing", None)
    with pytest.raises(ValidationError, match="exactly one of --routing-file and --routing-conf"):
        RouterSettings(routing_file=Path("table.json"))
    monkeypatch.delenv("HOTSHARD_ROUTING_CONFIGMAP")
    with pytest.raises(ValidationError, match="exactly one"):
        RouterSettings()
    assert RouterSettings(routing_configmap="x").routing_configmap == "x"


def test_open_reads_the_table_now_with_a_timeout() -> None:
    api = FakeApi(table(2))
    store, follower = open_follower(
        ConfigMapRef("bidding", "fleet-routing"), api, FakeWatch().stream
    )
    assert follower.holder.current.version == 2
    assert (store.namespace, store.name) == ("bidding", "fleet-routing")
    assert api.read_kwargs == [{"_request_timeout": configmap_watch.READ_TIMEOUT_S}]


def test_open_names_the_configmap_when_it_cannot_be_read() -> None:
    with pytest.raises(OSError, match="routing ConfigMap bidding/gone: HTTP 404"):
        open_follower(ConfigMapRef("bidding", "gone"), FakeApi(None), FakeWatch().stream)


def test_table_watch_from_settings_follows_the_configmap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    api = FakeApi(table(3))
    monkeypatch.setattr(configmap_watch, "kubernetes_api", lambda: (api, FakeWatch().stream))
    watch = TableWatch.from_settings(RouterSettings(routing_configmap="bidding/fleet-routing"))
    assert isinstance(watch.watcher, ConfigMapFollower)
    assert watch.holder is watch.watcher.holder
    assert watch.holder.current.version == 3


async def test_watch_events_are_adopted_on_the_loop(watch: FakeWatch) -> None:
    api = FakeApi(table(1))
    _, follower = open_follower(ConfigMapRef("bidding", "fleet-routing"), api, watch.stream)
    swaps: list[tuple[int, int, bool]] = []
    loop_thread = threading.get_ident()

    def on_swap(old: RoutingSnapshot, new: RoutingSnapshot) -> None:
        swaps.append((old.version, new.version, threading.get_ident() == loop_thread))

    follower.holder.on_swap(on_swap)
    task = asyncio.create_task(follower.run())
    watch.events.put({"type": "MODIFIED", "object": config_map(table(2), 101)})
    watch.events.put({"type": "MODIFIED", "object": {"metadata": {}, "data": {}}})  # no table
    watch.events.put({"type": "MODIFIED", "object": config_map(table(1), 102)})  # older
    await wait_for_version(follower, 2)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert swaps == [(1, 2, True)]
    assert follower.refresh() is False  # nothing left queued


async def test_poke_rereads_without_waiting_for_the_watch(watch: FakeWatch) -> None:
    api = FakeApi(table(1))
    _, follower = open_follower(ConfigMapRef("bidding", "fleet-routing"), api, watch.stream)
    task = asyncio.create_task(follower.run())
    await asyncio.sleep(0)
    api.stored = config_map(table(4), 140)  # written, but the watch says nothing
    follower.poke()
    await wait_for_version(follower, 4)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert follower.holder.current.version == 4
    assert all(kw == {"_request_timeout": configmap_watch.READ_TIMEOUT_S} for kw in api.read_kwargs)


def test_refresh_adopts_what_the_watch_thread_queued_before_the_loop_runs() -> None:
    api = FakeApi(table(1))
    _, follower = open_follower(ConfigMapRef("bidding", "fleet-routing"), api, FakeWatch().stream)
    api.stored = config_map(table(2), 101)
    assert follower.holder.current.version == 1
    assert follower.read_now() is True
    assert follower.holder.current.version == 2
    assert follower.read_now() is False
