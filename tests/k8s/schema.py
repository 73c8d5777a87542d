"""A small structural checker for CRD openAPIV3Schemas, enough to validate manifests offline.

It checks what an API server would check before admission webhooks and CEL: types, required
fields, unknown fields (pruning would drop them silently; here they are errors), enums,
bounds, lengths, patterns and item/property counts. CEL rules (``x-kubernetes-validations``)
are not evaluated; the tests cover those rules through igw's own parsers instead.
"""

from __future__ import annotations

import re
from typing import Any

_INT32 = (-(2**31), 2**31 - 1)


def _join(path: str, key: Any) -> str:
    return f"{path}[{key}]" if isinstance(key, int) else (f"{path}.{key}" if path else str(key))


def validate(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Every violation of ``schema`` by ``value``, as ``path: problem`` strings."""
    errors: list[str] = []
    kind = schema.get("type")
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} is not one of {schema['enum']}")
    if kind == "object":
        if not isinstance(value, dict):
            return [*errors, f"{path}: expected an object, got {type(value).__name__}"]
        properties = schema.get("properties", {})
        for name in schema.get("required", []):
            if name not in value:
                errors.append(f"{_join(path, name)}: required")
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            if key in properties:
                if path == "" and key == "metadata":
                    continue  # ObjectMeta is the API server's, not the CRD's
                errors += validate(item, properties[key], _join(path, key))
            elif isinstance(extra, dict):
                errors += validate(item, extra, _join(path, key))
            elif not schema.get("x-kubernetes-preserve-unknown-fields"):
                errors.append(f"{_join(path, key)}: unknown field")
        if len(value) < schema.get("minProperties", 0):
            errors.append(f"{path}: expected at least {schema['minProperties']} properties")
        if "maxProperties" in schema and len(value) > schema["maxProperties"]:
            errors.append(f"{path}: expected at most {schema['maxProperties']} properties")
    elif kind == "array":
        if not isinstance(value, list):
            return [*errors, f"{path}: expected a list, got {type(value).__name__}"]
        if len(value) < schema.get("minItems", 0):
            errors.append(f"{path}: expected at least {schema['minItems']} items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(f"{path}: expected at most {schema['maxItems']} items")
        for i, item in enumerate(value):
            errors += validate(item, schema.get("items", {}), _join(path, i))
    elif kind == "string":
        if not isinstance(value, str):
            return [*errors, f"{path}: expected a string, got {type(value).__name__}"]
        if len(value) < schema.get("minLength", 0):
            errors.append(f"{path}: shorter than {schema['minLength']}")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(f"{path}: longer than {schema['maxLength']}")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{path}: {value!r} does not match {schema['pattern']}")
    elif kind == "integer":
        if isinstance(value, bool) or not isinstance(value, int):
            return [*errors, f"{path}: expected an integer, got {type(value).__name__}"]
        low, high = schema.get("minimum"), schema.get("maximum")
        if schema.get("format") == "int32" and not _INT32[0] <= value <= _INT32[1]:
            errors.append(f"{path}: {value} is not a 32-bit integer")
        if low is not None and value < low:
            errors.append(f"{path}: {value} < minimum {low}")
        if high is not None and value > high:
            errors.append(f"{path}: {value} > maximum {high}")
    elif kind == "boolean" and not isinstance(value, bool):
        errors.append(f"{path}: expected a boolean")
    return errors


def structural_problems(schema: dict[str, Any], path: str = "") -> list[str]:
    """Where a CRD schema is not structural: a node without a type, a required field that is
    not a property, a default that its own schema rejects."""
    problems: list[str] = []
    if "type" not in schema and not (
        schema.get("x-kubernetes-preserve-unknown-fields")
        or schema.get("x-kubernetes-int-or-string")
    ):
        problems.append(f"{path or '<root>'}: no type")
    properties = schema.get("properties", {})
    for name in schema.get("required", []):
        if name not in properties:
            problems.append(f"{path}: required {name!r} is not a property")
    if "default" in schema:
        problems += [f"default: {e}" for e in validate(schema["default"], schema, path)]
    for key in schema.get("x-kubernetes-list-map-keys", []):
        if key not in schema.get("items", {}).get("required", []):
            problems.append(f"{path}: list-map key {key!r} must be required in items")
    for name, child in properties.items():
        problems += structural_problems(child, _join(path, name))
    if isinstance(schema.get("additionalProperties"), dict):
        problems += structural_problems(schema["additionalProperties"], _join(path, "*"))
    if "items" in schema:
        problems += structural_problems(schema["items"], _join(path, "[]"))
    return problems
