"""Live progress of a demo run in the terminal: rate, p99, hot partitions, shards, last decision.

A person watching the demo should see the spike arrive, the hot partitions named, the fleet
grow and the reason for each decision as it happens. On a terminal this is a rich live panel
refreshed every second; when stdout is not a terminal (CI, a pipe into a file) it prints one
plain line every few seconds instead, so logs stay readable.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from types import TracebackType

from rich.console import Console
from rich.live import Live
from rich.table import Table

PLAIN_EVERY_S = 5.0
"""Plain output prints a line every 5 s: enough to follow a run, few enough to read later."""


@dataclass
class Progress:
    """One second of the run as the view shows it."""

    title: str
    elapsed: float
    phase: str
    rate: float
    p99_ms: dict[str, float]
    """Client-side p99 by kind of campaign ("other", "hot") of the latest complete second."""
    hot: tuple[str, ...]
    shards: int
    shard_rates: dict[str, float]
    decision: str


class LiveView:
    """Shows :class:`Progress` updates; use as a context manager around a run."""

    def __init__(self, console: Console | None = None, *, plain: bool | None = None) -> None:
        self.console = console or Console()
        self.plain = (not sys.stdout.isatty()) if plain is None else plain
        self._live: Live | None = None
        self._last_plain = 0.0

    def __enter__(self) -> LiveView:
        if not self.plain:
            self._live = Live(console=self.console, refresh_per_second=2, transient=False)
            self._live.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._live is not None:
            self._live.__exit__(exc_type, exc, tb)
            self._live = None

    def say(self, message: str) -> None:
        """A one-off line (start-up notes, fallbacks)."""
        if self._live is not None:
            self._live.console.print(message)
        else:
            print(message, flush=True)

    def update(self, progress: Progress) -> None:
        if self._live is not None:
            self._live.update(render(progress))
            return
        now = time.monotonic()
        if now - self._last_plain >= PLAIN_EVERY_S:
            self._last_plain = now
            print(plain_line(progress), flush=True)


def _p99(progress: Progress) -> str:
    parts = [
        f"{kind} {progress.p99_ms[kind]:.1f} ms"
        for kind in ("other", "hot")
        if kind in progress.p99_ms
    ]
    return ", ".join(parts) or "-"


def plain_line(p: Progress) -> str:
    hot = ", ".join(p.hot[:3]) or "none"
    return (
        f"[{p.title} {p.elapsed:5.0f}s {p.phase}] {p.rate:6.0f} rps  p99 {_p99(p)}  "
        f"shards {p.shards}  hot {hot}  | {p.decision}"
    )


def render(p: Progress) -> Table:
    table = Table(title=f"hotshard demo: {p.title}", show_header=False, expand=True)
    table.add_column("what", style="bold", width=16)
    table.add_column("value")
    table.add_row("elapsed", f"{p.elapsed:.0f} s ({p.phase} the spike)")
    table.add_row("rate", f"{p.rate:.0f} requests/s")
    table.add_row("p99 (clients)", _p99(p))
    table.add_row("hot", ", ".join(p.hot) or "none")
    table.add_row("shards in use", str(p.shards))
    per_shard = "  ".join(f"{name} {rate:.0f}" for name, rate in sorted(p.shard_rates.items()))
    table.add_row("rate per shard", per_shard or "-")
    table.add_row("last decision", p.decision)
    return table
