"""The PartitionMap CRD as the API server enforces it: defaults are filled in, and the CEL
rules in its `x-kubernetes-validations` refuse bad maps with the rule's own message.

The unit tier checks the rules with a CEL library; only a real API server shows that the
generated CRD is accepted, that its defaults apply before the rules run, and that transition
rules (`oldSelf`) fire on update.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from .conftest import REPO, Cluster

# HOTSHARD_E2E_CRD points the tests at a candidate CRD file instead of the committed one.
CRD_PATH = Path(
    os.environ.get("HOTSHARD_E2E_CRD", REPO / "crds" / "partitionmaps.hotshard.io.yaml")
)
GROUP, VERSION, PLURAL = "hotshard.io", "v1alpha1", "partitionmaps"

pytestmark = pytest.mark.skipif(not CRD_PATH.exists(), reason=f"{CRD_PATH} not generated yet")


def load_crd(path: Path) -> dict[str, Any]:
    crd: dict[str, Any] = yaml.safe_load(path.read_text())
    return crd


def is_established(crd: client.V1CustomResourceDefinition) -> bool:
    conditions = (crd.status and crd.status.conditions) or []
    return any(c.type == "Established" and c.status == "True" for c in conditions)


@pytest.fixture(scope="module")
def crd_installed(cluster: Cluster) -> Iterator[None]:
    """Create the CRD (or replace it, on an existing cluster) and wait until it is served."""
    ext = client.ApiextensionsV1Api(cluster.api)
    body = load_crd(CRD_PATH)
    name = body["metadata"]["name"]
    try:
        ext.create_custom_resource_definition(body)
    except ApiException as exc:
        if exc.status != 409:
            raise
        current = ext.read_custom_resource_definition(name)
        body["metadata"]["resourceVersion"] = current.metadata.resource_version
        ext.replace_custom_resource_definition(name, body)
    cluster.wait_until(
        f"CRD {name} to be established",
        lambda: is_established(ext.read_custom_resource_definition(name)),
    )
    yield
    if cluster.local:
        ext.delete_custom_resource_definition(name)


def partition_map(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "PartitionMap",
        "metadata": {"name": name},
        "spec": {"bidder": {"image": "example.invalid/hotshard:0.1.0"}, **spec},
    }


def api_error_message(exc: ApiException) -> str:
    body = json.loads(exc.body)
    message: str = body["message"]
    return message


@pytest.mark.usefixtures("crd_installed")
def test_a_minimal_partition_map_is_accepted_with_defaults(
    cluster: Cluster, namespace: str
) -> None:
    objects = client.CustomObjectsApi(cluster.api)
    created = objects.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, partition_map("good")
    )
    spec = created["spec"]
    assert spec["virtualPartitions"] == 4096
    assert spec["tiers"]["overflow"] == {"warm": 2, "maximum": 16}
    assert spec["bidder"]["port"] == 9100


@pytest.mark.usefixtures("crd_installed")
@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"tiers": {"overflow": {"warm": 5, "maximum": 3}}},
            "tiers.overflow.warm must not exceed maximum",
        ),
        (
            {"detection": {"window": 5, "interval": 10}},
            "detection.window must be at least detection.interval",
        ),
        (
            {"virtualPartitions": 2, "tiers": {"base": {"replicas": 4}}},
            "tiers.base.replicas must not exceed virtualPartitions",
        ),
    ],
)
def test_a_bad_partition_map_is_refused_with_the_cel_message(
    cluster: Cluster, namespace: str, spec: dict[str, Any], message: str
) -> None:
    objects = client.CustomObjectsApi(cluster.api)
    with pytest.raises(ApiException) as refused:
        objects.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, partition_map("bad", **spec)
        )
    assert refused.value.status == 422
    assert message in api_error_message(refused.value)


@pytest.mark.usefixtures("crd_installed")
def test_virtual_partitions_cannot_change_after_creation(cluster: Cluster, namespace: str) -> None:
    objects = client.CustomObjectsApi(cluster.api)
    created = objects.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, partition_map("fixed", virtualPartitions=1024)
    )
    changed = copy.deepcopy(created)
    changed["spec"]["virtualPartitions"] = 2048
    with pytest.raises(ApiException) as refused:
        objects.replace_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, "fixed", changed
        )
    assert refused.value.status == 422
    assert "virtualPartitions is immutable" in api_error_message(refused.value)
