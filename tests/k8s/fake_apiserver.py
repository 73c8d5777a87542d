"""A small fake of the Kubernetes API server for list and watch (aiohttp on 127.0.0.1).

It keeps objects per collection with one global resourceVersion counter and an event
history, like etcd behind the real server:

* ``GET .../namespaces/{ns}/{plural}`` lists (``labelSelector`` equality terms,
  ``fieldSelector=metadata.name=X``, ``limit``/``continue`` paging), items without
  apiVersion/kind for core types as the real server sends them;
* ``?watch=true&resourceVersion=N`` streams chunked newline-delimited events after N, then
  waits for new ones until ``timeoutSeconds``; a selector-filtered watch turns an object
  leaving the selector into DELETED and one entering it into ADDED, as the real watch cache
  does; ``allowWatchBookmarks`` gets a BOOKMARK on ``bookmark()``;
* ``compact()`` makes every version so far expire: a watch from an older version gets an
  ``ERROR`` event with a 410 Status (what the real server sends); ``drop_watches()`` cuts
  every open watch connection mid-stream;
* ``forbid(resource)`` answers 403 with RBAC's wording, unknown collections answer 404 (a CRD
  that is not installed), and a wrong bearer token answers 401.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import json
import ssl
from typing import Any

from aiohttp import web

CollectionKey = tuple[str, str, str]  # (group, version, plural)

POD = ("", "v1", "pods")
POOL = ("inference.networking.k8s.io", "v1", "inferencepools")
LEGACY_POOL = ("inference.networking.x-k8s.io", "v1alpha2", "inferencepools")
OBJECTIVE = ("llm-d.ai", "v1alpha2", "inferenceobjectives")
REWRITE = ("llm-d.ai", "v1alpha2", "inferencemodelrewrites")
LEGACY_OBJECTIVE = ("inference.networking.x-k8s.io", "v1alpha2", "inferenceobjectives")
LEGACY_REWRITE = ("inference.networking.x-k8s.io", "v1alpha2", "inferencemodelrewrites")
LEASE = ("coordination.k8s.io", "v1", "leases")
KINDS = {
    POD: "Pod",
    POOL: "InferencePool",
    LEGACY_POOL: "InferencePool",
    OBJECTIVE: "InferenceObjective",
    REWRITE: "InferenceModelRewrite",
    LEGACY_OBJECTIVE: "InferenceObjective",
    LEGACY_REWRITE: "InferenceModelRewrite",
    LEASE: "Lease",
}


def api_version(key: CollectionKey) -> str:
    return f"{key[0]}/{key[1]}" if key[0] else key[1]


def _labels_match(obj: dict[str, Any], selector: str) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for term in filter(None, (t.strip() for t in selector.split(","))):
        key, _, value = term.replace("==", "=").partition("=")
        if labels.get(key) != value:
            return False
    return True


def _fields_match(obj: dict[str, Any], selector: str) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        key, _, value = term.partition("=")
        if key == "metadata.name" and obj["metadata"]["name"] != value:
            return False
        if key == "metadata.namespace" and obj["metadata"]["namespace"] != value:
            return False
    return True


class FakeApiServer:
    def __init__(self, token: str = "test-token", served: tuple[CollectionKey, ...] = ()) -> None:
        self.token = token
        self.served = set(served or KINDS)
        self.version = 100
        self.objects: dict[CollectionKey, dict[tuple[str, str], dict[str, Any]]] = {
            key: {} for key in KINDS
        }
        # (version, collection, namespace, old object or None, new object or None)
        self.history: list[tuple[int, CollectionKey, str, Any, Any]] = []
        self.compacted = 0  # watches from a version <= this get 410
        self.forbidden: set[CollectionKey] = set()
        self.list_delay: dict[CollectionKey, float] = {}  # slow lists, seconds
        self.requests: list[tuple[str, dict[str, str]]] = []  # (path, query)
        self._changed = asyncio.Condition()
        self._watch_requests: dict[int, web.Request] = {}
        self._bookmarks = 0
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.scheme = "http"
        self.prefix = ""

    # -- lifecycle -------------------------------------------------------------------
    async def start(
        self, ssl_context: ssl.SSLContext | None = None, prefix: str = ""
    ) -> FakeApiServer:
        """Listen on a free port; ``prefix`` serves the API under a path (as proxies do)."""
        api = web.Application()
        api.router.add_get("/api/{version}/namespaces/{ns}/{plural}", self._core)
        api.router.add_get("/apis/{group}/{version}/namespaces/{ns}/{plural}", self._grouped)
        collection = "/apis/{group}/{version}/namespaces/{ns}/{plural}"
        api.router.add_post(collection, self._create)
        api.router.add_get(collection + "/{name}", self._get_one)
        api.router.add_put(collection + "/{name}", self._replace)
        app = api
        if prefix:
            app = web.Application()
            app.add_subapp(prefix, api)
        self.prefix = prefix
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=ssl_context)
        self.scheme = "https" if ssl_context is not None else "http"
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        self.drop_watches()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{self.prefix}"

    def kubeconfig(self, path, *, namespace: str = "default") -> str:
        path.write_text(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\n"
            f"clusters:\n- name: fake\n  cluster: {{server: '{self.url}'}}\n"
            f"users:\n- name: me\n  user: {{token: {self.token}}}\n"
            f"contexts:\n- name: fake\n  context: {{cluster: fake, user: me, "
            f"namespace: {namespace}}}\n"
        )
        return str(path)

    # -- changing the world --------------------------------------------------------------
    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _record(self, key: CollectionKey, namespace: str, old: Any, new: Any) -> None:
        self.history.append((self.version, key, namespace, old, new))
        asyncio.get_running_loop().create_task(self._notify())

    def apply(self, key: CollectionKey, obj: dict[str, Any]) -> dict[str, Any]:
        """Create or replace an object (bumps the resourceVersion)."""
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        meta.setdefault("namespace", "default")
        identity = (meta["namespace"], meta["name"])
        old = self.objects[key].get(identity)
        self.version += 1
        meta["resourceVersion"] = str(self.version)
        if old is not None:
            meta["creationTimestamp"] = old["metadata"].get("creationTimestamp")
        else:
            meta.setdefault(
                "creationTimestamp",
                (
                    dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
                    + dt.timedelta(seconds=self.version)
                )
                .isoformat()
                .replace("+00:00", "Z"),
            )
        obj["apiVersion"] = api_version(key)
        obj["kind"] = KINDS[key]
        self.objects[key][identity] = obj
        self._record(key, meta["namespace"], old, obj)
        return obj

    def delete(self, key: CollectionKey, name: str, namespace: str = "default") -> None:
        old = self.objects[key].pop((namespace, name))
        self.version += 1
        tombstone = copy.deepcopy(old)
        tombstone["metadata"]["resourceVersion"] = str(self.version)
        self._record(key, namespace, ("deleted", old), tombstone)

    def compact(self) -> None:
        """Every version up to now expires (as etcd compaction does)."""
        self.compacted = self.version

    def drop_watches(self) -> None:
        """Cut every open watch connection without ending its chunked stream."""
        for request in list(self._watch_requests.values()):
            if request.transport is not None:
                request.transport.abort()
        self._watch_requests.clear()

    def bookmark(self) -> None:
        self._bookmarks += 1
        asyncio.get_running_loop().create_task(self._notify())

    def forbid(self, key: CollectionKey) -> None:
        self.forbidden.add(key)

    def allow(self, key: CollectionKey) -> None:
        self.forbidden.discard(key)

    def lists(self, plural: str) -> int:
        return sum(1 for path, q in self.requests if path.endswith(plural) and "watch" not in q)

    def watches(self, plural: str) -> int:
        return sum(1 for path, q in self.requests if path.endswith(plural) and "watch" in q)

    # -- HTTP ----------------------------------------------------------------------------
    async def _core(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(
            request, ("", request.match_info["version"], request.match_info["plural"])
        )

    async def _grouped(self, request: web.Request) -> web.StreamResponse:
        info = request.match_info
        return await self._serve(request, (info["group"], info["version"], info["plural"]))

    # -- single objects (Leases) ------------------------------------------------------
    def _single(self, request: web.Request) -> tuple[CollectionKey, str, web.Response | None]:
        info = request.match_info
        key = (info["group"], info["version"], info["plural"])
        self.requests.append((request.path, {"method": request.method}))
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return key, info["ns"], self._status(401, "Unauthorized", "Unauthorized")
        if key not in self.served or key not in KINDS:
            return key, info["ns"], self._status(404, "NotFound", "no such collection")
        if key in self.forbidden:
            return key, info["ns"], self._status(403, "Forbidden", f"{key[2]} is forbidden")
        return key, info["ns"], None

    async def _get_one(self, request: web.Request) -> web.Response:
        key, ns, refused = self._single(request)
        if refused is not None:
            return refused
        obj = self.objects[key].get((ns, request.match_info["name"]))
        if obj is None:
            return self._status(
                404, "NotFound", f'{key[2]} "{request.match_info["name"]}" not found'
            )
        return web.json_response(obj)

    async def _create(self, request: web.Request) -> web.Response:
        key, ns, refused = self._single(request)
        if refused is not None:
            return refused
        obj = await request.json()
        obj.setdefault("metadata", {})["namespace"] = ns
        if (ns, obj["metadata"]["name"]) in self.objects[key]:
            return self._status(
                409, "AlreadyExists", f'{key[2]} "{obj["metadata"]["name"]}" already exists'
            )
        return web.json_response(self.apply(key, obj), status=201)

    async def _replace(self, request: web.Request) -> web.Response:
        key, ns, refused = self._single(request)
        if refused is not None:
            return refused
        obj = await request.json()
        current = self.objects[key].get((ns, request.match_info["name"]))
        if current is None:
            return self._status(404, "NotFound", "not found")
        if obj.get("metadata", {}).get("resourceVersion") != current["metadata"]["resourceVersion"]:
            return self._status(409, "Conflict", "the object has been modified; please apply "
                                "your changes to the latest version and try again")  # fmt: skip
        return web.json_response(self.apply(key, obj))

    @staticmethod
    def _status(code: int, reason: str, message: str) -> web.Response:
        body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message,
                "reason": reason, "code": code}  # fmt: skip
        return web.json_response(body, status=code)

    async def _serve(self, request: web.Request, key: CollectionKey) -> web.StreamResponse:
        query = dict(request.query)
        self.requests.append((request.path, query))
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return self._status(401, "Unauthorized", "Unauthorized")
        namespace = request.match_info["ns"]
        if key not in self.served or key not in KINDS:
            return self._status(404, "NotFound", "the server could not find the requested resource")
        if key in self.forbidden:
            group = key[0] or '""'
            return self._status(
                403,
                "Forbidden",
                f'{key[2]} is forbidden: User "system:serviceaccount:{namespace}:igw-epp" '
                f'cannot list resource "{key[2]}" in API group {group} in the namespace '
                f'"{namespace}"',
            )
        if query.get("watch") in ("true", "1"):
            return await self._watch(request, key, namespace, query)
        if key in self.list_delay:
            await asyncio.sleep(self.list_delay[key])  # the state is read after the delay
        return self._list(key, namespace, query)

    def _visible(self, obj: dict[str, Any] | None, query: dict[str, str]) -> bool:
        return (
            obj is not None
            and _labels_match(obj, query.get("labelSelector", ""))
            and _fields_match(obj, query.get("fieldSelector", ""))
        )

    def _list(self, key: CollectionKey, namespace: str, query: dict[str, str]) -> web.Response:
        items = [
            copy.deepcopy(o)
            for (ns, _), o in sorted(self.objects[key].items())
            if ns == namespace and self._visible(o, query)
        ]
        if key == POD:
            for item in items:  # the real server leaves these out of core list items
                item.pop("apiVersion", None)
                item.pop("kind", None)
        start = int(query.get("continue") or 0)
        limit = int(query.get("limit") or 0) or len(items) or 1
        page = items[start : start + limit]
        meta: dict[str, Any] = {"resourceVersion": str(self.version)}
        if start + limit < len(items):
            meta["continue"] = str(start + limit)
        body = {"kind": KINDS[key] + "List", "apiVersion": api_version(key), "metadata": meta,
                "items": page}  # fmt: skip
        return web.json_response(body)

    async def _watch(
        self, request: web.Request, key: CollectionKey, namespace: str, query: dict[str, str]
    ) -> web.StreamResponse:
        since = int(query.get("resourceVersion") or self.version)
        timeout = float(query.get("timeoutSeconds") or 300)
        response = web.StreamResponse()
        response.content_type = "application/json"
        response.enable_chunked_encoding()
        await response.prepare(request)
        if since < self.compacted:
            message = f"too old resource version: {since} ({self.compacted})"
            status = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 410,
                      "reason": "Expired", "message": message}  # fmt: skip
            await response.write(json.dumps({"type": "ERROR", "object": status}).encode() + b"\n")
            await response.write_eof()
            return response
        self._watch_requests[id(request)] = request
        deadline = asyncio.get_running_loop().time() + timeout
        sent_bookmarks = self._bookmarks
        try:
            while True:
                for version, k, ns, old, new in self.history:
                    if version <= since or k != key or ns != namespace:
                        continue
                    since = version
                    event = self._event(old, new, query)
                    if event is not None:
                        await response.write(json.dumps(event).encode() + b"\n")
                if self._bookmarks != sent_bookmarks and query.get("allowWatchBookmarks"):
                    sent_bookmarks = self._bookmarks
                    mark = {"type": "BOOKMARK", "object": {"kind": KINDS[key],
                            "apiVersion": api_version(key),
                            "metadata": {"resourceVersion": str(self.version)}}}  # fmt: skip
                    since = max(since, self.version)
                    await response.write(json.dumps(mark).encode() + b"\n")
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                async with self._changed:
                    try:
                        await asyncio.wait_for(self._changed.wait(), remaining)
                    except TimeoutError:
                        pass
                if request.transport is None or request.transport.is_closing():
                    return response
            await response.write_eof()
        except (ConnectionResetError, RuntimeError):
            pass  # dropped on purpose (or the client went away)
        finally:
            self._watch_requests.pop(id(request), None)
        return response

    def _event(self, old: Any, new: Any, query: dict[str, str]) -> dict[str, Any] | None:
        if isinstance(old, tuple):  # a deletion: ("deleted", last state); new = tombstone
            return {"type": "DELETED", "object": new} if self._visible(new, query) else None
        was, now = self._visible(old, query), self._visible(new, query)
        if now:
            return {"type": "MODIFIED" if was else "ADDED", "object": new}
        if was:
            return {"type": "DELETED", "object": new}
        return None


# ----------------------------------------------------------------------------- objects


def pod(
    name: str,
    ip: str | None,
    labels: dict[str, str],
    *,
    ready: bool = True,
    namespace: str = "default",
    terminating: bool = False,
) -> dict[str, Any]:
    status: dict[str, Any] = {
        "phase": "Running",
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
    }
    if ip:
        status["podIP"] = ip
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": dict(labels)}
    if terminating:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta, "spec": {"containers": [{"name": "vllm"}]}, "status": status}


def inference_pool(
    name: str, labels: dict[str, str], ports: list[int], *, namespace: str = "default"
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "selector": {"matchLabels": dict(labels)},
            "targetPorts": [{"number": p} for p in ports],
            "endpointPickerRef": {"name": f"{name}-epp", "port": {"number": 9002}},
        },
    }


def objective(name: str, pool: str, priority: int | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"poolRef": {"name": pool}}
    if priority is not None:
        spec["priority"] = priority
    return {"metadata": {"name": name, "namespace": "default"}, "spec": spec}


def rewrite(name: str, pool: str, model: str, target: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "poolRef": {"name": pool},
            "rules": [
                {"matches": [{"model": {"value": model}}], "targets": [{"modelRewrite": target}]}
            ],
        },
    }
