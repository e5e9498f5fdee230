"""The kopf handlers against a fake Kubernetes API (kmock) with fake loop time (looptime).

Here the handlers run as kopf would call them: ``ensure`` on create, and the ``detect`` daemon
ticking every ``spec.detection.interval``. Their real Kubernetes I/O (the official client, the
ConfigMap routing store) goes over HTTP to kmock's in-memory API server on 127.0.0.1. looptime
makes the daemon's one-second waits pass at once, so a dozen ticks cost milliseconds.

kmock's emulator stores objects but, as its docs say, leaves resource-specific semantics to the
user; the routing store needs two of them, added in :class:`FleetApi`: every write stamps a
new ``resourceVersion``, and a ``PUT`` (replace) with a stale one answers 409 Conflict.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import aiohttp.web
import attrs
import kmock
import kopf
import pytest
from kopf._cogs.aiokits.aioenums import FlagSetter
from kubernetes import client

from hotshard.engine import CampaignLoad, PartitionLoad
from hotshard.engine.fleet import model_observation
from hotshard.engine.model import Observation
from hotshard.routing import RoutingTable, partition_of
from hotshard.routing.configmap_store import TABLE_KEY, ConfigMapRoutingStore
from hotshard.routing.table import RoutingSnapshot
from hotshard_operator import handlers
from hotshard_operator.cluster import KubernetesCluster
from hotshard_operator.loopstep import LoopStep
from hotshard_operator.reconcile import FleetRef
from hotshard_operator.resources import PartitionMapSpec

NS, NAME, UID = "bidding", "fleet", "uid-7"
V = 16
CAMPAIGN = "superbowl-ad"
HOT = partition_of(CAMPAIGN, V)
HOME = f"fleet-base-{HOT // (V // 4)}"
CALM, SPIKE = 200.0, 2500.0
"""Requests/s of a calm partition, and what the hot campaign adds (as in the loopstep tests)."""
MOVED_URL = "http://sandbox-elsewhere.bidding.svc:9100"
PMAPS = "hotshard.io/v1alpha1/partitionmaps"
CONFIGMAPS = "v1/configmaps"
STATEFULSETS = "apps/v1/statefulsets"
SERVICES = kmock.resource("v1/services")


@attrs.define(kw_only=True)
class FleetApi(kmock.KubernetesEmulator):
    """kmock's emulator with resourceVersion stamps and compare-and-swap replaces."""

    rv: int = 100
    race: Callable[[dict[str, Any]], None] | None = None
    """Called once with the stored ConfigMap before the next replace: another writer's change."""
    replaces: list[dict[str, Any]] = attrs.field(factory=list)

    def _stamp(self) -> str:
        self.rv += 1
        return str(self.rv)

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        if request.method == kmock.method.PUT and request.name is not None:
            return await self._replace(request)
        if request.action in (kmock.action.CREATE, kmock.action.UPDATE) and isinstance(
            request.data, dict
        ):
            request.data.setdefault("metadata", {})["resourceVersion"] = self._stamp()
        return await super()._handle(request)

    async def _replace(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        key = (request.resource, request.namespace, request.name)
        async with self._lock:
            if key not in self._objects or self._objects[key].deleted:
                return await self._render_error(kmock.KubernetesObjectNotFoundError())
            stored = self._objects[key]
            if self.race is not None:
                race, self.race = self.race, None
                changed = stored.raw
                race(changed)
                changed["metadata"]["resourceVersion"] = self._stamp()
                stored.patch(changed)
            sent = request.data["metadata"].get("resourceVersion")
            if sent != stored.raw["metadata"]["resourceVersion"]:
                return aiohttp.web.json_response(
                    {"kind": "Status", "code": 409, "reason": "Conflict", "status": "Failure"},
                    status=409,
                )
            body = dict(request.data)
            body["metadata"] = {**body["metadata"], "resourceVersion": self._stamp()}
            stored.patch(body)
            self.replaces.append(stored.raw)
            return aiohttp.web.json_response(stored.raw)


# NB: looptime on: the daemon's one-second waits pass at once, in fake loop time.
pytestmark = [pytest.mark.looptime, pytest.mark.kmock(cls=FleetApi)]


def table_in(api: FleetApi) -> RoutingTable:
    raw = api.objects[CONFIGMAPS, NS, "fleet-routing"].raw
    return RoutingTable.from_json(raw["data"][TABLE_KEY])


def status_of(api: FleetApi) -> dict[str, Any]:
    return dict(api.objects[PMAPS, NS, NAME].raw.get("status", {}))


def condition(status: Mapping[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == kind)


def spec_for(prometheus: str = "http://prometheus.monitoring.svc:9090") -> dict[str, Any]:
    return {
        "bidder": {"image": "hotshard:0.1.0"},
        "virtualPartitions": V,
        "tiers": {"base": {"replicas": 4}, "overflow": {"warm": 2, "maximum": 6}},
        "detection": {"factor": 3, "floor": 50, "sustain": 2},
        "metrics": {"prometheusUrl": prometheus},
    }


@pytest.fixture
def api(kmock: FleetApi, monkeypatch: pytest.MonkeyPatch) -> Iterator[FleetApi]:
    """The fake API with one PartitionMap, and the kubernetes client pointed at it."""
    config = client.Configuration()
    config.host = str(kmock.url).rstrip("/")
    previous = client.Configuration.get_default_copy()
    client.Configuration.set_default(config)
    kmock.objects[PMAPS, NS, NAME] = pmap_body(spec_for())
    yield kmock
    client.Configuration.set_default(previous)


def pmap_body(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "hotshard.io/v1alpha1",
        "kind": "PartitionMap",
        "metadata": {"name": NAME, "namespace": NS, "uid": UID, "generation": 1},
        "spec": spec,
    }


async def create(spec: dict[str, Any]) -> None:
    body = kopf.Body(pmap_body(spec))
    await handlers.ensure(body=body, meta=body.metadata, spec=body.spec)


def run_pods(api: FleetApi) -> None:
    """Play the StatefulSet controller: every pod asked for is ready."""
    for key, obj in list(api.objects.items()):
        if key[0] == kmock.resource(STATEFULSETS) and not obj.deleted:
            n = obj.raw["spec"]["replicas"]
            obj.patch({"status": {"replicas": n, "readyReplicas": n}})


async def detect(
    api: FleetApi, spec: dict[str, Any], ticks: int, on_tick: Callable[[int], None]
) -> None:
    """Run the ``detect`` daemon for ``ticks`` ticks, calling ``on_tick`` before each."""
    stopper: FlagSetter[Any] = FlagSetter()
    body = kopf.Body({**pmap_body(spec), "status": status_of(api)})
    count = 0
    real_run_tick = handlers.run_tick

    async def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal count
        on_tick(count)
        result = await real_run_tick(*args, **kwargs)
        count += 1
        if count >= ticks:
            stopper.set()
        return result

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(handlers, "run_tick", counting)
        await handlers.detect(
            body=body,
            meta=body.metadata,
            stopped=stopper.async_waiter,
            logger=logging.getLogger("test"),
        )
    assert count == ticks


class Metrics:
    """What Prometheus would report for the fleet the ConfigMap describes; a spike on demand."""

    def __init__(self, store: ConfigMapRoutingStore) -> None:
        self.store = store
        self.spike = False

    async def observe(self, now: float) -> Observation:
        table, _ = await asyncio.to_thread(self.store.read)
        parts = {p: PartitionLoad(rate=CALM, cpu=CALM * 1e-5, latency=0.01) for p in range(V)}
        campaigns: list[CampaignLoad] = []
        if self.spike:
            parts[HOT] = PartitionLoad(rate=CALM + SPIKE, cpu=(CALM + SPIKE) * 1e-5, latency=0.01)
            campaigns = [CampaignLoad(CAMPAIGN, HOT, rate=SPIKE, cpu=SPIKE * 1e-5)]
        return model_observation(now, table, parts, campaigns, age_seconds=0.5)

    async def aclose(self) -> None:
        return None


class Versions:
    """Every shard has loaded what the ConfigMap holds (bidders follow it through a watch)."""

    def __init__(self, store: ConfigMapRoutingStore) -> None:
        self.store = store

    async def versions(self, shards: Iterable[str]) -> Mapping[str, int]:
        version = (await asyncio.to_thread(self.store.read))[0].version
        return dict.fromkeys(shards, version)


def fake_prometheus(
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[[], Metrics]:
    """Swap only Prometheus in the daemon's loop step; the clock is the (fake) loop time."""
    made: list[Metrics] = []

    def build(
        ref: FleetRef, spec: PartitionMapSpec, cluster: KubernetesCluster, store: Any
    ) -> LoopStep:
        metrics = Metrics(store)
        made.append(metrics)
        loop = asyncio.get_running_loop()
        clock: Callable[[], float] = lambda: 1_000_000.0 + loop.time()  # noqa: E731
        return LoopStep(ref, spec, cluster, store, metrics, Versions(store), clock=clock)

    monkeypatch.setattr(handlers, "build_loop_step", build)
    return lambda: made[-1]


# -- create ----------------------------------------------------------------------------------


async def test_create_makes_the_children_the_routing_config_map_and_ready(api: FleetApi) -> None:
    await create(spec_for())

    sets = {k[2]: o.raw for k, o in api.objects.items() if k[0] == kmock.resource(STATEFULSETS)}
    assert {n: s["spec"]["replicas"] for n, s in sets.items()} == {
        "fleet-base": 4,
        "fleet-overflow": 2,
        "fleet-sandbox": 1,
    }
    for s in sets.values():
        assert s["metadata"]["ownerReferences"][0]["uid"] == UID
    services = {
        k[2]: o.raw for k, o in api.objects.items() if k[0] == kmock.resource("v1/services")
    }
    assert {n: s["spec"]["clusterIP"] for n, s in services.items()} == {
        "fleet-base": "None",
        "fleet-overflow": "None",
        "fleet-sandbox": "None",
    }
    access = {
        (k[0].plural, k[2])
        for k in api.objects
        if k[0].plural in ("serviceaccounts", "roles", "rolebindings")
    }
    assert access == {
        (kind, "fleet-bidder") for kind in ("serviceaccounts", "roles", "rolebindings")
    }
    role = api.objects["rbac.authorization.k8s.io/v1/roles", NS, "fleet-bidder"].raw
    assert role["rules"][0]["resourceNames"] == ["fleet-routing"]
    table = table_in(api)
    assert table.version == 1
    assert [s.name for s in table.shards] == [f"fleet-base-{i}" for i in range(4)] + [
        "fleet-sandbox-0"
    ]
    assert [table.owners().count(f"fleet-base-{i}") for i in range(4)] == [4, 4, 4, 4]
    status = status_of(api)
    assert status["routingVersion"] == 1
    ready = condition(status, "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "RoutingPublished")
    assert ready["message"] == "published the first routing table"


async def test_a_second_create_adopts_the_published_table(api: FleetApi) -> None:
    await create(spec_for())
    api.objects[CONFIGMAPS, NS, "fleet-routing"].patch({"data": {TABLE_KEY: bumped(table_in(api))}})
    await create(spec_for())
    assert table_in(api).version == 2
    ready = condition(status_of(api), "Ready")
    assert ready["message"] == "adopted routing table version 2 from the ConfigMap"


def bumped(table: RoutingTable) -> str:
    data = table.model_dump()
    data["version"] += 1
    return RoutingTable.model_validate(data).to_json()


# -- detect ----------------------------------------------------------------------------------


async def test_a_hot_signal_writes_a_two_phase_split_and_reports_it(
    api: FleetApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    metrics = fake_prometheus(monkeypatch)
    await create(spec_for())
    run_pods(api)

    def spike_after_ten(tick: int) -> None:
        run_pods(api)  # the StatefulSet controller starts what the last tick asked for
        metrics().spike = tick >= 10

    await detect(api, spec_for(), ticks=14, on_tick=spike_after_ten)

    tables = [RoutingTable.from_json(o["data"][TABLE_KEY]) for o in api.replaces]
    phases = [(t.version, t.migrations[0].phase.value if t.migrations else "-") for t in tables]
    assert phases[:4] == [(2, "-"), (3, "prepare"), (4, "commit"), (5, "-")]
    prepare, commit = tables[1], tables[2]
    (migration,) = prepare.migrations
    assert migration.source == (HOME,)
    assert set(migration.target) == {"fleet-overflow-0", "fleet-overflow-1"}
    assert RoutingSnapshot(prepare).shards_for(HOT) == (HOME,)
    assert set(RoutingSnapshot(commit).shards_for(HOT, CAMPAIGN)) == set(migration.target)

    status = status_of(api)
    assert status["lastDecision"]["action"] == "split"
    assert status["lastDecision"]["routingVersion"] == 5
    assert [(h["partition"], h["reason"]) for h in status["hotPartitions"]] == [(HOT, "rate")]
    events = [o.raw for k, o in api.objects.items() if k[0] == kmock.resource("v1/events")]
    assert sorted(e["reason"] for e in events) == ["SplitCommitted", "SplitStarted"]
    assert all(e["involvedObject"]["uid"] == UID for e in events)
    # The two claimed warm shards are refilled: overflow scaled to two serving + two warm.
    assert api.objects[STATEFULSETS, NS, "fleet-overflow"].raw["spec"]["replicas"] == 4


async def test_a_409_on_the_config_map_is_re_planned_not_overwritten(
    api: FleetApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    metrics = fake_prometheus(monkeypatch)
    await create(spec_for())
    run_pods(api)

    def other_writer(stored: dict[str, Any]) -> None:
        data = RoutingTable.from_json(stored["data"][TABLE_KEY]).model_dump()
        data["version"] += 1
        for shard in data["shards"]:
            if shard["name"] == "fleet-sandbox-0":
                shard["url"] = MOVED_URL
        stored["data"][TABLE_KEY] = RoutingTable.model_validate(data).to_json()

    seen: dict[str, Any] = {}

    def spike_and_race(tick: int) -> None:
        metrics().spike = tick >= 10
        if tick == 10:
            api.race = other_writer  # our next replace (the prepare) meets a 409
        if tick == 11:
            seen.update(table=table_in(api), decision=status_of(api)["lastDecision"])

    await detect(api, spec_for(), ticks=18, on_tick=spike_and_race)

    raced = seen["table"]
    assert raced.version == 3  # the other writer's table stands, not ours forced over it
    assert raced.shard("fleet-sandbox-0").url == MOVED_URL
    assert not raced.migrations
    assert seen["decision"]["action"] == "hold"
    assert "changed while writing version 3" in seen["decision"]["reason"]
    # Later ticks plan again on the table the other writer left, and keep its change.
    written = [RoutingTable.from_json(o["data"][TABLE_KEY]) for o in api.replaces]
    assert [t.version for t in written if t.version > 3][:3] == [4, 5, 6]
    assert all(t.shard("fleet-sandbox-0").url == MOVED_URL for t in written if t.version > 3)
    assert status_of(api)["lastDecision"]["routingVersion"] == 6


async def test_prometheus_down_is_degraded_and_writes_nothing(api: FleetApi) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: every connect is refused
        spec = spec_for(prometheus=f"http://127.0.0.1:{closed.getsockname()[1]}")
        await create(spec)
        run_pods(api)
        before = table_in(api)
        await detect(api, spec, ticks=3, on_tick=lambda _: None)

    status = status_of(api)
    degraded = condition(status, "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "MetricsUnavailable")
    assert "did not answer" in degraded["message"]
    assert "holding routing version 1" in degraded["message"]
    assert api.replaces == []
    assert table_in(api) == before
    assert api.objects[STATEFULSETS, NS, "fleet-overflow"].raw["spec"]["replicas"] == 2
    assert not any(k[0] == kmock.resource("v1/events") for k in api.objects)
