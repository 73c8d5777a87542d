"""InferenceObjective and InferenceModelRewrite from a YAML file, as one would kubectl apply them.

Outside Kubernetes ``igw epp --objectives-file FILE`` (and ``igw serve``) reads the same
manifests a platform team applies to a cluster: multi-document YAML (``---``) and ``kind: List``
are accepted; manifests of other API groups (Services, Deployments...) are skipped, so the file
applied to a cluster can be used as is; an unknown kind inside the inference groups is an
error. Only objects whose ``spec.poolRef.name`` is this picker's pool count (the reference
picker watches only those); when a namespace is given, only objects in it.

* ``InferenceObjective`` (``llm-d.ai/v1alpha2``, legacy ``inference.networking.x-k8s.io/v1alpha2``):
  ``spec.priority`` optional int (unset = 0), looked up by the request's objective header.
* ``InferenceModelRewrite`` (same groups): ``spec.rules[].matches[].model {type: Exact, value}``
  (no matches = a generic rule matching every model), ``spec.rules[].targets[] {weight?,
  modelRewrite}`` with weights 1..1,000,000 on all targets of a rule or on none.
  Precedence (the reference's): a rule matching the model exactly beats a generic rule; among
  equals the resource with the oldest ``metadata.creationTimestamp`` wins (objects without one
  count as created in file order, after every object that has one); within a resource the
  first rule wins. The target is then drawn at random by weight (uniform when unweighted).

Applying twice is an update, so a later document with the same namespace/kind/name replaces
an earlier one. ``ObjectivesFile`` reloads on change without blocking the event loop; a bad
reload keeps the last good state and logs the file and field.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal, Protocol

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from igw.config import ConfigError, validation_to_config_error

log = logging.getLogger(__name__)

GROUP = "llm-d.ai"
LEGACY_GROUP = "inference.networking.x-k8s.io"
API_VERSIONS = (f"{GROUP}/v1alpha2", f"{LEGACY_GROUP}/v1alpha2")
INFERENCE_GROUPS = (GROUP, LEGACY_GROUP, "inference.networking.k8s.io")
OBJECTIVE = "InferenceObjective"
REWRITE = "InferenceModelRewrite"
IGNORED_INFERENCE_KINDS = ("InferencePool", "InferencePoolImport")
MAX_WEIGHT = 1_000_000
_DNS_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_INT32 = (-(2**31), 2**31 - 1)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Loose(BaseModel):
    """Server-managed or decorative fields (status, labels...) are accepted and ignored."""

    model_config = ConfigDict(extra="allow")


class Metadata(_Loose):
    name: str
    namespace: str = "default"
    creationTimestamp: dt.datetime | None = None

    @field_validator("name")
    @classmethod
    def _dns(cls, value: str) -> str:
        if not _DNS_NAME.match(value):
            raise ValueError("expected a DNS subdomain name (lower case a-z, 0-9, '-', '.')")
        return value

    @field_validator("creationTimestamp", mode="before")
    @classmethod
    def _timestamp(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                raise ValueError("expected an RFC 3339 time such as 2025-01-02T03:04:05Z") from None
        if isinstance(value, dt.datetime) and value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return value


class PoolRef(_Strict):
    group: str = "inference.networking.k8s.io"
    kind: str = "InferencePool"
    name: str = Field(min_length=1)


class ObjectiveSpec(_Strict):
    priority: int | None = None
    poolRef: PoolRef

    @field_validator("priority")
    @classmethod
    def _int32(cls, value: int | None) -> int | None:
        if value is not None and not _INT32[0] <= value <= _INT32[1]:
            raise ValueError("expected a 32-bit integer")
        return value


class ModelMatch(_Strict):
    type: Literal["Exact"] = "Exact"
    value: str = Field(min_length=1)


class Match(_Strict):
    model: ModelMatch


class Target(_Strict):
    weight: int | None = Field(default=None, ge=1, le=MAX_WEIGHT)
    modelRewrite: str = Field(min_length=1)


class Rule(_Strict):
    matches: list[Match] = Field(default_factory=list)
    targets: list[Target] = Field(default_factory=list)

    @model_validator(mode="after")
    def _all_or_none(self) -> Rule:
        weighted = [t.weight is not None for t in self.targets]
        if any(weighted) and not all(weighted):
            raise ValueError("targets: weights must be set on all targets of a rule or on none")
        return self


class RewriteSpec(_Strict):
    poolRef: PoolRef
    rules: list[Rule] = Field(min_length=1)


class _Resource(_Strict):
    apiVersion: str
    kind: str
    metadata: Metadata
    status: dict[str, Any] | None = None

    @field_validator("apiVersion")
    @classmethod
    def _version(cls, value: str) -> str:
        if value not in API_VERSIONS:
            raise ValueError(f"expected one of {', '.join(API_VERSIONS)}")
        return value


class InferenceObjective(_Resource):
    kind: Literal["InferenceObjective"]
    spec: ObjectiveSpec

    @property
    def priority(self) -> int:
        return 0 if self.spec.priority is None else self.spec.priority


class InferenceModelRewrite(_Resource):
    kind: Literal["InferenceModelRewrite"]
    spec: RewriteSpec


# ------------------------------------------------------------------------------- stores


class ObjectiveStore:
    """Objective name -> InferenceObjective (one namespace: the pool's)."""

    def __init__(self, objectives: Iterable[InferenceObjective] = ()) -> None:
        self._by_name = {o.metadata.name: o for o in objectives}

    def __len__(self) -> int:
        return len(self._by_name)

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def get(self, name: str) -> InferenceObjective | None:
        return self._by_name.get(name)

    def priority(self, name: str | None) -> int | None:
        """The objective's priority (0 when unset); None when there is no such objective."""
        if not name:
            return None
        objective = self._by_name.get(name)
        return None if objective is None else objective.priority

    def names(self) -> list[str]:
        return sorted(self._by_name)


@dataclasses.dataclass(frozen=True)
class RewriteRule:
    """One rule of one InferenceModelRewrite, with what precedence needs."""

    resource: str  # the InferenceModelRewrite's name
    namespace: str
    index: int  # position within the resource's rules
    models: frozenset[str]  # exact model names; empty = generic
    targets: tuple[Target, ...]
    created: dt.datetime | None
    order: int  # file order of the resource (tie-break after creationTimestamp)

    @property
    def generic(self) -> bool:
        return not self.models

    @property
    def name(self) -> str:
        return f"{self.resource}/rules[{self.index}]"

    def precedence(self) -> tuple:
        created = self.created.timestamp() if self.created else float("inf")
        return (self.generic, created, self.order, self.index)


class RandomSource(Protocol):
    def randrange(self, stop: int) -> int: ...


class RewriteStore:
    """Model name -> the winning rule and a weighted-random target."""

    def __init__(self, rewrites: Iterable[InferenceModelRewrite] = ()) -> None:
        rules: list[RewriteRule] = []
        for order, resource in enumerate(rewrites):
            for index, rule in enumerate(resource.spec.rules):
                rules.append(
                    RewriteRule(
                        resource=resource.metadata.name,
                        namespace=resource.metadata.namespace,
                        index=index,
                        models=frozenset(m.model.value for m in rule.matches),
                        targets=tuple(rule.targets),
                        created=resource.metadata.creationTimestamp,
                        order=order,
                    )
                )
        self._rules = sorted(rules, key=RewriteRule.precedence)

    def __len__(self) -> int:
        return len(self._rules)

    def rule_for(self, model: str) -> RewriteRule | None:
        """The highest-precedence rule matching ``model`` (exact before generic)."""
        for rule in self._rules:
            if rule.generic or model in rule.models:
                return rule
        return None

    def resolve(self, model: str, rng: RandomSource) -> tuple[str, RewriteRule] | None:
        """``(target model, rule)`` for ``model``, or None when no rule (with targets) applies."""
        rule = self.rule_for(model)
        if rule is None or not rule.targets:
            return None
        return pick_target(rule.targets, rng).modelRewrite, rule


def pick_target(targets: tuple[Target, ...], rng: RandomSource) -> Target:
    """Weighted draw like the reference's ``rand.Intn(total)`` over cumulative weights;
    uniform when no target has a weight."""
    if targets[0].weight is None:
        return targets[rng.randrange(len(targets))]
    total = sum(t.weight or 0 for t in targets)
    draw = rng.randrange(total)
    for target in targets:
        draw -= target.weight or 0
        if draw < 0:
            return target
    return targets[-1]  # unreachable: draw < total


# ------------------------------------------------------------------------------- parsing


@dataclasses.dataclass(frozen=True)
class Objectives:
    """Everything one file says about one pool."""

    objectives: ObjectiveStore
    rewrites: RewriteStore


def _documents(data: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    if isinstance(data, dict) and data.get("kind") == "List" and "items" in data:
        items = data.get("items") or []
        if not isinstance(items, list):
            raise ConfigError("", f"{prefix}.items", "expected a list of manifests")
        for j, item in enumerate(items):
            yield from _documents(item, f"{prefix}.items[{j}]")
    else:
        yield prefix, data


def parse_objectives(
    text: str,
    source: str = "<objectives>",
    *,
    pool_name: str | None = None,
    pool_namespace: str | None = None,
) -> Objectives:
    """Parse multi-document YAML into stores for one pool; ``ConfigError`` on bad input."""
    try:
        raw_docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(
            source, "", f"not valid YAML{where}: {getattr(exc, 'problem', exc)}"
        ) from None
    latest: dict[tuple[str, str, str], InferenceObjective | InferenceModelRewrite] = {}
    try:
        docs = [d for i, raw in enumerate(raw_docs) for d in _documents(raw, f"documents[{i}]")]
    except ConfigError as exc:
        raise ConfigError(source, exc.field, exc.expected) from None
    for where, doc in docs:
        if doc is None:
            continue  # an empty document (e.g. a trailing ---)
        if not isinstance(doc, dict):
            raise ConfigError(
                source, where, f"expected a manifest mapping, got {type(doc).__name__}"
            )
        kind = doc.get("kind")
        group = str(doc.get("apiVersion", "")).split("/")[0]
        if kind not in (OBJECTIVE, REWRITE):
            if group in INFERENCE_GROUPS and kind not in IGNORED_INFERENCE_KINDS:
                raise ConfigError(
                    source, f"{where}.kind", f"expected {OBJECTIVE} or {REWRITE}, got {kind!r}"
                )
            continue  # another API's manifest in the same file: not ours
        model = InferenceObjective if kind == OBJECTIVE else InferenceModelRewrite
        try:
            resource = model.model_validate(doc)
        except ValidationError as exc:
            label = (
                doc.get("metadata", {}).get("name")
                if isinstance(doc.get("metadata"), dict)
                else None
            )
            error = validation_to_config_error(exc, source, (where,))
            if label:
                error = ConfigError(source, error.field, f"{kind} {label!r}: {error.expected}")
            raise error from None
        if pool_name is not None and resource.spec.poolRef.name != pool_name:
            continue
        if pool_namespace is not None and resource.metadata.namespace != pool_namespace:
            continue
        key = (resource.metadata.namespace, kind, resource.metadata.name)
        latest.pop(key, None)  # re-applying updates in place but keeps creation order fair
        latest[key] = resource
    objectives = [r for r in latest.values() if isinstance(r, InferenceObjective)]
    rewrites = [r for r in latest.values() if isinstance(r, InferenceModelRewrite)]
    return Objectives(ObjectiveStore(objectives), RewriteStore(rewrites))


def load_objectives(
    path: str | Path, *, pool_name: str | None = None, pool_namespace: str | None = None
) -> Objectives:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot read the file: {exc.strerror or exc}") from None
    return parse_objectives(text, str(path), pool_name=pool_name, pool_namespace=pool_namespace)


class ObjectivesFile:
    """A watched objectives file: loaded at construction (``ConfigError`` if bad), then
    reloaded when its stat changes; a bad reload keeps the last good state."""

    def __init__(
        self, path: str | Path, pool_name: str | None, *, pool_namespace: str | None = None
    ) -> None:
        self.path = Path(path)
        self.pool_name = pool_name
        self.pool_namespace = pool_namespace
        self.last_error: ConfigError | None = None
        self.reloads = 0
        self._stamp = self._stat()
        self._state = load_objectives(self.path, pool_name=pool_name, pool_namespace=pool_namespace)

    @property
    def objectives(self) -> ObjectiveStore:
        return self._state.objectives

    @property
    def rewrites(self) -> RewriteStore:
        return self._state.rewrites

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def reload_if_changed(self) -> bool:
        """Reload when the file changed; True when new state was installed. Blocking (file
        read and YAML parse): call it from a thread when on the event loop."""
        stamp = self._stat()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        if stamp is None:
            log.error("objectives file %s is gone; keeping the last good state", self.path)
            return False
        try:
            state = load_objectives(
                self.path, pool_name=self.pool_name, pool_namespace=self.pool_namespace
            )
        except ConfigError as exc:
            self.last_error = exc
            log.error("objectives reload failed, keeping the last good state: %s", exc)
            return False
        self._state = state  # one reference swap: readers see old or new, never a mix
        self.last_error = None
        self.reloads += 1
        log.info(
            "objectives reloaded from %s: %d objectives, %d rewrite rules",
            self.path,
            len(state.objectives),
            len(state.rewrites),
        )
        return True

    async def watch(self, interval: float = 1.0) -> None:
        """Poll for changes every ``interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            try:
                await asyncio.to_thread(self.reload_if_changed)
            except Exception:  # never let the watcher die
                log.exception("objectives watcher error")
