"""The data-plane benchmark (``make bench-dataplane``): the router against HAProxy and no proxy.

The router is the fleet's front door, so whatever latency it adds is paid by every bid. This
benchmark puts a number on that, side by side in one run on loopback: two bidder shards, and
the load generator sending the same open-loop traffic (real OpenRTB bodies, Zipf campaign keys)
at fixed rates to (a) one shard directly, (b) HAProxy from Debian's package consistent-hashing
on ``X-Hotshard-Campaign`` in front of both shards, and (c) the hotshard router in front of both
shards. It then searches upward for the highest rate each keeps p99 under 10 ms with no errors.

All three configurations share the same two shard processes. Each shard reads its own routing
table in which it owns every partition, so it accepts whatever HAProxy's hash sends it; the
router reads the real table (partitions split evenly between the shards). Runs are interleaved
(direct, HAProxy, router at each rate, ``--repeats`` times) so background noise on this shared
box hits all three, and each cell of the table is the run with the median p99.

Writes ``bench/results/dataplane.json`` and ``bench/results/dataplane.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from hotshard.local.processes import ServiceProcess, free_port, start_service
from hotshard.routing.store import FileRoutingStore
from hotshard.routing.table import RoutingTable, Shard
from hotshard_bidder.loadgen import LoadSpec, run_load_sync

from .haproxy import start_haproxy

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
RATES = (500, 1000, 2000, 4000)
CONFIGS = ("direct", "haproxy", "router")
AUCTION_PATH = "/openrtb2/auction"
P99_GOAL_MS = 10.0
OVERHEAD_FLOOR_MS = 0.1
"""A proxy's p99 over the direct one below this is within the histogram's and the load
generator's timing resolution: no overhead to divide by."""
ONE_WORKER_MAX_RPS = 2000
"""Above this one load-generator process starts to lag on a busy 2-core box (its report says
so); two worker processes share the schedule instead."""
PAUSE_S = 1.0
"""Between runs, so one run's backlog never leaks into the next one's first second."""


def build_tables(workdir: Path, ports: dict[str, int]) -> dict[str, Path]:
    """The router's real table plus one accept-everything table per shard; returns the files."""
    shards = tuple(Shard(name=n, url=f"http://127.0.0.1:{p}") for n, p in ports.items())
    real = RoutingTable.even(shards)
    files = {"router": workdir / "routing-router.json"}
    FileRoutingStore(files["router"]).initialize(real)
    for name in ports:
        files[name] = workdir / f"routing-{name}.json"
        FileRoutingStore(files[name]).initialize(real.with_owners([name] * real.partitions))
    return files


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (from ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(
    target: str, rate: int, seconds: float, seed: int, pids: dict[str, int] | None = None
) -> dict[str, Any]:
    """One bounded open-loop run at ``rate``; the report's headline numbers.

    With ``pids``, also each process's CPU per answered request: unlike latency, it barely
    moves when other jobs compete for the cores, so it compares router and HAProxy fairly.
    """
    before = {name: cpu_seconds(pid) for name, pid in (pids or {}).items()}
    spec = LoadSpec(
        target=target,
        profile=f"constant:{rate}",
        duration=seconds,
        seed=seed,
        workers=1 if rate <= ONE_WORKER_MAX_RPS else 2,
    )
    report = run_load_sync(spec)
    answered = max(1, report.answered_total)
    cpu = {
        name: round((cpu_seconds(pid) - before[name]) / answered * 1e6)
        for name, pid in (pids or {}).items()
    }
    lat = report.latency_ms
    return {
        "rate": rate,
        "sent": report.sent,
        "answered": report.answered,
        "errors": report.errors,
        "lost": report.lost,
        "not_sent": report.not_sent,
        "p50_ms": lat.p50,
        "p99_ms": lat.p99,
        "p999_ms": lat.p999,
        "max_ms": lat.max,
        "achieved_rps": report.achieved_rps,
        "generator_lag_p99_ms": report.schedule_lag_ms.p99,
        "generator_fell_behind": report.generator_fell_behind,
        "shards": report.shards,
        "cpu_us_per_request": cpu,
    }


def service_pid(service: ServiceProcess) -> int:
    assert service.proc is not None, f"{service.name} was not started"
    return service.proc.pid


def median_run(tries: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median p99 of ``tries``, carrying every try's p99 and errors.

    NB: on a shared machine a burst of someone else's work can wreck one 10 s run of any of the
    three configurations; the median of interleaved runs is what the servers themselves did.
    """
    ranked = sorted(tries, key=lambda r: (r["p99_ms"], r["errors"]))
    median = dict(ranked[(len(ranked) - 1) // 2])
    median["p99_runs_ms"] = [r["p99_ms"] for r in tries]
    median["errors_runs"] = [r["errors"] for r in tries]
    return median


def passes(run: dict[str, Any]) -> bool:
    return bool(run["p99_ms"] < P99_GOAL_MS and run["errors"] == 0)


def search_highest(
    target: str, runs: list[dict[str, Any]], steps: int, seconds: float, seed: int
) -> tuple[int | None, list[dict[str, Any]]]:
    """Bisect between the highest passing and the lowest failing rate; ``steps`` runs at most.

    If every fixed rate passes, the search steps upward by half the highest rate instead.
    """
    good = max((r["rate"] for r in runs if passes(r)), default=None)
    bad = min((r["rate"] for r in runs if not passes(r) and r["rate"] > (good or 0)), default=None)
    extra = []
    for _ in range(steps):
        if good is None:
            break
        rate = (good + bad) // 2 if bad is not None else good + good // 2
        if bad is not None and bad - good <= max(100, good // 10):
            break  # within 10%: close enough for a 2-core box's noise
        time.sleep(PAUSE_S)
        run = measure(target, rate, seconds, seed)
        extra.append(run)
        if passes(run):
            good = rate
        else:
            bad = rate
    return good, extra


def write_markdown(result: dict[str, Any], path: Path) -> None:
    runs = result["runs"]
    lines = [
        "# Data-plane benchmark",
        "",
        f"Measured {result['when']} on {result['machine']['cpus']} CPUs (load average "
        f"{result['machine']['load_avg_1m']:.1f} at start) with `{result['command']}`; "
        f"{result['seconds']:g} s per run, open loop, latency from the intended send time; "
        f"{result.get('repeats', 1)} interleaved runs per rate and configuration, the row is "
        "the run with the median p99 (every run's p99 in the last column).",
        "",
        "| rate | config | p50 ms | p99 ms | p999 ms | max ms | errors | lost | not sent "
        "| gen lag p99 ms | p99 of each run |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for rate in result["rates"]:
        for config in CONFIGS:
            r = runs[config][str(rate)]
            lines.append(
                f"| {rate} | {config} | {r['p50_ms']} | {r['p99_ms']} | {r['p999_ms']} | "
                f"{r['max_ms']} | {r['errors']} | {r['lost']} | {r['not_sent']} | "
                f"{r['generator_lag_p99_ms']}{' (behind)' if r['generator_fell_behind'] else ''} | "
                f"{' / '.join(f'{x:.1f}' for x in r.get('p99_runs_ms', [r['p99_ms']]))} |"
            )
    lines += ["", "| rate | router p99 / HAProxy p99 | router overhead / HAProxy overhead |"]
    lines += ["| ---: | ---: | ---: |"]
    for rate in result["rates"]:
        ratio = result["ratios"][str(rate)]
        overhead = "n/a" if ratio["overhead"] is None else ratio["overhead"]
        lines.append(f"| {rate} | {ratio['p99']} | {overhead} |")
    lines += ["", "CPU µs per answered request, per process (robust to a busy machine):", ""]
    lines += ["| rate | config | shard-0 | shard-1 | router | haproxy |"]
    lines += ["| ---: | --- | ---: | ---: | ---: | ---: |"]
    for rate in result["rates"]:
        for config in CONFIGS:
            cpu = runs[config][str(rate)]["cpu_us_per_request"]
            cells = " | ".join(
                str(cpu.get(p, "")) for p in ("shard-0", "shard-1", "router", "haproxy")
            )
            lines.append(f"| {rate} | {config} | {cells} |")
    lines += [
        "",
        "Highest rate with p99 under 10 ms and zero errors (fixed rates plus search):",
        "",
    ]
    for config in CONFIGS:
        best = result["highest_rate_p99_under_10ms"][config]
        lines.append(f"- {config}: {f'{best} rps' if best else 'none of the rates tried'}")
    goal = result["goal"]
    lines += [
        "",
        f"Goal, router p99 under 10 ms at 2,000 rps with zero errors: "
        f"**{'met' if goal['router_p99_under_10ms_at_2000_zero_errors'] else 'NOT met'}**.",
        f"Goal, router p99 within 2x of HAProxy's at 2,000 rps: "
        f"**{'met' if goal['router_p99_within_2x_haproxy_at_2000'] else 'NOT met'}**.",
        "",
        "Overhead is a proxy's p99 minus the direct p99 at the same rate (n/a when HAProxy's",
        f"p99 was less than {OVERHEAD_FLOOR_MS:g} ms above the direct one: below what the",
        "measurement resolves). 'gen lag' is how late the load generator itself",
        "sent (already included in every latency above); '(behind)' marks runs where its p99",
        "was over 5 ms: the machine was too busy for the latencies to be the servers' alone.",
    ]
    path.write_text("\n".join(lines) + "\n")


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 2) if b > 0 else None


def overhead_ratio(direct: float, haproxy: float, router: float) -> float | None:
    """The router's p99 overhead over the direct run against HAProxy's (``None`` when HAProxy
    shows none that the measurement can resolve)."""
    if haproxy - direct < OVERHEAD_FLOOR_MS:
        return None
    return ratio(router - direct, haproxy - direct)


def run_benchmark(
    rates: tuple[int, ...], seconds: float, search_steps: int, seed: int, repeats: int = 1
) -> dict[str, Any]:
    runs: dict[str, dict[str, dict[str, Any]]] = {c: {} for c in CONFIGS}
    with (
        tempfile.TemporaryDirectory(prefix="hotshard-bench-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        workdir = Path(tmp)
        ports = {"shard-0": free_port(), "shard-1": free_port()}
        tables = build_tables(workdir, ports)
        services = {}
        for name, port in ports.items():
            services[name] = start_service(
                stack,
                name,
                ["bidder", "--shard", name, "--routing-file", str(tables[name])],
                log_dir=workdir,
                port=port,
            )
        router = services["router"] = start_service(
            stack, "router", ["router", "--routing-file", str(tables["router"])], log_dir=workdir
        )
        haproxy_port, haproxy_pid = stack.enter_context(
            start_haproxy(workdir, list(ports.values()))
        )
        pids = {name: service_pid(service) for name, service in services.items()}
        pids["haproxy"] = haproxy_pid
        targets = {
            "direct": f"http://127.0.0.1:{ports['shard-0']}{AUCTION_PATH}",
            "haproxy": f"http://127.0.0.1:{haproxy_port}{AUCTION_PATH}",
            "router": f"{router.url}{AUCTION_PATH}",
        }
        for config in CONFIGS:  # warm every path (connections, caches) before measuring
            measure(targets[config], 200, 1.0, seed)
        for rate in rates:
            tries: dict[str, list[dict[str, Any]]] = {c: [] for c in CONFIGS}
            for _ in range(repeats):
                for config in CONFIGS:
                    time.sleep(PAUSE_S)
                    run = measure(targets[config], rate, seconds, seed, pids)
                    tries[config].append(run)
                    print(
                        f"{config:8} {rate:5} rps  p99 {run['p99_ms']:7} ms  "
                        f"errors {run['errors']}",
                        flush=True,
                    )
            for config in CONFIGS:
                runs[config][str(rate)] = median_run(tries[config])
        highest: dict[str, int | None] = {}
        searched: dict[str, list[dict[str, Any]]] = {}
        for config in CONFIGS:
            highest[config], searched[config] = search_highest(
                targets[config], list(runs[config].values()), search_steps, seconds, seed
            )
            print(
                f"{config:8} highest rate with p99 < {P99_GOAL_MS} ms: {highest[config]}",
                flush=True,
            )
    ratios = {}
    for rate in rates:
        d, h, r = (runs[c][str(rate)]["p99_ms"] for c in CONFIGS)
        ratios[str(rate)] = {"p99": ratio(r, h), "overhead": overhead_ratio(d, h, r)}
    at_2000 = {c: runs[c].get("2000") for c in CONFIGS}
    router_2000, haproxy_2000 = at_2000["router"], at_2000["haproxy"]
    return {
        "rates": list(rates),
        "seconds": seconds,
        "repeats": repeats,
        "runs": runs,
        "search_runs": searched,
        "highest_rate_p99_under_10ms": highest,
        "ratios": ratios,
        "goal": {
            "router_p99_under_10ms_at_2000_zero_errors": bool(router_2000 and passes(router_2000)),
            "router_p99_within_2x_haproxy_at_2000": bool(
                router_2000 and haproxy_2000 and router_2000["p99_ms"] <= 2 * haproxy_2000["p99_ms"]
            ),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.dataplane", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--rates", default=",".join(map(str, RATES)), help="comma-separated rps")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per fixed-rate run")
    parser.add_argument("--search-steps", type=int, default=2, help="extra runs per config")
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="interleaved runs per rate and config; the table shows the median-p99 run",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    rates = tuple(sorted(int(r) for r in args.rates.split(",")))
    started = time.strftime("%Y-%m-%d %H:%M %Z")
    load = os.getloadavg()[0]
    result = run_benchmark(rates, args.seconds, args.search_steps, args.seed, args.repeats)
    result = {
        "when": started,
        "command": "python -m bench.dataplane "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "load_avg_1m": load},
        **result,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "dataplane.json").write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(result, args.out_dir / "dataplane.md")
    print((args.out_dir / "dataplane.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
