"""A small asyncio client for the two Kubernetes API verbs igw needs: list and watch.

Why not the ``kubernetes`` package: it is synchronous (every call would need a thread), large,
and igw reads only a handful of namespaced collections. List and watch over aiohttp keep the
event loop free and make the failure modes explicit:

* ``list`` pages with ``limit``/``continue`` and returns the items and the collection's
  ``resourceVersion``;
* ``watch`` streams newline-delimited JSON events from a ``resourceVersion`` with bookmarks;
  an expired version (HTTP 410, or an ``ERROR`` event whose Status has code 410) raises
  ``Gone`` so the caller relists;
* any other answer than 200 raises ``ApiError`` with the HTTP status, the Status reason and the
  API server's own message (e.g. RBAC's "pods is forbidden: User ... cannot list ...").

Items of a list carry no ``apiVersion``/``kind`` for built-in types; both are filled in here so
callers see the same shape from list and watch.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from igw.k8s.config import ClusterConfig

MAX_EVENT_BYTES = 16 << 20  # one watch event (a pod with big managedFields is ~20 KB)


@dataclasses.dataclass(frozen=True)
class Resource:
    """A namespaced API collection (group "" is the core API)."""

    group: str
    version: str
    plural: str
    kind: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str) -> str:
        prefix = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        return f"{prefix}/namespaces/{namespace}/{self.plural}"

    def __str__(self) -> str:
        return f"{self.plural}.{self.group or 'core'}/{self.version}"


class ApiError(Exception):
    """A non-200 answer (or an unusable one) from the API server."""

    def __init__(self, status: int, reason: str, message: str, *, resource: str = "") -> None:
        self.status = status
        self.reason = reason
        self.message = message
        self.resource = resource
        what = f"{resource}: " if resource else ""
        super().__init__(f"{what}{self.detail}")

    @property
    def detail(self) -> str:
        """The answer without the collection's name (for messages that already name it)."""
        return f"HTTP {self.status} {self.reason}: {self.message}".rstrip(": ")


class Gone(ApiError):
    """The resourceVersion is too old (HTTP 410 / Status code 410): relist."""


class NotFound(ApiError):
    """The collection does not exist (the CRD is not installed, or a wrong group/version)."""


class Conflict(ApiError):
    """HTTP 409: the object exists already, or changed since it was read."""


def _error(status: int, body: Any, resource: str) -> ApiError:
    reason, message = "", ""
    if isinstance(body, dict):
        reason = str(body.get("reason") or "")
        message = str(body.get("message") or "")
        status = int(body.get("code") or status)
    elif isinstance(body, str):
        message = body.strip()[:300]
    kind = {410: Gone, 404: NotFound, 409: Conflict}.get(status, ApiError)
    return kind(status, reason or _REASONS.get(status, ""), message, resource=resource)


_REASONS = {
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    409: "Conflict",
    410: "Expired",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
}


class KubeClient:
    """List and watch namespaced collections of one API server."""

    def __init__(
        self,
        config: ClusterConfig,
        *,
        request_timeout: float = 30.0,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.config = config
        self.request_timeout = request_timeout
        self._session = session
        self._own_session = session is None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(ssl=self.config.ssl if self.config.ssl else False)
            self._session = aiohttp.ClientSession(
                connector=connector,
                headers={"Accept": "application/json", "User-Agent": "igw-epp"},
            )
            self._own_session = True
        return self._session

    def _url(self, resource: Resource, namespace: str) -> str:
        # the server URL may carry a path prefix (API proxies such as Rancher's)
        return self.config.server.rstrip("/") + resource.path(namespace)

    async def _headers(self) -> dict[str, str]:
        if self.config.token_refresh_due():
            await asyncio.to_thread(self.config.refresh_token)
        return self.config.auth_headers()

    async def close(self) -> None:
        if self._session is not None and self._own_session and not self._session.closed:
            await self._session.close()

    async def __aenter__(self) -> KubeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def list(
        self,
        resource: Resource,
        namespace: str,
        *,
        label_selector: str = "",
        field_selector: str = "",
        limit: int = 500,
    ) -> tuple[list[dict[str, Any]], str]:
        """All items (following ``continue``) and the list's resourceVersion."""
        items: list[dict[str, Any]] = []
        token = ""
        while True:
            params = {"limit": str(limit)}
            if label_selector:
                params["labelSelector"] = label_selector
            if field_selector:
                params["fieldSelector"] = field_selector
            if token:
                params["continue"] = token
            body = await self._get_json(resource, namespace, params)
            for item in body.get("items") or []:
                if isinstance(item, dict):
                    item.setdefault("apiVersion", resource.api_version)
                    item.setdefault("kind", resource.kind)
                    items.append(item)
            meta = body.get("metadata") or {}
            token = meta.get("continue") or ""
            if not token:
                return items, str(meta.get("resourceVersion") or "")

    async def _get_json(
        self, resource: Resource, namespace: str, params: dict[str, str]
    ) -> dict[str, Any]:
        return await self._request("GET", resource, self._url(resource, namespace), params=params)

    async def _request(
        self,
        method: str,
        resource: Resource,
        url: str,
        *,
        params: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        timeout = aiohttp.ClientTimeout(total=self.request_timeout)
        async with self._client().request(
            method, url, params=params, json=body, headers=await self._headers(), timeout=timeout
        ) as response:
            answer = await _read_body(response)
            if response.status not in (200, 201):
                raise _error(response.status, answer, str(resource))
            if not isinstance(answer, dict):
                raise ApiError(
                    response.status, "BadResponse", "not a JSON object", resource=str(resource)
                )
            return answer

    # -- single objects (the leader-election Lease) -------------------------------------
    async def get(self, resource: Resource, namespace: str, name: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        try:
            return await self._request("GET", resource, f"{self._url(resource, namespace)}/{name}")
        except NotFound:
            return None

    async def create(
        self, resource: Resource, namespace: str, obj: dict[str, Any]
    ) -> dict[str, Any]:
        """POST a new object; ``Conflict`` when it already exists."""
        return await self._request("POST", resource, self._url(resource, namespace), body=obj)

    async def replace(
        self, resource: Resource, namespace: str, obj: dict[str, Any]
    ) -> dict[str, Any]:
        """PUT ``obj`` (with its ``metadata.resourceVersion``); ``Conflict`` when someone else
        changed it first (optimistic concurrency)."""
        url = f"{self._url(resource, namespace)}/{obj['metadata']['name']}"
        return await self._request("PUT", resource, url, body=obj)

    async def watch(
        self,
        resource: Resource,
        namespace: str,
        resource_version: str,
        *,
        label_selector: str = "",
        field_selector: str = "",
        timeout_seconds: int = 300,
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """Yield ``(type, object)`` events after ``resource_version`` until the server ends
        the stream (``timeoutSeconds``); ``BOOKMARK`` events are yielded too (their object
        carries only ``metadata.resourceVersion``). Raises ``Gone`` on an expired version."""
        params = {
            "watch": "true",
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout_seconds),
        }
        if resource_version:
            params["resourceVersion"] = resource_version
        if label_selector:
            params["labelSelector"] = label_selector
        if field_selector:
            params["fieldSelector"] = field_selector
        # no total timeout (the stream is long-lived); a silent connection is cut by
        # sock_read after the server's own timeout plus a margin
        timeout = aiohttp.ClientTimeout(
            total=None, connect=self.request_timeout, sock_read=timeout_seconds + 30
        )
        async with self._client().get(
            self._url(resource, namespace),
            params=params,
            headers=await self._headers(),
            timeout=timeout,
        ) as response:
            if response.status != 200:
                raise _error(response.status, await _read_body(response), str(resource))
            buffer = b""
            async for chunk in response.content.iter_any():
                buffer += chunk
                if len(buffer) > MAX_EVENT_BYTES and b"\n" not in buffer:
                    raise ApiError(
                        200, "BadResponse", "watch event too large", resource=str(resource)
                    )
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        yield _event(line, resource)
            if buffer.strip():
                yield _event(buffer, resource)


def _event(line: bytes, resource: Resource) -> tuple[str, dict[str, Any]]:
    try:
        event = json.loads(line)
    except ValueError:
        raise ApiError(
            200, "BadResponse", "watch event is not JSON", resource=str(resource)
        ) from None
    if not isinstance(event, dict) or not isinstance(event.get("object"), dict):
        raise ApiError(200, "BadResponse", "watch event without an object", resource=str(resource))
    kind, obj = str(event.get("type") or ""), event["object"]
    if kind == "ERROR":
        raise _error(int(obj.get("code") or 500), obj, str(resource))
    obj.setdefault("apiVersion", resource.api_version)
    obj.setdefault("kind", resource.kind)
    return kind, obj


async def _read_body(response: aiohttp.ClientResponse) -> Any:
    text = await response.text(errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        return text
