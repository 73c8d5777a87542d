"""Kubernetes discovery for ``igw epp``: the InferencePool, its pods, its objectives.

Two modes, as in the reference picker:

* **pool** (``--pool-name``): watch the InferencePool named ``pool_name`` (one object, by field
  selector); its ``selector`` and ``targetPorts`` decide which pods are endpoints. When the
  selector changes, the pod watch restarts with the new selector (pods that no longer match
  leave at once; new ones arrive with the new list); when only the ports change, endpoints are
  re-derived from the pods already known. When the pool is deleted the endpoints are cleared
  and the Pool is not synced (readiness NOT_SERVING) until it is created again.
  InferenceObjectives and InferenceModelRewrites whose ``poolRef`` names the pool feed
  ``objectives`` / ``rewrites`` (``llm-d.ai/v1alpha2``, falling back to the legacy
  ``inference.networking.x-k8s.io/v1alpha2`` when that group is not served).
* **standalone** (``--endpoint-selector`` + ``--endpoint-target-ports``): no InferencePool and
  no objectives (the reference's Standalone-NoCRD mode: priorities are 0); pods only.

``Pool.synced`` becomes True after the first full pod list. Nothing here blocks start-up:
``start`` launches the watches and returns; readiness reports when the view is complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from igw.k8s.client import KubeClient, Resource
from igw.k8s.informer import Backoff, Reflector, resource_version
from igw.k8s.objectives import ObjectivesView
from igw.k8s.pods import PodMembership
from igw.k8s.pool import LEGACY_GROUP, V1_GROUP, PoolSpec, PoolSpecError, parse_pool

if TYPE_CHECKING:
    from igw.datastore import Pool
    from igw.objectives import ObjectiveStore, RewriteStore

log = logging.getLogger("igw.k8s")

PODS = Resource("", "v1", "pods", "Pod")
INFERENCE_POOLS = {
    V1_GROUP: Resource(V1_GROUP, "v1", "inferencepools", "InferencePool"),
    LEGACY_GROUP: Resource(LEGACY_GROUP, "v1alpha2", "inferencepools", "InferencePool"),
}
OBJECTIVES = (
    Resource("llm-d.ai", "v1alpha2", "inferenceobjectives", "InferenceObjective"),
    Resource(LEGACY_GROUP, "v1alpha2", "inferenceobjectives", "InferenceObjective"),
)
REWRITES = (
    Resource("llm-d.ai", "v1alpha2", "inferencemodelrewrites", "InferenceModelRewrite"),
    Resource(LEGACY_GROUP, "v1alpha2", "inferencemodelrewrites", "InferenceModelRewrite"),
)
ALL_RESOURCES = (PODS, *INFERENCE_POOLS.values(), *OBJECTIVES, *REWRITES)


class KubernetesDiscovery:
    """Keeps a ``Pool`` (and the objective stores) in step with the cluster."""

    def __init__(
        self,
        pool: Pool,
        client: KubeClient,
        *,
        namespace: str,
        pool_name: str = "",
        pool_group: str = V1_GROUP,
        standalone: PoolSpec | None = None,
        watch_objectives: bool = True,
        backoff: Callable[[], Backoff] = Backoff,
        watch_timeout: int = 300,
    ) -> None:
        if bool(pool_name) == (standalone is not None):
            raise ValueError("KubernetesDiscovery needs exactly one of pool_name / standalone")
        if pool_group not in INFERENCE_POOLS:
            raise ValueError(
                f"--pool-group: expected one of {sorted(INFERENCE_POOLS)}, got {pool_group!r}"
            )
        self.pool = pool
        self.client = client
        self.namespace = namespace
        self.pool_name = pool_name
        self.pool_group = pool_group
        self.standalone = standalone
        self._backoff = backoff
        self._watch_timeout = watch_timeout
        self.view = ObjectivesView(pool_name) if pool_name and watch_objectives else None
        self.membership: PodMembership | None = None
        self.pods: Reflector | None = None
        self._pool_watch: Reflector | None = None
        self._watches: list[Reflector] = []
        self._retired: set[asyncio.Task[None]] = set()
        self._bad_versions: set[str] = set()
        self.spec_changes = 0

    # -- lookups used by the request path (same shape as ObjectivesFile) ----------------
    @property
    def objectives(self) -> ObjectiveStore | None:
        return self.view.objectives if self.view is not None else None

    @property
    def rewrites(self) -> RewriteStore | None:
        return self.view.rewrites if self.view is not None else None

    # -- lifecycle -----------------------------------------------------------------------
    def _reflector(self, resources: Any, handler: Any, **options: Any) -> Reflector:
        return Reflector(
            self.client,
            resources,
            self.namespace,
            handler,
            backoff=self._backoff(),
            watch_timeout=self._watch_timeout,
            **options,
        )

    async def start(self) -> None:
        if self.standalone is not None:
            self._use_spec(self.standalone)
        else:
            self._pool_watch = self._reflector(
                INFERENCE_POOLS[self.pool_group],
                _PoolHandler(self),
                field_selector=f"metadata.name={self.pool_name}",
                name=f"InferencePool {self.namespace}/{self.pool_name}",
            )
            self._watches.append(self._pool_watch)
        if self.view is not None:
            self._watches.append(
                self._reflector(OBJECTIVES, self.view.objective_items, name="InferenceObjectives")
            )
            self._watches.append(
                self._reflector(REWRITES, self.view.rewrite_items, name="InferenceModelRewrites")
            )
        for watch in self._watches:
            watch.start()

    async def stop(self) -> None:
        watches = [*self._watches, *([self.pods] if self.pods else [])]
        for watch in watches:
            await watch.stop()
        for task in list(self._retired):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.client.close()

    def status(self) -> dict[str, Any]:
        """What each watch has done (for logs and tests)."""
        watches = [*self._watches, *([self.pods] if self.pods else [])]
        return {
            w.name: {
                "synced": w.synced,
                "lists": w.lists,
                "errors": w.errors,
                "last_error": w.last_error,
            }
            for w in watches
        }

    # -- pool spec -> pod watch ----------------------------------------------------------
    def _use_spec(self, spec: PoolSpec) -> None:
        if self.membership is None:
            self.membership = PodMembership(self.pool, spec)
            self._start_pods(spec)
            return
        old = self.membership.spec
        if spec == old:
            return
        self.spec_changes += 1
        log.info(
            "kubernetes: pool %s/%s now selects %s on ports %s (was %s on %s)",
            self.namespace, self.pool_name or "-", spec.label_selector, list(spec.ports),
            old.label_selector, list(old.ports),
        )  # fmt: skip
        self.membership.set_spec(spec)
        if spec.selector != old.selector:
            self._start_pods(spec)

    def _start_pods(self, spec: PoolSpec) -> None:
        self._retire_pods()
        assert self.membership is not None
        self.pods = self._reflector(
            PODS,
            self.membership,
            label_selector=spec.label_selector,
            name=f"pods {spec.label_selector}",
        )
        self.pods.start()

    def _retire_pods(self) -> None:
        """Cancel the current pod watch now (a list in flight must not land after a new
        selector or a deleted pool); its task finishes unwinding in the background."""
        if self.pods is not None:
            task = self.pods.cancel()
            self.pods = None
            if task is not None:
                self._retired.add(task)
                task.add_done_callback(self._retired.discard)

    def pool_seen(self, obj: dict[str, Any]) -> None:
        try:
            spec = parse_pool(obj)
        except PoolSpecError as error:
            version = resource_version(obj)
            if version not in self._bad_versions:
                self._bad_versions.add(version)
                log.error("kubernetes: %s; keeping the previous membership", error)
            return
        if self.membership is None:
            log.info(
                "kubernetes: InferencePool %s/%s selects %s on ports %s",
                self.namespace, self.pool_name, spec.label_selector, list(spec.ports),
            )  # fmt: skip
        self._use_spec(spec)

    def pool_missing(self) -> None:
        log.warning(
            "kubernetes: InferencePool %s/%s (%s) does not exist; no endpoints, not ready "
            "until it is created",
            self.namespace, self.pool_name, INFERENCE_POOLS[self.pool_group],
        )  # fmt: skip
        self._retire_pods()
        if self.membership is not None:
            self.membership.clear()
            self.membership = None
        self.pool.synced = False


class _PoolHandler:
    """The InferencePool watch (one object, selected by name)."""

    def __init__(self, owner: KubernetesDiscovery) -> None:
        self.owner = owner

    def replace(self, items: list[dict[str, Any]]) -> None:
        mine = [i for i in items if (i.get("metadata") or {}).get("name") == self.owner.pool_name]
        if mine:
            self.owner.pool_seen(mine[0])
        else:
            self.owner.pool_missing()

    def event(self, kind: str, obj: dict[str, Any]) -> None:
        if (obj.get("metadata") or {}).get("name") != self.owner.pool_name:
            return
        if kind == "DELETED":
            self.owner.pool_missing()
        else:
            self.owner.pool_seen(obj)
