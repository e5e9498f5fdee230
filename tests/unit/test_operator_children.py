"""The fleet's manifests: names, owner references, replicas per tier, the first routing table."""

from __future__ import annotations

from typing import Any

from hotshard.routing import RoutingSnapshot
from hotshard_operator.children import (
    base_selector,
    build_children,
    build_first_table,
    tier_replicas,
)
from hotshard_operator.resources import PartitionMapSpec


def make_spec(**overrides: Any) -> PartitionMapSpec:
    raw: dict[str, Any] = {"bidder": {"image": "hotshard:0.1.0", "port": 9200}, **overrides}
    return PartitionMapSpec.model_validate(raw)


def by_kind(manifests: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {m["metadata"]["name"]: m for m in manifests if m["kind"] == kind}


def test_every_tier_gets_a_stateful_set_and_headless_service_owned_by_the_map() -> None:
    spec = make_spec(tiers={"base": {"replicas": 3}, "overflow": {"warm": 2, "maximum": 5}})
    children = build_children("fleet", "bidding", "uid-1", spec)
    sets, services = by_kind(children, "StatefulSet"), by_kind(children, "Service")
    assert sorted(sets) == sorted(services) == ["fleet-base", "fleet-overflow", "fleet-sandbox"]
    assert {n: s["spec"]["replicas"] for n, s in sets.items()} == {
        "fleet-base": 3,
        "fleet-overflow": 2,
        "fleet-sandbox": 1,
    }
    for obj in children:
        (owner,) = obj["metadata"]["ownerReferences"]
        assert owner == {
            "apiVersion": "hotshard.io/v1alpha1",
            "kind": "PartitionMap",
            "name": "fleet",
            "uid": "uid-1",
            "controller": True,
            "blockOwnerDeletion": True,
        }
        assert obj["metadata"]["namespace"] == "bidding"
    assert services["fleet-overflow"]["spec"]["clusterIP"] == "None"
    assert sets["fleet-overflow"]["spec"]["serviceName"] == "fleet-overflow"


def test_sandbox_pods_get_the_sandbox_cpu_limit_and_all_pods_are_locked_down() -> None:
    spec = make_spec(tiers={"sandbox": {"replicas": 2, "cpuLimit": "200m"}})
    sets = by_kind(build_children("fleet", "ns", "u", spec), "StatefulSet")
    sandbox = sets["fleet-sandbox"]["spec"]["template"]["spec"]["containers"][0]
    base = sets["fleet-base"]["spec"]["template"]["spec"]["containers"][0]
    assert sandbox["resources"]["limits"] == {"cpu": "200m", "memory": "1Gi"}
    assert base["resources"]["limits"] == {"cpu": "1", "memory": "1Gi"}
    assert base["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert base["securityContext"]["readOnlyRootFilesystem"] is True
    assert base["ports"] == [{"name": "http", "containerPort": 9200, "protocol": "TCP"}]
    assert {"name": "HOTSHARD_ROUTING_CONFIGMAP", "value": "fleet-routing"} in base["env"]


def test_bidders_run_as_their_own_account_that_reads_only_the_routing_config_map() -> None:
    spec = make_spec(routing={"configMapName": "fleet-table"})
    children = build_children("fleet", "bidding", "uid-1", spec)
    (account,) = by_kind(children, "ServiceAccount").values()
    (role,) = by_kind(children, "Role").values()
    (binding,) = by_kind(children, "RoleBinding").values()
    assert account["metadata"]["name"] == role["metadata"]["name"] == "fleet-bidder"
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": ["fleet-table"],
            "verbs": ["get", "watch"],
        },
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list"]},
    ]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "fleet-bidder",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "fleet-bidder", "namespace": "bidding"}
    ]
    for tier, sts in by_kind(children, "StatefulSet").items():
        pod = sts["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == "fleet-bidder", tier
        env = {e["name"]: e for e in pod["containers"][0]["env"]}
        assert env["HOTSHARD_BIDDER_SHARD"]["valueFrom"] == {
            "fieldRef": {"fieldPath": "metadata.name"}
        }
        assert env["HOTSHARD_ROUTING_CONFIGMAP"]["value"] == "fleet-table"
        assert "--shard" not in pod["containers"][0]["args"]


def test_overflow_runs_serving_plus_warm_up_to_its_maximum() -> None:
    spec = make_spec(tiers={"overflow": {"warm": 2, "maximum": 5}})
    assert [tier_replicas(spec, "overflow", n) for n in (0, 1, 3, 4, 9)] == [2, 3, 5, 5, 5]


def test_first_table_spreads_partitions_over_base_and_lists_sandbox() -> None:
    spec = make_spec(virtualPartitions=8, tiers={"base": {"replicas": 2}})
    table = build_first_table("fleet", "bidding", spec)
    assert table.version == 1
    assert table.owners() == ["fleet-base-0"] * 4 + ["fleet-base-1"] * 4
    assert [s.name for s in table.shards] == ["fleet-base-0", "fleet-base-1", "fleet-sandbox-0"]
    snapshot = RoutingSnapshot(table)
    assert snapshot.urls["fleet-base-1"] == "http://fleet-base-1.fleet-base.bidding.svc:9200"


def test_base_selector_matches_the_base_pods_labels() -> None:
    spec = make_spec()
    sets = by_kind(build_children("fleet", "ns", "u", spec), "StatefulSet")
    pod_labels = sets["fleet-base"]["spec"]["template"]["metadata"]["labels"]
    pairs = dict(p.split("=") for p in base_selector("fleet").split(","))
    assert pairs.items() <= pod_labels.items()
    assert pairs["hotshard.io/tier"] == "base"
