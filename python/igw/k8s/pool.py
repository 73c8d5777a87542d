"""What an InferencePool says about membership: a label selector and target ports.

``inference.networking.k8s.io/v1`` (REFERENCE Part 1 3.1): ``spec.selector.matchLabels``
(1..64 labels; matchLabels only) and ``spec.targetPorts[].number`` (1..8 unique ports, each
1..65535; every port of a pod is its own endpoint ``podIP:port``). The historic
``inference.networking.x-k8s.io/v1alpha2`` form (``spec.selector`` as a plain map and
``spec.targetPortNumber``) is read too. Standalone mode (``--endpoint-selector`` and
``--endpoint-target-ports``) builds the same ``PoolSpec`` from flags.

Errors name the field and what was expected, so a bad object or flag is one clear line.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

V1_GROUP = "inference.networking.k8s.io"
LEGACY_GROUP = "inference.networking.x-k8s.io"
MAX_LABELS = 64
MAX_PORTS = 8

# label keys: optional DNS prefix "/" name; values: up to 63 of [A-Za-z0-9._-], alnum ends
_LABEL_NAME = r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)"
_LABEL_KEY = re.compile(rf"^([a-z0-9]([-a-z0-9.]{{0,251}}[a-z0-9])?/)?{_LABEL_NAME}$")
_LABEL_VALUE = re.compile(rf"^{_LABEL_NAME}?$")


class PoolSpecError(ValueError):
    """An InferencePool (or the standalone flags) cannot be used; names field and expectation."""


@dataclasses.dataclass(frozen=True)
class PoolSpec:
    """The membership rule of a pool."""

    selector: tuple[tuple[str, str], ...]  # sorted matchLabels
    ports: tuple[int, ...]

    @property
    def label_selector(self) -> str:
        """The selector in API query syntax (``a=b,c=d``) for a server-side filtered watch."""
        return ",".join(f"{key}={value}" for key, value in self.selector)

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(key) == value for key, value in self.selector)


def _check_labels(labels: Any, where: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(labels, dict) or not labels:
        raise PoolSpecError(f"{where}: expected a non-empty map of label key to value")
    if len(labels) > MAX_LABELS:
        raise PoolSpecError(f"{where}: expected at most {MAX_LABELS} labels, got {len(labels)}")
    for key, value in labels.items():
        if not isinstance(key, str) or not _LABEL_KEY.match(key):
            raise PoolSpecError(f"{where}: {key!r} is not a valid label key")
        if not isinstance(value, str) or not _LABEL_VALUE.match(value):
            raise PoolSpecError(f"{where}[{key}]: {value!r} is not a valid label value")
    return tuple(sorted(labels.items()))


def _check_ports(numbers: list[Any], where: str) -> tuple[int, ...]:
    if not 1 <= len(numbers) <= MAX_PORTS:
        raise PoolSpecError(f"{where}: expected 1 to {MAX_PORTS} ports, got {len(numbers)}")
    for i, number in enumerate(numbers):
        if isinstance(number, bool) or not isinstance(number, int) or not 0 < number < 65536:
            raise PoolSpecError(f"{where}[{i}]: expected a port number 1..65535, got {number!r}")
    if len(set(numbers)) != len(numbers):
        raise PoolSpecError(f"{where}: port numbers must be unique, got {numbers}")
    return tuple(numbers)


def parse_pool(obj: Mapping[str, Any]) -> PoolSpec:
    """The ``PoolSpec`` of an InferencePool object (v1, or the v1alpha2 form)."""
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    name = f"InferencePool {meta.get('namespace', '')}/{meta.get('name', '')}"
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        raise PoolSpecError(f"{name}: spec: expected a mapping")
    selector = spec.get("selector")
    if str(obj.get("apiVersion", "")).startswith(LEGACY_GROUP + "/"):
        labels = _check_labels(selector, f"{name}: spec.selector")
        port = spec.get("targetPortNumber")
        return PoolSpec(labels, _check_ports([port], f"{name}: spec.targetPortNumber"))
    if not isinstance(selector, dict):
        raise PoolSpecError(f"{name}: spec.selector: expected a mapping with matchLabels")
    if selector.get("matchExpressions"):
        raise PoolSpecError(
            f"{name}: spec.selector.matchExpressions: not supported by InferencePool; "
            "expected matchLabels only"
        )
    labels = _check_labels(selector.get("matchLabels"), f"{name}: spec.selector.matchLabels")
    ports = spec.get("targetPorts")
    if not isinstance(ports, list):
        raise PoolSpecError(f"{name}: spec.targetPorts: expected a list of {{number: port}}")
    numbers = []
    for i, port in enumerate(ports):
        if not isinstance(port, dict) or "number" not in port:
            raise PoolSpecError(f"{name}: spec.targetPorts[{i}]: expected {{number: port}}")
        numbers.append(port["number"])
    return PoolSpec(labels, _check_ports(numbers, f"{name}: spec.targetPorts"))


def parse_selector(text: str, flag: str = "--endpoint-selector") -> tuple[tuple[str, str], ...]:
    """``a=b,c==d`` (equality-based label selector syntax) -> sorted pairs.

    Set-based forms (``in``, ``notin``, ``!=``, bare ``key``) are rejected with a clear
    message: pods are chosen by exact labels, as an InferencePool's matchLabels does.
    """
    labels: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if "!=" in part or " in " in f" {part} " or "notin" in part or "(" in part:
            raise PoolSpecError(
                f"{flag}: {part!r}: only equality requirements (key=value) are supported"
            )
        key, sep, value = part.replace("==", "=").partition("=")
        if not sep:
            raise PoolSpecError(f"{flag}: {part!r}: expected key=value")
        key, value = key.strip(), value.strip()
        if key in labels and labels[key] != value:
            raise PoolSpecError(f"{flag}: label {key!r} is given two values")
        labels[key] = value
    if not labels:
        raise PoolSpecError(f"{flag}: expected at least one key=value requirement")
    return _check_labels(labels, flag)


def parse_ports(text: str, flag: str = "--endpoint-target-ports") -> tuple[int, ...]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not all(p.isdigit() for p in parts):
        raise PoolSpecError(f"{flag}: expected a comma list of port numbers, got {text!r}")
    return _check_ports([int(p) for p in parts], flag)
