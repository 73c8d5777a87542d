"""Request mirroring for rollouts: copy a share of a model's requests to a shadow target.

The copy is fire-and-forget: it never delays or fails the real request, its answer is read
and dropped, and at most ``max_in_flight`` copies run at once (beyond that they are skipped
and counted), so a slow shadow cannot pile up memory in the gateway.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Iterable
from typing import TYPE_CHECKING

import aiohttp

if TYPE_CHECKING:
    from igw.gateway.config import MirrorSpec
    from igw.pipeline import Request

log = logging.getLogger("igw.gateway.mirror")


class Mirror:
    """Callable the gateway runs after scheduling; starts a shadow copy when the rule says."""

    def __init__(
        self,
        specs: Iterable[MirrorSpec],
        *,
        max_in_flight: int = 64,
        timeout: float = 600.0,
        rng: random.Random | None = None,
    ) -> None:
        self.rules = {spec.model: spec for spec in specs}
        self.max_in_flight = max_in_flight
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.rng = rng or random.Random()
        self.sent = 0
        self.skipped = 0
        self.failed = 0
        self._tasks: set[asyncio.Task] = set()
        self._session: aiohttp.ClientSession | None = None

    def __call__(self, request: Request) -> None:
        spec = self.rules.get(request.incoming_model)
        if spec is None or self.rng.random() * 100.0 >= spec.percent:
            return
        if len(self._tasks) >= self.max_in_flight:
            self.skipped += 1
            return
        task = asyncio.get_running_loop().create_task(
            self._send(spec.url + request.path, request.upstream_body, request.request_id)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, url: str, body: bytes, request_id: str) -> None:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        headers = {
            "content-type": "application/json",
            "x-request-id": request_id,
            "x-igw-mirror": "1",
        }
        try:
            async with self._session.post(url, data=body, headers=headers) as response:
                await response.read()
            self.sent += 1
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            self.failed += 1
            log.debug("mirror copy of %s to %s failed: %r", request_id, url, exc)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
