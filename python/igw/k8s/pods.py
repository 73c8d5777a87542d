"""Pods -> pool endpoints: which pods count, and the pool membership that follows them.

A pod is an endpoint source when it is Ready (its ``Ready`` condition is ``True``), has a
``status.podIP`` and is not terminating (no ``metadata.deletionTimestamp``: the reference
drops a pod as soon as its deletion starts, so new requests stop going to it while it
drains). Each target port gives one endpoint ``podIP:port``; the pod's labels are copied to the
endpoint (label filters and the engine label ``llm-d.ai/engine-type`` read them).

``PodMembership`` applies pod events to a ``Pool`` incrementally (one pod's endpoints at a
time) and a full list wholesale, and keeps the last seen pods so a change of target ports
re-derives every endpoint without asking the API server again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from igw.datalayer.engines import DEFAULT_ENGINE, ENGINE_LABEL
from igw.k8s.pool import PoolSpec

if TYPE_CHECKING:
    from igw.datastore import Pool

log = logging.getLogger("igw.k8s")

Key = tuple[str, str]  # (namespace, name)


def key_of(obj: Mapping[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def is_ready(pod: Mapping[str, Any]) -> bool:
    """Ready condition True, an IP, and not being deleted."""
    meta = pod.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return False
    status = pod.get("status") or {}
    if not status.get("podIP"):
        return False
    for condition in status.get("conditions") or []:
        if isinstance(condition, dict) and condition.get("type") == "Ready":
            return condition.get("status") == "True"
    return False


def endpoint_address(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def endpoints_of(pod: Mapping[str, Any], spec: PoolSpec) -> dict[str, dict[str, Any]]:
    """address -> Endpoint attributes for a pod (empty when it does not count)."""
    labels = (pod.get("metadata") or {}).get("labels") or {}
    if not isinstance(labels, dict) or not spec.matches(labels) or not is_ready(pod):
        return {}
    namespace, name = key_of(pod)
    ip = str(pod["status"]["podIP"])
    attributes = {
        "name": name,
        "namespace": namespace,
        "labels": {str(k): str(v) for k, v in labels.items()},
        "engine": str(labels.get(ENGINE_LABEL) or DEFAULT_ENGINE),
    }
    return {endpoint_address(ip, port): attributes for port in spec.ports}


class PodMembership:
    """Keeps a Pool's endpoints equal to the Ready pods' ``podIP:targetPort`` pairs."""

    def __init__(self, pool: Pool, spec: PoolSpec) -> None:
        self.pool = pool
        self.spec = spec
        self.pods: dict[Key, dict[str, Any]] = {}  # the last state of every pod seen
        self._owned: dict[Key, set[str]] = {}  # pod -> the addresses it contributes

    # -- the reflector's Handler -------------------------------------------------------
    def replace(self, items: list[dict[str, Any]]) -> None:
        """A full pod list: the pool becomes exactly what these pods give."""
        self.pods = {key_of(pod): pod for pod in items}
        self._rebuild()
        self.pool.synced = True

    def event(self, kind: str, obj: dict[str, Any]) -> None:
        key = key_of(obj)
        if kind == "DELETED":
            self.pods.pop(key, None)
            self._apply(key, {})
        else:
            self.pods[key] = obj
            self._apply(key, endpoints_of(obj, self.spec))

    # -- changes of the pool's own spec --------------------------------------------------
    def set_spec(self, spec: PoolSpec) -> None:
        """Re-derive every endpoint under a new selector / new target ports."""
        if spec != self.spec:
            self.spec = spec
            self._rebuild()

    def clear(self) -> None:
        """The pool is gone: no endpoints, not synced (readiness turns NOT_SERVING)."""
        self.pods = {}
        self._rebuild()
        self.pool.synced = False

    # -- internals -------------------------------------------------------------------
    def _rebuild(self) -> None:
        wanted: dict[Key, dict[str, dict[str, Any]]] = {
            key: endpoints_of(pod, self.spec) for key, pod in self.pods.items()
        }
        for key in list(self._owned):
            if key not in wanted:
                self._apply(key, {})
        for key, endpoints in wanted.items():
            self._apply(key, endpoints)

    def _apply(self, key: Key, endpoints: dict[str, dict[str, Any]]) -> None:
        before = self._owned.get(key, set())
        after = set(endpoints)
        for address in before - after:
            if not self._claimed_elsewhere(address, key):
                self.pool.remove(address)
                log.debug("kubernetes: endpoint %s removed (pod %s/%s)", address, *key)
        for address, attributes in endpoints.items():
            known = self.pool.by_address(address)
            if known is None:
                log.debug("kubernetes: endpoint %s added (pod %s/%s)", address, *key)
            self.pool.upsert(address, **attributes)
        if after:
            self._owned[key] = after
        else:
            self._owned.pop(key, None)

    def _claimed_elsewhere(self, address: str, key: Key) -> bool:
        """Another pod took over the address (an IP reused after a restart): keep it."""
        return any(address in owned for other, owned in self._owned.items() if other != key)

    def addresses(self) -> Iterable[str]:
        return {address for owned in self._owned.values() for address in owned}
