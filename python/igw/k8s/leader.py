"""Leader election over a ``coordination.k8s.io/v1`` Lease (``--ha-enable-leader-election``).

Several ``igw epp`` replicas of one pool can run for availability; only the leader reports
ready, so the gateway sends ext_proc traffic to one picker whose in-flight accounting and
prefix index see every request (the reference picker does the same). Followers keep their
watches running, so a new leader is ready as soon as it holds the lease.

The algorithm is client-go's ``leaderelection`` in miniature:

* every ``retry_period`` a replica reads the Lease; if it holds it, it renews ``renewTime``;
  if the holder's record has not changed for ``lease_duration`` (measured on this replica's
  own clock from when it last saw the record change, so clock skew between nodes does not
  matter) it takes the lease over; writes carry the read ``resourceVersion``, so of two
  replicas racing for an expired lease exactly one wins (the other gets 409 Conflict);
* a leader that has not renewed successfully within ``renew_deadline`` stops reporting
  leadership at once (before the lease can expire for the others);
* on shutdown the leader releases the lease (empty holder) so a follower takes over at its
  next retry instead of after a full lease duration.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from igw.k8s.client import ApiError, Conflict, KubeClient, Resource

log = logging.getLogger("igw.k8s")

LEASES = Resource("coordination.k8s.io", "v1", "leases", "Lease")
_ERRORS = (ApiError, aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError)


def _now_text() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_name(pool_name: str) -> str:
    """One lease per pool (Leases are namespaced, like the pool): pickers of different pools
    never compete."""
    return f"igw-epp-{pool_name}"[:253]


class LeaderElector:
    def __init__(
        self,
        client: KubeClient,
        namespace: str,
        name: str,
        identity: str,
        *,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not retry_period < renew_deadline < lease_duration:
            raise ValueError("leader election needs retry_period < renew_deadline < lease_duration")
        self.client = client
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.clock = clock
        self._renewed_at: float | None = None  # our last successful write as holder
        self._observed: tuple[Any, ...] | None = None  # the holder's record as last seen
        self._observed_at = 0.0
        self.holder = ""  # who holds the lease, as last read
        self.transitions = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def is_leader(self) -> bool:
        return (
            self._renewed_at is not None and self.clock() - self._renewed_at < self.renew_deadline
        )

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run(), name="igw-k8s leader")

    async def stop(self) -> None:
        """Stop competing; release the lease if we hold it."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.is_leader:
            with contextlib.suppress(*_ERRORS):
                await self._release()
        self._renewed_at = None

    async def run(self) -> None:
        was_leader = False
        while True:
            try:
                await self.try_acquire_or_renew()
            except _ERRORS as error:
                log.warning("kubernetes: leader election (lease %s/%s): %s",
                            self.namespace, self.name, error)  # fmt: skip
            leader = self.is_leader
            if leader != was_leader:
                log.info(
                    "kubernetes: %s %s the lease %s/%s",
                    self.identity, "acquired" if leader else "lost", self.namespace, self.name,
                )  # fmt: skip
                was_leader = leader
            await asyncio.sleep(self.retry_period)

    def _lease(self, previous: dict[str, Any] | None) -> dict[str, Any]:
        now = _now_text()
        lease = copy.deepcopy(previous) if previous else {
            "apiVersion": LEASES.api_version,
            "kind": LEASES.kind,
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {},
        }  # fmt: skip
        spec = lease.setdefault("spec", {})
        if spec.get("holderIdentity") != self.identity:
            spec["acquireTime"] = now
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + (
                1 if previous else 0
            )
        spec["holderIdentity"] = self.identity
        spec["leaseDurationSeconds"] = max(1, round(self.lease_duration))
        spec["renewTime"] = now
        return lease

    async def try_acquire_or_renew(self) -> bool:
        """One round; True when this replica holds the lease afterwards."""
        current = await self.client.get(LEASES, self.namespace, self.name)
        if current is None:
            try:
                await self.client.create(LEASES, self.namespace, self._lease(None))
            except Conflict:
                return False  # another replica created it first
            self._won()
            return True
        spec = current.get("spec") or {}
        holder = str(spec.get("holderIdentity") or "")
        self.holder = holder
        record = (holder, spec.get("renewTime"), spec.get("leaseTransitions"))
        now = self.clock()
        if record != self._observed:
            self._observed, self._observed_at = record, now
        duration = float(spec.get("leaseDurationSeconds") or self.lease_duration)
        if holder and holder != self.identity and now - self._observed_at < duration:
            self._renewed_at = None
            return False  # someone else holds a live lease
        try:
            await self.client.replace(LEASES, self.namespace, self._lease(current))
        except Conflict:
            return False  # changed under us; read again next round
        self._won()
        return True

    def _won(self) -> None:
        if not self.is_leader:
            self.transitions += 1
        self._renewed_at = self.clock()
        self.holder = self.identity

    async def _release(self) -> None:
        current = await self.client.get(LEASES, self.namespace, self.name)
        if current is None or (current.get("spec") or {}).get("holderIdentity") != self.identity:
            return
        released = copy.deepcopy(current)
        released["spec"]["holderIdentity"] = ""
        released["spec"]["leaseDurationSeconds"] = 1
        await self.client.replace(LEASES, self.namespace, released)
        log.info(
            "kubernetes: %s released the lease %s/%s", self.identity, self.namespace, self.name
        )
