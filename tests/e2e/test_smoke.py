"""The cluster under the e2e tier does what the operator relies on: a StatefulSet gets ordered,
scheduled, Ready pods owned by it, and deleting a namespace removes everything in it.

Under the local control plane this proves kube-controller-manager (StatefulSet controller,
garbage collector, namespace controller), kube-scheduler and kwok are all wired up; against an
existing cluster it is a cheap check that the suite can work there at all.
"""

from __future__ import annotations

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from .conftest import Cluster

REPLICAS = 2
LABELS = {"app.kubernetes.io/name": "hotshard-e2e-smoke"}
# Never pulled under kwok; a real cluster pulls it, and it runs anywhere.
IMAGE = "registry.k8s.io/pause:3.10"


def build_statefulset(name: str) -> client.V1StatefulSet:
    container = client.V1Container(
        name="pause",
        image=IMAGE,
        resources=client.V1ResourceRequirements(requests={"cpu": "10m", "memory": "16Mi"}),
    )
    return client.V1StatefulSet(
        metadata=client.V1ObjectMeta(name=name, labels=LABELS),
        spec=client.V1StatefulSetSpec(
            replicas=REPLICAS,
            service_name=name,
            selector=client.V1LabelSelector(match_labels=LABELS),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=LABELS),
                spec=client.V1PodSpec(containers=[container]),
            ),
        ),
    )


def build_headless_service(name: str) -> client.V1Service:
    return client.V1Service(
        metadata=client.V1ObjectMeta(name=name, labels=LABELS),
        spec=client.V1ServiceSpec(cluster_ip="None", selector=LABELS),
    )


def is_ready(pod: client.V1Pod) -> bool:
    conditions = pod.status.conditions or []
    return any(c.type == "Ready" and c.status == "True" for c in conditions)


def test_statefulset_pods_become_ready_and_namespace_deletion_collects_them(
    cluster: Cluster, namespace: str
) -> None:
    core = client.CoreV1Api(cluster.api)
    apps = client.AppsV1Api(cluster.api)
    core.create_namespaced_service(namespace, build_headless_service("smoke"))
    created = apps.create_namespaced_stateful_set(namespace, build_statefulset("smoke"))

    def ready_statefulset() -> client.V1StatefulSet | None:
        sts = apps.read_namespaced_stateful_set("smoke", namespace)
        return sts if (sts.status.ready_replicas or 0) == REPLICAS else None

    sts = cluster.wait_until("2 ready replicas", ready_statefulset)
    assert sts.status.replicas == REPLICAS

    selector = ",".join(f"{k}={v}" for k, v in LABELS.items())
    pods = core.list_namespaced_pod(namespace, label_selector=selector).items
    assert sorted(p.metadata.name for p in pods) == ["smoke-0", "smoke-1"]
    nodes = {n.metadata.name for n in core.list_node().items}
    for pod in pods:
        assert is_ready(pod), pod.metadata.name
        assert pod.spec.node_name in nodes
        owners = [(o.kind, o.uid) for o in pod.metadata.owner_references or []]
        assert owners == [("StatefulSet", created.metadata.uid)]

    cluster.delete_namespace(namespace)

    def namespace_gone() -> bool:
        try:
            core.read_namespace(namespace)
        except ApiException as exc:
            if exc.status == 404:
                return True
            raise
        return False

    cluster.wait_until(f"namespace {namespace} to be deleted", namespace_gone)
    leftover = core.list_pod_for_all_namespaces(field_selector=f"metadata.namespace={namespace}")
    assert leftover.items == []
