"""The official CAMARA documents (tests/camara_specs/) as JSON Schema validators.

OpenAPI 3.0 schemas validated with openapi-schema-validator's OAS30 dialect and $refs resolved
with ``referencing``. Two things need care:

- ``discriminator``: CAMARA subtypes ``allOf`` their discriminating base, which makes a validator
  that follows the discriminator inside ``allOf`` recurse for ever. Here a discriminator is
  enforced where it is declared (the value of its property picks the mapped schema, which must
  then hold) and a subtype inherits its base's fields without re-dispatching on them.
- ``../common/CAMARA_*.yaml`` (Commonalities), referenced by two documents: resolved to the
  verbatim copies in ``tests/camara_specs/common/``.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import simplejson
import yaml
from jsonschema.exceptions import ValidationError, best_match
from openapi_schema_validator import OAS30Validator, oas30_format_checker
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

SPECS = Path(__file__).parent / "camara_specs"
BASE = "https://camara.test/code/API_definitions/"
COMMON = "https://camara.test/code/common/"
COMMON_FILES = ("CAMARA_common.yaml", "CAMARA_event_common.yaml")
PLAIN = "__plain"  # suffix of a schema's copy without its discriminator
SCHEMAS = "#/components/schemas/"


class _DecimalLoader(yaml.SafeLoader):
    """Numbers with a fraction as exact decimals: money amounts are checked against
    ``multipleOf: 0.001`` exactly (a float 7.65 is not a multiple of a float 0.001)."""


def _decimal(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Decimal:
    return Decimal(str(loader.construct_scalar(node)).replace("_", ""))


_DecimalLoader.add_constructor("tag:yaml.org,2002:float", _decimal)


@functools.cache
def document(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.load((SPECS / name).read_text(), Loader=_DecimalLoader)
    return loaded


def _plain(schema: Any, plain_names: set[str]) -> Any:
    """``schema`` without its discriminator; its ``allOf`` bases point at their plain copies."""
    out = {k: v for k, v in schema.items() if k != "discriminator"}
    if "allOf" in out:
        out["allOf"] = [
            {"$ref": part["$ref"] + PLAIN}
            if isinstance(part, dict)
            and part.get("$ref", "").startswith(SCHEMAS)
            and part["$ref"].removeprefix(SCHEMAS) in plain_names
            else part
            for part in out["allOf"]
        ]
    return out


def _dispatching(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    """The base's own constraints, plus: the discriminating value picks a mapped schema."""
    discriminator = schema["discriminator"]
    prop = discriminator["propertyName"]
    choices = [
        {
            "properties": {prop: {"enum": [value]}},
            "required": [prop],
            "allOf": [{"$ref": target + PLAIN if target.startswith(SCHEMAS) else target}],
        }
        for value, target in discriminator["mapping"].items()
    ]
    return {"allOf": [{"$ref": f"{SCHEMAS}{name}{PLAIN}"}], "anyOf": choices}


def _prepared(doc: dict[str, Any]) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    schemas: dict[str, Any] = doc.get("components", {}).get("schemas", {})
    names = {n for n, s in schemas.items() if isinstance(s, dict) and "$ref" not in s}
    prepared: dict[str, Any] = {}
    for name, schema in schemas.items():
        if name not in names:
            prepared[name] = schema
            continue
        prepared[name + PLAIN] = _plain(schema, names)
        has_mapping = "mapping" in schema.get("discriminator", {})
        prepared[name] = _dispatching(name, schema) if has_mapping else prepared[name + PLAIN]
    if schemas:
        doc["components"]["schemas"] = prepared
    return doc


def _common(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.load((SPECS / "common" / name).read_text(), Loader=_DecimalLoader)
    return loaded


@functools.cache
def registry() -> Registry[Any]:
    resources = [
        (BASE + path.name, Resource.from_contents(_prepared(document(path.name)), DRAFT4))
        for path in sorted(SPECS.glob("*.yaml"))
    ]
    resources += [
        (COMMON + name, Resource.from_contents(_prepared(_common(name)), DRAFT4))
        for name in COMMON_FILES
    ]
    return Registry().with_resources(resources)


def errors(doc: str, pointer: str, instance: Any) -> list[str]:
    """Every way ``instance`` breaks the schema at ``pointer`` (e.g. ``#/components/schemas/X``
    or a JSON pointer into ``paths``) of ``doc``; [] when it is valid."""
    return sorted(_describe(e) for e in _validator(doc, pointer).iter_errors(instance))


def _number(instance: object) -> bool:
    return not isinstance(instance, bool)


# OpenAPI's float/double formats qualify a JSON number; amounts are read as exact decimals.
FORMATS = copy.deepcopy(oas30_format_checker)
FORMATS.checks("float")(_number)
FORMATS.checks("double")(_number)


@functools.cache
def _validator(doc: str, pointer: str) -> OAS30Validator:
    return OAS30Validator(
        {"$ref": BASE + doc + pointer}, registry=registry(), format_checker=FORMATS
    )


def _describe(error: ValidationError) -> str:
    """The most specific reason (for "not valid under any of the given schemas": the reason
    inside the likeliest branch)."""
    while error.context:
        error = best_match(error.context)
    return f"{'/'.join(str(p) for p in error.absolute_path) or '(root)'}: {error.message}"


def schema_errors(doc: str, name: str, instance: Any) -> list[str]:
    return errors(doc, SCHEMAS + name, instance)


def escape(segment: str) -> str:
    """A JSON pointer segment (RFC 6901)."""
    return segment.replace("~", "~0").replace("/", "~1")


def operation(doc: str, path: str, method: str) -> str:
    """The JSON pointer of an operation; KeyError if the document does not define it."""
    document(doc)["paths"][path][method]
    return f"#/paths/{escape(path)}/{method}"


def request_errors(doc: str, path: str, method: str, body: Any) -> list[str]:
    op = operation(doc, path, method)
    return errors(doc, f"{op}/requestBody/content/application~1json/schema", body)


def response_errors(doc: str, path: str, method: str, status: int, body: Any) -> list[str]:
    op = operation(doc, path, method)
    responses = document(doc)["paths"][path][method]["responses"]
    if str(status) not in responses:
        return [f"{method.upper()} {path} does not document status {status}"]
    response = responses[str(status)]
    if "$ref" in response:
        pointer = response["$ref"]
        response = document(doc)["components"]["responses"][pointer.rsplit("/", 1)[1]]
    else:
        pointer = f"{op}/responses/{status}"
    if "content" not in response:
        return [] if body is None else [f"status {status} has no body, got {body!r}"]
    return errors(doc, f"{pointer}/content/application~1json/schema", body)


def callback_errors(doc: str, path: str, method: str, body: Any) -> list[str]:
    """Against the notification schema an operation's callback declares."""
    op = operation(doc, path, method)
    callbacks = document(doc)["paths"][path][method]["callbacks"]
    [(name, expressions)] = callbacks.items()
    [expression] = expressions
    pointer = (
        f"{op}/callbacks/{escape(name)}/{escape(expression)}/post/requestBody/content/"
        "application~1cloudevents+json/schema"
    )
    return errors(doc, pointer, body)


CORRELATOR = re.compile(r"^[a-zA-Z0-9-_:;.\/<>{}]{0,256}$")


def event_schema(doc: str, event_type: str) -> str:
    """The schema a document's discriminator maps an event type to (e.g. SliceCreatedEvent)."""
    for schema in document(doc)["components"]["schemas"].values():
        discriminator = schema.get("discriminator", {}) if isinstance(schema, dict) else {}
        if discriminator.get("propertyName") == "type" and event_type in discriminator.get(
            "mapping", {}
        ):
            target: str = discriminator["mapping"][event_type]
            return target.removeprefix(SCHEMAS)
    raise KeyError(f"{doc} maps no schema to {event_type}")


def event_errors(doc: str, body: dict[str, Any]) -> list[str]:
    """Against the schema the document defines for the event's type."""
    return schema_errors(doc, event_schema(doc, body["type"]), body)


def notification_examples(doc: str) -> dict[str, dict[str, Any]]:
    """Every example CloudEvent a document gives for its notifications, by example name, as the
    JSON a sender posts (numbers as JSON numbers, not the exact decimals the schemas load)."""
    examples = document(doc).get("components", {}).get("examples", {})
    return {
        name: json.loads(simplejson.dumps(example["value"], use_decimal=True))
        for name, example in examples.items()
        if isinstance(example.get("value"), dict)
        and str(example["value"].get("type", "")).startswith("org.camaraproject.")
    }
