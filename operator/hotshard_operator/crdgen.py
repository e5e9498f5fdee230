"""Generate the PartitionMap CRD from the pydantic models, so the schema has one source of truth.

Pydantic writes JSON Schema 2020-12: shared definitions behind ``$ref``, optional fields as
``anyOf`` with ``null``, numeric ``exclusiveMinimum``. The Kubernetes API server wants a
*structural* OpenAPI v3 schema: every node typed, everything inlined, no ``anyOf`` that changes
a type, boolean ``exclusiveMinimum``. :func:`structural` converts one into the other; the rest
of this module wraps the result in a CustomResourceDefinition with the status and scale
subresources, printer columns, short name and category.

Run ``python -m hotshard_operator.crdgen`` to rewrite ``crds/partitionmaps.hotshard.io.yaml``,
the chart's copy of it and ``docs/partitionmap-reference.md``; a unit test fails when any is
out of date.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any

import yaml

from hotshard_operator.reference import render_reference
from hotshard_operator.resources import GROUP, KIND, PLURAL, VERSION, PartitionMapSpec
from hotshard_operator.status import PartitionMapStatus

Schema = dict[str, Any]

CRD_PATH = Path("crds") / f"{PLURAL}.{GROUP}.yaml"
REFERENCE_PATH = Path("docs") / "partitionmap-reference.md"
CHART_CRD_PATH = Path("charts") / "hotshard" / "files" / CRD_PATH.name
"""The chart templates its CRD from this copy, since Helm reads no file outside the chart."""
_DROP = {"title", "$defs", "additionalProperties"}


def _resolve(node: Schema, defs: Schema) -> Schema:
    """Inline ``$ref`` and fold ``anyOf: [X, null]`` into X, keeping sibling keys."""
    node = dict(node)
    ref = node.pop("$ref", None)
    if ref is not None:
        target = copy.deepcopy(defs[ref.rsplit("/", 1)[-1]])
        node = {**target, **node}
    any_of = node.pop("anyOf", None)
    if any_of is not None:
        kept = [a for a in any_of if a.get("type") != "null"]
        if len(kept) != 1:
            raise ValueError(f"cannot express anyOf {any_of} structurally")
        node = {**_resolve(kept[0], defs), **node}
        if "default" in node and node["default"] is None:
            del node["default"]  # "unset" is absence in a structural schema, not null
    return node


def structural(node: Schema, defs: Schema, *, with_defaults: bool = True) -> Schema:
    """Turn one pydantic JSON-schema node into a structural OpenAPI v3 node."""
    node = _resolve(node, defs)
    out: Schema = {}
    for key, value in node.items():
        if key in _DROP or (key == "default" and not with_defaults):
            continue
        if key == "properties":
            out[key] = {
                name: structural(sub, defs, with_defaults=with_defaults)
                for name, sub in value.items()
            }
        elif key == "items":
            out[key] = structural(value, defs, with_defaults=with_defaults)
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            out[bound] = value
            out[key] = True
        elif key == "const":
            out["enum"] = [value]
        else:
            out[key] = value
    if "enum" in out and "type" not in out:
        kinds = {type(v) for v in out["enum"]}
        out["type"] = "string" if kinds == {str} else "integer"
    if "properties" in out:
        out["type"] = "object"
        required = set(out.get("required", []))
        # NB: an optional sub-object whose own fields all have defaults gets them all as its
        # default, spelled out. The API server checks a default against the object's CEL rules
        # without filling in the nested defaults first, so `{}` fails `self.warm <= ...`.
        for name, sub in out["properties"].items():
            if (
                with_defaults
                and sub.get("type") == "object"
                and name not in required
                and "default" not in sub
                and not sub.get("required")
            ):
                sub["default"] = complete_default(sub)
    return out


def complete_default(node: Schema) -> Schema:
    """The object `node` describes with every defaulted field filled in, nested ones too."""
    return {
        name: copy.deepcopy(sub["default"])
        for name, sub in node.get("properties", {}).items()
        if "default" in sub
    }


def model_schema(model: type[Any], *, with_defaults: bool = True) -> Schema:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return structural(raw, raw.get("$defs", {}), with_defaults=with_defaults)


def build_crd() -> Schema:
    """The whole CustomResourceDefinition as a plain dict."""
    spec = model_schema(PartitionMapSpec)
    status = model_schema(PartitionMapStatus, with_defaults=False)
    conditions = status["properties"]["conditions"]
    conditions["x-kubernetes-list-type"] = "map"
    conditions["x-kubernetes-list-map-keys"] = ["type"]
    root = {
        "type": "object",
        "description": "A bidding fleet partitioned by campaign, resharded by hotshard.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "API version of this object."},
            "kind": {"type": "string", "description": "Kind of this object."},
            # The API server allows no more than this here (not even a description).
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }
    columns = [
        ("Shards", "integer", ".status.shards.total", "Ready shards of all tiers."),
        ("Hot", "integer", ".status.hotPartitionCount", "Partitions hot on the last tick."),
        ("Routing", "integer", ".status.routingVersion", "Committed routing table version."),
        ("Ready", "string", '.status.conditions[?(@.type=="Ready")].status', "Ready condition."),
        ("Age", "date", ".metadata.creationTimestamp", "Time since creation."),
    ]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{PLURAL}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "hotshard"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": KIND.lower(),
                "shortNames": ["pmap"],
                "categories": ["hotshard"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": root},
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.tiers.base.replicas",
                            "statusReplicasPath": ".status.shards.base",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
                    "additionalPrinterColumns": [
                        {"name": n, "type": t, "jsonPath": p, "description": d}
                        for n, t, p, d in columns
                    ],
                }
            ],
        },
    }


def render_crd() -> str:
    header = "# Generated by `python -m hotshard_operator.crdgen` from the pydantic models.\n"
    return header + yaml.safe_dump(build_crd(), sort_keys=False, width=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the PartitionMap CRD and reference.")
    parser.add_argument("--root", type=Path, default=Path("."), help="repository root")
    args = parser.parse_args(argv)
    outputs = (
        (CRD_PATH, render_crd()),
        (CHART_CRD_PATH, render_crd()),
        (REFERENCE_PATH, render_reference()),
    )
    for path, text in outputs:
        target = args.root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
