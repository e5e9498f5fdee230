"""The record of what the control loop decided and did, each entry with its reason.

A reshard nobody can explain is a reshard nobody trusts. Every transition the loop goes through
(a hot spot detected, a prepare/commit/final table written, a conflict re-planned, a hold on
stale data, a warm shard added or released) becomes one :class:`Entry` here. The demo's report,
its plots and the acceptance numbers (time to detect, time to mitigate) are read from it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any, Literal

from hotshard.engine.model import Decision

EntryKind = Literal[
    "detect", "calm", "prepare", "commit", "final", "conflict", "hold", "observe", "pool", "error"
]


@dataclass(frozen=True)
class Entry:
    time: float
    """Wall-clock seconds (``time.time()``)."""
    kind: EntryKind
    reason: str
    version: int | None = None
    hot: tuple[str, ...] = ()
    """The hot spots of the decision, as ``partition[/campaign] (signal)``."""
    actions: tuple[str, ...] = ()
    """The decision's actions, as ``kind: reason``."""
    targets: tuple[str, ...] = ()
    """Shards that receive something in those actions."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def describe_hot(decision: Decision) -> tuple[str, ...]:
    return tuple(
        f"{h.partition}" + (f"/{h.campaign}" if h.campaign else "") + f" ({h.signal})"
        for h in decision.hot
    )


class Timeline:
    """An append-only list of entries."""

    def __init__(self) -> None:
        self.entries: list[Entry] = []

    def add(
        self,
        when: float,
        kind: EntryKind,
        reason: str,
        decision: Decision | None = None,
        version: int | None = None,
    ) -> Entry:
        entry = Entry(
            time=when,
            kind=kind,
            reason=reason,
            version=version,
            hot=describe_hot(decision) if decision is not None else (),
            actions=tuple(f"{a.kind}: {a.reason}" for a in decision.actions) if decision else (),
            targets=tuple(sorted({t for a in decision.actions for t in a.target}))
            if decision
            else (),
        )
        self.entries.append(entry)
        return entry

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def last(self) -> Entry | None:
        return self.entries[-1] if self.entries else None
