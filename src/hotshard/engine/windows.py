"""Sliding windows of 1 s buckets, in memory fixed at construction.

The engine keeps, per virtual partition and per shard, the last ``window_seconds`` buckets of
five signals (rate, CPU, memory, latency, queue). A window is one numpy ring of shape
``(buckets, signals, rows)``, so writing a second and reading a signal across thousands of
partitions are single vectorised operations. A bucket nobody reported holds NaN: a gap is not a
zero, and the forecast and the averages skip it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from itertools import chain
from operator import attrgetter

import numpy as np
import numpy.typing as npt

from hotshard.engine.model import PartitionLoad

FloatArray = npt.NDArray[np.float64]

SIGNALS = ("rate", "cpu", "memory", "latency", "queue")
RATE, CPU, MEMORY, LATENCY, QUEUE = range(len(SIGNALS))


class Window:
    """A ring of ``buckets`` one-second buckets of :data:`SIGNALS` for ``rows`` rows."""

    def __init__(self, rows: int, buckets: int) -> None:
        # NB: float32 halves the memory (30 buckets x 5 signals x 65,536 partitions = 39 MB);
        # seven significant digits are plenty for loads.
        self._data = np.full((buckets, len(SIGNALS), rows), np.nan, dtype=np.float32)
        self._buckets = buckets
        self._head = -1
        self._second: int | None = None

    @property
    def rows(self) -> int:
        return int(self._data.shape[2])

    def grow(self, rows: int) -> None:
        """Make room for ``rows`` rows; new rows start empty."""
        if rows <= self.rows:
            return
        extra = np.full((self._buckets, len(SIGNALS), rows - self.rows), np.nan, dtype=np.float32)
        self._data = np.concatenate([self._data, extra], axis=2)

    def write(self, time: float, values: FloatArray) -> None:
        """Store ``values`` (shape ``(signals, rows)``, NaN where unreported) as the bucket of
        second ``floor(time)``; skipped seconds become empty buckets."""
        second = math.floor(time)
        if self._second is None or second > self._second:
            gap = 1 if self._second is None else second - self._second
            for _ in range(min(gap - 1, self._buckets)):
                self._head = (self._head + 1) % self._buckets
                self._data[self._head] = np.nan
            self._head = (self._head + 1) % self._buckets
            self._second = second
        # A second observation within the same second replaces the bucket.
        self._data[self._head] = values

    def latest(self) -> npt.NDArray[np.float32]:
        """The newest bucket, shape ``(signals, rows)``."""
        latest: npt.NDArray[np.float32] = self._data[self._head]
        return latest

    def ago(self, seconds: int) -> npt.NDArray[np.float32]:
        """The bucket ``seconds`` before the newest (capped at the window)."""
        seconds = min(seconds, self._buckets - 1)
        bucket: npt.NDArray[np.float32] = self._data[(self._head - seconds) % self._buckets]
        return bucket

    def mean_recent(self, signal: int, buckets: int) -> FloatArray:
        """Mean of the last ``buckets`` buckets of one signal per row, ignoring gaps (0 if none)."""
        buckets = max(1, min(buckets, self._buckets))
        idx = [(self._head - i) % self._buckets for i in range(buckets)]
        block = self._data[idx, signal, :].astype(np.float64)
        seen = np.isfinite(block)
        counts = seen.sum(axis=0)
        sums = np.where(seen, block, 0.0).sum(axis=0)
        means: FloatArray = np.divide(sums, counts, out=np.zeros(self.rows), where=counts > 0)
        return means

    def min_recent(self, signal: int, buckets: int) -> FloatArray:
        """Least of the last ``buckets`` buckets of one signal per row; a gap counts as 0."""
        buckets = max(1, min(buckets, self._buckets))
        idx = [(self._head - i) % self._buckets for i in range(buckets)]
        block = np.nan_to_num(self._data[idx, signal, :].astype(np.float64), nan=0.0)
        least: FloatArray = block.min(axis=0)
        return least

    def series(self, signal: int, row: int) -> FloatArray:
        """One row's signal, oldest bucket first, gaps dropped."""
        order = [(self._head + 1 + i) % self._buckets for i in range(self._buckets)]
        values = self._data[order, signal, row].astype(np.float64)
        kept: FloatArray = values[np.isfinite(values)]
        return kept

    def nbytes(self) -> int:
        return int(self._data.nbytes)


class ShardWindows:
    """A :class:`Window` whose rows are shards, found by name."""

    def __init__(self, buckets: int) -> None:
        self._window = Window(0, buckets)
        self._rows: dict[str, int] = {}

    def row(self, name: str) -> int:
        row = self._rows.get(name)
        if row is None:
            row = len(self._rows)
            self._rows[name] = row
            # NB: grow in chunks so that adding shards one by one stays cheap.
            if row >= self._window.rows:
                self._window.grow(max(16, 2 * self._window.rows))
        return row

    def write(self, time: float, values: Mapping[str, tuple[float, ...]]) -> None:
        for name in values:
            self.row(name)
        block = np.full((len(SIGNALS), self._window.rows), np.nan)
        for name, v in values.items():
            block[:, self._rows[name]] = v
        self._window.write(time, block)

    def mean_recent(self, names: list[str], signal: int, buckets: int) -> FloatArray:
        """Per name, the mean of the last ``buckets`` of one signal (0 for unknown names)."""
        return self._pick(names, self._window.mean_recent(signal, buckets))

    def min_recent(self, names: list[str], signal: int, buckets: int) -> FloatArray:
        """Per name, the least of the last ``buckets`` of one signal (0 for unknown names)."""
        return self._pick(names, self._window.min_recent(signal, buckets))

    def _pick(self, names: list[str], values: FloatArray) -> FloatArray:
        return np.array([values[self._rows[n]] if n in self._rows else 0.0 for n in names])


def partition_block(loads: Mapping[int, PartitionLoad], partitions: int) -> FloatArray:
    """One second of partition loads as a ``(signals, partitions)`` block, NaN where unreported;
    ids outside ``0..partitions-1`` are dropped."""
    block = np.full((len(SIGNALS), partitions), np.nan)
    if loads:
        ids = np.fromiter(loads.keys(), dtype=np.intp, count=len(loads))
        # NB: one C-level pass over the loads; a list of tuples costs three times as much.
        fields = attrgetter("rate", "cpu", "memory", "latency", "queue")
        flat = chain.from_iterable(map(fields, loads.values()))
        values = np.fromiter(flat, dtype=np.float64, count=len(loads) * len(SIGNALS))
        values = values.reshape(len(loads), len(SIGNALS))
        keep = (ids >= 0) & (ids < partitions)
        block[:, ids[keep]] = values[keep].T
    return block
