"""The reconciler's Kubernetes I/O, over the official ``kubernetes`` client.

This is the one module that turns manifests into API calls: create-or-patch children (tier
StatefulSets and Services, the bidders' ServiceAccount, Role and RoleBinding), patch
the PartitionMap's status subresource, post Events, read how many shards are ready. The client
is synchronous, so every call runs in a worker thread to keep kopf's event loop free.

NB: status is patched here explicitly with a merge patch on the ``status`` subresource; kopf
handlers return nothing into status, because the API server prunes undeclared fields silently.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from kubernetes import client, config

from hotshard.routing.configmap_store import ConfigMapRoutingStore
from hotshard_operator.children import TIERS, Tier, tier_name
from hotshard_operator.reconcile import FleetRef, TierStatus
from hotshard_operator.resources import GROUP, KIND, PLURAL, VERSION

CONFLICT = 409
COMPONENT = "hotshard-operator"


def load_client_config() -> None:
    """In-cluster credentials when running in a pod, the kubeconfig otherwise."""
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]


class KubernetesCluster:
    """:class:`hotshard_operator.reconcile.Cluster` over the kubernetes client."""

    def __init__(self, api_client: Any | None = None) -> None:
        self.core = client.CoreV1Api(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.rbac = client.RbacAuthorizationV1Api(api_client)

    def routing_store(self, namespace: str, name: str) -> ConfigMapRoutingStore:
        labels = {"app.kubernetes.io/part-of": "hotshard", "hotshard.io/role": "routing"}
        return ConfigMapRoutingStore(self.core, namespace, name, labels=labels)

    def _apply(self, manifest: dict[str, Any]) -> None:
        meta = manifest["metadata"]
        name, namespace = meta["name"], meta["namespace"]
        # NB: the client accepts plain dicts as bodies; its annotations name only its models.
        calls: dict[str, tuple[Callable[..., Any], Callable[..., Any]]] = {
            "StatefulSet": (
                self.apps.create_namespaced_stateful_set,
                self.apps.patch_namespaced_stateful_set,
            ),
            "Service": (self.core.create_namespaced_service, self.core.patch_namespaced_service),
            "ServiceAccount": (
                self.core.create_namespaced_service_account,
                self.core.patch_namespaced_service_account,
            ),
            "Role": (self.rbac.create_namespaced_role, self.rbac.patch_namespaced_role),
            "RoleBinding": (
                self.rbac.create_namespaced_role_binding,
                self.rbac.patch_namespaced_role_binding,
            ),
        }
        if manifest["kind"] not in calls:
            raise ValueError(f"no apply rule for kind {manifest['kind']}")
        create, patch = calls[manifest["kind"]]
        try:
            create(namespace, manifest)
        except client.ApiException as exc:
            if exc.status != CONFLICT:
                raise
            patch(name, namespace, manifest)

    async def apply(self, manifest: dict[str, Any]) -> None:
        await asyncio.to_thread(self._apply, manifest)

    def _scale(self, ref: FleetRef, tier: Tier, replicas: int) -> None:
        # NB: a patch of the StatefulSet itself, not its scale subresource: the Role grants
        # `patch` on statefulsets, and one fewer subresource is one fewer RBAC rule.
        body = {"spec": {"replicas": replicas}}
        self.apps.patch_namespaced_stateful_set(tier_name(ref.name, tier), ref.namespace, body)

    async def scale(self, ref: FleetRef, tier: Tier, replicas: int) -> None:
        await asyncio.to_thread(self._scale, ref, tier, replicas)

    def _tier_status(self, ref: FleetRef, tier: Tier) -> TierStatus:
        try:
            sts = self.apps.read_namespaced_stateful_set(tier_name(ref.name, tier), ref.namespace)
        except client.ApiException as exc:
            if exc.status != 404:
                raise
            return TierStatus(replicas=None, ready=0)
        replicas = sts.spec.replicas if sts.spec and sts.spec.replicas is not None else 1
        ready = (sts.status.ready_replicas if sts.status else 0) or 0
        return TierStatus(replicas=int(replicas), ready=int(ready))

    async def tier_status(self, ref: FleetRef, tier: Tier) -> TierStatus:
        return await asyncio.to_thread(self._tier_status, ref, tier)

    async def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        await asyncio.to_thread(
            self.custom.patch_namespaced_custom_object_status,
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
            {"status": status},
        )

    async def post_event(self, ref: FleetRef, kind: str, reason: str, message: str) -> None:
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{ref.name}.{uuid.uuid4().hex[:12]}", "namespace": ref.namespace},
            "involvedObject": {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": KIND,
                "name": ref.name,
                "namespace": ref.namespace,
                "uid": ref.uid,
            },
            "type": kind,
            "reason": reason,
            "message": message[:1024],  # the API server rejects longer Event messages
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        create: Callable[..., Any] = self.core.create_namespaced_event
        await asyncio.to_thread(create, ref.namespace, body)

    def _ready(self, ref: FleetRef) -> dict[str, int]:
        states = {tier: self._tier_status(ref, tier) for tier in TIERS}
        return {tier: s.ready for tier, s in states.items() if s.replicas is not None}

    async def ready_shards(self, ref: FleetRef) -> dict[str, int]:
        return await asyncio.to_thread(self._ready, ref)
