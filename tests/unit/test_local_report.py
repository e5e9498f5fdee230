"""The demo's acceptance numbers from one pass: how mitigation is timed, and the live p99 line."""

from __future__ import annotations

from pathlib import Path

from hotshard.local.report import PassRecord, summarise_pass
from hotshard.local.traffic import GroupResult, PhaseStats
from hotshard.local.view import Progress, plain_line
from hotshard_bidder.loadreport import Recorder, build_report

SPIKE = (20.0, 35.0)


def group(first_answer: dict[str, float], shards: dict[str, int]) -> GroupResult:
    recorder = Recorder()
    recorder.total.shards.update(shards)
    report = build_report(
        recorder, target="http://127.0.0.1:1/", profile="p", duration=1.0, workers=1, planned=0
    )
    phases = {
        p: PhaseStats(sent=0, errors=0, lost=0, p99_ms=1.0) for p in ("before", "during", "after")
    }
    return GroupResult(report=report, phases=phases, started_at=1000.0, first_answer=first_answer)


def record(hot: GroupResult) -> PassRecord:
    return PassRecord(
        mitigate=True,
        t0=1000.0,
        spike_start=SPIKE[0],
        spike_end=SPIKE[1],
        groups={"hot": hot, "other": group({}, {})},
        timeline=[],
        samples=[],
        base_owners={"base-2"},
        shard_seconds=10.0,
    )


def test_mitigation_is_timed_by_the_first_answer_from_a_new_owner() -> None:
    hot = group(
        {"base-2": 0.1, "overflow-0": 23.25, "overflow-1": 22.75, "-": 20.5},
        {"base-2": 10, "overflow-0": 5, "overflow-1": 5, "-": 7},
    )
    summary = summarise_pass(record(hot))
    # overflow-1 came first; the router's own answers ("-") and the old owner do not count.
    assert summary["mitigate_seconds"] == 2.75
    assert summary["hot_answered_by_router"] == 7


def test_no_new_owner_means_no_mitigation_time() -> None:
    hot = group({"base-2": 0.1, "-": 21.0}, {"base-2": 10, "-": 3})
    assert summarise_pass(record(hot))["mitigate_seconds"] is None


def test_the_live_line_shows_p99_by_kind_of_campaign() -> None:
    progress = Progress(
        title="t",
        elapsed=12.0,
        phase="during",
        rate=900.0,
        p99_ms={"hot": 40.0, "other": 6.25},
        hot=(),
        shards=5,
        shard_rates={},
        decision="none yet",
    )
    assert "p99 other 6.2 ms, hot 40.0 ms" in plain_line(progress)
    empty = Progress(
        title="t",
        elapsed=1.0,
        phase="before",
        rate=0.0,
        p99_ms={},
        hot=(),
        shards=5,
        shard_rates={},
        decision="none yet",
    )
    assert "p99 -" in plain_line(empty)


def test_a_report_directory_that_cannot_be_written_is_found_before_the_run(tmp_path: Path) -> None:
    from hotshard.local.demo import check_report_dir

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert "cannot create the report directory" in (check_report_dir(blocker / "report") or "")
    assert check_report_dir(tmp_path / "new" / "report") is None
    assert (tmp_path / "new" / "report").is_dir()


def test_the_resource_section_is_whole_tables_with_times_from_the_first_action() -> None:
    from hotshard.local.resource_run import render_resources

    change = {
        "campaign": "Melania_Trump",
        "rollout": "immediate",
        "rolled_back": True,
        "rollback_reason": "version 2 costs 38x | more",
    }
    events = [
        {"time": 1000.5, "shard": "base-2", "kind": "throttle", "campaign": "M", "reason": "r"},
        {"time": 1003.25, "shard": "engine", "kind": "sandbox", "campaign": "M", "reason": "s"},
    ]
    summary = {
        "config_changes": [change, change],
        "cost_per_campaign": {},
        "containment_events": events,
    }
    lines = render_resources(summary, {"config_changes": [{}]})
    # Every line is blank, the heading, or a table row: no text breaks a table in two.
    assert all(not line or line.startswith(("## ", "| ")) for line in lines)
    assert sum("rollback_reason" in line for line in lines) == 2
    assert any(line.startswith("| 2.75 | engine | sandbox") for line in lines)
    assert any(line.startswith("| 0.00 | base-2 | throttle") for line in lines)


def test_the_report_blames_the_routers_429s_only_when_they_are_most_of_the_hot_errors() -> None:
    from hotshard.local.report import render_markdown

    def summary(by_router: int, hot_during: int) -> dict[str, object]:
        phases = {"before": 0, "during": hot_during, "after": 0}
        return {
            "scenario": "s",
            "mitigation": True,
            "p99_ms": {},
            "errors": {"hot": phases, "other": dict.fromkeys(phases, 0)},
            "hot_answered_by_router": by_router,
        }

    main = record(group({}, {}))
    shed = render_markdown(summary(by_router=2116, hot_during=2131), main)
    assert "mostly (2116 of 2131) the\nrouter's deliberate 429s" in shed
    throttled = render_markdown(summary(by_router=0, hot_during=38), main)  # the bidders' own
    assert "deliberate 429s" not in throttled


def test_a_table_cell_reads_as_words_not_python() -> None:
    from hotshard.markdown import format_cell

    assert [format_cell(v) for v in (None, True, False, [], ["throttle", "sandbox"])] == [
        "-",
        "yes",
        "no",
        "-",
        "throttle, sandbox",
    ]
    assert format_cell(0.125, ".2f") == "0.12"
    assert format_cell("a | b") == "a / b"  # a pipe would split the cell
