"""The objects a PartitionMap owns, built as plain manifests by pure functions.

Every child has a deterministic name derived from the PartitionMap's name and the tier, so a
restarted operator finds what an earlier one created instead of creating it twice, and every
child carries an owner reference, so deleting the PartitionMap lets the garbage collector
remove the fleet. Nothing here talks to the API: ``reconcile`` applies what these return.

Per tier there is one StatefulSet (stable pod names are the shard names in the routing table,
and scaling down removes the highest ordinal first, which is the drain order the control loop
plans for) and one headless Service (stable per-pod DNS names are the shard URLs). Per map there
is one bidder ServiceAccount with a Role that may read only the map's routing ConfigMap, so the
bidders follow the table through the API like the router does.
"""

from __future__ import annotations

from typing import Any, Literal

from hotshard.routing import RoutingTable, Shard
from hotshard_operator.resources import (
    GROUP,
    KIND,
    VERSION,
    PartitionMapSpec,
    routing_config_map_name,
)

Manifest = dict[str, Any]
Tier = Literal["base", "overflow", "sandbox"]
TIERS: tuple[Tier, ...] = ("base", "overflow", "sandbox")
NONROOT_UID = 10001
"""An unprivileged UID that exists in no base image, so the container can never run as a user."""


def owner_reference(name: str, uid: str) -> dict[str, Any]:
    """The reference that makes a child garbage-collected with its PartitionMap."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def tier_name(pmap: str, tier: Tier) -> str:
    """Name of the StatefulSet and headless Service of one tier, e.g. ``fleet-overflow``."""
    return f"{pmap}-{tier}"


def shard_name(pmap: str, tier: Tier, ordinal: int) -> str:
    """Name of one shard: its pod's name, so the shard is the pod."""
    return f"{tier_name(pmap, tier)}-{ordinal}"


def shard_ordinal(name: str) -> int:
    """The StatefulSet ordinal at the end of a shard's name (``fleet-overflow-3`` is 3)."""
    return int(name.rsplit("-", 1)[1])


def shard_url(pmap: str, namespace: str, tier: Tier, ordinal: int, port: int) -> str:
    """The stable DNS name the headless Service gives one shard's pod."""
    host = f"{shard_name(pmap, tier, ordinal)}.{tier_name(pmap, tier)}.{namespace}.svc"
    return f"http://{host}:{port}"


def bidder_account_name(pmap: str) -> str:
    """Name of the bidders' ServiceAccount, Role and RoleBinding, e.g. ``fleet-bidder``."""
    return f"{pmap}-bidder"


def selector_labels(pmap: str, tier: Tier) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "hotshard-bidder",
        "app.kubernetes.io/instance": pmap,
        "hotshard.io/tier": tier,
    }


def labels(pmap: str, tier: Tier) -> dict[str, str]:
    return {
        **selector_labels(pmap, tier),
        "app.kubernetes.io/component": "bidder",
        "app.kubernetes.io/part-of": "hotshard",
        "app.kubernetes.io/managed-by": "hotshard-operator",
    }


def base_selector(pmap: str) -> str:
    """The label selector of the base tier as a string, for the scale subresource."""
    return ",".join(f"{k}={v}" for k, v in sorted(selector_labels(pmap, "base").items()))


def tier_replicas(spec: PartitionMapSpec, tier: Tier, overflow_serving: int = 0) -> int:
    """Pods a tier should run: overflow runs the shards in use plus the warm pool, capped."""
    if tier == "base":
        return spec.tiers.base.replicas
    if tier == "sandbox":
        return spec.tiers.sandbox.replicas
    wanted = overflow_serving + spec.tiers.overflow.warm
    return min(wanted, spec.tiers.overflow.maximum)


def _container(pmap: str, spec: PartitionMapSpec, tier: Tier, config_map: str) -> Manifest:
    bidder = spec.bidder
    limits = bidder.resources.limits.model_dump()
    if tier == "sandbox":
        limits["cpu"] = spec.tiers.sandbox.cpu_limit
    return {
        "name": "bidder",
        "image": bidder.image,
        "args": ["bidder", "--host", "0.0.0.0", "--port", str(bidder.port)],
        "env": [
            # The shard is the pod: its name is the shard's name in the routing table.
            {
                "name": "HOTSHARD_BIDDER_SHARD",
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
            },
            {
                "name": "HOTSHARD_NAMESPACE",
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
            },
            {"name": "HOTSHARD_ROUTING_CONFIGMAP", "value": config_map},
            {"name": "HOTSHARD_TIER", "value": tier},
        ],
        "ports": [{"name": "http", "containerPort": bidder.port, "protocol": "TCP"}],
        "resources": {"requests": bidder.resources.requests.model_dump(), "limits": limits},
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": "http"},
            "periodSeconds": 2,  # 2 s: a warm shard is claimable soon after it can serve
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "http"},
            "periodSeconds": 10,
            "failureThreshold": 3,  # 30 s of silence: a busy shard is slow, not dead
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }


def build_stateful_set(
    pmap: str, namespace: str, uid: str, spec: PartitionMapSpec, tier: Tier, replicas: int
) -> Manifest:
    """The StatefulSet of one tier."""
    name = tier_name(pmap, tier)
    config_map = routing_config_map_name(pmap, spec)
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels(pmap, tier),
            "ownerReferences": [owner_reference(pmap, uid)],
        },
        "spec": {
            "replicas": replicas,
            "serviceName": name,
            # NB: Parallel starts the warm pool at once; ordering buys nothing for shards.
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": selector_labels(pmap, tier)},
            "template": {
                "metadata": {
                    "labels": labels(pmap, tier),
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(spec.bidder.port),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": {
                    # NB: the token is what the ConfigMap watch authenticates with.
                    "serviceAccountName": bidder_account_name(pmap),
                    "automountServiceAccountToken": True,
                    "terminationGracePeriodSeconds": 30,  # in-flight bids finish in well under 1 s
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": NONROOT_UID,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [_container(pmap, spec, tier, config_map)],
                },
            },
        },
    }


def build_service(
    pmap: str, namespace: str, uid: str, spec: PartitionMapSpec, tier: Tier
) -> Manifest:
    """The headless Service that gives each shard of a tier a stable DNS name."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": tier_name(pmap, tier),
            "namespace": namespace,
            "labels": labels(pmap, tier),
            "ownerReferences": [owner_reference(pmap, uid)],
        },
        "spec": {
            "clusterIP": "None",
            "selector": selector_labels(pmap, tier),
            "ports": [{"name": "http", "port": spec.bidder.port, "targetPort": "http"}],
        },
    }


def _bidder_meta(pmap: str, namespace: str, uid: str) -> dict[str, Any]:
    return {
        "name": bidder_account_name(pmap),
        "namespace": namespace,
        "labels": {k: v for k, v in labels(pmap, "base").items() if k != "hotshard.io/tier"},
        "ownerReferences": [owner_reference(pmap, uid)],
    }


def build_bidder_access(
    pmap: str, namespace: str, uid: str, spec: PartitionMapSpec
) -> list[Manifest]:
    """The bidders' ServiceAccount, and a Role to read the routing ConfigMap and nothing else."""
    meta = _bidder_meta(pmap, namespace, uid)
    name = bidder_account_name(pmap)
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": meta,
            "rules": [
                # Follow this map's routing ConfigMap: read it, and watch it by name.
                {
                    "apiGroups": [""],
                    "resources": ["configmaps"],
                    "resourceNames": [routing_config_map_name(pmap, spec)],
                    "verbs": ["get", "watch"],
                },
                # A watch by name is a list with a field selector, and list cannot be limited
                # by resourceNames (the router's Role has the same pair of rules).
                {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list"]},
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": meta,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
        },
    ]


def build_first_table(pmap: str, namespace: str, spec: PartitionMapSpec) -> RoutingTable:
    """The first routing table: partitions spread evenly over the base tier.

    Sandbox shards are listed (so a quarantine is a table change, not a new shard) but own
    nothing; overflow shards join the table when the control loop claims them.
    """
    port = spec.bidder.port
    counts: tuple[tuple[Tier, int], ...] = (
        ("base", spec.tiers.base.replicas),
        ("sandbox", spec.tiers.sandbox.replicas),
    )
    shards = [
        Shard(
            name=shard_name(pmap, tier, i), tier=tier, url=shard_url(pmap, namespace, tier, i, port)
        )
        for tier, count in counts
        for i in range(count)
    ]
    return RoutingTable.even(shards, partitions=spec.virtual_partitions)


def build_children(
    pmap: str,
    namespace: str,
    uid: str,
    spec: PartitionMapSpec,
    overflow_replicas: int | None = None,
    base_replicas: int | None = None,
) -> list[Manifest]:
    """Every child of the fleet, in the order they should be applied.

    The bidders' ServiceAccount and Role come first, so their pods start with a token that may
    read the routing ConfigMap. ``overflow_replicas`` is what the overflow tier runs now (the
    actuator owns that number once the fleet exists); when ``None`` it starts at the warm pool.
    ``base_replicas`` likewise keeps base pods a scale-down has not drained yet.
    """
    out: list[Manifest] = build_bidder_access(pmap, namespace, uid, spec)
    for tier in TIERS:
        out.append(build_service(pmap, namespace, uid, spec, tier))
        replicas = tier_replicas(spec, tier)
        if tier == "overflow" and overflow_replicas is not None:
            replicas = overflow_replicas
        if tier == "base" and base_replicas is not None:
            replicas = base_replicas
        out.append(build_stateful_set(pmap, namespace, uid, spec, tier, replicas))
    return out
