"""The Helm chart: golden renders, hardening of every pod, RBAC, values documented and checked.

The golden files are rendered by Helm; when a ``helm`` binary is on PATH the test renders again
and compares (and lints), otherwise it says so and skips only that part. Everything else is
checked on the committed golden files, so it runs on every machine.
Refresh them with ``UPDATE_GOLDEN=1 pytest tests/unit/test_chart_render.py`` (needs helm).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from test_crd_schema import admit  # pytest puts tests/unit on the path

from hotshard_operator import crdgen
from hotshard_operator.children import build_children
from hotshard_operator.resources import PartitionMapSpec

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "hotshard"
GOLDEN = Path(__file__).resolve().parent / "golden"
RENDERS = {
    "chart-default.yaml": [],
    "chart-full.yaml": [
        "--set", "example.enabled=true",
        "--api-versions", "monitoring.coreos.com/v1",
        "--set", "operator.watchNamespaces={bidding,bidding-canary}",
    ],
}  # fmt: skip
HELM = shutil.which("helm")


def render(extra: list[str]) -> str:
    assert HELM is not None
    cmd = [HELM, "template", "hs", str(CHART), "--namespace", "bidding", *extra]
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60).stdout


def load(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((GOLDEN / name).read_text()) if d]


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


@pytest.mark.skipif(
    HELM is None, reason="no helm binary on PATH; golden files checked as committed"
)
@pytest.mark.parametrize("name", sorted(RENDERS))
def test_golden_files_match_a_fresh_render(name: str) -> None:
    fresh = render(RENDERS[name])
    if os.environ.get("UPDATE_GOLDEN"):
        (GOLDEN / name).write_text(fresh)
    assert fresh == (GOLDEN / name).read_text()


@pytest.mark.skipif(HELM is None, reason="no helm binary on PATH")
def test_chart_lints() -> None:
    assert HELM is not None
    lint = subprocess.run(
        [HELM, "lint", str(CHART), "--strict", "--set", "example.enabled=true"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert lint.returncode == 0, lint.stdout + lint.stderr


@pytest.mark.parametrize("name", sorted(RENDERS))
def test_every_pod_is_non_root_read_only_and_bounded(name: str) -> None:
    docs = load(name)
    pods = [d["spec"]["template"]["spec"] for d in of_kind(docs, "Deployment")]
    pods += [d["spec"] for d in of_kind(docs, "Pod")]
    assert len(pods) == 3  # operator, router, helm test
    for pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True
        for c in pod["containers"]:
            assert c["securityContext"]["readOnlyRootFilesystem"] is True, c["name"]
            assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}, c["name"]
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, c["name"]
            assert {"requests", "limits"} <= c["resources"].keys(), c["name"]


def test_operator_is_a_single_recreated_replica_with_a_liveness_probe() -> None:
    (op,) = [d for d in load("chart-full.yaml") if d["metadata"]["name"] == "hs-hotshard-operator"
             and d["kind"] == "Deployment"]  # fmt: skip
    assert (op["spec"]["replicas"], op["spec"]["strategy"]) == (1, {"type": "Recreate"})
    (container,) = op["spec"]["template"]["spec"]["containers"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["args"] == [
        "--log-level=INFO", "operator", "--liveness=http://0.0.0.0:8080/healthz",
        "--namespace=bidding", "--namespace=bidding-canary",
    ]  # fmt: skip


def test_rbac_is_namespaced_except_a_read_only_crd_watch() -> None:
    docs = load("chart-full.yaml")
    roles = of_kind(docs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == [
        "bidding", "bidding", "bidding-canary"
    ]  # fmt: skip
    for role in roles:
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]
            assert "delete" not in rule["verbs"]
    (cluster_role,) = of_kind(docs, "ClusterRole")
    assert cluster_role["rules"] == [
        {
            "apiGroups": ["apiextensions.k8s.io"],
            "resources": ["customresourcedefinitions"],
            "verbs": ["get", "list", "watch"],
        },
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
    ]
    template = (CHART / "templates" / "rbac.yaml").read_text()
    rules = template.count("  - apiGroups:")
    comments = len(re.findall(r"^  # .+\n  - apiGroups:", template, flags=re.M))
    assert rules == comments  # every rule says why it is there


def test_the_operator_role_grants_what_the_operator_calls_and_the_bidders_role_needs() -> None:
    docs = load("chart-default.yaml")
    (operator,) = [
        r for r in of_kind(docs, "Role") if r["metadata"]["name"] == "hs-hotshard-operator"
    ]
    grants = {
        (group, resource): sorted(rule["verbs"])
        for rule in operator["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    assert grants == {
        ("hotshard.io", "partitionmaps"): ["get", "list", "patch", "watch"],
        ("hotshard.io", "partitionmaps/status"): ["patch"],
        ("apps", "statefulsets"): ["create", "get", "patch"],
        ("", "services"): ["create", "patch"],
        ("", "configmaps"): ["create", "get", "list", "update", "watch"],
        ("", "serviceaccounts"): ["create", "patch"],
        ("rbac.authorization.k8s.io", "roles"): ["create", "patch"],
        ("rbac.authorization.k8s.io", "rolebindings"): ["create", "patch"],
        ("", "events"): ["create"],
    }
    # NB: a Role may be created only by someone holding all it grants (no escalate verb here).
    spec = PartitionMapSpec.model_validate({"bidder": {"image": "hotshard:0.1.0"}})
    (bidder_role,) = [
        m for m in build_children("fleet", "bidding", "u", spec) if m["kind"] == "Role"
    ]
    for rule in bidder_role["rules"]:
        assert set(rule["verbs"]) <= set(grants["", rule["resources"][0]])


def test_monitors_only_when_the_api_exists_annotations_otherwise() -> None:
    default, full = load("chart-default.yaml"), load("chart-full.yaml")
    assert of_kind(default, "ServiceMonitor") == of_kind(default, "PodMonitor") == []
    assert len(of_kind(full, "ServiceMonitor")) == len(of_kind(full, "PodMonitor")) == 1
    router = next(d for d in of_kind(default, "Deployment") if "router" in d["metadata"]["name"])
    annotations = router["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"


def test_crd_is_the_generated_one_and_kept_on_uninstall() -> None:
    (crd,) = of_kind(load("chart-default.yaml"), "CustomResourceDefinition")
    generated = crdgen.build_crd()
    assert crd["spec"] == generated["spec"]
    assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}


def test_example_partition_map_is_admitted_by_the_crd() -> None:
    (example,) = of_kind(load("chart-full.yaml"), "PartitionMap")
    assert example["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    assert admit(example) == []
    assert example["spec"]["bidder"]["image"] == "ghcr.io/example/hotshard:0.1.0"


def test_values_validate_against_the_schema_and_every_leaf_is_documented() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.Draft7Validator(schema).validate(values)
    bad = {**values, "router": {**values["router"], "replicas": 0}}
    assert not jsonschema.Draft7Validator(schema).is_valid(bad)
    lines = (CHART / "values.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        key = re.match(r"^\s*([A-Za-z]+):(?!\s*$)", line)  # a key with a value on its line
        if key:
            assert is_documented(lines, i), f"values.yaml: {key.group(1)} is not documented"


def is_documented(lines: list[str], i: int) -> bool:
    """A comment right above the key, or above one of its ancestors (a documented block)."""
    indent = len(lines[i]) - len(lines[i].lstrip())
    while i > 0:
        if lines[i - 1].strip().startswith("#"):
            return True
        parents = [j for j in range(i) if lines[j].strip() and not lines[j].lstrip().startswith("#")
                   and len(lines[j]) - len(lines[j].lstrip()) < indent]  # fmt: skip
        if not parents:
            return False
        i = parents[-1]
        indent = len(lines[i]) - len(lines[i].lstrip())
    return False
