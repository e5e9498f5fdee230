"""The end-to-end tier's one shared resource: a real Kubernetes API server for the session.

The operator is only as good as its behaviour against a real API server (schema and CEL
validation, RBAC, watches, garbage collection), so these tests talk to one. Two sources:

* ``KUBECONFIG`` set: an existing cluster (kind, k3d, a real one); nothing is built, started
  or stopped (an unreachable one fails the session), and tests only create uniquely named
  namespaces, plus the CRD if there is none. Pods there really run, so the scenarios that need
  Ready bidder pods need an image the cluster can run: ``HOTSHARD_E2E_IMAGE`` (docs/e2e.md).
* otherwise the local control plane of ``e2e/cluster.sh`` (etcd, kube-apiserver,
  kube-controller-manager, kube-scheduler and kwok on 127.0.0.1), started for the session in a
  temporary directory and stopped by process id afterwards. Its binaries are built once by
  ``e2e/build.sh`` into a cache outside the repository; when they are missing the tests skip,
  unless ``HOTSHARD_E2E=1`` asks to build them here (tens of minutes cold, see docs/e2e.md).
"""

from __future__ import annotations

import os
import re
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

REPO = Path(__file__).resolve().parents[2]
E2E_DIR = REPO / "e2e"
BUILD_ENV = "HOTSHARD_E2E"
WAIT_SECONDS = 90.0
"""Longest wait for the cluster to converge; kwok makes pods Ready in about a second, and a
busy 2-core machine can stretch controller work tenfold, so 90 s only cuts off real hangs."""
POLL_SECONDS = 0.5

T = TypeVar("T")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test under tests/e2e with ``e2e``, so ``-m 'not e2e'`` leaves the tier out."""
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.e2e)


@dataclass(frozen=True)
class Cluster:
    """A reachable API server and how the tests talk to it."""

    kubeconfig: Path
    api: client.ApiClient
    local: bool
    """True for the local control plane started here (fake kwok nodes, nothing really runs)."""

    def wait_until(self, what: str, probe: Callable[[], T | None]) -> T:
        """Poll ``probe`` until it returns something truthy; fail naming ``what`` otherwise."""
        deadline = time.monotonic() + WAIT_SECONDS
        last: T | None = None
        while time.monotonic() < deadline:
            last = probe()
            if last:
                return last
            time.sleep(POLL_SECONDS)
        pytest.fail(f"timed out after {WAIT_SECONDS:.0f}s waiting for {what} (last: {last!r})")

    def new_namespace(self, prefix: str) -> str:
        """Create a namespace with a unique name, safe to use on a shared cluster."""
        name = f"hotshard-e2e-{prefix}-{uuid.uuid4().hex[:6]}"
        body = client.V1Namespace(metadata=client.V1ObjectMeta(name=name))
        client.CoreV1Api(self.api).create_namespace(body)
        return name

    def delete_namespace(self, name: str) -> None:
        try:
            client.CoreV1Api(self.api).delete_namespace(name)
        except ApiException as exc:
            if exc.status != 404:
                raise


def run_script(script: str, *args: str, env: dict[str, str]) -> str:
    """Run one of the e2e/ scripts, failing the session with its output if it fails."""
    proc = subprocess.run(
        ["bash", str(E2E_DIR / script), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"e2e/{script} {' '.join(args)} failed:\n{proc.stderr[-4000:]}")
    return proc.stdout


def reach(kubeconfig: Path) -> client.ApiClient | None:
    """Return a client for ``kubeconfig`` if its API server answers, else None."""
    try:
        api = config.new_client_from_config(config_file=str(kubeconfig))
        client.VersionApi(api).get_code(_request_timeout=5)
    except Exception:
        return None
    return api


def binaries_built() -> bool:
    return (
        subprocess.run(["bash", str(E2E_DIR / "build.sh"), "--check"], check=False).returncode == 0
    )


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A reachable Kubernetes API for the whole session (see the module docstring)."""
    existing = os.environ.get("KUBECONFIG")
    if existing:
        # NB: set means "this cluster": never fall back to building and starting a local one.
        api = reach(Path(existing))
        if api is None:
            pytest.fail(
                f"KUBECONFIG={existing} does not reach an API server; unset KUBECONFIG to run "
                "the suite on the local control plane instead"
            )
        yield Cluster(Path(existing), api, local=False)
        return
    if not binaries_built():
        if os.environ.get(BUILD_ENV) != "1":
            pytest.skip(
                "local control-plane binaries are not built: run `make cluster-up` (or "
                f"`e2e/build.sh`) once, or set {BUILD_ENV}=1 to build them here; "
                "or point KUBECONFIG at a running cluster"
            )
        run_script("build.sh", env={})
    run_dir = tmp_path_factory.mktemp("cluster")
    env = {"HOTSHARD_E2E_RUN": str(run_dir)}
    try:
        kubeconfig = Path(run_script("cluster.sh", "up", env=env).strip().splitlines()[-1])
        api = reach(kubeconfig)
        if api is None:
            pytest.fail(f"the local control plane started but does not answer; see {run_dir}")
        yield Cluster(kubeconfig, api, local=True)
    finally:
        run_script("cluster.sh", "down", env=env)


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test, deleted afterwards (tests may delete it themselves)."""
    label = re.sub(r"[^a-z0-9]+", "-", request.node.name.removeprefix("test_").lower())
    name = cluster.new_namespace(label[:20].strip("-"))
    yield name
    cluster.delete_namespace(name)
