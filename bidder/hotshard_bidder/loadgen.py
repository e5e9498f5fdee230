"""The load generator (``hotshard loadgen``): open-loop OpenRTB traffic and what it measured.

hotshard is judged by how the fleet's tail latency and lost requests behave when a campaign
turns hot, so the generator must not hide slowness. It is open loop: every request's send time
is fixed before the run from a rate profile (:mod:`.profiles`), sending never waits for an
answer, and latency is measured from the *intended* send time, so a stalled server shows up
as latency instead of as a quietly lower rate (no coordinated omission). Each request carries a
real corpus body (:mod:`.corpus`) with a fresh ``id`` and ``user.id``, and its campaign key,
drawn from a Zipf or a real popularity (:mod:`.zipf`), in the ``X-Hotshard-Campaign`` header.

The run is bounded in time (the profile's duration plus one client timeout) and in memory (at
most ``max_outstanding`` requests in flight; requests due beyond that are counted ``not_sent``,
never silently skipped). One process manages about 2-3k rps on a busy 2-core box; ``workers``
splits the schedule over processes and merges their HDR histograms (:mod:`.loadreport`).

Python API: :func:`run_load` (async, in this event loop when ``workers == 1``),
:func:`run_load_sync`, and :class:`BackgroundLoad` to run a load in a child process.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing
import os
import signal
import time
import uuid
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import orjson
from pydantic import BaseModel, Field, ValidationError, field_validator

from hotshard.routing.keys import CAMPAIGN_HEADER

from .corpus import USER_POPULATION, RequestCorpus, user_id
from .loadreport import (
    MAX_LATENCY_US,
    OK_STATUSES,
    LoadReport,
    Recorder,
    build_report,
    format_summary,
)
from .profiles import parse_profile, planned_count, send_times
from .shard_client import ShardConnectionError, ShardPool
from .zipf import Popularity, wikipedia_popularity, zipf_popularity

log = logging.getLogger(__name__)

TIMER_TICK = 0.001
"""Shortest sleep of the send loop: libuv's timers count whole milliseconds, so a shorter sleep
returns at once and the loop would spin, stealing the CPU the servers under test need. Requests
due within a tick go out together; the up-to-1 ms wait shows in the schedule lag."""

SHARD_HEADER = "x-hotshard-shard"
"""Who answered (the pool gives header names in lower case)."""
KEEPALIVE_S = 30.0
"""Idle keep-alive connections are reused for 30 s: well under the servers' 75 s idle timeout."""
HOT_GROUP = "hot"
OTHER_GROUP = "other"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost"})

START_DELAY = 0.05
"""Seconds between building the schedule and its first send: lets the connection pool and the
event loop settle so the first requests do not pay for start-up."""


class LoadSpec(BaseModel):
    """One load run. Every field has a CLI flag of the same name (``--max-outstanding`` ...)."""

    target: str = Field(description="URL every request is POSTed to (loopback only).")
    profile: str = Field(
        default="constant:1000",
        description="Rate profile: constant:R, step:T=R,..., spike:base=,peak=,start=,length=, "
        "trace:FILE.csv or worldcup98:peak=,start_minute=,minutes=,seconds_per_minute= "
        "(docs/loadgen.md).",
    )
    duration: float = Field(default=10.0, gt=0, le=3600, description="Seconds of sending.")
    keys: Literal["zipf", "wikipedia"] = Field(default="zipf", description="Campaign popularity.")
    campaigns: int = Field(default=1000, ge=1, description="Zipf: number of campaign keys.")
    skew: float = Field(default=1.0, ge=0, description="Zipf exponent (1.0 ~ web popularity).")
    hot: int = Field(default=1, ge=0, description="Top-ranked campaigns reported as 'hot'.")
    users: int = Field(default=USER_POPULATION, ge=1, description="Distinct user ids drawn.")
    max_outstanding: int = Field(
        # NB: 1024 in flight at 4000 rps is 250 ms of backlog, past any deadline we use.
        default=1024,
        ge=1,
        description="Requests in flight beyond which due ones are not sent.",
    )
    connections: int = Field(
        # NB: 64 keep-alive connections carry 4000 rps at up to 16 ms each without queueing.
        default=64,
        ge=1,
        description="Keep-alive connection pool size (per worker).",
    )
    deadline_ms: int = Field(
        default=100, ge=1, description="Deadline of a request without tmax (common exchange tmax)."
    )
    max_deadline_ms: int = Field(
        default=500, ge=1, description="Clamp on a body's tmax, as the router clamps it."
    )
    grace_ms: int = Field(
        # NB: 250 ms past the deadline covers a router answering its own timeout late on a busy
        # box; a request still unanswered after that is counted lost.
        default=250,
        ge=0,
        description="Client timeout = deadline + grace.",
    )
    seed: int = Field(default=1, description="Seed of every random draw (campaigns, bodies).")
    workers: int = Field(default=1, ge=1, le=16, description="Processes splitting the rate.")
    run_id: str = Field(default_factory=lambda: uuid.uuid4().hex[:8], pattern=r"^[0-9a-z]+$")

    @field_validator("target")
    @classmethod
    def _loopback_only(cls, value: str) -> str:
        host = urlsplit(value).hostname
        if host not in LOOPBACK_HOSTS:
            raise ValueError(f"target {value!r} is not on loopback; use http://127.0.0.1:PORT/...")
        return value

    def popularity(self) -> Popularity:
        if self.keys == "wikipedia":
            return wikipedia_popularity()
        return zipf_popularity(self.campaigns, self.skew)


class _Plan:
    """The whole schedule of one worker, precomputed so the send loop does list lookups only."""

    def __init__(self, spec: LoadSpec, worker: int) -> None:
        times = send_times(parse_profile(spec.profile), spec.duration)
        self.planned_total = len(times)
        popularity = spec.popularity()
        corpus = RequestCorpus.load()
        ranks = popularity.sample(len(times), spec.seed)
        templates, users = corpus.draw(len(times), spec.seed + 1, spec.users)
        part = slice(worker, None, spec.workers)
        self.indexes: list[int] = list(range(len(times)))[part]
        self.times: list[float] = times[part].tolist()
        self.ranks: list[int] = ranks[part].tolist()
        self.templates = [corpus.templates[t] for t in templates[part].tolist()]
        self.users: list[int] = users[part].tolist()
        self.headers = [
            {CAMPAIGN_HEADER: key, "Content-Type": "application/json"} for key in popularity.keys
        ]
        self.groups = [HOT_GROUP if r < spec.hot else OTHER_GROUP for r in range(popularity.size)]
        self.timeouts = {
            t.tmax_ms: _deadline_ms(spec, t.tmax_ms) / 1000.0 for t in corpus.templates
        }


def _deadline_ms(spec: LoadSpec, tmax_ms: int | None) -> int:
    deadline = spec.deadline_ms if tmax_ms is None else min(tmax_ms, spec.max_deadline_ms)
    return deadline + spec.grace_ms


async def run_worker(
    spec: LoadSpec,
    worker: int = 0,
    ready: Callable[[], None] | None = None,
    progress: Callable[[Recorder, int], None] | None = None,
) -> Recorder:
    """Send one worker's share of the schedule from this event loop and record what happened.

    ``progress``, when given, is called about once a second with the recorder and the number of
    whole seconds since the schedule started, from this loop, so it may read the recorder.
    """
    plan = _Plan(spec, worker)
    recorder = Recorder()
    loop = asyncio.get_running_loop()
    target = urlsplit(spec.target)
    path = target.path or "/"
    # NB: the router's own pool (a fraction of aiohttp's CPU per request, docs/http-stack.md):
    # on a 2-core box every microsecond the generator spends is taken from the servers it
    # measures.
    pool = ShardPool(
        "target", target.hostname or "127.0.0.1", target.port or 80, spec.connections, KEEPALIVE_S
    )
    outstanding = 0
    tasks: set[asyncio.Task[None]] = set()
    try:

        async def send(n: int, intended: float, second: int) -> None:
            nonlocal outstanding
            rank = plan.ranks[n]
            group = recorder.group(plan.groups[rank])
            bucket = recorder.second(second)
            template = plan.templates[n]
            body = template.render(f"{spec.run_id}-{plan.indexes[n]}", user_id(plan.users[n]))
            recorder.lag.record_value(
                min(MAX_LATENCY_US, max(1, int((loop.time() - intended) * 1e6)))
            )
            recorder.total.sent += 1
            group.sent += 1
            bucket.sent += 1
            try:
                async with asyncio.timeout(plan.timeouts[template.tmax_ms]):
                    resp = await pool.post(path, plan.headers[rank], body)
                status = resp.status
                shard = resp.headers.get(SHARD_HEADER, "-")
            except TimeoutError:
                for tally in (recorder.total, group, bucket):
                    tally.lost_timeout += 1
            except (ShardConnectionError, OSError):
                for tally in (recorder.total, group, bucket):
                    tally.lost_connection += 1
            else:
                latency = min(MAX_LATENCY_US, max(1, int((loop.time() - intended) * 1e6)))
                for tally in (recorder.total, group, bucket):
                    tally.statuses[status] += 1
                    tally.latency.record_value(latency)
                recorder.total.shards[shard] += 1
                group.shards[shard] += 1
                if status in OK_STATUSES:
                    group.note_answer(shard, loop.time() - start)
            finally:
                outstanding -= 1

        if ready is not None:
            ready()
        start = loop.time() + START_DELAY
        ticking = None
        if progress is not None:
            ticking = loop.create_task(_tick(progress, recorder, start))
        count = len(plan.times)
        n = 0
        while n < count:
            now = loop.time()
            due = start + plan.times[n]
            if due > now:
                await asyncio.sleep(max(due - now, TIMER_TICK))
                continue
            while n < count and start + plan.times[n] <= now:
                intended = start + plan.times[n]
                second = int(plan.times[n])
                if outstanding >= spec.max_outstanding:
                    for tally in (
                        recorder.total,
                        recorder.group(plan.groups[plan.ranks[n]]),
                        recorder.second(second),
                    ):
                        tally.not_sent += 1
                else:
                    outstanding += 1
                    task = loop.create_task(send(n, intended, second))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                n += 1
        # Every task ends by its client timeout, so this wait is bounded.
        if tasks:
            await asyncio.gather(*tasks)
        if ticking is not None:
            ticking.cancel()
    finally:
        pool.close()
    return recorder


async def _tick(
    progress: Callable[[Recorder, int], None], recorder: Recorder, start: float
) -> None:
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(1.0)
        progress(recorder, int(loop.time() - start))


def start_without_sigint(proc: Any) -> None:
    """Start a ``multiprocessing`` child that ignores SIGINT; its parent is the one to stop it.

    Ctrl-C sends SIGINT to the whole foreground process group, the children included: each
    would print a ``KeyboardInterrupt`` traceback from wherever it was, while the parent is
    already terminating them. An ignored signal stays ignored through fork and exec (a blocked
    one does not, here), and Python keeps an ignored SIGINT ignored, so even the child's
    start-up imports are covered. Only the main thread may change a handler; elsewhere the
    child starts as usual.
    """
    # NB: an interrupt in the few milliseconds of the fork is lost for the parent too.
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread
        proc.start()
        return
    try:
        proc.start()
    finally:
        signal.signal(signal.SIGINT, previous)


def run_in_uvloop(coro: Any) -> Any:
    """Run ``coro`` to completion on a fresh uvloop event loop (asyncio's own if unavailable)."""
    try:
        import uvloop

        factory: Any = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every supported platform
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


def _worker_main(spec_json: str, worker: int, barrier: Any, conn: Connection) -> None:
    spec = LoadSpec.model_validate_json(spec_json)
    # NB: 60 s covers spawning the other workers and building their plans on a loaded box.
    recorder = run_in_uvloop(run_worker(spec, worker, ready=lambda: barrier.wait(60)))
    conn.send_bytes(orjson.dumps(recorder.to_wire(), option=orjson.OPT_NON_STR_KEYS))
    conn.close()


def run_worker_processes(spec: LoadSpec) -> Recorder:
    """Run ``spec.workers`` processes, each sending every n-th request, and merge their records."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(spec.workers)
    children: list[tuple[Connection, Any]] = []
    for worker in range(spec.workers):
        receive, send = ctx.Pipe(duplex=False)
        proc = ctx.Process(
            target=_worker_main, args=(spec.model_dump_json(), worker, barrier, send), daemon=True
        )
        proc.start()
        send.close()
        children.append((receive, proc))
    merged = Recorder()
    # Bounded: start-up, the schedule, then one client timeout for the last answers.
    give_up = (
        time.monotonic() + 60 + spec.duration + _deadline_ms(spec, spec.max_deadline_ms) / 1000
    )
    try:
        for worker, (receive, proc) in enumerate(children):
            if not receive.poll(max(0.0, give_up - time.monotonic())):
                raise RuntimeError(f"load worker {worker} (pid {proc.pid}) did not report in time")
            merged.merge_wire(orjson.loads(receive.recv_bytes()))
    except EOFError as exc:
        raise RuntimeError("a load worker died before reporting; see its stderr") from exc
    finally:
        for _, proc in children:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
                proc.join()
    return merged


def _report(spec: LoadSpec, recorder: Recorder) -> LoadReport:
    profile = parse_profile(spec.profile)
    return build_report(
        recorder,
        target=spec.target,
        profile=profile.describe(),
        duration=spec.duration,
        workers=spec.workers,
        planned=len(send_times(profile, spec.duration)),
    )


async def run_load(spec: LoadSpec) -> LoadReport:
    """Run ``spec`` and report. One worker runs in the calling event loop; more run as processes."""
    if spec.workers == 1:
        recorder = await run_worker(spec)
    else:
        recorder = await asyncio.to_thread(run_worker_processes, spec)
    return _report(spec, recorder)


def run_load_sync(spec: LoadSpec) -> LoadReport:
    """:func:`run_load` from synchronous code, on uvloop."""
    report: LoadReport = run_in_uvloop(run_load(spec))
    return report


def _background_main(spec_json: str, conn: Connection) -> None:
    report = run_load_sync(LoadSpec.model_validate_json(spec_json))
    conn.send_bytes(report.model_dump_json().encode())
    conn.close()


class BackgroundLoad:
    """A load run in a child process, so a test or local mode can act while traffic flows.

    Example:
        >>> load = BackgroundLoad(LoadSpec(target="http://127.0.0.1:8080/bid"))  # doctest: +SKIP
        >>> load.start(); ...; report = load.wait(timeout=30)  # doctest: +SKIP
    """

    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        ctx = multiprocessing.get_context("spawn")
        self._receive, self._send = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(target=_background_main, args=(spec.model_dump_json(), self._send))

    def start(self) -> BackgroundLoad:
        self._proc.start()
        self._send.close()
        return self

    def wait(self, timeout: float) -> LoadReport:
        """The report, once the run ends; raises ``TimeoutError`` after ``timeout`` seconds."""
        try:
            if not self._receive.poll(timeout):
                raise TimeoutError(f"load run did not finish within {timeout} s")
            report = LoadReport.model_validate_json(self._receive.recv_bytes())
        except EOFError as exc:
            raise RuntimeError(
                f"load process exited with {self._proc.exitcode} before reporting"
            ) from exc
        self._proc.join(timeout=5)
        return report

    def stop(self) -> None:
        """End the run early (its report is lost); safe to call twice."""
        if self._proc.is_alive():
            self._proc.terminate()
        self._proc.join(timeout=5)

    def __enter__(self) -> BackgroundLoad:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def configure(parser: argparse.ArgumentParser) -> None:
    for name, field in LoadSpec.model_fields.items():
        if name == "run_id":
            continue
        flag = "--" + name.replace("_", "-")
        kind: type[Any] = field.annotation if field.annotation in (int, float) else str  # type: ignore[assignment]
        default = None if field.is_required() else field.default
        parser.add_argument(
            flag, type=kind, default=default, required=field.is_required(), help=field.description
        )
    parser.add_argument("--out", type=Path, help="write the JSON report to this file")


def check_before_run(spec: LoadSpec, out: Path | None = None) -> None:
    """Refuse, with a ``ValueError``, a run that could not be planned or reported, before sending.

    Every worker plans its own copy of the schedule, so a profile past the planned-request cap
    or an unreadable trace must be caught here rather than in a worker that would die with it;
    and a report that cannot be written must be known before the run, not after it.
    """
    planned_count(parse_profile(spec.profile), spec.duration)
    if out is not None:
        _check_writable(out)


def _check_writable(out: Path) -> None:
    """Create ``out``'s directory if missing, and refuse a path the report cannot be written to."""
    if out.is_dir():
        raise ValueError(f"--out {out} is a directory; give a file name")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(
            f"--out {out}: cannot use {out.parent} as a directory: {exc.strerror}"
        ) from exc
    if not os.access(out.parent, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out}: directory {out.parent} is not writable")


def main(args: argparse.Namespace) -> int:
    fields = {n: getattr(args, n) for n in LoadSpec.model_fields if n != "run_id"}
    try:
        spec = LoadSpec(**fields)
        check_before_run(spec, args.out)
        report = run_load_sync(spec)
    except ValidationError as exc:
        problems = "; ".join(
            f"--{'-'.join(str(p) for p in e['loc']).replace('_', '-')}: {e['msg']}"
            for e in exc.errors()
        )
        print(f"hotshard loadgen: invalid settings: {problems}")
        return 2
    except ValueError as exc:  # a profile or trace that cannot be read
        print(f"hotshard loadgen: {exc}")
        return 2
    print(format_summary(report))
    if args.out is not None:
        try:
            args.out.write_text(report.model_dump_json(indent=2))
        except OSError as exc:  # checked before the run; this is a change during it
            print(f"hotshard loadgen: cannot write the report to {args.out}: {exc.strerror}")
            return 2
        print(f"report written to {args.out}")
    if report.sent and not report.answered_total:
        print(f"hotshard loadgen: none of {report.sent} requests was answered by {spec.target}")
        return 1
    return 0
