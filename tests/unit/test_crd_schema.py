"""The committed CRD is the generated one, is structural, and admits exactly the specs it should.

Admission is checked the way the API server does it, minus the server: defaults applied from
the schema, the OpenAPI schema validated (Draft 4 is the dialect OpenAPI v3.0 builds on) and
every CEL rule evaluated (cel-python) at the node it is attached to.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import pytest
import yaml

from hotshard_operator import crdgen
from hotshard_operator.reference import render_reference
from hotshard_operator.resources import PartitionMapSpec

ROOT = Path(__file__).resolve().parents[2]
CRD = yaml.safe_load((ROOT / crdgen.CRD_PATH).read_text())
SCHEMA = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
_CEL = celpy.Environment()


def walk(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = [(path, node)]
    for name, sub in node.get("properties", {}).items():
        out.extend(walk(sub, f"{path}.{name}"))
    if "items" in node:
        out.extend(walk(node["items"], f"{path}[]"))
    return out


def default(schema: dict[str, Any], obj: Any) -> Any:
    """Apply schema defaults the way the API server does, outermost first."""
    if schema.get("type") == "object" and isinstance(obj, dict):
        for name, sub in schema.get("properties", {}).items():
            if name not in obj and "default" in sub:
                obj[name] = copy.deepcopy(sub["default"])
            if name in obj:
                obj[name] = default(sub, obj[name])
    if schema.get("type") == "array" and isinstance(obj, list):
        return [default(schema["items"], o) for o in obj]
    if schema.get("type") == "number" and isinstance(obj, int):
        return float(obj)
    return obj


def cel_failures(schema: dict[str, Any], obj: Any, old: Any = None) -> list[str]:
    messages = []
    for rule in schema.get("x-kubernetes-validations", []):
        uses_old = "oldSelf" in rule["rule"]
        if uses_old and old is None:
            continue  # transition rules run on update only
        env = {"self": celpy.json_to_cel(obj)}
        if uses_old:
            env["oldSelf"] = celpy.json_to_cel(old)
        if not _CEL.program(_CEL.compile(rule["rule"])).evaluate(env):
            messages.append(rule["message"])
    if schema.get("type") == "object" and isinstance(obj, dict):
        for name, sub in schema.get("properties", {}).items():
            if name in obj:
                prior = old.get(name) if isinstance(old, dict) else None
                messages += cel_failures(sub, obj[name], prior)
    return messages


def admit(obj: dict[str, Any], old: dict[str, Any] | None = None) -> list[str]:
    """Return why the API server would reject ``obj``, or [] if it would store it."""
    obj = default(SCHEMA, copy.deepcopy(obj))
    errors = [e.message for e in jsonschema.Draft4Validator(SCHEMA).iter_errors(obj)]
    if old is not None:
        old = default(SCHEMA, copy.deepcopy(old))
    return errors or cel_failures(SCHEMA, obj, old)


def sample(**spec: Any) -> dict[str, Any]:
    base = {"bidder": {"image": "hotshard:0.1.0"}, **spec}
    return {"apiVersion": "hotshard.io/v1alpha1", "kind": "PartitionMap", "spec": base}


def test_committed_crd_and_reference_are_generated() -> None:
    assert (ROOT / crdgen.CRD_PATH).read_text() == crdgen.render_crd(), "run crdgen"
    assert (ROOT / crdgen.CHART_CRD_PATH).read_text() == crdgen.render_crd(), "run crdgen"
    assert (ROOT / crdgen.REFERENCE_PATH).read_text() == render_reference(), "run crdgen"


def test_schema_is_structural_and_documented() -> None:
    for path, node in walk(SCHEMA):
        assert "type" in node, f"{path} has no type"
        assert not {"$ref", "anyOf", "oneOf", "allOf", "nullable"} & node.keys(), path
        if path.startswith((".spec", ".status")) and not path.endswith("[]"):
            assert node.get("description"), f"{path} has no description"
        if node["type"] == "object" and path not in ("", ".metadata"):
            assert node.get("properties"), f"{path} is an object without properties"


def test_subresources_columns_and_names() -> None:
    version = CRD["spec"]["versions"][0]
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.tiers.base.replicas",
        "statusReplicasPath": ".status.shards.base",
        "labelSelectorPath": ".status.selector",
    }
    assert [c["name"] for c in version["additionalPrinterColumns"]] == [
        "Shards", "Hot", "Routing", "Ready", "Age"
    ]  # fmt: skip
    assert CRD["spec"]["names"]["shortNames"] == ["pmap"]
    assert CRD["spec"]["names"]["categories"] == ["hotshard"]
    spec = SCHEMA["properties"]["spec"]["properties"]
    assert spec["scaleDown"]["properties"]["cooldown"]["default"] == 900.0
    assert spec["tiers"]["properties"]["overflow"]["default"] == {"warm": 2, "maximum": 16}


def test_metadata_schema_is_bare() -> None:
    # The API server refuses anything but name/generateName under metadata, even a description.
    assert SCHEMA["properties"]["metadata"] == {"type": "object"}


def test_every_default_passes_its_own_rules_without_nested_defaulting() -> None:
    # The API server checks a default against the CEL rules of its node as written, without
    # filling in nested defaults first: an incomplete default makes the CRD itself invalid.
    checked = []
    for path, node in walk(SCHEMA):
        if "default" in node:
            value = node["default"]
            assert cel_failures(node, value) == [], path
            errors = jsonschema.Draft4Validator(node).iter_errors(value)
            assert [e.message for e in errors] == [], path
            checked.append(path)
    assert {".spec.tiers.overflow", ".spec.detection"} <= set(checked)


def test_a_minimal_sample_is_admitted_with_defaults() -> None:
    assert admit(sample()) == []
    filled = default(SCHEMA, sample())
    assert filled["spec"]["virtualPartitions"] == 4096
    assert filled["spec"]["tiers"]["overflow"] == {"warm": 2, "maximum": 16}
    assert filled["spec"]["bidder"]["resources"]["limits"] == {"cpu": "1", "memory": "1Gi"}
    # The Python model fills in the same defaults as the schema.
    model = PartitionMapSpec.model_validate(sample()["spec"]).model_dump(by_alias=True)
    assert model["tiers"] == filled["spec"]["tiers"]
    assert model["detection"] == filled["spec"]["detection"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"tiers": {"overflow": {"warm": 9, "maximum": 4}}}, "warm must not exceed maximum"),
        ({"detection": {"interval": 5.0, "window": 2.0}}, "window must be at least"),
        ({"tiers": {"base": {"replicas": 60}}}, "must not exceed budget.maxShards"),
        ({"virtualPartitions": 2, "tiers": {"base": {"replicas": 3}}}, "exceed virtualPartitions"),
    ],
)
def test_cross_field_rules_reject_with_their_message(spec: dict[str, Any], message: str) -> None:
    errors = admit(sample(**spec))
    assert len(errors) == 1
    assert message in errors[0]
    with pytest.raises(ValueError, match=message):  # SpecError, wrapped by pydantic
        PartitionMapSpec.model_validate(sample(**spec)["spec"])


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ({"bidder": {"image": ""}}, "non-empty"),
        ({"bidder": {"image": "x", "port": 70000}}, "greater than the maximum"),
        ({"detection": {"interval": 0.1}}, "less than the minimum"),
        ({"metrics": {"prometheusUrl": "prometheus:9090"}}, "does not match"),
        ({"tiers": {"sandbox": {"cpuLimit": "lots"}}}, "does not match"),
    ],
)
def test_bounds_reject(spec: dict[str, Any], fragment: str) -> None:
    errors = admit(sample(**spec))
    assert any(fragment in e for e in errors), errors


def test_virtual_partitions_are_immutable_but_replicas_are_not() -> None:
    old = sample(virtualPartitions=4096)
    assert admit(sample(virtualPartitions=1024), old) == [
        "virtualPartitions is immutable; create a new PartitionMap"
    ]
    assert admit(sample(tiers={"base": {"replicas": 8}}), old) == []
