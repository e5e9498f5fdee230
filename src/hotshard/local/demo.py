"""``hotshard demo``: the whole loop on this machine, on real bid requests and a real spike.

One pass starts, on 127.0.0.1 only, a fleet of bidder processes (base shards, a warm pool of
overflow shards, a sandbox shard) under cgroup CPU quotas where possible, the router, the
control loop (reading a real Prometheus, or the services directly when Prometheus is missing)
and two load generators replaying the scenario. The default run makes two passes of the same
scenario, a baseline with mitigation off and then the real one, and writes the report
(:mod:`hotshard.local.report`). Every process a pass starts is stopped when it ends, fails or is
interrupted (Ctrl-C, SIGTERM): through an :class:`contextlib.ExitStack`, and through an
``atexit`` hook for the paths a stack cannot see.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from hotshard.control.loop import ControlLoop, LoopSettings
from hotshard.control.prometheus import PrometheusSource
from hotshard.control.sources import DirectSource, MetricsSource
from hotshard.datasets import DataNotFoundError, data_root
from hotshard.engine.config import EngineConfig
from hotshard.engine.core import Engine
from hotshard.local.cgroups import open_limiter
from hotshard.local.fleet import FleetShape, LocalFleet
from hotshard.local.processes import (
    ServiceError,
    ServiceProcess,
    free_port,
    log_tail,
    start_service,
)
from hotshard.local.prometheus import LocalPrometheus, find_prometheus
from hotshard.local.report import PassRecord, Sample, build_summary, write_report
from hotshard.local.resource_run import (
    AppliedChange,
    apply_config_changes,
    collect_resources,
    summarise_resources,
)
from hotshard.local.scenario import (
    DEFAULT_SCENARIO,
    ScenarioError,
    TrafficPlan,
    compile_plan,
    load_scenario,
)
from hotshard.local.traffic import (
    LIVE_LAG_S,
    GroupResult,
    TrafficRun,
    build_specs,
    write_hot_trace,
)
from hotshard.local.view import LiveView, Progress
from hotshard.routing import RoutingTable, Shard, partition_of
from hotshard.routing.store import FileRoutingStore

if TYPE_CHECKING:
    from hotshard.local.strategies import PassStrategy

log = logging.getLogger(__name__)

DEMO_COOLDOWN_S = 10.0
"""Scale-down wait in the demo: long enough to see capacity held after the spike, short
enough to see it given back inside the run (the product default stays 15 min)."""
QUICK_COOLDOWN_S = 5.0
DEMO_SETTLE_S = 5.0
"""A moved route is left alone for 5 s in the demo (30 s in production), so the merge back
fits inside a run of a minute."""
SHARD_INFLIGHT_LIMIT = 4
"""Requests in flight to a shard beyond which the router cuts a surging campaign there: about
7 ms of a 0.15-core demo shard's work, under the others' 10 ms goal."""
REPORT_TIMEOUT_S = 30.0
"""How long to wait for a load generator's report after its last send was due."""

_cleanups: list[Callable[[], None]] = []


def _run_cleanups() -> None:
    while _cleanups:
        with contextlib.suppress(Exception):
            _cleanups.pop()()


@contextlib.contextmanager
def _on_exit(callback: Callable[[], None]) -> Iterator[None]:
    """Run ``callback`` when the block ends, and at interpreter exit if it never does."""
    _cleanups.append(callback)
    try:
        yield
    finally:
        if callback in _cleanups:
            _cleanups.remove(callback)
        callback()


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signum)


def check_report_dir(path: Path) -> str | None:
    """Why the report cannot be written to ``path``, checked before a run rather than after."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot create the report directory: {exc.strerror or exc}"
    if not os.access(path, os.W_OK | os.X_OK):
        return "the report directory is not writable"
    return None


def keep_failed_log(exc: ServiceError, report_dir: Path) -> ServiceError:
    """The error, naming a copy of the failed service's log in ``report_dir``.

    The run's logs live in a temporary folder that is deleted as the demo stops, so the path
    the error named would be gone by the time the user reads it.
    """
    source = exc.log_path
    if source is None:
        return exc
    kept = report_dir / f"failed-{source.name}"
    try:
        shutil.copyfile(source, kept)
    except OSError:
        where = "its log went with the run's temporary folder; its last lines"
    else:
        where = f"log kept at {kept}"
    return ServiceError(str(exc).replace(f"log {source}", where), log_path=None)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scenario",
        default=DEFAULT_SCENARIO,
        help="scenario YAML file, or a built-in name (default election-night)",
    )
    parser.add_argument("--quick", action="store_true", help="the short version (under 2 min)")
    parser.add_argument(
        "--no-mitigation",
        action="store_true",
        help="observe only: the control loop records decisions, writes nothing",
    )
    parser.add_argument(
        "--no-baseline",
        action="store_true",
        help="skip the baseline pass (mitigation off) that the report compares to",
    )
    parser.add_argument(
        "--cooldown",
        type=float,
        default=None,
        help="seconds of calm before scale-down (default 10, quick 5)",
    )
    parser.add_argument(
        "--report",
        type=Path,
        default=Path("demo-report"),
        help="report directory (default demo-report/)",
    )
    parser.add_argument(
        "--direct",
        action="store_true",
        help="scrape the services directly even when Prometheus is installed",
    )


SHARD_CAPACITY_RPS = 350.0
"""The engine's capacity for one bidder under its 0.15-core quota: at the ~250 µs of CPU a
request costs a shard (bench/results/dataplane.md), 350 req/s is 0.09 core, 60% of the quota."""
HOT_KEY_SHARE = 0.25
"""One campaign may take a quarter of a shard before the router sheds its excess: the rest keeps
room for the other campaigns the shard serves while the engine splits the hot one away (the
engine counts what is shed as load the campaign's owners would carry)."""


def engine_config(cooldown: float) -> EngineConfig:
    base = EngineConfig()
    planning = base.planning.model_copy(
        update={
            "cooldown_seconds": cooldown,
            "settle_seconds": DEMO_SETTLE_S,
            # NB: measured for a bidder under a quarter-core quota on this machine (docs).
            "shard_capacity_rps": SHARD_CAPACITY_RPS,
            "shard_capacity_cpu": FleetShape().base_cores,
            # NB: the demo's spike needs three overflow shards; a fleet that had seen such spikes
            # before would have learnt that (the cost model's demand history) and kept them.
            "min_warm_pool": FleetShape().warm,
        }
    )
    return base.model_copy(update={"planning": planning})


async def run_pass(
    plan: TrafficPlan,
    *,
    mitigate: bool,
    cooldown: float,
    workdir: Path,
    prometheus: LocalPrometheus | None,
    view: LiveView,
    strategy: PassStrategy | None = None,
) -> PassRecord:
    """Start a fleet, replay the scenario through it, stop everything, return the record.

    ``make bench`` passes a ``strategy`` (:mod:`hotshard.local.strategies`): its fleet shape,
    bidder and router flags, engine and front door replace the demo's own."""
    title = "with hotshard" if mitigate else "baseline, mitigation off"
    run_id = uuid.uuid4().hex[:8]
    run_dir = workdir / ("main" if mitigate else "baseline")
    if strategy is not None:
        title, run_dir = strategy.title, workdir / strategy.name
    limiter, why = open_limiter(run_id)
    view.say(limiter.note if limiter else f"NOTE: {why}")
    store = FileRoutingStore(run_dir / "routing.json")
    # NB: "containment off" for a resource scenario also turns off the bidders' own guard.
    guard_off = ("--no-resource-guard",) if plan.config_changes and not mitigate else ()
    shape, bidder_args = (
        (strategy.shape, strategy.bidder_args) if strategy else (FleetShape(), guard_off)
    )
    fleet = LocalFleet(run_dir, store.path, shape, limiter, bidder_args=bidder_args)
    async with contextlib.AsyncExitStack() as stack:
        if limiter is not None:
            stack.enter_context(_on_exit(limiter.close))
        stack.enter_context(_on_exit(fleet.stop_all))
        # NB: on an interrupt the pass is cancelled mid-way; its HTTP sessions close here.
        stack.push_async_callback(fleet.aclose)
        # The table must exist before a shard starts: every shard reads it at start-up.
        placeholder = RoutingTable.even(
            [Shard(name="base-0", tier="base", url="http://127.0.0.1:9")], partitions=4096
        )
        store.initialize(placeholder)
        shards = await asyncio.to_thread(fleet.initial_shards)
        table, token = store.read()
        store.replace(RoutingTable.even(shards, version=table.version + 1), token)
        router_args = ["router", "--routing-file", str(store.path)]
        if strategy.shed_hot_keys if strategy else mitigate:
            # The router sheds a campaign's excess over a quarter of a shard until the engine
            # splits it, and a surge that overruns a shard from its first requests (the
            # per-shard allowance).
            router_args += [
                "--hot-key-limit-rps",
                str(SHARD_CAPACITY_RPS * HOT_KEY_SHARE),
                "--shard-inflight-limit",
                str(SHARD_INFLIGHT_LIMIT),
            ]
        router = start_service(stack, "router", router_args, log_dir=run_dir / "logs")
        stack.enter_context(_on_exit(lambda: _stop(router)))
        source = _source(prometheus, fleet, router)
        stack.push_async_callback(source.aclose)
        engine = (
            strategy.build_engine(time.time() + 1.0)
            if strategy
            else Engine(engine_config(cooldown))
        )
        loop = ControlLoop(engine, source, store, fleet, LoopSettings(mitigate=mitigate))
        entry = (
            strategy.entry_url(stack, run_dir, fleet.urls(), router.url) if strategy else router.url
        )
        traffic = TrafficRun(
            build_specs(
                plan,
                entry + "/openrtb2/auction",
                write_hot_trace(plan, run_dir / "hot-rate.csv"),
                seed=1,
            ),
            plan,
        )
        stack.enter_context(_on_exit(traffic.stop))
        base_owners = _owners_of(store.read()[0], plan.hot)
        stop = asyncio.Event()
        t0 = time.time() + 1.0  # NB: a child load generator takes about a second to start
        traffic.start()
        ticking = asyncio.create_task(loop.run(stop))
        applied: list[AppliedChange] = []
        changing = asyncio.create_task(
            apply_config_changes(plan.config_changes, fleet.urls, t0 + plan.spike_start, applied)
        )
        refresh = None
        if prometheus is not None:
            scraped = prometheus

            def refresh() -> None:
                scraped.set_targets({**fleet.urls(), "router": router.url})

        def check_alive() -> None:
            """A service that dies mid-run ends the pass: its numbers would mean nothing."""
            dead = {n: fleet.shards[n].service for n in fleet.exited() if n in fleet.shards}
            if not router.running():
                dead["router"] = router
            for name, service in dead.items():
                code = service.proc.poll() if service.proc is not None else None
                raise ServiceError(
                    f"{name} exited with code {code} during the run, so it stopped; "
                    f"log {service.log_path}:\n{log_tail(service.log_path)}",
                    log_path=service.log_path,
                )
            traffic.check_alive()

        samples = await _watch(plan, loop, fleet, refresh, traffic, title, t0, view, check_alive)
        stop.set()
        await ticking
        changing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await changing
        costs = await collect_resources(fleet.urls()) if plan.config_changes else {}
        groups = await asyncio.to_thread(traffic.results, REPORT_TIMEOUT_S)
        t0 = groups["hot"].started_at
        samples = [Sample(s.t - t0, s.shards, s.shard_rates, s.hot) for s in samples]
        await fleet.aclose()
        await source.aclose()
        end = time.time()
        fleet.stop_all()
        return PassRecord(
            mitigate=mitigate,
            t0=t0,
            spike_start=plan.spike_start,
            spike_end=plan.spike_end,
            groups=groups,
            timeline=list(loop.timeline),
            samples=samples,
            base_owners=base_owners,
            shard_seconds=fleet.shard_seconds(end),
            spike_partitions=frozenset(partition_of(c) for c in plan.hot),
            resources=summarise_resources(applied, costs, list(loop.timeline), _rates(plan, groups))
            if plan.config_changes
            else {},
        )


def _rates(plan: TrafficPlan, groups: dict[str, GroupResult]) -> dict[str, float]:
    """The changed campaigns' request rate before and during: flat in a resource scenario."""
    phases = groups["hot"].phases
    during = plan.spike_end - plan.spike_start
    return {
        "before": round(phases["before"].sent / plan.spike_start, 2),
        "during": round(phases["during"].sent / during, 2) if during > 0 else 0.0,
    }


def _stop(service: ServiceProcess | None) -> None:
    if service is not None:
        service.stop()


def _owners_of(table: RoutingTable, campaigns: tuple[str, ...]) -> set[str]:
    from hotshard.routing import RoutingSnapshot

    snap = RoutingSnapshot(table)
    return {s for c in campaigns for s in snap.shards_for(snap.partition(c), c)}


def _source(
    prometheus: LocalPrometheus | None, fleet: LocalFleet, router: ServiceProcess
) -> MetricsSource:
    if prometheus is None:
        return DirectSource(fleet.urls, router.url)
    services = {**fleet.urls(), "router": router.url}
    prometheus.set_targets(services)
    return PrometheusSource(prometheus.url)


async def _watch(
    plan: TrafficPlan,
    loop: ControlLoop,
    fleet: LocalFleet,
    refresh: Callable[[], None] | None,
    traffic: TrafficRun,
    title: str,
    t0: float,
    view: LiveView,
    check_alive: Callable[[], None],
) -> list[Sample]:
    """Sample the run once a second until the load generators finish; feed the live view.

    Samples carry wall-clock times; the caller rebases them on the first request's time.
    """
    samples: list[Sample] = []
    deadline = time.monotonic() + plan.duration + REPORT_TIMEOUT_S
    while not traffic.done() and time.monotonic() < deadline:
        await asyncio.sleep(1.0)
        check_alive()
        if refresh is not None:
            refresh()  # warm-pool shards come and go; Prometheus must follow
        now = time.time()
        elapsed = now - t0
        last = loop.last
        rates = {n: s.rate for n, s in last.observation.shards.items()} if last else {}
        hot = (
            tuple(
                f"p{h.partition}" + (f"/{h.campaign}" if h.campaign else "")
                for h in last.decision.hot
            )
            if last
            else ()
        )
        samples.append(Sample(now, fleet.count(), rates, hot))  # wall time; rebased later
        entry = loop.timeline.last()
        view.update(
            Progress(
                title=title,
                elapsed=elapsed,
                # NB: the p99 shown is of LIVE_LAG_S ago and the rates ~2 scrapes old: label
                # the line with the phase of the data, not of the clock.
                phase=plan.phase_of(max(0.0, elapsed - LIVE_LAG_S)),
                rate=sum(rates.values()),
                p99_ms=traffic.live_p99(),
                hot=hot,
                shards=fleet.count(),
                shard_rates=rates,
                decision=f"{entry.kind}: {entry.reason}" if entry else "none yet",
            )
        )
    return samples


def main(args: argparse.Namespace) -> int:
    try:
        # Every run sends the corpus's bid requests, whatever its scenario: missing data is
        # refused here, before anything starts, not by a load generator halfway through.
        data_root()
        scenario = load_scenario(args.scenario)
        if args.quick:
            scenario = scenario.quickened()
        plan = compile_plan(scenario)
    except (ScenarioError, DataNotFoundError) as exc:
        print(f"hotshard demo: {exc}", file=sys.stderr)
        return 2
    cooldown = (
        args.cooldown
        if args.cooldown is not None
        else (QUICK_COOLDOWN_S if args.quick else DEMO_COOLDOWN_S)
    )
    if not math.isfinite(cooldown) or cooldown < 0:
        print(
            f"hotshard demo: --cooldown must be zero or more seconds, not {cooldown:g}",
            file=sys.stderr,
        )
        return 2
    problem = check_report_dir(args.report)
    if problem is not None:
        print(f"hotshard demo: --report {args.report}: {problem}", file=sys.stderr)
        return 2
    atexit.register(_run_cleanups)
    previous = signal.signal(signal.SIGTERM, _terminate)
    # NB: a demo started in the background by a shell script inherits SIGINT as ignored; the
    # default handler makes `kill -INT` (and Ctrl-C) interrupt it as it does in a terminal.
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return asyncio.run(_demo(args, plan, cooldown))
    except KeyboardInterrupt as exc:
        print(
            "hotshard demo: interrupted; stopping every process it started (no report written)",
            file=sys.stderr,
            flush=True,
        )
        signum = exc.args[0] if exc.args and isinstance(exc.args[0], int) else signal.SIGINT
        return 128 + signum  # the shell's convention: 130 for Ctrl-C, 143 for SIGTERM
    except ServiceError as exc:
        print(
            f"hotshard demo: {exc}\nstopped every process it started", file=sys.stderr, flush=True
        )
        return 1
    finally:
        _run_cleanups()
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)


async def _demo(args: argparse.Namespace, plan: TrafficPlan, cooldown: float) -> int:
    notes: list[str] = []
    with LiveView() as view, tempfile.TemporaryDirectory(prefix="hotshard-demo-") as tmp:
        workdir = Path(tmp)
        binary = None if args.direct else find_prometheus()
        prometheus: LocalPrometheus | None = None
        if binary is None:
            notes.append("Prometheus not found: the control loop scraped /stats and /hot directly")
        else:
            prometheus = LocalPrometheus(binary, workdir / "prometheus", free_port())
            await asyncio.to_thread(prometheus.start)
            _cleanups.append(lambda: _stop(prometheus))
            notes.append(f"metrics from Prometheus ({binary}) scraping every second")
        for note in notes:
            view.say(note)
        try:
            baseline = None
            if args.no_mitigation or not args.no_baseline:
                baseline = await run_pass(
                    plan,
                    mitigate=False,
                    cooldown=cooldown,
                    workdir=workdir,
                    prometheus=prometheus,
                    view=view,
                )
            main_pass = baseline
            if not args.no_mitigation:
                main_pass = await run_pass(
                    plan,
                    mitigate=True,
                    cooldown=cooldown,
                    workdir=workdir,
                    prometheus=prometheus,
                    view=view,
                )
                assert main_pass is not None
            assert main_pass is not None
        except ServiceError as exc:
            raise keep_failed_log(exc, args.report) from None
        finally:
            if prometheus is not None:
                prometheus.stop()
        compared = baseline if main_pass is not baseline else None
        summary = build_summary(main_pass, compared, plan.scenario.name, notes)
        files = write_report(args.report, summary, main_pass, compared)
    print(f"report written to {args.report}/ ({len(files)} files)")
    print(
        f"detect {summary['detect_seconds']} s, mitigate {summary['mitigate_seconds']} s, "
        f"lost {summary['lost_requests']}, shards peak {summary['shards_peak']} "
        f"end {summary['shards_end']}"
    )
    if summary.get("config_changes"):
        print(
            f"resource hot spot: detected {summary['resource_detect_seconds']} s after the "
            f"change, contained by {', '.join(summary['contained_by']) or 'nothing'}, "
            f"rolled back {summary['rolled_back']}"
        )
    return 0
