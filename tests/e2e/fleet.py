"""What the operator scenarios need besides the API server: helm, ServiceAccount identities, and
hotshard processes on 127.0.0.1.

The operator (and the router) run as local processes, not pods: under kwok nothing in a pod runs,
and on an existing cluster the image may not be there. They authenticate with a token of the
chart's own ServiceAccount (TokenRequest API), written into a kubeconfig of their own, so every
call they make is authorized by the chart's RBAC, not by the test's admin credentials.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from .conftest import REPO, Cluster

CHART = REPO / "charts" / "hotshard"
GROUP, VERSION, PLURAL = "hotshard.io", "v1alpha1", "partitionmaps"
CRD_NAME = f"{PLURAL}.{GROUP}"
RELEASE = "hotshard"  # the chart names things `hotshard-*` for this release name
MAP = "fleet"  # the chart's router.partitionMap default: its RBAC names `fleet-routing`
OPERATOR_ACCOUNT = f"{RELEASE}-operator"
ROUTER_ACCOUNT = f"{RELEASE}-router"
IMAGE_ENV = "HOTSHARD_E2E_IMAGE"
PLACEHOLDER_IMAGE = "example.invalid/hotshard:e2e"
TOKEN_SECONDS = 3600
"""Lifetime of the ServiceAccount tokens: longer than any session, short enough to expire."""
STOP_SECONDS = 10.0
"""Grace given to a hotshard process on SIGTERM before SIGKILL; kopf stops in 1-3 s."""


def bidder_image(cluster: Cluster) -> str:
    """The bidder image of the tests' PartitionMaps.

    Under kwok nothing is pulled, so a name that can never resolve proves it. On an existing
    cluster pods really start: ``HOTSHARD_E2E_IMAGE`` must name an image it can run (built
    from the repository's Dockerfile and loaded there, docs/e2e.md), else the tests that need
    Ready pods skip.
    """
    image = os.environ.get(IMAGE_ENV)
    if image:
        return image
    if not cluster.local:
        pytest.skip(f"set {IMAGE_ENV} to a hotshard image this cluster can run (docs/e2e.md)")
    return PLACEHOLDER_IMAGE


def pinned_versions() -> dict[str, str]:
    """``e2e/versions.env`` as a dict (KEY=VALUE lines only, by design)."""
    pairs = {}
    for line in (REPO / "e2e" / "versions.env").read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


def helm_binary() -> str:
    """The helm that e2e/build.sh built, else one on PATH (an existing cluster's machine)."""
    cache = Path(os.environ.get("HOTSHARD_E2E_CACHE", Path.home() / ".cache" / "hotshard-e2e"))
    built = cache / f"helm-{pinned_versions()['HELM_VERSION']}" / "bin" / "helm"
    if built.exists():
        return str(built)
    found = shutil.which("helm")
    if found is None:
        pytest.skip("no helm binary: run e2e/build.sh or put helm on PATH")
    return found


def helm(cluster: Cluster, *args: str) -> str:
    """Run helm against the cluster; fail the test with helm's own message if it fails."""
    cmd = [helm_binary(), "--kubeconfig", str(cluster.kubeconfig), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
    if proc.returncode != 0:
        pytest.fail(f"helm {' '.join(args[:2])} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout


def remove_crd(cluster: Cluster) -> None:
    """Delete the PartitionMap CRD and wait until it is gone (local control plane only)."""
    ext = client.ApiextensionsV1Api(cluster.api)

    def gone() -> bool:
        try:
            ext.read_custom_resource_definition(CRD_NAME)
        except ApiException as exc:
            if exc.status == 404:
                return True
            raise
        return False

    if not gone():
        ext.delete_custom_resource_definition(CRD_NAME)
        cluster.wait_until(f"CRD {CRD_NAME} to be deleted", gone)


def install_release(cluster: Cluster, namespace: str) -> None:
    """``helm install`` the chart into ``namespace`` with the operator left out (it runs here).

    On the local control plane the CRD is the release's own; on an existing cluster a CRD that
    is already there is left alone, since users' PartitionMaps live under it.
    """
    install_crd = "true"
    if cluster.local:
        remove_crd(cluster)  # a CRD left by another test would not belong to the release
    else:
        crds = client.ApiextensionsV1Api(cluster.api).list_custom_resource_definition()
        if any(c.metadata.name == CRD_NAME for c in crds.items):
            install_crd = "false"
    helm(
        cluster,
        *("install", RELEASE, str(CHART), "--namespace", namespace),
        *("--set", "operator.replicas=0", "--set", f"crds.install={install_crd}"),
        *("--set", f"router.partitionMap={MAP}", "--wait", "--timeout", "120s"),
    )


def uninstall_release(cluster: Cluster, namespace: str) -> None:
    helm(cluster, "uninstall", RELEASE, "--namespace", namespace, "--wait")
    cluster.delete_namespace(namespace)
    if cluster.local:
        remove_crd(cluster)


def create_map(cluster: Cluster, namespace: str, spec: dict[str, Any]) -> str:
    """Create PartitionMap ``MAP`` with ``spec``; return its uid."""
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "PartitionMap",
        "metadata": {"name": MAP},
        "spec": spec,
    }
    created = client.CustomObjectsApi(cluster.api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, body
    )
    uid: str = created["metadata"]["uid"]
    return uid


def discard_map(cluster: Cluster, namespace: str) -> None:
    """Delete the PartitionMap without its operator: drop kopf's finalizer, then delete.

    Teardown must not depend on the operator (a scenario may have killed it), and the CRD
    cannot go while a PartitionMap holding a finalizer is left.
    """
    objects = client.CustomObjectsApi(cluster.api)
    try:
        objects.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, MAP, {"metadata": {"finalizers": None}}
        )
        objects.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, MAP)
    except ApiException as exc:
        if exc.status != 404:
            raise


def read_map(cluster: Cluster, namespace: str) -> dict[str, Any]:
    found: dict[str, Any] = client.CustomObjectsApi(cluster.api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, MAP
    )
    return found


def operator_process(namespace: str, kubeconfig: Path, log_path: Path) -> LocalProcess:
    """``hotshard operator`` for one namespace, with a liveness endpoint on a free port."""
    return LocalProcess(
        "operator",
        [
            *("operator", "--namespace", namespace),
            *("--liveness", f"http://127.0.0.1:{free_port()}/healthz"),
        ],
        kubeconfig,
        log_path,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def token_kubeconfig(cluster: Cluster, namespace: str, account: str, path: Path) -> Path:
    """Write a kubeconfig that authenticates as ServiceAccount ``namespace/account``."""
    request = client.AuthenticationV1TokenRequest(
        # No audiences: the API server's own, which is what it accepts.
        spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=TOKEN_SECONDS)
    )
    core = client.CoreV1Api(cluster.api)
    token = core.create_namespaced_service_account_token(account, namespace, request).status.token
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    context_name = admin.get("current-context")
    context = next(c for c in admin["contexts"] if c["name"] == context_name)["context"]
    cluster_entry = next(c for c in admin["clusters"] if c["name"] == context["cluster"])
    server = dict(cluster_entry["cluster"])
    if "certificate-authority" in server:  # inline it, so the file stands alone
        ca = Path(server.pop("certificate-authority")).read_bytes()
        server["certificate-authority-data"] = base64.b64encode(ca).decode()
    user = f"{namespace}-{account}"
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "e2e", "cluster": server}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": user, "context": {"cluster": "e2e", "user": user}}],
        "current-context": user,
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def client_for(kubeconfig: Path) -> client.ApiClient:
    from kubernetes import config

    return config.new_client_from_config(config_file=str(kubeconfig))


def hotshard_command() -> list[str]:
    """The ``hotshard`` CLI of this virtualenv."""
    return [str(Path(sys.executable).with_name("hotshard")), "--log-level=INFO"]


@dataclass
class LocalProcess:
    """One ``hotshard`` subcommand (or ``program``) on 127.0.0.1, logging to a file, stopped by
    its pid."""

    name: str
    args: list[str]
    kubeconfig: Path | None
    log_path: Path
    program: list[str] = field(default_factory=hotshard_command)
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self) -> LocalProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_SERVICE")}
        env.pop("KUBECONFIG", None)
        if self.kubeconfig is not None:
            env["KUBECONFIG"] = str(self.kubeconfig)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [*self.program, *self.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=REPO,
            )
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL: no shutdown handler runs, as when a node dies or the OOM killer strikes."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(STOP_SECONDS)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(STOP_SECONDS)


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    """The status condition of type ``kind`` of a custom object, if present."""
    for cond in obj.get("status", {}).get("conditions", []):
        if cond.get("type") == kind:
            found: dict[str, Any] = cond
            return found
    return None
