"""The file store's compare-and-swap, and the holder and watcher that never go back in version."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pytest

from hotshard.routing import RoutingError, RoutingSnapshot, RoutingTable, Shard
from hotshard.routing.store import (
    FileRoutingStore,
    FileTableWatcher,
    SnapshotHolder,
    StaleTokenError,
)

SHARDS = [Shard(name=f"s{i}", url=f"http://127.0.0.1:{9100 + i}") for i in range(2)]


def table(version: int) -> RoutingTable:
    return RoutingTable.even(SHARDS, partitions=16, version=version)


def test_replace_with_the_current_token_succeeds_and_a_stale_token_is_refused(
    tmp_path: Path,
) -> None:
    store = FileRoutingStore(tmp_path / "table.json")
    first = store.initialize(table(1))
    second = store.replace(table(2), first)
    assert store.read() == (table(2), second)
    with pytest.raises(StaleTokenError):
        store.replace(table(3), first)
    assert store.read()[0].version == 2


def test_initialize_refuses_to_overwrite(tmp_path: Path) -> None:
    store = FileRoutingStore(tmp_path / "table.json")
    store.initialize(table(1))
    with pytest.raises(FileExistsError):
        store.initialize(table(5))


def test_replace_refuses_an_older_version_even_with_a_fresh_token(tmp_path: Path) -> None:
    store = FileRoutingStore(tmp_path / "table.json")
    token = store.initialize(table(3))
    with pytest.raises(RoutingError, match="version must increase"):
        store.replace(table(2), token)


def _racer(path: str, token: str, version: int, results: multiprocessing.Queue[str]) -> None:
    try:
        FileRoutingStore(path).replace(table(version), token)
        results.put(f"won:{version}")
    except StaleTokenError:
        results.put(f"lost:{version}")


def test_concurrent_writers_with_the_same_token_exactly_one_wins(tmp_path: Path) -> None:
    path = tmp_path / "table.json"
    token = FileRoutingStore(path).initialize(table(1))
    ctx = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue[str] = ctx.Queue()
    procs = [ctx.Process(target=_racer, args=(str(path), token, v, results)) for v in (2, 3, 4, 5)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    outcomes = sorted(results.get(timeout=5) for _ in procs)
    winners = [o for o in outcomes if o.startswith("won:")]
    assert len(winners) == 1, outcomes
    assert FileRoutingStore(path).read()[0].version == int(winners[0].split(":")[1])


def test_holder_only_moves_forward_and_tells_listeners(tmp_path: Path) -> None:
    holder = SnapshotHolder(RoutingSnapshot(table(2)))
    swaps: list[tuple[int, int]] = []
    holder.on_swap(lambda old, new: swaps.append((old.version, new.version)))
    assert holder.offer(table(1)) is False
    assert holder.offer(table(2)) is False
    assert holder.offer(table(4)) is True
    assert holder.current.version == 4
    assert swaps == [(2, 4)]


def test_watcher_refresh_adopts_a_newer_file_and_keeps_the_good_table_on_garbage(
    tmp_path: Path,
) -> None:
    store = FileRoutingStore(tmp_path / "table.json")
    token = store.initialize(table(1))
    holder = SnapshotHolder(RoutingSnapshot(table(1)))
    watcher = FileTableWatcher(store, holder)
    assert watcher.refresh() is False
    store.replace(table(2), token)
    assert watcher.refresh() is True
    assert holder.current.version == 2
    store.path.write_text("{not json")
    os.utime(store.path, ns=(1, 1))
    assert watcher.refresh() is False
    assert holder.current.version == 2


def test_a_holder_refuses_a_table_with_another_partition_count() -> None:
    shards = [Shard(name="s0", url="http://127.0.0.1:1")]
    holder = SnapshotHolder(RoutingSnapshot(RoutingTable.even(shards, partitions=64)))
    assert not holder.offer(RoutingTable.even(shards, partitions=16, version=2))
    assert holder.current.version == 1
    assert holder.offer(RoutingTable.even(shards, partitions=64, version=3))
    assert holder.current.version == 3


def test_watcher_says_when_the_file_goes_back_in_version_or_disappears(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = FileRoutingStore(tmp_path / "table.json")
    token = store.initialize(table(1))
    holder = SnapshotHolder(RoutingSnapshot(table(1)))
    watcher = FileTableWatcher(store, holder)
    watcher.refresh()
    store.replace(table(2), token)
    assert watcher.refresh() is True
    old = tmp_path / "old.json"
    FileRoutingStore(old).initialize(table(1))
    os.replace(old, store.path)  # a copy of version 1 put back by hand
    with caplog.at_level("ERROR"):
        assert watcher.refresh() is False
        assert watcher.refresh() is False  # said once per change of the file, not per poll
        store.path.unlink()
        assert watcher.refresh() is False
        assert watcher.refresh() is False
    assert holder.current.version == 2
    assert [r.getMessage() for r in caplog.records] == [
        f"routing table {store.path} holds version 1, older than version 2 in use: ignored",
        f"routing table {store.path} is gone, keeping version 2",
    ]
