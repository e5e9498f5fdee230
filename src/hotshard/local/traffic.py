"""Replaying a scenario's traffic with the load generator, and measuring it phase by phase.

A scenario has two kinds of campaigns: the steady ones, sent at a constant rate with their real
popularity, and the hot ones, whose combined rate follows the spike's trace. Each kind runs in
its own ``hotshard_bidder.loadgen`` worker, in a child process so the generator's event loop
does not share a core's time slices with the control loop. The generator keeps an HDR
histogram per second of intended send time; this module merges those by phase (before, during,
after the spike) so the report gets a true p99 per phase and per kind, not an average of p99s.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from hotshard.local.processes import ServiceError
from hotshard.local.scenario import TrafficPlan
from hotshard_bidder.loadgen import (
    START_DELAY,
    LoadSpec,
    run_in_uvloop,
    run_worker,
    start_without_sigint,
)
from hotshard_bidder.loadreport import LoadReport, Recorder, build_report, new_histogram
from hotshard_bidder.profiles import parse_profile, send_times
from hotshard_bidder.zipf import Popularity, to_header_key

PHASES = ("before", "during", "after")


class ScenarioLoadSpec(LoadSpec):
    """A load spec whose campaign popularity is the scenario's, not Zipf or a built-in list."""

    names: tuple[str, ...] = ()
    shares: tuple[float, ...] = ()

    def popularity(self) -> Popularity:
        shares = np.array(self.shares, dtype=np.float64)
        keys = tuple(to_header_key(n) for n in self.names)
        return Popularity(keys, shares / shares.sum())


@dataclass(frozen=True)
class PhaseStats:
    sent: int
    errors: int
    lost: int
    p99_ms: float


@dataclass(frozen=True)
class GroupResult:
    """What one kind of campaigns (``hot`` or ``other``) saw."""

    report: LoadReport
    phases: dict[str, PhaseStats]
    started_at: float
    """Wall-clock time of the first intended send."""
    first_answer: dict[str, float]
    """Seconds after ``started_at`` at which each shard first answered one of these requests
    well: when a new owner began serving a hot campaign."""


def write_hot_trace(plan: TrafficPlan, path: Path) -> Path:
    """The hot campaigns' rate as a ``t_seconds,rate`` CSV with a step per second."""
    lines = ["t_seconds,rate"]
    for second, rate in enumerate(plan.hot_rates):
        # NB: two points per second make the loadgen's linear interpolation a staircase.
        lines += [f"{second},{rate:.3f}", f"{second + 0.999},{rate:.3f}"]
    path.write_text("\n".join(lines) + "\n")
    return path


def build_specs(plan: TrafficPlan, target: str, trace: Path, seed: int) -> dict[str, LoadSpec]:
    """One spec for the steady campaigns and one for the hot ones.

    A scenario whose every campaign turns hot has no steady campaigns: it gets no ``other``
    generator (a constant rate of zero is no load), and its report has no ``other`` rows.
    """
    other = plan.other_weights()
    hot = plan.hot_weights()
    common: dict[str, Any] = {"target": target, "duration": plan.duration, "seed": seed}
    specs: dict[str, LoadSpec] = {}
    if other:
        specs["other"] = ScenarioLoadSpec(
            profile=f"constant:{plan.other_rate:.3f}",
            names=tuple(other),
            shares=tuple(other.values()),
            hot=0,
            **common,
        )
    specs["hot"] = ScenarioLoadSpec(
        profile=f"trace:{trace}",
        names=tuple(hot),
        shares=tuple(hot.values()),
        hot=len(hot),
        **{**common, "seed": seed + 7},
    )
    return specs


def summarise_phases(
    seconds: dict[int, Any], phase_of: Callable[[float], str]
) -> dict[str, PhaseStats]:
    """Merge per-second tallies into per-phase stats (p99 from merged histograms)."""
    merged = {p: new_histogram(2) for p in PHASES}
    counts = {p: [0, 0, 0] for p in PHASES}
    for second, tally in seconds.items():
        phase = phase_of(second + 0.5)
        merged[phase].add(tally.latency)
        bad = sum(n for code, n in tally.statuses.items() if code not in (200, 204))
        lost = tally.lost_timeout + tally.lost_connection
        counts[phase][0] += tally.sent
        counts[phase][1] += bad + lost + tally.not_sent
        counts[phase][2] += lost
    return {
        p: PhaseStats(
            sent=counts[p][0],
            errors=counts[p][1],
            lost=counts[p][2],
            p99_ms=round(merged[p].get_value_at_percentile(99) / 1000.0, 3)
            if merged[p].get_total_count()
            else 0.0,
        )
        for p in PHASES
    }


LIVE_LAG_S = 2
"""The live p99 is of the second sent two seconds ago: every request of it has been answered or
timed out by then (the generator's longest wait is 750 ms), so its tail is whole."""


def _live_p99(conn: Connection) -> Callable[[Recorder, int], None]:
    """Report the p99 of the latest complete second to the parent, without ever blocking."""

    def report(recorder: Recorder, elapsed: int) -> None:
        second = elapsed - LIVE_LAG_S
        tally = recorder.seconds.get(second)
        if tally is None or not tally.latency.get_total_count():
            return
        p99 = tally.latency.get_value_at_percentile(99) / 1000.0
        # NB: a one-tuple a second never fills a pipe's buffer; if the parent is gone, skip.
        with contextlib.suppress(OSError):
            conn.send((second, p99))

    return report


def _child_main(
    spec_json: str, spike: tuple[float, float], conn: Connection, live: Connection
) -> None:
    """Run one generator; on failure, send its error to the parent instead of a traceback."""
    try:
        _generate(spec_json, spike, conn, live)
    except Exception as exc:
        with contextlib.suppress(OSError):
            conn.send({"error": "".join(traceback.format_exception_only(exc)).strip()})
        # NB: exiting by SystemExit, multiprocessing prints nothing; the parent says it all.
        sys.exit(1)


def _generate(
    spec_json: str, spike: tuple[float, float], conn: Connection, live: Connection
) -> None:
    spec = ScenarioLoadSpec.model_validate_json(spec_json)
    began: list[float] = []
    # NB: the worker's first send is START_DELAY after it calls `ready`.
    recorder = run_in_uvloop(
        run_worker(
            spec,
            ready=lambda: began.append(time.time() + START_DELAY),
            progress=_live_p99(live),
        )
    )
    profile = parse_profile(spec.profile)
    report = build_report(
        recorder,
        target=spec.target,
        profile=profile.describe(),
        duration=spec.duration,
        workers=1,
        planned=len(send_times(profile, spec.duration)),
    )
    start, end = spike

    def phase_of(t: float) -> str:
        return "before" if t < start else ("during" if t < end else "after")

    phases = summarise_phases(recorder.seconds, phase_of)
    first: dict[str, float] = {}
    for tally in recorder.groups.values():
        for shard, at in tally.first_answer.items():
            first[shard] = min(at, first.get(shard, at))
    payload = {
        "report": report.model_dump(),
        "phases": {k: v.__dict__ for k, v in phases.items()},
        "started_at": began[0] if began else time.time(),
        "first_answer": first,
    }
    conn.send(payload)
    conn.close()
    live.close()


class TrafficRun:
    """Both load generators of one run, each in a child process."""

    def __init__(self, specs: dict[str, LoadSpec], plan: TrafficPlan) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._procs: dict[str, Any] = {}
        self._pipes: dict[str, Connection] = {}
        self._senders: list[Connection] = []
        self._live: dict[str, Connection] = {}
        self._p99: dict[str, float] = {}
        for name, spec in specs.items():
            receive, send = ctx.Pipe(duplex=False)
            live_receive, live_send = ctx.Pipe(duplex=False)
            proc = ctx.Process(
                target=_child_main,
                args=(
                    spec.model_dump_json(),
                    (plan.spike_start, plan.spike_end),
                    send,
                    live_send,
                ),
                name=f"hotshard-load-{name}",
            )
            self._procs[name] = proc
            self._pipes[name] = receive
            self._live[name] = live_receive
            self._senders += [send, live_send]

    def start(self) -> None:
        for proc in self._procs.values():
            start_without_sigint(proc)
        for send in self._senders:
            send.close()

    def live_p99(self) -> dict[str, float]:
        """The latest complete second's p99 (ms) per kind of campaign, as far as reported."""
        for name, pipe in self._live.items():
            with contextlib.suppress(EOFError, OSError):
                while pipe.poll(0):
                    self._p99[name] = pipe.recv()[1]
        return dict(self._p99)

    def done(self) -> bool:
        return not any(p.is_alive() for p in self._procs.values())

    def check_alive(self) -> None:
        """Raise :class:`ServiceError` if a generator has exited with an error.

        Its load is missing from then on, so the run's numbers would mean nothing.
        """
        for name, proc in self._procs.items():
            if proc.exitcode not in (None, 0):
                raise self._failure(name, self._pipes[name])

    def _failure(self, name: str, pipe: Connection) -> ServiceError:
        proc = self._procs[name]
        proc.join(timeout=5)  # NB: a child that sent its error is exiting; get its code
        why = "it sent no error (killed?)"
        with contextlib.suppress(EOFError, OSError):
            if pipe.poll(0):
                payload = pipe.recv()
                if isinstance(payload, dict) and "error" in payload:
                    why = str(payload["error"])
        return ServiceError(
            f"the {name} load generator ({proc.name}) exited with code {proc.exitcode} "
            f"during the run, so it stopped: {why}"
        )

    def results(self, timeout: float) -> dict[str, GroupResult]:
        out = {}
        for name, pipe in self._pipes.items():
            if not pipe.poll(timeout):
                raise TimeoutError(f"the {name} load generator did not report in {timeout:.0f}s")
            try:
                payload = pipe.recv()
            except EOFError:
                raise self._failure(name, pipe) from None
            if "error" in payload:
                raise ServiceError(
                    f"the {name} load generator ({self._procs[name].name}) failed: "
                    f"{payload['error']}"
                )
            out[name] = GroupResult(
                report=LoadReport.model_validate(payload["report"]),
                phases={k: PhaseStats(**v) for k, v in payload["phases"].items()},
                started_at=float(payload["started_at"]),
                first_answer=dict(payload["first_answer"]),
            )
        for proc in self._procs.values():
            proc.join(timeout=5)
        return out

    def stop(self) -> None:
        for proc in self._procs.values():
            if proc.is_alive():
                proc.terminate()
            proc.join(timeout=5)
