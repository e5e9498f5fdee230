"""Real bidder and router processes on 127.0.0.1, started through ``hotshard.local.processes``."""

from __future__ import annotations

import contextlib
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hotshard.local.processes import ServiceProcess, free_port, start_service
from hotshard.routing import RoutingTable, Shard
from hotshard.routing.store import FileRoutingStore

PARTITIONS = 64
"""A small table keeps test tables readable; the hash and routing are the same at any size."""


@dataclass
class Fleet:
    """A routing table file plus the processes serving it."""

    stack: contextlib.ExitStack
    root: Path
    store: FileRoutingStore
    ports: dict[str, int]
    tables: dict[int, RoutingTable] = field(default_factory=dict)
    services: dict[str, ServiceProcess] = field(default_factory=dict)

    def table(self) -> RoutingTable:
        return self.store.read()[0]

    def publish(self, table: RoutingTable) -> None:
        """Replace the table with compare-and-swap, remembering every version."""
        _, token = self.store.read()
        self.store.replace(table, token)
        self.tables[table.version] = table

    def bidder(self, name: str, *extra: str) -> ServiceProcess:
        args = ["bidder", "--shard", name, "--routing-file", str(self.store.path), *extra]
        service = start_service(self.stack, name, args, log_dir=self.root, port=self.ports[name])
        self.services[name] = service
        return service

    def router(self, *extra: str) -> ServiceProcess:
        args = ["router", "--routing-file", str(self.store.path), *extra]
        service = start_service(self.stack, "router", args, log_dir=self.root)
        self.services["router"] = service
        return service


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    """Two shards' table (``shard-0`` owns the lower half of the partitions); nothing running."""
    ports = {f"shard-{i}": free_port() for i in range(2)}
    shards = [Shard(name=name, url=f"http://127.0.0.1:{port}") for name, port in ports.items()]
    table = RoutingTable.even(shards, partitions=PARTITIONS)
    store = FileRoutingStore(tmp_path / "routing.json")
    store.initialize(table)
    with contextlib.ExitStack() as stack:
        fleet = Fleet(stack, tmp_path, store, ports, tables={1: table})
        yield fleet


def get_json(url: str) -> object:
    import orjson

    with urllib.request.urlopen(url, timeout=5) as resp:
        return orjson.loads(resp.read())
