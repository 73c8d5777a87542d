"""Python filters: label selection, P/D role selection and the conformance test header.

Each filter returns a bool mask over endpoint ids. They look at ``Endpoint`` attributes
(labels, address) that the core does not hold, which is why they live in Python; they are
O(endpoints) dict lookups, cheap next to the rest of a request at the fleet sizes where labels
matter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    from igw.datastore import Endpoint, Pool
    from igw.pipeline import Request

ROLE_LABEL = "llm-d.ai/role"
TEST_SELECTION_HEADER = "test-epp-endpoint-selection"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Requirement(_Strict):
    key: str = Field(min_length=1)
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _values_match_operator(self) -> Requirement:
        if self.operator in ("In", "NotIn") and not self.values:
            raise ValueError(f"operator {self.operator} needs a non-empty values list")
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            raise ValueError(f"operator {self.operator} takes no values")
        return self

    def matches(self, labels: dict[str, str]) -> bool:
        if self.operator == "In":
            return labels.get(self.key) in self.values
        if self.operator == "NotIn":
            return labels.get(self.key) not in self.values
        if self.operator == "Exists":
            return self.key in labels
        return self.key not in labels


class LabelSelectorParams(_Strict):
    """A Kubernetes LabelSelector (``matchLabels`` AND ``matchExpressions``)."""

    matchLabels: dict[str, str] = Field(default_factory=dict)
    matchExpressions: list[Requirement] = Field(default_factory=list)

    def matches(self, labels: dict[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.matchLabels.items()) and all(
            r.matches(labels) for r in self.matchExpressions
        )


class ByLabelParams(_Strict):
    label: str = Field(min_length=1)
    validValues: list[str] = Field(default_factory=list)
    allowsNoLabel: bool = False

    @model_validator(mode="after")
    def _something_passes(self) -> ByLabelParams:
        if not self.validValues and not self.allowsNoLabel:
            raise ValueError("validValues must be non-empty unless allowsNoLabel is true")
        return self


def _mask_where(pool: Pool, mask: np.ndarray, keep) -> np.ndarray:
    out = np.zeros_like(mask)
    for endpoint in pool.endpoints():
        if endpoint.id < len(mask) and mask[endpoint.id] and keep(endpoint):
            out[endpoint.id] = True
    return out


class LabelSelectorFilter:
    """Keeps endpoints whose labels match a Kubernetes label selector."""

    def __init__(self, name: str, selector: LabelSelectorParams) -> None:
        self.name = name
        self.selector = selector

    def filter(self, request: Request, pool: Pool, snapshot: Any, mask: np.ndarray) -> np.ndarray:
        return _mask_where(pool, mask, lambda e: self.selector.matches(e.labels))


class ByLabelFilter:
    """Keeps endpoints whose ``label`` is one of ``valid_values`` (or unlabeled, if allowed)."""

    def __init__(
        self, name: str, label: str, valid_values: list[str], allows_no_label: bool
    ) -> None:
        self.name = name
        self.label = label
        self.valid_values = frozenset(valid_values)
        self.allows_no_label = allows_no_label

    def _keep(self, endpoint: Endpoint) -> bool:
        value = endpoint.labels.get(self.label)
        if value is None:
            return self.allows_no_label
        return value in self.valid_values

    def filter(self, request: Request, pool: Pool, snapshot: Any, mask: np.ndarray) -> np.ndarray:
        return _mask_where(pool, mask, self._keep)


# the reference's role filters: which llm-d.ai/role values each accepts
ROLE_FILTERS: dict[str, tuple[bool, tuple[str, ...]]] = {
    "decode-filter": (True, ("decode", "prefill-decode", "both", "encode-prefill-decode")),
    "prefill-filter": (
        False,
        ("prefill", "encode-prefill", "prefill-decode", "both", "encode-prefill-decode"),
    ),
    "encode-filter": (False, ("encode", "encode-prefill", "encode-prefill-decode")),
}


def role_filter(type_name: str, name: str) -> ByLabelFilter:
    allows_none, values = ROLE_FILTERS[type_name]
    return ByLabelFilter(name, ROLE_LABEL, list(values), allows_none)


class HeaderBasedTestingFilter:
    """Keeps the endpoints named in the ``test-epp-endpoint-selection`` header ("ip" or
    "ip:port", comma-separated); no header or no match -> nothing (as the reference)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def filter(self, request: Request, pool: Pool, snapshot: Any, mask: np.ndarray) -> np.ndarray:
        value = request.headers.get(TEST_SELECTION_HEADER, "")
        wanted = [item.strip() for item in value.split(",") if item.strip()]
        if not wanted:
            return np.zeros_like(mask)
        selected = pool.candidate_mask([_strip_brackets(item) for item in wanted])
        out = np.zeros_like(mask)
        n = min(len(out), len(selected))
        out[:n] = mask[:n] & selected[:n]
        return out


def _strip_brackets(item: str) -> str:
    """ "[v6]" -> "v6" and "[v6]:80" -> "v6:80", the pool's spelling of IPv6 addresses."""
    if item.startswith("["):
        host, _, rest = item[1:].partition("]")
        return f"{host}{rest}"
    return item
