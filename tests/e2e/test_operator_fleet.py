"""The operator against a real API server: the Helm chart installed for real, `hotshard operator`
running with the chart's ServiceAccount token, and one PartitionMap's whole life.

One release and one PartitionMap (``fleet``) serve the module, in order: the chart's identity
is least-privilege; the map's children appear with owner references and their pods get Ready
(kwok); status says Ready for the map's generation; with Prometheus unreachable the operator
holds still (Degraded, no reshard); a router follows the routing ConfigMap through the API with
its own ServiceAccount; bad maps are refused by the chart's CRD; deleting the map collects
everything it owned.

The scenarios that need real bidders scraped by Debian's Prometheus (a spike the operator
splits, a concurrent ConfigMap writer, an operator killed mid-migration, Prometheus stopped and
restarted, merge-back after cooldown) are in ``test_resharding.py``; the advertiser bug is in
``test_advertiser_bug.py``.
"""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from hotshard.routing.configmap_store import TABLE_KEY, ConfigMapRoutingStore

from .conftest import Cluster
from .fleet import (
    GROUP,
    IMAGE_ENV,
    MAP,
    OPERATOR_ACCOUNT,
    PLACEHOLDER_IMAGE,
    PLURAL,
    ROUTER_ACCOUNT,
    VERSION,
    LocalProcess,
    bidder_image,
    client_for,
    condition,
    create_map,
    free_port,
    install_release,
    operator_process,
    token_kubeconfig,
    uninstall_release,
)

TIERS = {"base": 2, "overflow": 1, "sandbox": 1}
"""Replicas per tier of the test map: small, and every tier present."""


def fleet_spec(prometheus_port: int, image: str = PLACEHOLDER_IMAGE) -> dict[str, Any]:
    return {
        "virtualPartitions": 64,
        "bidder": {
            "image": image,  # under kwok never pulled
            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
        },
        "tiers": {
            "base": {"replicas": TIERS["base"]},
            "overflow": {"warm": TIERS["overflow"], "maximum": 2},
            "sandbox": {"replicas": TIERS["sandbox"]},
        },
        "budget": {"maxShards": 8},
        # Nothing listens there: the operator must fail static (Degraded, no reshard).
        "metrics": {"prometheusUrl": f"http://127.0.0.1:{prometheus_port}"},
    }


@dataclass
class Fleet:
    cluster: Cluster
    namespace: str
    workdir: Path
    operator: LocalProcess
    uid: str

    @property
    def objects(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.cluster.api)

    def read_map(self) -> dict[str, Any]:
        found: dict[str, Any] = self.objects.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, MAP
        )
        return found

    def store(self, api: client.ApiClient | None = None) -> ConfigMapRoutingStore:
        core = client.CoreV1Api(api or self.cluster.api)
        return ConfigMapRoutingStore(core, self.namespace, f"{MAP}-routing")

    def wait_until(self, what: str, probe: Any) -> Any:
        def checked() -> Any:
            if not self.operator.running():
                pytest.fail(f"the operator exited:\n{self.operator.log_tail()}")
            return probe()

        return self.cluster.wait_until(what, checked)


@pytest.fixture(scope="module")
def fleet(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """Install the chart, start the operator with its ServiceAccount, create the map."""
    workdir = tmp_path_factory.mktemp("fleet")
    namespace = cluster.new_namespace("fleet")
    install_release(cluster, namespace)
    kubeconfig = token_kubeconfig(cluster, namespace, OPERATOR_ACCOUNT, workdir / "operator.kcfg")
    operator = operator_process(namespace, kubeconfig, workdir / "operator.log").start()
    try:
        image = os.environ.get(IMAGE_ENV, PLACEHOLDER_IMAGE)
        uid = create_map(cluster, namespace, fleet_spec(free_port(), image))
        yield Fleet(cluster, namespace, workdir, operator, uid)
    finally:
        operator.stop()
        uninstall_release(cluster, namespace)


def test_the_operator_identity_is_least_privilege(fleet: Fleet) -> None:
    api = client_for(fleet.operator.kubeconfig)
    core = client.CoreV1Api(api)
    # Granted: the routing ConfigMaps of its namespace.
    core.list_namespaced_config_map(fleet.namespace)
    # Not granted: Secrets, and anything in another namespace.
    for call, args in [
        (core.list_namespaced_secret, (fleet.namespace,)),
        (core.list_namespaced_config_map, ("default",)),
    ]:
        with pytest.raises(ApiException) as refused:
            call(*args)
        assert refused.value.status == 403


def test_children_appear_with_owner_references(fleet: Fleet) -> None:
    apps = client.AppsV1Api(fleet.cluster.api)
    core = client.CoreV1Api(fleet.cluster.api)

    def all_children() -> list[Any] | None:
        try:
            found = [
                apps.read_namespaced_stateful_set(f"{MAP}-{t}", fleet.namespace) for t in TIERS
            ]
            found += [core.read_namespaced_service(f"{MAP}-{t}", fleet.namespace) for t in TIERS]
            found.append(core.read_namespaced_config_map(f"{MAP}-routing", fleet.namespace))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return found

    children = fleet.wait_until("the fleet's children", all_children)
    for child in children:
        owners = [(o.kind, o.name, o.uid) for o in child.metadata.owner_references or []]
        assert owners == [("PartitionMap", MAP, fleet.uid)], child.metadata.name
    services = [c for c in children if isinstance(c, client.V1Service)]
    assert [s.spec.cluster_ip for s in services] == ["None"] * len(TIERS)  # headless


def test_pods_get_ready_and_status_says_ready_for_this_generation(fleet: Fleet) -> None:
    bidder_image(fleet.cluster)  # skips on an existing cluster without an image it can run
    apps = client.AppsV1Api(fleet.cluster.api)

    def tiers_ready() -> dict[str, int] | None:
        ready = {
            t: apps.read_namespaced_stateful_set(
                f"{MAP}-{t}", fleet.namespace
            ).status.ready_replicas
            or 0
            for t in TIERS
        }
        return ready if ready == TIERS else None

    assert fleet.wait_until("every tier's pods Ready", tiers_ready) == TIERS

    def ready_map() -> dict[str, Any] | None:
        obj = fleet.read_map()
        ready = condition(obj, "Ready")
        return obj if ready and ready["status"] == "True" else None

    obj = fleet.wait_until("status Ready=True", ready_map)
    generation = obj["metadata"]["generation"]
    assert obj["status"]["observedGeneration"] == generation
    assert condition(obj, "Ready")["observedGeneration"] == generation  # type: ignore[index]
    table, _ = fleet.store().read()
    assert obj["status"]["routingVersion"] == table.version
    assert {s.tier for s in table.shards} >= {"base", "sandbox"}
    assert obj["status"]["selector"]


def test_unreachable_prometheus_degrades_and_nothing_moves(fleet: Fleet) -> None:
    before, token = fleet.store().read()

    def degraded() -> dict[str, Any] | None:
        found = condition(fleet.read_map(), "Degraded")
        return found if found and found["status"] == "True" else None

    found = fleet.wait_until("Degraded=True", degraded)
    assert found["reason"]
    assert "prometheus" in found["message"].lower() or "metric" in found["message"].lower()
    after, token_after = fleet.store().read()
    assert (after.version, token_after) == (before.version, token)


def test_a_router_follows_the_configmap_with_its_own_account(fleet: Fleet) -> None:
    kubeconfig = token_kubeconfig(
        fleet.cluster, fleet.namespace, ROUTER_ACCOUNT, fleet.workdir / "router.kcfg"
    )
    port = free_port()
    router = LocalProcess(
        "router",
        [
            *("router", "--host", "127.0.0.1", "--port", str(port)),
            *("--routing-configmap", f"{fleet.namespace}/{MAP}-routing"),
        ],
        kubeconfig,
        fleet.workdir / "router.log",
    ).start()

    def version() -> int | None:
        if not router.running():
            pytest.fail(f"the router exited:\n{router.log_tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
                text = resp.read().decode()
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith("hotshard_router_routing_version "):
                return int(float(line.split()[1]))
        return None

    try:
        table, token = fleet.store().read()
        assert fleet.wait_until("the router's first table", version) == table.version
        # A write the router can only learn of through its watch. A merge patch keeps the owner
        # reference, as store.replace does (test_a_replaced_routing_configmap_keeps_its_owner).
        bumped = table.with_owners(table.owners(), version=table.version + 1)
        patch = {"metadata": {"resourceVersion": token}, "data": {TABLE_KEY: bumped.to_json()}}
        client.CoreV1Api(fleet.cluster.api).patch_namespaced_config_map(
            f"{MAP}-routing", fleet.namespace, patch
        )
        fleet.wait_until(
            f"the router at version {bumped.version}",
            lambda: version() == bumped.version or None,
        )
    finally:
        router.stop()
    assert "cannot read routing ConfigMap" not in router.log_tail(200)


def test_a_replaced_routing_configmap_keeps_its_owner(fleet: Fleet) -> None:
    # A ConfigMap of its own (owned by the map), so the bug cannot leak into the GC test.
    owner = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "PartitionMap",
        "name": MAP,
        "uid": fleet.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }
    core = client.CoreV1Api(fleet.cluster.api)
    store = ConfigMapRoutingStore(core, fleet.namespace, "owner-check")
    table, _ = fleet.store().read()
    token = store.initialize(table, [owner])
    store.replace(table.with_owners(table.owners(), version=table.version + 1), token)
    replaced = core.read_namespaced_config_map("owner-check", fleet.namespace)
    assert [o.uid for o in replaced.metadata.owner_references or []] == [fleet.uid]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"tiers": {"overflow": {"warm": 5, "maximum": 2}}}, "warm must not exceed maximum"),
        ({"bidder": {"image": ""}}, "spec.bidder.image"),
        ({"detection": {"interval": 0.1}}, "spec.detection.interval"),
    ],
)
def test_the_charts_crd_refuses_bad_maps(
    fleet: Fleet, change: dict[str, Any], message: str
) -> None:
    spec = {**fleet_spec(free_port()), **change}
    if "bidder" not in change:
        spec["bidder"] = {"image": PLACEHOLDER_IMAGE}
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "PartitionMap",
        "metadata": {"name": "bad"},
        "spec": spec,
    }
    with pytest.raises(ApiException) as refused:
        fleet.objects.create_namespaced_custom_object(GROUP, VERSION, fleet.namespace, PLURAL, body)
    assert refused.value.status == 422
    assert message in json.loads(refused.value.body)["message"]


def test_deleting_the_map_collects_its_children(fleet: Fleet) -> None:
    fleet.objects.delete_namespaced_custom_object(GROUP, VERSION, fleet.namespace, PLURAL, MAP)
    apps = client.AppsV1Api(fleet.cluster.api)
    core = client.CoreV1Api(fleet.cluster.api)

    def leftovers() -> list[str]:
        found = [
            f"{kind}/{o.metadata.name}"
            for kind, items in [
                ("StatefulSet", apps.list_namespaced_stateful_set(fleet.namespace).items),
                ("Service", core.list_namespaced_service(fleet.namespace).items),
                ("ConfigMap", core.list_namespaced_config_map(fleet.namespace).items),
                ("Pod", core.list_namespaced_pod(fleet.namespace).items),
            ]
            for o in items
            if o.metadata.name.startswith(f"{MAP}-")
        ]
        try:
            fleet.read_map()
            found.append(f"PartitionMap/{MAP}")
        except ApiException as exc:
            if exc.status != 404:
                raise
        return found

    remaining: list[str] = []

    def collected() -> bool:
        remaining[:] = leftovers()
        return not remaining

    try:
        fleet.wait_until("the fleet to be garbage-collected", collected)
    except pytest.fail.Exception:
        pytest.fail(f"still there: {remaining}\noperator log:\n{fleet.operator.log_tail()}")
    with pytest.raises(ApiException) as gone:
        fleet.read_map()
    assert gone.value.status == 404
