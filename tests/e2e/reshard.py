"""The resharding scenarios' fleet: start it, drive traffic at it, and read the outcome.

:func:`run_fleet` starts what ``test_resharding.py`` and ``test_advertiser_bug.py`` share (Debian's
Prometheus, the chart, the operator with the chart's token, one PartitionMap, its stand-in
bidders, a router, a steady background load) and removes it all on the way out.
:class:`ReshardFleet` gathers those processes and the reads assertions are made of: the
PartitionMap's status, the routing table in the ConfigMap, the shards serving a campaign, the
Events the operator posted. :class:`Spike` runs one bounded load of a single named campaign
through the router in a process of its own. :class:`PrepareTrigger` watches the ConfigMap and
acts the moment a hand-over is in its *prepare* phase, which is how the scenarios land a
concurrent write or a SIGKILL in the middle of a migration rather than before or after it.
"""

from __future__ import annotations

import functools
import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from hotshard.routing import MigrationPhase, RoutingSnapshot, RoutingTable
from hotshard.routing.configmap_store import ConfigMapRoutingStore
from hotshard_operator.children import bidder_account_name

from .conftest import REPO, Cluster
from .fleet import (
    MAP,
    OPERATOR_ACCOUNT,
    ROUTER_ACCOUNT,
    LocalProcess,
    bidder_image,
    create_map,
    discard_map,
    free_port,
    install_release,
    operator_process,
    read_map,
    token_kubeconfig,
    uninstall_release,
)
from .standins import ScrapingPrometheus, StandInKubelet

PARTITIONS = 64
BACKGROUND_RPS = 20
"""Steady traffic over the 100 Wikipedia campaigns, so partitions have baselines to beat."""
BACKGROUND_SECONDS = 600.0
"""An upper bound on the module's run; the load is stopped at teardown anyway."""
COOLDOWN_SECONDS = 5.0
"""spec.scaleDown.cooldown, shortened from 15 minutes so merge-back fits in a test."""
SPIKE_GRACE_SECONDS = 30.0
"""Past its duration, how long a spike's load generator may take to write its report (start-up
loads the corpus, the end waits one client timeout)."""
LOST_AFTER_MS = 5000
"""A request unanswered this long past its deadline counts as lost."""
TRIGGER_POLL_SECONDS = 0.02
"""ConfigMap reads while waiting for a prepare table: the operator stays in prepare for at least
one Prometheus scrape (1 s), so 20 ms lands well inside it."""


@dataclass
class Spike:
    """One campaign's load through the router, from ``campaign_load.py`` in its own process."""

    process: LocalProcess
    report_path: Path
    duration: float

    def report(self) -> dict[str, Any]:
        """Wait for the load to end and return its JSON report."""
        assert self.process.proc is not None
        try:
            self.process.proc.wait(self.duration + SPIKE_GRACE_SECONDS)
        except Exception:
            self.process.stop()
            pytest.fail(f"the spike did not end:\n{self.process.log_tail()}")
        if not self.report_path.exists():
            pytest.fail(f"the spike wrote no report:\n{self.process.log_tail()}")
        found: dict[str, Any] = json.loads(self.report_path.read_text())
        return found

    def stop(self) -> None:
        self.process.stop()


@dataclass
class ReshardFleet:
    cluster: Cluster
    namespace: str
    workdir: Path
    operator: LocalProcess
    router: LocalProcess
    router_url: str
    kubelet: StandInKubelet
    prometheus: ScrapingPrometheus
    uid: str
    spikes: list[Spike] = field(default_factory=list)

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.cluster.api)

    def read_map(self) -> dict[str, Any]:
        return read_map(self.cluster, self.namespace)

    def store(self) -> ConfigMapRoutingStore:
        return ConfigMapRoutingStore(self.core, self.namespace, f"{MAP}-routing")

    def table(self) -> RoutingTable:
        return self.store().read()[0]

    def serving(self, campaign: str, table: RoutingTable | None = None) -> tuple[str, ...]:
        """The shards that serve ``campaign`` in ``table`` (the ConfigMap's when None)."""
        snapshot = RoutingSnapshot(table or self.table())
        return snapshot.shards_for(snapshot.partition(campaign), campaign)

    def overflow_replicas(self) -> int:
        return self.kubelet.replicas()["overflow"]

    def events(self) -> list[tuple[str, str]]:
        """``(reason, message)`` of every Event about the PartitionMap, oldest first."""
        found = self.core.list_namespaced_event(
            self.namespace, field_selector=f"involvedObject.name={MAP}"
        ).items
        found.sort(key=lambda e: e.metadata.creation_timestamp)
        return [(e.reason, e.message or "") for e in found]

    def stop(self) -> None:
        """Stop the spikes still running and the operator (a scenario may have replaced it);
        the fixture stops everything else."""
        for spike in self.spikes:
            spike.stop()
        self.operator.stop()

    def check(self) -> None:
        """Fail at once, with its log, if a process the scenario needs has exited."""
        for process in (self.operator, self.router):
            if not process.running():
                pytest.fail(f"the {process.name} exited:\n{process.log_tail()}")
        self.kubelet.check()

    def wait_until(self, what: str, probe: Callable[[], Any]) -> Any:
        def checked() -> Any:
            self.check()
            return probe()

        return self.cluster.wait_until(what, checked)

    def spike(self, campaign: str, rate: float, duration: float) -> Spike:
        """Start ``rate`` req/s of ``campaign`` alone at the router for ``duration`` seconds."""
        n = len(self.spikes)
        spec = {
            "target": f"{self.router_url}/openrtb2/auction",
            "profile": f"constant:{rate:g}",
            "duration": duration,
            "names": [campaign],
            "shares": [1.0],
            "hot": 1,
            "seed": n + 1,
            # NB: "lost" must mean never answered, not answered late: on a shared 2-core box the
            # generator itself can fall a second behind, and speed is not what this tier tests.
            "grace_ms": LOST_AFTER_MS,
        }
        spec_path = self.workdir / f"spike-{n}.json"
        spec_path.write_text(json.dumps(spec))
        out = self.workdir / f"spike-{n}.report.json"
        process = LocalProcess(
            f"spike-{n}",
            [str(spec_path), str(out)],
            None,
            self.workdir / f"spike-{n}.log",
            program=[sys.executable, str(REPO / "tests" / "e2e" / "campaign_load.py")],
        ).start()
        spike = Spike(process, out, duration)
        self.spikes.append(spike)
        return spike


WARM, OVERFLOW_MAX = 2, 4
"""The overflow tier: two warm shards, and room to refill the pool while a spike holds some, so
that after the merge the engine's learnt pool target is below the peak and the StatefulSet
shrinks."""
SHARD_CPU_MILLICORES = 10
"""The bidders' CPU limit, which is a shard's capacity to the engine: it moves a hot spot only
when it would push its shard past 70% of it. The spike's 200 req/s of 50-150 us bids (the spread
between runs on the shared machine) use 10-30 millicores, so 10m overloads one shard even at the
cheapest, while the background's ~10 req/s per shard stays under 20%. On a slower host every
bid costs more, the background alone holds the base shards over the engine's 50% merge-back
line and the spike never merges back (2026-12-04, a host running Python 2.5-4x slower): the
limit is scaled by :func:`host_slowdown` so the shares stay what they were tuned for."""
CALIBRATION_LOOPS = 1_000_000
REFERENCE_LOOP_CPU_S = 0.12
"""CPU seconds a million-step Python loop took on the host ``SHARD_CPU_MILLICORES`` was tuned on
(estimated: 0.30-0.34 s on 2026-12-04, when the bidders' CPU per request was 2-3x that day's)."""


@functools.cache
def host_slowdown() -> float:
    """How many times slower than the tuning host this one runs Python (1 when not slower).

    CPU time, not wall time: it is what the bidders' CPU counters, and so the engine, see.
    Measured once per session, so the limit and the tests that depend on it agree."""
    start = time.thread_time()
    total = 0
    for step in range(CALIBRATION_LOOPS):
        total += step
    return max(1.0, (time.thread_time() - start) / REFERENCE_LOOP_CPU_S)


def shard_cpu_for_this_host() -> str:
    """The bidders' CPU limit, scaled to this host's speed (``10m`` on the tuning host)."""
    return f"{round(SHARD_CPU_MILLICORES * host_slowdown())}m"


SHARD_CPU = f"{SHARD_CPU_MILLICORES}m"


def reshard_spec(prometheus_url: str, image: str, shard_cpu: str = SHARD_CPU) -> dict[str, Any]:
    return {
        "virtualPartitions": PARTITIONS,
        "bidder": {
            "image": image,
            "resources": {
                "requests": {"cpu": "10m", "memory": "16Mi"},
                "limits": {"cpu": shard_cpu, "memory": "256Mi"},
            },
        },
        "tiers": {
            "base": {"replicas": 2},
            "overflow": {"warm": WARM, "maximum": OVERFLOW_MAX},
            "sandbox": {"replicas": 1},
        },
        # 50 req/s floor: the background's busiest partition stays well under it.
        "detection": {"interval": 1, "window": 10, "factor": 3, "floor": 50, "sustain": 3},
        "scaleDown": {"cooldown": COOLDOWN_SECONDS},
        "budget": {"maxShards": 8},
        "metrics": {"prometheusUrl": prometheus_url, "staleAfter": 5},
    }


@contextmanager
def run_fleet(
    cluster: Cluster,
    workdir: Path,
    bidder_args: tuple[str, ...] = (),
    shard_cpu: str | None = None,
) -> Iterator[ReshardFleet]:
    """Prometheus, the chart, the operator, the map (bidders' CPU limit ``shard_cpu``, by default
    :func:`shard_cpu_for_this_host`), its stand-in bidders (with ``bidder_args``), a router, a
    load; everything stopped and removed on the way out."""
    if shard_cpu is None:
        shard_cpu = shard_cpu_for_this_host()
        print(f"stand-in bidders' CPU limit on this host: {shard_cpu}", file=sys.stderr)
    image = bidder_image(cluster)  # skips on an existing cluster without an image to run
    prometheus = ScrapingPrometheus(workdir / "prometheus")
    started: list[Any] = [prometheus]
    namespace: str | None = None
    try:
        prometheus.start()
        namespace = cluster.new_namespace("reshard")
        install_release(cluster, namespace)
        op_kcfg = token_kubeconfig(cluster, namespace, OPERATOR_ACCOUNT, workdir / "op.kcfg")
        router_kcfg = token_kubeconfig(cluster, namespace, ROUTER_ACCOUNT, workdir / "router.kcfg")
        operator = operator_process(namespace, op_kcfg, workdir / "operator.log").start()
        started.append(operator)
        uid = create_map(cluster, namespace, reshard_spec(prometheus.url, image, shard_cpu))
        store = ConfigMapRoutingStore(client.CoreV1Api(cluster.api), namespace, f"{MAP}-routing")
        cluster.wait_until("the routing ConfigMap", lambda: _readable(store))
        # The stand-ins run as the bidders' own ServiceAccount, which the operator created with
        # the map's children: the Role it wrote for them is what this exercises.
        bidder_kcfg = token_kubeconfig(
            cluster, namespace, bidder_account_name(MAP), workdir / "bidder.kcfg"
        )
        kubelet = StandInKubelet(
            cluster.api, namespace, bidder_kcfg, workdir, prometheus, bidder_args
        ).start()
        started.append(kubelet)
        port = free_port()
        router = LocalProcess(
            "router",
            [
                *("router", "--host", "127.0.0.1", "--port", str(port)),
                *("--routing-configmap", f"{namespace}/{MAP}-routing"),
            ],
            router_kcfg,
            workdir / "router.log",
            program=[
                sys.executable,
                str(REPO / "tests" / "e2e" / "svc_resolver.py"),
                str(kubelet.ports_file),
                "--log-level=INFO",
            ],
        ).start()
        started.append(router)
        router_url = f"http://127.0.0.1:{port}"
        kubelet.extra["router"] = router_url
        kubelet.publish()
        background = LocalProcess(
            "background",
            [
                *("loadgen", "--target", f"{router_url}/openrtb2/auction"),
                *("--keys", "wikipedia", "--profile", f"constant:{BACKGROUND_RPS}"),
                *("--duration", str(BACKGROUND_SECONDS)),
            ],
            None,
            workdir / "background.log",
        ).start()
        started.append(background)
        fleet = ReshardFleet(
            cluster, namespace, workdir, operator, router, router_url, kubelet, prometheus, uid
        )
        started.append(fleet)
        yield fleet
    finally:
        for thing in reversed(started):
            thing.stop()
        if namespace is not None:
            discard_map(cluster, namespace)
            uninstall_release(cluster, namespace)


def _readable(store: ConfigMapRoutingStore) -> bool:
    try:
        store.read()
    except Exception:
        return False
    return True


def in_prepare(table: RoutingTable) -> bool:
    return any(m.phase is MigrationPhase.PREPARE for m in table.migrations)


class PrepareTrigger:
    """Calls ``act(table, token)`` once, the first time the ConfigMap holds a prepare table.

    It runs in a thread, so the test can start the load that causes the hand-over meanwhile.
    ``history`` keeps every table version seen, in order, for the assertions.
    """

    def __init__(
        self, store: ConfigMapRoutingStore, act: Callable[[RoutingTable, str], None]
    ) -> None:
        self.store = store
        self.act = act
        self.fired: RoutingTable | None = None
        self.history: list[int] = []
        self.error: BaseException | None = None
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prepare-trigger", daemon=True)

    def _run(self) -> None:
        try:
            while not self._halt.is_set():
                table, token = self.store.read()
                if not self.history or self.history[-1] != table.version:
                    self.history.append(table.version)
                if self.fired is None and in_prepare(table):
                    self.act(table, token)
                    self.fired = table
                time.sleep(TRIGGER_POLL_SECONDS)
        except BaseException as exc:  # NB: surfaced by the test through `error`
            self.error = exc

    def __enter__(self) -> PrepareTrigger:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._halt.set()
        self._thread.join(5)
