"""The load generator's bookkeeping: HDR summary math, error counting and merging workers."""

from __future__ import annotations

import orjson
import pytest

from hotshard_bidder.loadreport import (
    Recorder,
    Tally,
    build_report,
    count_errors,
    format_summary,
    summarise_latency,
)


def fill(tally: Tally, values_us: list[int]) -> None:
    for value in values_us:
        tally.latency.record_value(value)


def test_percentiles_in_milliseconds() -> None:
    tally = Tally()
    fill(tally, [1000] * 990 + [20_000] * 9 + [250_000])
    summary = summarise_latency(tally.latency)
    assert summary.count == 1000
    assert summary.p50 == pytest.approx(1.0, rel=1e-3)
    assert summary.p99 == pytest.approx(1.0, rel=1e-3)
    assert summary.p999 == pytest.approx(20.0, rel=1e-3)
    assert summary.max == pytest.approx(250.0, rel=1e-3)
    assert summary.mean == pytest.approx((990 * 1 + 9 * 20 + 250) / 1000, rel=1e-3)


def test_an_empty_histogram_summarises_to_zeros() -> None:
    summary = summarise_latency(Tally().latency)
    assert summary.count == 0
    assert summary.p99 == 0


def test_errors_are_everything_but_bids_and_no_bids() -> None:
    tally = Tally(sent=10, not_sent=2, lost_timeout=1, lost_connection=1)
    tally.statuses.update({200: 4, 204: 2, 429: 1, 503: 1})
    assert count_errors(tally) == 1 + 1 + 1 + 1 + 2


def test_merged_workers_equal_one_recorder() -> None:
    one, two, both = Recorder(), Recorder(), Recorder()
    for recorder, values in ((one, [500, 700]), (two, [900, 30_000])):
        for value in values:
            for target in (recorder, both):
                for tally in (target.total, target.group("hot"), target.second(0)):
                    tally.sent += 1
                    tally.statuses[204] += 1
                    tally.latency.record_value(value)
                target.total.shards["shard-1"] += 1
    two.total.not_sent += 1
    both.total.not_sent += 1
    merged = Recorder()
    for recorder in (one, two):
        wire = orjson.loads(orjson.dumps(recorder.to_wire(), option=orjson.OPT_NON_STR_KEYS))
        merged.merge_wire(wire)
    kwargs = dict(target="http://127.0.0.1:1/", profile="p", duration=2.0, workers=2, planned=5)
    got = build_report(merged, **kwargs)  # type: ignore[arg-type]
    want = build_report(both, **kwargs)  # type: ignore[arg-type]
    assert got == want
    assert got.sent == 4
    assert got.answered == {204: 4}
    assert got.shards == {"shard-1": 4}
    assert got.errors == 1
    assert got.latency_ms.max == pytest.approx(30.0, rel=1e-3)
    assert got.groups["hot"].sent == 4
    assert got.timeline[0].answered == 4
    assert got.achieved_rps == 2.0
    assert got.intended_rps == 2.5


def test_workers_merge_to_the_earliest_answer_of_each_shard() -> None:
    one, two = Recorder(), Recorder()
    one.group("hot").note_answer("overflow-0", 12.5)
    one.group("hot").note_answer("overflow-0", 14.0)  # later: ignored
    one.group("hot").note_answer("base-1", 0.2)
    two.group("hot").note_answer("overflow-0", 11.75)
    merged = Recorder()
    for part in (one, two):
        merged.merge_wire(orjson.loads(orjson.dumps(part.to_wire())))
    assert merged.group("hot").first_answer == {"overflow-0": 11.75, "base-1": 0.2}


def test_a_run_with_no_answer_prints_no_latency() -> None:
    recorder = Recorder()
    recorder.total.sent = recorder.group("other").sent = 100
    recorder.total.lost_connection = recorder.group("other").lost_connection = 100
    report = build_report(
        recorder,
        target="http://127.0.0.1:9/x",
        profile="constant 100",
        duration=1.0,
        workers=1,
        planned=100,
    )
    text = format_summary(report)
    assert "none: no request was answered" in text
    assert "latency ms  p50" not in text
    assert "sent at 100.0 rps" in text
