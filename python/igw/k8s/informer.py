"""List-then-watch one collection forever, as client-go's reflector does, in one asyncio task.

The cycle: LIST (the full state, handed over with ``replace``), then WATCH from the list's
``resourceVersion`` (each change handed over with ``event``), following bookmarks. When the
watch stream ends (the server's ``timeoutSeconds``) or the connection drops, the watch
resumes from the last version seen, so nothing is missed and nothing is re-listed. When the
version has expired (410 Gone) the cycle starts again with a LIST, whose ``replace`` makes
the consumer's view exact again (it must drop what the list no longer has).

Failures (API server unreachable, RBAC forbidden, a CRD not installed) never end the task:
each is logged with the collection, the attempt number and the next delay, and retried with
exponential back-off and jitter (capped). A collection that is not served (404) can have
fallbacks, tried in turn (InferenceObjective: ``llm-d.ai`` first, then the legacy group).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Sequence
from typing import Any, Protocol

import aiohttp

from igw.k8s.client import ApiError, Gone, KubeClient, NotFound, Resource

log = logging.getLogger("igw.k8s")

_TRANSIENT = (ApiError, aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError)


class Handler(Protocol):
    """What a reflector feeds: the full state after each list, then each change."""

    def replace(self, items: list[dict[str, Any]]) -> None: ...

    def event(self, kind: str, obj: dict[str, Any]) -> None: ...


class Backoff:
    """Exponential delays with +-``jitter`` spread, capped at ``maximum``; ``reset`` on success."""

    def __init__(
        self,
        initial: float = 0.5,
        maximum: float = 30.0,
        factor: float = 2.0,
        jitter: float = 0.2,
        rng: random.Random | None = None,
    ) -> None:
        self.initial, self.maximum, self.factor, self.jitter = initial, maximum, factor, jitter
        self.rng = rng or random.Random()
        self.attempt = 0

    def next(self) -> float:
        base = min(self.maximum, self.initial * self.factor**self.attempt)
        self.attempt += 1
        return base * (1 + self.jitter * (2 * self.rng.random() - 1))

    def reset(self) -> None:
        self.attempt = 0


def resource_version(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata")
    return str(meta.get("resourceVersion") or "") if isinstance(meta, dict) else ""


class Reflector:
    """Keeps one handler in step with one namespaced collection (see the module docstring)."""

    def __init__(
        self,
        client: KubeClient,
        resources: Resource | Sequence[Resource],
        namespace: str,
        handler: Handler,
        *,
        label_selector: str = "",
        field_selector: str = "",
        watch_timeout: int = 300,
        backoff: Backoff | None = None,
        name: str = "",
    ) -> None:
        self.client = client
        self.resources = [resources] if isinstance(resources, Resource) else list(resources)
        if not self.resources:
            raise ValueError("Reflector needs at least one resource")
        self.namespace = namespace
        self.handler = handler
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.watch_timeout = watch_timeout
        self.backoff = backoff or Backoff()
        self.name = name or str(self.resources[0])
        self._index = 0
        self._missing_reported = False
        self._rng = random.Random()
        self.synced = False  # a list has been delivered
        self.version = ""  # the last resourceVersion seen (list, event or bookmark)
        self.lists = 0
        self.watches = 0
        self.errors = 0
        self.last_error = ""
        self._task: asyncio.Task[None] | None = None

    @property
    def resource(self) -> Resource:
        return self.resources[self._index]

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self.run(), name=f"igw-k8s {self.name}"
            )

    def cancel(self) -> asyncio.Task[None] | None:
        """Stop delivering at once (nothing reaches the handler after this returns); the
        returned task still has to be awaited to finish unwinding."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
        return task

    async def stop(self) -> None:
        task = self.cancel()
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def run(self) -> None:
        while True:
            version = await self._list()
            if version is None:
                continue
            await self._watch_until_gone(version)

    def _where(self) -> str:
        selector = ",".join(s for s in (self.label_selector, self.field_selector) if s)
        return f"{self.resource} in namespace {self.namespace}" + (
            f" ({selector})" if selector else ""
        )

    async def _fail(
        self, verb: str, error: BaseException, *, level: int = logging.WARNING, reason: str = ""
    ) -> None:
        """Count, log at ``level`` and sleep the back-off delay."""
        self.errors += 1
        if not reason:
            reason = error.detail if isinstance(error, ApiError) else str(error)
            reason = reason or type(error).__name__
        self.last_error = f"{verb} {self._where()}: {reason}"
        delay = self.backoff.next()
        hint = ""
        if isinstance(error, ApiError) and error.status in (401, 403):
            hint = " (check the ServiceAccount's Role/RoleBinding)"
        log.log(
            level,
            "kubernetes: cannot %s %s: %s%s; retry %d in %.1fs",
            verb, self._where(), reason, hint, self.backoff.attempt, delay,
        )  # fmt: skip
        await asyncio.sleep(delay)

    async def _list(self) -> str | None:
        """One LIST delivered to the handler; its resourceVersion, or None after a failure."""
        try:
            items, version = await self.client.list(
                self.resource,
                self.namespace,
                label_selector=self.label_selector,
                field_selector=self.field_selector,
            )
        except NotFound as error:
            if len(self.resources) > 1:
                old = self.resource
                self._index = (self._index + 1) % len(self.resources)
                log.log(
                    logging.DEBUG if self._missing_reported else logging.INFO,
                    "kubernetes: %s is not served (CRD not installed?); trying %s",
                    old,
                    self.resource,
                )
                if self._index != 0:
                    return None  # try the fallback at once
            # a CRD that is not installed stays so for a while: say it once, then quietly retry
            quiet = self._missing_reported
            await self._fail("list", error, level=logging.DEBUG if quiet else logging.WARNING)
            self._missing_reported = True
            return None
        except _TRANSIENT as error:
            await self._fail("list", error)
            return None
        self.lists += 1
        self._missing_reported = False
        self.version = version
        self._deliver(self.handler.replace, items)
        if not self.synced:
            log.info("kubernetes: listed %d from %s", len(items), self._where())
        self.synced = True
        self.backoff.reset()
        return version

    def _deliver(self, method: Any, *args: Any) -> None:
        try:
            method(*args)
        except Exception:  # a consumer bug must not stop the watch
            log.exception(
                "kubernetes: handling %s from %s failed", args[0] if args else "", self.name
            )

    async def _watch_until_gone(self, version: str) -> None:
        """Watch from ``version``, resuming after ends and drops, until the version expires."""
        while True:
            started, events = time.monotonic(), 0
            try:
                self.watches += 1
                async for kind, obj in self.client.watch(
                    self.resource,
                    self.namespace,
                    version,
                    label_selector=self.label_selector,
                    field_selector=self.field_selector,
                    # spread re-watches over [timeout, 2*timeout) as client-go does, so many
                    # pickers restarted together do not re-watch in lockstep
                    timeout_seconds=int(self.watch_timeout * (1 + self._rng.random())),
                ):
                    events += 1
                    version = resource_version(obj) or version
                    self.version = version
                    if kind in ("ADDED", "MODIFIED", "DELETED"):
                        self._deliver(self.handler.event, kind, obj)
                    self.backoff.reset()
            except Gone as error:
                log.info("kubernetes: %s: %s; relisting", self._where(), error.reason or "Gone")
                return
            except NotFound as error:
                await self._fail("watch", error)
                return
            except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError) as error:
                # load balancers and API server restarts cut long watches: routine once
                first = self.backoff.attempt == 0
                await self._fail(
                    "watch",
                    error,
                    level=logging.INFO if first else logging.WARNING,
                    reason=f"connection dropped mid-stream, resuming from version {version}",
                )
                continue
            except _TRANSIENT as error:
                await self._fail("watch", error)
                continue
            if events == 0 and time.monotonic() - started < 1.0:
                # a stream that ends at once with nothing in it: do not spin
                await asyncio.sleep(self.backoff.next())
