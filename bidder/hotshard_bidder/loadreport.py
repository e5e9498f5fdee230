"""What the load generator measured: latency histograms and counts, and the report built from them.

A load run is judged by its tail latency and by requests that got no answer, so the recording
must neither average the tail away nor let an unanswered request vanish. This module owns that
bookkeeping: HDR histograms of latency (microseconds, 3 significant digits) overall, per campaign
group ("hot" campaigns apart from the rest) and per 1 s bucket of intended send time (for plots);
counts of sent, answered by status code, lost (sent and never answered) and not sent (over the
outstanding cap); who answered (the ``X-Hotshard-Shard`` header); and how late the generator
itself sent each request. Recorders from several worker processes merge losslessly (histograms
travel HDR-encoded), then :func:`build_report` turns the merged recorder into a
:class:`LoadReport`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from hdrh.histogram import HdrHistogram
from pydantic import BaseModel

MAX_LATENCY_US = 60_000_000
"""Highest latency a histogram holds (60 s): above any client timeout we allow."""

BUCKET_DIGITS = 2
"""Per-second buckets keep 2 significant digits (1% error): enough for plots, 8x smaller."""

BEHIND_LAG_MS = 5.0
"""Schedule lag p99 above which the generator reports it fell behind: 5 ms is half the latency
goal, so a slower generator would distort the p99 being measured."""

OK_STATUSES = frozenset({200, 204})


def new_histogram(digits: int = 3) -> HdrHistogram:
    return HdrHistogram(1, MAX_LATENCY_US, digits)


def _merge_encoded(target: HdrHistogram, encoded: str) -> None:
    if encoded:
        target.add(HdrHistogram.decode(encoded.encode("ascii")))


def _encode(hist: HdrHistogram) -> str:
    return hist.encode().decode("ascii") if hist.get_total_count() else ""


@dataclass
class Tally:
    """Counts and latencies of one slice of the run (everything, a group or a second)."""

    digits: int = 3
    sent: int = 0
    not_sent: int = 0
    lost_timeout: int = 0
    lost_connection: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    shards: Counter[str] = field(default_factory=Counter)
    first_answer: dict[str, float] = field(default_factory=dict)
    """When each shard first answered a request well (200/204), in seconds after the schedule's
    start: how local mode times the first request a new owner serves."""
    latency: HdrHistogram = field(init=False)

    def __post_init__(self) -> None:
        self.latency = new_histogram(self.digits)

    def note_answer(self, shard: str, at: float) -> None:
        """Keep the earliest good answer from ``shard``."""
        if at < self.first_answer.get(shard, float("inf")):
            self.first_answer[shard] = at

    def to_wire(self) -> dict[str, Any]:
        return {
            "digits": self.digits,
            "sent": self.sent,
            "not_sent": self.not_sent,
            "lost_timeout": self.lost_timeout,
            "lost_connection": self.lost_connection,
            "statuses": dict(self.statuses),
            "shards": dict(self.shards),
            "first_answer": self.first_answer,
            "latency": _encode(self.latency),
        }

    def merge_wire(self, wire: dict[str, Any]) -> None:
        self.sent += wire["sent"]
        self.not_sent += wire["not_sent"]
        self.lost_timeout += wire["lost_timeout"]
        self.lost_connection += wire["lost_connection"]
        self.statuses.update({int(k): v for k, v in wire["statuses"].items()})
        self.shards.update(wire["shards"])
        for shard, at in wire.get("first_answer", {}).items():
            self.note_answer(shard, at)
        _merge_encoded(self.latency, wire["latency"])


@dataclass
class Recorder:
    """Everything one load run (or one worker of it) measured."""

    total: Tally = field(default_factory=Tally)
    groups: dict[str, Tally] = field(default_factory=dict)
    seconds: dict[int, Tally] = field(default_factory=dict)
    lag: HdrHistogram = field(default_factory=new_histogram)

    def group(self, name: str) -> Tally:
        tally = self.groups.get(name)
        if tally is None:
            tally = self.groups[name] = Tally()
        return tally

    def second(self, index: int) -> Tally:
        tally = self.seconds.get(index)
        if tally is None:
            tally = self.seconds[index] = Tally(digits=BUCKET_DIGITS)
        return tally

    def to_wire(self) -> dict[str, Any]:
        return {
            "total": self.total.to_wire(),
            "groups": {k: v.to_wire() for k, v in self.groups.items()},
            "seconds": {str(k): v.to_wire() for k, v in self.seconds.items()},
            "lag": _encode(self.lag),
        }

    def merge_wire(self, wire: dict[str, Any]) -> None:
        self.total.merge_wire(wire["total"])
        for name, tally in wire["groups"].items():
            self.group(name).merge_wire(tally)
        for index, tally in wire["seconds"].items():
            self.second(int(index)).merge_wire(tally)
        _merge_encoded(self.lag, wire["lag"])


class LatencySummary(BaseModel):
    """Latency of answered requests, in milliseconds, measured from the intended send time."""

    count: int
    p50: float
    p90: float
    p99: float
    p999: float
    max: float
    mean: float


class SliceReport(BaseModel):
    sent: int
    not_sent: int
    answered: dict[int, int]
    answered_total: int
    lost: int
    lost_timeout: int
    lost_connection: int
    errors: int
    shards: dict[str, int]
    latency_ms: LatencySummary


class SecondReport(BaseModel):
    t: int
    sent: int
    answered: int
    lost: int
    not_sent: int
    errors: int
    p50_ms: float
    p99_ms: float
    max_ms: float


class LoadReport(BaseModel):
    """The JSON a load run writes (``--out``); fields are described in ``docs/loadgen.md``."""

    target: str
    profile: str
    duration_s: float
    workers: int
    planned: int
    intended_rps: float
    achieved_rps: float
    sent: int
    not_sent: int
    answered: dict[int, int]
    answered_total: int
    lost: int
    lost_timeout: int
    lost_connection: int
    errors: int
    shards: dict[str, int]
    latency_ms: LatencySummary
    schedule_lag_ms: LatencySummary
    generator_fell_behind: bool
    groups: dict[str, SliceReport]
    timeline: list[SecondReport]
    histogram_hdr: str


def summarise_latency(hist: HdrHistogram) -> LatencySummary:
    count = hist.get_total_count()
    if count == 0:
        return LatencySummary(count=0, p50=0, p90=0, p99=0, p999=0, max=0, mean=0)

    def ms(us: float) -> float:
        return round(us / 1000.0, 3)

    return LatencySummary(
        count=count,
        p50=ms(hist.get_value_at_percentile(50)),
        p90=ms(hist.get_value_at_percentile(90)),
        p99=ms(hist.get_value_at_percentile(99)),
        p999=ms(hist.get_value_at_percentile(99.9)),
        max=ms(hist.get_max_value()),
        mean=ms(hist.get_mean_value()),
    )


def count_errors(tally: Tally) -> int:
    """Requests that did not end in a bid or a no-bid: other statuses, lost and not sent."""
    bad_status = sum(n for code, n in tally.statuses.items() if code not in OK_STATUSES)
    return bad_status + tally.lost_timeout + tally.lost_connection + tally.not_sent


def summarise_slice(tally: Tally) -> SliceReport:
    return SliceReport(
        sent=tally.sent,
        not_sent=tally.not_sent,
        answered=dict(sorted(tally.statuses.items())),
        answered_total=sum(tally.statuses.values()),
        lost=tally.lost_timeout + tally.lost_connection,
        lost_timeout=tally.lost_timeout,
        lost_connection=tally.lost_connection,
        errors=count_errors(tally),
        shards=dict(tally.shards.most_common()),
        latency_ms=summarise_latency(tally.latency),
    )


def build_report(
    recorder: Recorder, *, target: str, profile: str, duration: float, workers: int, planned: int
) -> LoadReport:
    """Turn a (merged) recorder into the run's report."""
    total = summarise_slice(recorder.total)
    lag = summarise_latency(recorder.lag)
    timeline = []
    for t in sorted(recorder.seconds):
        s = recorder.seconds[t]
        lat = summarise_latency(s.latency)
        timeline.append(
            SecondReport(
                t=t,
                sent=s.sent,
                answered=sum(s.statuses.values()),
                lost=s.lost_timeout + s.lost_connection,
                not_sent=s.not_sent,
                errors=count_errors(s),
                p50_ms=lat.p50,
                p99_ms=lat.p99,
                max_ms=lat.max,
            )
        )
    return LoadReport(
        target=target,
        profile=profile,
        duration_s=duration,
        workers=workers,
        planned=planned,
        intended_rps=round(planned / duration, 1) if duration > 0 else 0.0,
        achieved_rps=round(total.sent / duration, 1) if duration > 0 else 0.0,
        generator_fell_behind=lag.p99 > BEHIND_LAG_MS,
        schedule_lag_ms=lag,
        groups={name: summarise_slice(t) for name, t in sorted(recorder.groups.items())},
        timeline=timeline,
        histogram_hdr=_encode(recorder.total.latency),
        **total.model_dump(),
    )


def format_summary(report: LoadReport) -> str:
    """A few human lines: the counts, the latency, and whether the generator kept up."""
    lat, lag = report.latency_ms, report.schedule_lag_ms
    statuses = " ".join(f"{code}:{n}" for code, n in report.answered.items()) or "none"
    lines = [
        f"{report.profile} for {report.duration_s:g}s -> {report.target}"
        f" ({report.workers} worker(s))",
        f"planned {report.planned}  sent {report.sent}  not_sent {report.not_sent}  "
        f"answered {report.answered_total} [{statuses}]  lost {report.lost} "
        f"(timeout {report.lost_timeout}, connection {report.lost_connection})",
        (
            f"latency ms  p50 {lat.p50}  p99 {lat.p99}  p999 {lat.p999}  max {lat.max}"
            if report.answered_total
            else "latency ms  none: no request was answered"
        )
        + f"  sent at {report.achieved_rps} rps of {report.intended_rps} intended",
        f"schedule lag ms  p50 {lag.p50}  p99 {lag.p99}  max {lag.max}"
        + (
            "  GENERATOR FELL BEHIND: latencies include its own lag"
            if report.generator_fell_behind
            else ""
        ),
    ]
    for name, group in report.groups.items():
        shards = ", ".join(f"{s}:{n}" for s, n in group.shards.items())
        p99 = f"{group.latency_ms.p99} ms" if group.answered_total else "-"
        lines.append(
            f"  {name:<6} sent {group.sent}  p99 {p99}  errors {group.errors}"
            f"  answered by {shards or '-'}"
        )
    return "\n".join(lines)
