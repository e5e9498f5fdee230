"""Where the routing table lives, and how it is replaced: compare-and-swap, never blind writes.

A store hands out the current table with an opaque token; ``replace`` succeeds only if the
token still names the current table, so two writers can never overwrite each other unseen.
The file store here backs local mode and tests; the operator adds a ConfigMap store with the
same interface, using the object's resourceVersion as the token.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

from hotshard.routing.table import RoutingSnapshot, RoutingTable, check_successor

log = logging.getLogger(__name__)


class StaleTokenError(RuntimeError):
    """The table changed since it was read: re-read, re-plan, and try again."""


class RoutingStore(Protocol):
    def read(self) -> tuple[RoutingTable, str]:
        """Return the current table and a token for :meth:`replace`."""
        ...

    def replace(self, table: RoutingTable, token: str) -> str:
        """Replace the table if ``token`` is still current; return the new token."""
        ...


def _token(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


class FileRoutingStore:
    """A routing table in one JSON file, replaced atomically under an exclusive lock.

    Writers take ``flock`` on a sibling ``.lock`` file, compare tokens, write a temporary file,
    fsync it and ``os.replace`` it over the table, so a reader sees the old table or the new one,
    never half of either.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock_path = self.path.with_name(self.path.name + ".lock")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def read(self) -> tuple[RoutingTable, str]:
        data = self.path.read_bytes()
        return RoutingTable.from_json(data), _token(data)

    def initialize(self, table: RoutingTable) -> str:
        """Write the first table. Refuses if a table is already there (use ``replace``)."""
        with self._locked():
            if self.path.exists():
                raise FileExistsError(f"{self.path} already holds a routing table")
            return self._write(table)

    def replace(self, table: RoutingTable, token: str) -> str:
        with self._locked():
            data = self.path.read_bytes()
            if _token(data) != token:
                raise StaleTokenError(f"{self.path} changed since it was read")
            check_successor(RoutingTable.from_json(data), table)
            return self._write(table)

    def _write(self, table: RoutingTable) -> str:
        data = table.to_json().encode()
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        return _token(data)


class SnapshotHolder:
    """Holds the current :class:`RoutingSnapshot` and swaps it only forward in version.

    Readers take ``holder.current`` once per request and use that one snapshot throughout, so
    a swap never shows a request half of one table and half of another.
    """

    def __init__(self, snapshot: RoutingSnapshot) -> None:
        self.current = snapshot
        self._listeners: list[Callable[[RoutingSnapshot, RoutingSnapshot], None]] = []

    def on_swap(self, listener: Callable[[RoutingSnapshot, RoutingSnapshot], None]) -> None:
        self._listeners.append(listener)

    def offer(self, table: RoutingTable) -> bool:
        """Adopt ``table`` if it is newer than the current one. Returns whether it was adopted.

        A table with a different number of virtual partitions is refused: every campaign would
        hash elsewhere, and state keyed by partition would be wrong. Stores refuse such a
        replacement; a file edited by hand can still hold one, so it is checked here too.
        """
        if table.version <= self.current.version:
            return False
        if table.partitions != self.current.partitions:
            log.error(
                "routing table version %d has %d virtual partitions, not %d: refused, keeping "
                "version %d (the partition count of a running fleet is fixed)",
                table.version,
                table.partitions,
                self.current.partitions,
                self.current.version,
            )
            return False
        old, new = self.current, RoutingSnapshot(table)
        self.current = new
        for listener in self._listeners:
            listener(old, new)
        return True


class FileTableWatcher:
    """Polls a :class:`FileRoutingStore` and feeds newer tables to a :class:`SnapshotHolder`.

    Polling a file's identity (inode, size, mtime) is a single ``stat`` call; 50 ms keeps a
    router at most one poll behind a commit, far inside any request's deadline.
    """

    def __init__(self, store: FileRoutingStore, holder: SnapshotHolder, interval: float = 0.05):
        self.store = store
        self.holder = holder
        self.interval = interval
        self._seen: tuple[int, int, int] | None = None
        self._wake = asyncio.Event()

    def refresh(self) -> bool:
        """Re-read the table now if the file changed. Returns whether a newer table was adopted."""
        try:
            st = os.stat(self.store.path)
        except FileNotFoundError:
            if self._seen is not None:
                log.error(
                    "routing table %s is gone, keeping version %d",
                    self.store.path,
                    self.holder.current.version,
                )
                self._seen = None
            return False
        ident = (st.st_ino, st.st_size, st.st_mtime_ns)
        if ident == self._seen:
            return False
        try:
            table, _ = self.store.read()
        except (OSError, ValueError) as exc:  # a bad table is held off, the good one stays
            log.error(
                "routing table %s is unreadable, keeping version %d: %s",
                self.store.path,
                self.holder.current.version,
                exc,
            )
            self._seen = ident
            return False
        self._seen = ident
        if table.version < self.holder.current.version:
            # NB: never back in version; but a file rolled back by hand should not pass unseen.
            log.error(
                "routing table %s holds version %d, older than version %d in use: ignored",
                self.store.path,
                table.version,
                self.holder.current.version,
            )
            return False
        return self.holder.offer(table)

    def poke(self) -> None:
        """Ask the watch loop to look again at once (after a 421, say)."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            self.refresh()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            self._wake.clear()
