"""Validate manifests the way the Kubernetes API server does with a CRD's openAPIV3Schema.

Structural schemas, strict field validation (kubectl's default since 1.27): unknown fields are
errors unless ``x-kubernetes-preserve-unknown-fields``; ``x-kubernetes-int-or-string`` admits
both. Written here rather than with jsonschema because jsonschema allows unknown fields.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CRD_DIR = REPO.parent / "shared" / "knative-crds"
_CRD_FILES = (
    "serving-service.yaml",
    "eventing-broker.yaml",
    "eventing-trigger.yaml",
    "eventing-pingsource.yaml",
    "eventing-sinkbindings.yaml",
    "eventing-eventpolicy.yaml",
)
_INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}
Schema = dict[str, Any]


def load_schemas() -> dict[tuple[str, str], Schema]:
    """(apiVersion, kind) -> openAPIV3Schema for every served version of the CRDs we render."""
    if not CRD_DIR.is_dir():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but the Knative CRDs are missing at {CRD_DIR}", pytrace=False)
        pytest.skip(f"Knative CRDs not found at {CRD_DIR} (shared/ beside the repo)")
    out: dict[tuple[str, str], Schema] = {}
    for name in _CRD_FILES:
        crd = yaml.safe_load((CRD_DIR / name).read_text(encoding="utf-8"))
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if version.get("served"):
                schema = version["schema"]["openAPIV3Schema"]
                out[(f"{group}/{version['name']}", kind)] = schema
    return out


def validate_resource(manifest: dict[str, Any], schema: Schema) -> list[str]:
    """A whole object: the server accepts apiVersion/kind/metadata on every resource, whatever
    the CRD lists, and validates metadata as ObjectMeta."""
    body = {k: v for k, v in manifest.items() if k not in ("apiVersion", "kind", "metadata")}
    errors = validate(body, schema)
    return errors + validate(manifest.get("metadata"), _OBJECT_META, "metadata")


def validate(value: Any, schema: Schema, path: str = "") -> list[str]:
    """Every violation of ``schema`` in ``value``, as 'path: message'."""
    where = path or "(root)"
    if value is None:
        return [] if schema.get("nullable") else [f"{where}: null is not allowed"]
    if schema.get("x-kubernetes-int-or-string"):
        ok = isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))
        return [] if ok else [f"{where}: must be an integer or a string"]
    errors = _type(value, schema, where)
    if errors:
        return errors
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {value!r} not in {schema['enum']}")
    if isinstance(value, dict):
        errors += _object(value, schema, path)
    elif isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errors += validate(item, schema["items"], f"{path}[{i}]")
    return errors


def _type(value: Any, schema: Schema, where: str) -> list[str]:
    kind = schema.get("type")
    checks: dict[str, bool] = {
        "object": isinstance(value, dict),
        "array": isinstance(value, list),
        "string": isinstance(value, str),
        "boolean": isinstance(value, bool),
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "number": isinstance(value, int | float) and not isinstance(value, bool),
    }
    if kind is not None and not checks[kind]:
        return [f"{where}: expected {kind}, got {type(value).__name__} {value!r}"]
    if kind == "integer" and schema.get("format") in _INT_RANGES:
        low, high = _INT_RANGES[schema["format"]]
        if not low <= value <= high:
            return [f"{where}: {value} out of {schema['format']} range"]
    return []


def _object(value: dict[str, Any], schema: Schema, path: str) -> list[str]:
    errors = [
        f"{path or '(root)'}: missing required field {key!r}"
        for key in schema.get("required", ())
        if key not in value
    ]
    properties: dict[str, Schema] = schema.get("properties", {})
    extra = schema.get("additionalProperties")
    for key, item in value.items():
        child = f"{path}.{key}" if path else key
        if key in properties:
            errors += validate(item, properties[key], child)
        elif isinstance(extra, dict):
            errors += validate(item, extra, child)
        elif properties and not schema.get("x-kubernetes-preserve-unknown-fields"):
            errors.append(f"{child}: unknown field")
    return errors


# Core objects we render have no CRD; check the parts Kubernetes would reject.
_STRING_MAP: Schema = {"type": "object", "additionalProperties": {"type": "string"}}
_OBJECT_META: Schema = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string"},
        "namespace": {"type": "string"},
        "labels": _STRING_MAP,
        "annotations": _STRING_MAP,
    },
}
CORE_SCHEMAS: dict[tuple[str, str], Schema] = {
    ("v1", "Namespace"): {"type": "object", "properties": {"spec": {"type": "object"}}},
    ("v1", "ConfigMap"): {
        "type": "object",
        "properties": {"data": _STRING_MAP, "binaryData": _STRING_MAP},
    },
    ("v1", "ServiceAccount"): {
        "type": "object",
        "properties": {"automountServiceAccountToken": {"type": "boolean"}},
    },
}
