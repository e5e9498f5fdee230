"""The demo's load generators: a failing one stops the run, Ctrl-C leaves them quiet."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest

from hotshard.local.demo import keep_failed_log
from hotshard.local.processes import ServiceError
from hotshard.local.scenario import compile_plan, parse_scenario
from hotshard.local.traffic import ScenarioLoadSpec, TrafficRun
from hotshard_bidder.loadgen import start_without_sigint


def _plan() -> object:
    return compile_plan(
        parse_scenario(
            {
                "name": "tiny",
                "base_rate": 10,
                "campaigns": {"dataset": "inline", "keys": [{"name": "a", "weight": 1}]},
                "spike": {"campaigns": ["a"], "trace": "inline", "values": [1], "minutes": 1},
                "phases": {"before_seconds": 1, "after_seconds": 1},
            }
        )
    )


def test_a_load_generator_that_fails_is_named_with_its_error() -> None:
    # The spec a scenario with no steady campaigns used to produce: a rate of zero.
    spec = ScenarioLoadSpec(
        target="http://127.0.0.1:9/openrtb2/auction",
        profile="constant:0.000",
        duration=3,
        names=("a",),
        shares=(1.0,),
    )
    run = TrafficRun({"other": spec}, _plan())  # type: ignore[arg-type]
    run.start()
    try:
        deadline = time.monotonic() + 60
        while not run.done() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert run.done()
        with pytest.raises(ServiceError) as caught:
            run.check_alive()
    finally:
        run.stop()
    message = str(caught.value)
    assert message.startswith(
        "the other load generator (hotshard-load-other) exited with code 1 during the run"
    )
    assert "ValueError: bad rate profile 'constant:0.000': rate must be > 0 rps" in message


def test_a_child_started_without_sigint_survives_ctrl_c() -> None:
    ctx = multiprocessing.get_context("spawn")
    child = ctx.Process(target=time.sleep, args=(1.5,))
    before = signal.getsignal(signal.SIGINT)
    start_without_sigint(child)
    assert signal.getsignal(signal.SIGINT) is before  # the parent's own handler is back
    try:
        time.sleep(0.2)  # NB: still importing: the window where a traceback used to come from
        os.kill(child.pid, signal.SIGINT)  # type: ignore[arg-type]
        time.sleep(0.8)
        os.kill(child.pid, signal.SIGINT)  # type: ignore[arg-type]
        child.join(timeout=30)
    finally:
        if child.is_alive():
            child.terminate()
    # A child that SIGINT reached exits with 1 (KeyboardInterrupt) or -2; this one finished.
    assert child.exitcode == 0


def test_a_failed_services_log_is_kept_in_the_report_folder(tmp_path: Path) -> None:
    logs = tmp_path / "run" / "logs"
    logs.mkdir(parents=True)
    log = logs / "base-1.log"
    log.write_text("starting\nKilled\n")
    report = tmp_path / "report"
    report.mkdir()
    error = ServiceError(
        f"base-1 exited with code -9 during the run, so it stopped; log {log}:\nstarting\nKilled",
        log_path=log,
    )
    kept = keep_failed_log(error, report)
    assert str(kept) == (
        "base-1 exited with code -9 during the run, so it stopped; "
        f"log kept at {report / 'failed-base-1.log'}:\nstarting\nKilled"
    )
    assert (report / "failed-base-1.log").read_text() == "starting\nKilled\n"


def test_a_log_that_cannot_be_kept_is_not_promised(tmp_path: Path) -> None:
    gone = tmp_path / "gone" / "router.log"
    error = ServiceError(f"router exited with code 1 during the run; log {gone}:\n", log_path=gone)
    kept = keep_failed_log(error, tmp_path)
    assert str(gone) not in str(kept)
    assert "its log went with the run's temporary folder; its last lines:" in str(kept)
