"""``hotshard simulate``: run the five strategies through both scenarios in the fleet model.

Builds the fleet (``--scale large``: 10M requests/s, hundreds of shards; ``small``: the local
fleet), compiles each scenario from ``scenarios/``, runs every strategy one after the other,
prints the table and writes ``bench/results/simulation.json`` and ``.md``. With
``--compare-local FILE`` (default: ``bench/results/strategies.json`` when it exists) the small
scale is checked against the local benchmark's measurements, and replays the scenarios with the
timings that benchmark used (``make bench`` runs their ``--quick`` version).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import Any

from hotshard.datasets import REPO_ROOT
from hotshard.engine.config import CalendarEvent
from hotshard.local.demo import QUICK_COOLDOWN_S
from hotshard.local.scenario import ScenarioError, TrafficPlan, compile_plan, load_scenario
from hotshard.sim.config import FleetModel, calibrate_cost_us, large_model, small_model
from hotshard.sim.policies import (
    BoundedLoadPolicy,
    HotshardPolicy,
    HpaPolicy,
    Policy,
    StaticPolicy,
    engine_config,
    initial_table,
    max_shards,
)
from hotshard.sim.report import compare_with_local, render_scenario, write_results
from hotshard.sim.run import simulate
from hotshard.sim.traffic import build_traffic
from hotshard.strategies import ORDER, Strategy

SCENARIOS = ("election-night", "advertiser-bug")
RESULTS = REPO_ROOT / "bench" / "results"
LOCAL_RESULTS = RESULTS / "strategies.json"
TOLERANCE = 0.5
"""The small-scale check passes a measure within +-50 %: local p99s on a shared 2-core machine
move by that much between runs of the same build (bench/results/dataplane.md)."""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scale",
        choices=("large", "small", "both"),
        default="both",
        help="large: 10M requests/s; small: the local fleet (default: both)",
    )
    parser.add_argument("--rate", type=float, default=10e6, help="large scale's requests/s")
    parser.add_argument(
        "--scenario", action="append", help="scenario name or file (default: both built-ins)"
    )
    parser.add_argument(
        "--strategy",
        action="append",
        choices=[s.value for s in ORDER],
        help="run only these strategies (default: all five)",
    )
    parser.add_argument(
        "--compare-local",
        type=Path,
        default=None,
        help="the local benchmark's strategies.json to check the small scale against (the "
        "small scale then uses its timings; default: bench/results/strategies.json)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")


def build_policy(strategy: Strategy, model: FleetModel, plan: TrafficPlan) -> Policy:
    """The simulated fleet for one strategy."""
    if strategy is Strategy.STATIC:
        return StaticPolicy(model)
    if strategy is Strategy.BOUNDED_LOAD:
        return BoundedLoadPolicy(model)
    if strategy is Strategy.HPA:
        return HpaPolicy(model, compression(plan), max_shards(model))
    predictive = strategy is Strategy.HOTSHARD_PREDICTIVE
    config = engine_config(model, predictive=predictive, calendar=calendar_of(plan))
    return HotshardPolicy(model, strategy, config, initial_table(model))


def compression(plan: TrafficPlan) -> float:
    """The scenario's time compression: 60 s of trace per ``seconds_per_minute``."""
    spike = plan.scenario.spike
    return 60.0 / spike.seconds_per_minute if spike is not None else 60.0


def calendar_of(plan: TrafficPlan) -> tuple[CalendarEvent, ...]:
    """The event calendar knows election night; nobody's calendar knows an advertiser's bug."""
    spike = plan.scenario.spike
    if spike is None:
        return ()
    return (
        CalendarEvent(
            name=plan.scenario.name,
            start=plan.spike_start,
            end=plan.spike_end,
            campaigns=plan.hot,
            expected_factor=spike.factor,
        ),
    )


def local_quick(path: Path | None) -> bool:
    """Whether the local benchmark in ``path`` ran the scenarios' ``--quick`` timings (``make
    bench`` does by default): the small scale then replays the same timings, so each phase
    covers the same stretch of the trace and the engine waits the same cooldown."""
    if path is None:
        return False
    try:
        return json.loads(path.read_text()).get("quick") is True
    except (OSError, ValueError, AttributeError):
        return False


def run_scale(
    model: FleetModel, scenarios: list[str], strategies: list[Strategy], *, quick: bool = False
) -> dict[str, dict[str, dict[str, Any]]]:
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for name in scenarios:
        scenario = load_scenario(name)
        plan = compile_plan(scenario.quickened() if quick else scenario)
        traffic = build_traffic(plan, model)
        results[plan.scenario.name] = {}
        for strategy in strategies:
            run = simulate(model, traffic, build_policy(strategy, model, plan))
            summary = run.summary()
            results[plan.scenario.name][strategy.value] = summary
            print(
                f"  {model.scale} {plan.scenario.name} {strategy.value}: "
                f"{summary['wall_seconds']:.1f} s wall",
                flush=True,
            )
    return results


def main(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    cost, calibration = calibrate_cost_us()
    scales = ("large", "small") if args.scale == "both" else (args.scale,)
    scenarios = args.scenario or list(SCENARIOS)
    strategies = [Strategy(s) for s in args.strategy] if args.strategy else list(ORDER)
    report: dict[str, Any] = {
        "command": "hotshard simulate " + " ".join(sys.argv[2:]),
        "when": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "scales": {},
    }
    local = args.compare_local or (LOCAL_RESULTS if LOCAL_RESULTS.exists() else None)
    for scale in scales:
        quick = scale == "small" and local_quick(local)
        model = large_model(cost, args.rate) if scale == "large" else small_model(cost)
        if quick:
            model = model.model_copy(update={"cooldown_s": QUICK_COOLDOWN_S})
        t0 = time.perf_counter()
        try:
            results = run_scale(model, scenarios, strategies, quick=quick)
        except ScenarioError as exc:
            print(f"hotshard simulate: {exc}")
            return 2
        entry: dict[str, Any] = {
            "model": model.model_dump(),
            "rate_rps": model.total_rps or "the scenario's base_rate",
            "timings": "quick, as the local benchmark" if quick else "full",
            "calibration": calibration,
            "wall_seconds": round(time.perf_counter() - t0, 1),
            "scenarios": results,
        }
        if scale == "small" and local is not None:
            entry["local_comparison"] = compare_with_local(results, local, TOLERANCE)
        report["scales"][scale] = entry
        for name, res in results.items():
            print(f"\n## {scale}: {name}\n")
            print("\n".join(render_scenario(name, res)))
    report["wall_seconds"] = round(time.perf_counter() - started, 1)
    json_path, md_path = write_results(report, args.out)
    print(f"\nwrote {json_path} and {md_path} in {report['wall_seconds']} s")
    return 0
