"""Local processes that stand in for what kwok does not run: the bidder pods, and Prometheus.

Under kwok a pod is only an object: it gets scheduled and Ready, but nothing runs and its IP is
fake. For the operator's resharding scenarios the fleet must really serve and really be
measured, so :class:`StandInKubelet` plays the kubelet's part for one PartitionMap: it watches
the map's StatefulSets and keeps exactly one ``hotshard bidder`` process on 127.0.0.1 per pod
ordinal below ``spec.replicas``, named after the pod (``fleet-overflow-1``), following the
routing ConfigMap through the API with a ServiceAccount token; when the operator scales a
StatefulSet down, the bidders of the removed ordinals are stopped, as their pods would be.

Every change rewrites two files: the ports file the router's resolver reads
(``tests/e2e/svc_resolver.py``: a shard's Service DNS name becomes its local port, no pod IP
is ever dialled) and the targets of :class:`ScrapingPrometheus`, Debian's real Prometheus on
127.0.0.1 scraping each bidder (labelled with its shard name) and the router every second, with
the configuration local mode generates (:mod:`hotshard.local.prometheus`).
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from hotshard.local.prometheus import find_prometheus, render_config, render_targets

from .fleet import MAP, LocalProcess, free_port

TIERS = ("base", "overflow", "sandbox")
SYNC_SECONDS = 0.5
"""How often the stand-in kubelet compares StatefulSets with its processes; a real kubelet
starts a container within a second or two of the pod being bound."""
READY_SECONDS = 30.0
"""Longest wait for Prometheus to answer ``/-/ready`` (it replays its WAL on a restart)."""


def ordinal(shard: str) -> int:
    """``fleet-overflow-2`` -> 2."""
    return int(shard.rsplit("-", 1)[1])


class ScrapingPrometheus:
    """``/usr/bin/prometheus`` on 127.0.0.1 with 1 s scrapes of a ``file_sd`` target list.

    The port and storage stay the same across :meth:`stop` and :meth:`start`, so a restart is
    the same Prometheus coming back, as the operator sees it.
    """

    def __init__(self, workdir: Path) -> None:
        binary = find_prometheus()
        if binary is None:
            pytest.skip(
                "no Prometheus binary (Debian's `prometheus` package, or HOTSHARD_PROMETHEUS)"
            )
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        self.targets_file = workdir / "targets.json"
        self.targets_file.write_text("[]")
        config = workdir / "prometheus.yml"
        config.write_text(render_config(self.targets_file))
        self.process = LocalProcess(
            "prometheus",
            [
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                "--storage.tsdb.retention.time=1h",  # a session lasts minutes
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            None,
            workdir / "prometheus.log",
            program=[binary],
        )

    def start(self) -> ScrapingPrometheus:
        self.process.start()
        deadline = time.monotonic() + READY_SECONDS
        while time.monotonic() < deadline:
            if not self.process.running():
                pytest.fail(f"Prometheus exited:\n{self.process.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=1) as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.2)
        pytest.fail(f"Prometheus not ready after {READY_SECONDS:.0f}s:\n{self.process.log_tail()}")

    def stop(self) -> None:
        self.process.stop()

    def set_targets(self, services: dict[str, str]) -> None:
        """Replace the targets atomically (Prometheus must never read half a file)."""
        tmp = self.targets_file.with_suffix(".tmp")
        tmp.write_text(render_targets(services))
        os.replace(tmp, self.targets_file)

    def query(self, promql: str) -> list[dict[str, object]]:
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=2) as resp:
            body = json.loads(resp.read())
        result: list[dict[str, object]] = body["data"]["result"]
        return result


class StandInKubelet:
    """One bidder process per pod of one PartitionMap's StatefulSets (see the module docstring)."""

    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        kubeconfig: Path,
        workdir: Path,
        prometheus: ScrapingPrometheus,
        bidder_args: tuple[str, ...] = (),
    ) -> None:
        self.apps = client.AppsV1Api(api)
        self.bidder_args = bidder_args
        self.namespace = namespace
        self.kubeconfig = kubeconfig
        self.workdir = workdir
        self.prometheus = prometheus
        self.ports_file = workdir / "ports.json"
        self.ports_file.write_text("{}")
        self.bidders: dict[str, tuple[int, LocalProcess]] = {}
        self.extra: dict[str, str] = {}
        """Other scrape targets (the router), by name."""
        self.stopped: list[str] = []
        """Shards whose process was stopped because their pod went away, in order."""
        self.stopped_from_top: list[bool] = []
        """For each stop: whether it was the highest ordinal of its tier still running."""
        self.peak: dict[str, int] = {}
        """The most replicas each tier's StatefulSet has asked for."""
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def bidder(self, shard: str) -> LocalProcess:
        return self.bidders[shard][1]

    def replicas(self) -> dict[str, int]:
        """``spec.replicas`` of each tier's StatefulSet (0 for one not created yet)."""
        out = {}
        for tier in TIERS:
            try:
                sts = self.apps.read_namespaced_stateful_set(f"{MAP}-{tier}", self.namespace)
            except ApiException as exc:
                if exc.status != 404:
                    raise
                out[tier] = 0
                continue
            out[tier] = sts.spec.replicas or 0
        return out

    def _start_bidder(self, shard: str) -> None:
        port = free_port()
        process = LocalProcess(
            shard,
            [
                *("bidder", "--shard", shard, "--host", "127.0.0.1", "--port", str(port)),
                *("--routing-configmap", f"{self.namespace}/{MAP}-routing"),
                *self.bidder_args,
            ],
            self.kubeconfig,
            self.workdir / f"{shard}.log",
        ).start()
        self.bidders[shard] = (port, process)

    def sync(self) -> None:
        """Start the bidders of new pods, stop those of removed pods, republish the targets."""
        replicas = self.replicas()
        wanted = {f"{MAP}-{t}-{i}" for t, n in replicas.items() for i in range(n)}
        with self._lock:
            for tier, n in replicas.items():
                self.peak[tier] = max(self.peak.get(tier, 0), n)
            changed = False
            for shard in sorted(wanted - set(self.bidders)):
                self._start_bidder(shard)
                changed = True
            for shard in sorted(set(self.bidders) - wanted, key=ordinal, reverse=True):
                self.bidders.pop(shard)[1].stop()
                tier = shard.rsplit("-", 2)[1]
                left = [ordinal(s) for s in self.bidders if s.rsplit("-", 2)[1] == tier]
                self.stopped.append(shard)
                self.stopped_from_top.append(all(ordinal(shard) > i for i in left))
                changed = True
            if changed:
                self.publish()

    def publish(self) -> None:
        ports = {shard: port for shard, (port, _) in self.bidders.items()}
        tmp = self.ports_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(ports))
        os.replace(tmp, self.ports_file)
        targets = {shard: f"http://127.0.0.1:{port}" for shard, port in ports.items()}
        self.prometheus.set_targets({**targets, **self.extra})

    def _run(self) -> None:
        while not self._halt.wait(SYNC_SECONDS):
            try:
                self.sync()
            except Exception as exc:  # NB: surfaced by check(), not lost in a thread
                self.error = exc
                return

    def start(self) -> StandInKubelet:
        self.sync()
        self._thread = threading.Thread(target=self._run, name="stand-in-kubelet", daemon=True)
        self._thread.start()
        return self

    def check(self) -> None:
        """Fail the test if the sync thread died or a bidder exited on its own."""
        if self.error is not None:
            pytest.fail(f"the stand-in kubelet failed: {self.error!r}")
        with self._lock:
            for shard, (_, process) in self.bidders.items():
                if not process.running():
                    pytest.fail(f"bidder {shard} exited:\n{process.log_tail()}")

    def stop(self) -> None:
        self._halt.set()
        if self._thread is not None:
            self._thread.join(10)
        with self._lock:
            for _, process in self.bidders.values():
                process.stop()
