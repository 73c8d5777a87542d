"""InferenceObjective / InferenceModelRewrite objects from the API server -> igw's stores.

The same validation as the ``--objectives-file`` path (``igw.objectives``' pydantic models) is
applied to each object; only objects whose ``spec.poolRef.name`` is this pool count (the
reference watches only those). An object that fails validation is skipped and logged once per
``resourceVersion`` with its name and the field, so one bad object never hides the others.

The stores are rebuilt from the cached objects after every change and swapped in with one
reference assignment: readers (the request path) see the old or the new state, never a mix.
A few hundred objects rebuild in well under a millisecond, so incremental upkeep is not worth
its complexity here.
"""

from __future__ import annotations

import logging
import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from igw.config import validation_to_config_error
from igw.k8s.pods import Key, key_of
from igw.objectives import (
    InferenceModelRewrite,
    InferenceObjective,
    ObjectiveStore,
    RewriteStore,
)

log = logging.getLogger("igw.k8s")


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models inside a field's annotation (``X``, ``list[X]``, ``X | None``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def known_fields(value: Any, model: type[BaseModel]) -> Any:
    """``value`` with the keys ``model`` (and its nested models) does not declare removed;
    models that accept extra keys (metadata, status) are kept whole."""
    if not isinstance(value, dict) or model.model_config.get("extra") != "forbid":
        return value
    out = {}
    for key, item in value.items():
        field = model.model_fields.get(key)
        if field is None:
            continue
        nested = _models_in(field.annotation)
        if nested and isinstance(item, list):
            out[key] = [known_fields(i, nested[0]) for i in item]
        elif nested:
            out[key] = known_fields(item, nested[0])
        else:
            out[key] = item
    return out


class _Collection:
    """The raw objects of one kind, kept by (namespace, name); the reflector's Handler."""

    def __init__(self, owner: ObjectivesView) -> None:
        self.owner = owner
        self.items: dict[Key, dict[str, Any]] = {}

    def replace(self, items: list[dict[str, Any]]) -> None:
        self.items = {key_of(item): item for item in items}
        self.owner.rebuild()

    def event(self, kind: str, obj: dict[str, Any]) -> None:
        if kind == "DELETED":
            self.items.pop(key_of(obj), None)
        else:
            self.items[key_of(obj)] = obj
        self.owner.rebuild()


class ObjectivesView:
    """The live ObjectiveStore and RewriteStore of one pool, fed by two reflectors."""

    def __init__(self, pool_name: str) -> None:
        self.pool_name = pool_name
        self.objective_items = _Collection(self)
        self.rewrite_items = _Collection(self)
        self.objectives = ObjectiveStore()
        self.rewrites = RewriteStore()
        self.rebuilds = 0
        self._reported: set[tuple[Key, str, str]] = set()

    def _parse(self, model: type, raw: dict[str, Any]) -> Any:
        # the API server has validated the object against its CRD already; fields a newer
        # CRD version adds, which igw's strict models do not know, are dropped, not refused
        doc = known_fields(raw, model)
        try:
            return model.model_validate(doc)
        except ValidationError as exc:
            key = key_of(raw)
            version = str((raw.get("metadata") or {}).get("resourceVersion") or "")
            if (key, model.__name__, version) not in self._reported:
                self._reported.add((key, model.__name__, version))
                error = validation_to_config_error(exc, f"{model.__name__} {key[0]}/{key[1]}", ())
                log.error("kubernetes: ignoring invalid %s", error)
            return None

    def _ours(self, resource: Any) -> bool:
        return resource is not None and resource.spec.poolRef.name == self.pool_name

    def rebuild(self) -> None:
        objectives = [
            self._parse(InferenceObjective, raw) for raw in self.objective_items.items.values()
        ]
        rewrites = [
            self._parse(InferenceModelRewrite, raw) for raw in self.rewrite_items.items.values()
        ]
        ours = [o for o in objectives if self._ours(o)]
        # precedence ties go to the oldest object, then by name: a stable order for the store
        mine = sorted(
            (r for r in rewrites if self._ours(r)),
            key=lambda r: (
                r.metadata.creationTimestamp is None,
                r.metadata.creationTimestamp.timestamp() if r.metadata.creationTimestamp else 0,
                r.metadata.name,
            ),
        )
        self.objectives = ObjectiveStore(ours)
        self.rewrites = RewriteStore(mine)
        self.rebuilds += 1
