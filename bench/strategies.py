"""The strategy benchmark (``make bench``): hotshard against what users run today, side by side.

Each scenario (the 1000x election-night spike, the advertiser's bug) is replayed on the same
local fleet once per strategy, one pass after the other in one run: static consistent hashing,
an HPA-like uniform autoscaler, HAProxy's bounded-load consistent hashing, hotshard reactive,
and hotshard with prediction and the event calendar (:mod:`hotshard.local.strategies` says what
each pass runs). A pass is local mode's own (:func:`hotshard.local.demo.run_pass`), with the
scenario's ``--quick`` timings so the whole run stays near ten minutes.

Writes ``bench/results/strategies.json`` (every summary, with per-second series),
``strategies.md`` (tables with ratios against hotshard, :mod:`bench.strategies_report`) and one
PNG per scenario (:mod:`bench.strategies_plots`). Method and limits: ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import dataclasses
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

from hotshard.control.loop import DecisionEngine
from hotshard.local import demo
from hotshard.local.report import PassRecord, summarise_pass
from hotshard.local.scenario import TrafficPlan, compile_plan, load_scenario
from hotshard.local.strategies import HpaEngine, PassStrategy, build_strategy
from hotshard.local.view import LiveView
from hotshard.strategies import DEFAULT_FACTOR, REFERENCE, Strategy
from hotshard_bidder.settings import RouterSettings

from .haproxy import start_haproxy
from .strategies_plots import plot_scenario
from .strategies_report import judge, render_markdown, strategy_names

RESULTS = Path(__file__).with_name("results")
SCENARIOS = ("election-night", "advertiser-bug")
BALANCE_FACTOR_PERCENT = round(DEFAULT_FACTOR * 100)
"""HAProxy's ``hash-balance-factor`` is a percentage of the mean: 125 for 1.25x."""
HAPROXY_TIMEOUT = f"{RouterSettings.model_fields['default_deadline_ms'].default}ms"
"""HAProxy cannot read a request's tmax; it gives up (504) at the router's default deadline."""


def haproxy_front(
    stack: contextlib.AsyncExitStack[bool | None], run_dir: Path, shard_urls: Mapping[str, str]
) -> str:
    """Start HAProxy with bounded-load consistent hashing in front of the shards."""
    ports = [urlsplit(url).port or 0 for _, url in sorted(shard_urls.items())]
    port, _pid = stack.enter_context(
        start_haproxy(
            run_dir, ports, balance_factor=BALANCE_FACTOR_PERCENT, timeout_server=HAPROXY_TIMEOUT
        )
    )
    return f"http://127.0.0.1:{port}"


def summarise_strategy(
    record: PassRecord, setup: PassStrategy, engine: DecisionEngine | None
) -> dict[str, Any]:
    """``summarise_pass`` plus status counts, per-second series and the HPA's scale events."""
    summary = summarise_pass(record)
    summary["strategy"] = setup.name
    summary["description"] = setup.strategy.description
    answered = {g: r.report.answered for g, r in record.groups.items()}
    summary["statuses"] = {g: {str(k): v for k, v in a.items()} for g, a in answered.items()}
    summary["rejected_429"] = sum(a.get(429, 0) for a in answered.values())
    summary["misdirected_421"] = sum(a.get(421, 0) for a in answered.values())
    summary["timeouts"] = sum(
        a.get(504, 0) + r.report.lost_timeout
        for a, r in zip(answered.values(), record.groups.values(), strict=True)
    )
    summary["p99_ms_whole_run"] = {g: r.report.latency_ms.p99 for g, r in record.groups.items()}
    summary["series"] = {
        g: [[s.t, s.p99_ms] for s in r.report.timeline if s.answered]
        for g, r in record.groups.items()
    }
    summary["series"]["shards"] = [[round(s.t, 2), s.shards] for s in record.samples]
    spike_wall = record.t0 + record.spike_start
    if isinstance(engine, HpaEngine):
        summary["scale_events"] = [
            {"t": round(e.time - record.t0, 2), "replicas": e.replicas, "desired": e.desired}
            for e in engine.events
        ]
        ups = [e for e in engine.events if e.desired > e.replicas and e.time >= spike_wall - 0.5]
        summary["detect_seconds"] = round(ups[0].time - spike_wall, 2) if ups else None
    elif not setup.mitigate:
        # NB: its loop only observed, so it detects nothing; bounded-load hashing spreads a hot
        # campaign whenever in-flight counts are uneven, spike or not, so no moment is "mitigated".
        summary["detect_seconds"] = summary["mitigate_seconds"] = None
    hot = record.groups["hot"].report.shards
    away = sum(n for shard, n in hot.items() if shard not in record.base_owners and shard != "-")
    summary["hot_off_home_share"] = round(away / max(1, sum(hot.values())), 3)
    summary["errors_total"] = sum(sum(p.values()) for p in summary["errors"].values())
    return summary


def _keeping(
    build: Callable[[float], DecisionEngine], kept: list[DecisionEngine]
) -> Callable[[float], DecisionEngine]:
    """``build``, also keeping what it built (the HPA engine's scale events go in the summary)."""

    def build_and_keep(first_send: float) -> DecisionEngine:
        kept.append(build(first_send))
        return kept[-1]

    return build_and_keep


async def run_one(
    name: str, plan: TrafficPlan, strategy: Strategy, quick: bool, workdir: Path, view: LiveView
) -> dict[str, Any]:
    """One pass of ``strategy`` on ``plan``; its summary."""
    cooldown = demo.QUICK_COOLDOWN_S if quick else demo.DEMO_COOLDOWN_S
    engines: list[DecisionEngine] = []
    config = demo.engine_config(cooldown)
    setup = build_strategy(strategy, plan, config, bounded_front=haproxy_front)
    setup = dataclasses.replace(setup, build_engine=_keeping(setup.build_engine, engines))
    started, load = time.monotonic(), os.getloadavg()[0]
    with setup.environment():
        record = await demo.run_pass(
            plan,
            mitigate=setup.mitigate,
            cooldown=cooldown,
            workdir=workdir / name,
            prometheus=None,
            view=view,
            strategy=setup,
        )
    summary = summarise_strategy(record, setup, engines[0] if engines else None)
    summary["load_average"] = [round(load, 2), round(os.getloadavg()[0], 2)]
    p99 = summary["p99_ms"]
    print(
        f"   done in {time.monotonic() - started:.0f} s: other p99 during "
        f"{p99['other']['during']} ms, hot p99 during {p99['hot']['during']} ms, lost "
        f"{summary['lost_requests']}, 429 {summary['rejected_429']}, timeouts "
        f"{summary['timeouts']}, shard-seconds {summary['shard_seconds']}, load "
        f"{summary['load_average'][0]} -> {summary['load_average'][1]}",
        flush=True,
    )
    if summary["misdirected_421"] and strategy is Strategy.BOUNDED_LOAD:
        print("   WARNING: shards answered 421: the serve-any-partition switch was not on")
    return summary


def rotated(strategies: list[Strategy], round_: int) -> list[Strategy]:
    """Round ``round_``'s order: each round starts one strategy later, so that no strategy
    always runs first (on a cold machine) or last."""
    k = round_ % len(strategies) if strategies else 0
    return strategies[k:] + strategies[:k]


async def run_all(args: argparse.Namespace) -> dict[str, Any]:
    strategies = strategy_names(args.strategy)
    names = args.scenario or list(SCENARIOS)
    quick = not args.full
    plans = {}
    for name in names:
        scenario = load_scenario(name)
        plans[name] = compile_plan(scenario.quickened() if quick else scenario)
    started = time.monotonic()
    results: dict[str, Any] = {"reference": REFERENCE.value, "quick": quick, "scenarios": {}}
    for name, plan in plans.items():
        results["scenarios"][name] = {
            "spike_start": plan.spike_start,
            "spike_end": plan.spike_end,
            "duration": plan.duration,
            "passes": {s.value: [] for s in strategies},
        }
    load_before = round(os.getloadavg()[0], 2)
    total = args.repeat * len(names) * len(strategies)
    done = 0
    with LiveView(plain=True) as view, tempfile.TemporaryDirectory(prefix="hotshard-bench-") as tmp:
        for round_ in range(args.repeat):
            for name, plan in plans.items():
                for strategy in rotated(strategies, round_):
                    done += 1
                    print(f"\n== [{done}/{total}] {name}: {strategy.value} (round {round_ + 1})")
                    # NB: a pass's directory holds its routing file: one per round, never reused.
                    workdir = Path(tmp) / f"round-{round_ + 1}"
                    summary = await run_one(name, plan, strategy, quick, workdir, view)
                    results["scenarios"][name]["passes"][strategy.value].append(summary)
            if args.repeat > 1:  # a crash in a later round keeps the rounds already run
                write_results(finish(results, args, started, load_before), args.out)
    return finish(results, args, started, load_before)


def finish(
    results: dict[str, Any], args: argparse.Namespace, started: float, load_before: float
) -> dict[str, Any]:
    """The verdicts and the run's description, for the passes run so far."""
    for scenario in results["scenarios"].values():
        scenario["verdict"] = judge(scenario["passes"])
    rounds = min(len(p) for sc in results["scenarios"].values() for p in sc["passes"].values())
    results["run"] = {
        "command": " ".join(["python -m bench.strategies", *sys.argv[1:]]),
        "repeat": rounds,
        "cores": os.cpu_count(),
        "load_before": load_before,
        "load_after": round(os.getloadavg()[0], 2),
        "minutes": round((time.monotonic() - started) / 60, 1),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    return results


def write_results(results: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "strategies.json", out / "strategies.md"]
    files[0].write_text(json.dumps(results, indent=1) + "\n")
    files[1].write_text(render_markdown(results))
    for name, scenario in results["scenarios"].items():
        files.append(plot_scenario(name, scenario, out))
    return files


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.strategies", description=__doc__)
    parser.add_argument("--scenario", action="append", help=f"repeatable (default {SCENARIOS})")
    parser.add_argument(
        "--strategy", action="append", choices=[s.value for s in Strategy], help="repeatable"
    )
    parser.add_argument("--full", action="store_true", help="full scenario timings, not --quick")
    parser.add_argument(
        "--repeat", type=int, default=1, help="rounds of every pass; tables show the median"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    args = parser.parse_args(argv)
    # NB: run_pass registers its clean-ups with the demo's exit hook; a bench needs it too.
    # TODO(#8): a public hook in local.demo instead of reaching for its private one.
    atexit.register(demo._run_cleanups)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        results = asyncio.run(run_all(args))
    except KeyboardInterrupt:
        print("bench: interrupted; every process it started was stopped", file=sys.stderr)
        return 130
    for path in write_results(results, args.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
