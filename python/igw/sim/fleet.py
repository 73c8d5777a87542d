"""Start and stop N simulated replicas inside the running event loop.

This is the simulator's programmatic entry point (``igw serve --sim``, ``igw bench`` and
tests use it)::

    from igw.sim.fleet import SimFleet

    async with SimFleet(4, speed=20, num_gpu_blocks=512) as fleet:
        fleet.urls                           # ["http://127.0.0.1:41234", ...]
        fleet.replicas[2].faults.down = True  # 503 on everything, /health included
        await fleet.replicas[3].close_port()  # connection refused until open_port()

Keyword arguments other than the ones named in ``SimFleet.__init__`` are engine constants
(``igw.sim.model.EngineParams`` field names) applied on top of the profile.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections.abc import Mapping, Sequence
from typing import Any

from igw.sim.model import EngineParams
from igw.sim.profiles import PARAM_NAMES, make_params
from igw.sim.replica import Faults, SimReplica, bind_socket

DEFAULT_MODEL = "sim-model"  # what the README's example request names


class SimFleet:
    """N replicas of one simulated model server, each on its own port."""

    def __init__(
        self,
        replicas: int = 1,
        *,
        profile: str = "default",
        host: str = "127.0.0.1",
        port: int = 0,
        speed: float = 1.0,
        seed: int = 0,
        models: Sequence[str] = (DEFAULT_MODEL,),
        loras: Sequence[str] = (),
        faults: Mapping[int, Faults] | None = None,
        params: EngineParams | None = None,
        engine_type: str = "vllm",
        replica_overrides: Mapping[int, Mapping[str, Any]] | None = None,
        stream_interval: int = 1,
        **overrides: Any,
    ) -> None:
        """``port`` 0 gives every replica a free port; otherwise replica i uses port + i.

        ``params`` replaces the profile entirely; ``overrides`` adjust the profile.
        ``faults`` maps replica index -> initial ``Faults``. ``engine_type`` picks whose
        metric names ``/metrics`` exports: ``vllm`` (default), ``sglang`` or ``trtllm-serve``.
        ``replica_overrides`` maps replica index -> engine constants for that replica only
        (a heterogeneous fleet: ``{3: {"num_gpu_blocks": 512}}``). ``stream_interval`` > 1
        writes a stream's tokens in groups of that many after the first (less CPU per token
        for big benchmarks, coarser inter-token timing).
        """
        if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
            raise ValueError(f"replicas: expected an integer >= 1, got {replicas!r}")
        if not 0 <= port <= 65535 or (port and port + replicas - 1 > 65535):
            raise ValueError(f"port: expected 0 or a port with room for {replicas}, got {port}")
        if params is not None and overrides:
            raise ValueError("pass either params or engine overrides, not both")
        self.params = params if params is not None else make_params(profile, **overrides)
        faults = dict(faults or {})
        per_replica = dict(replica_overrides or {})
        for what, mapping in (("faults", faults), ("replica_overrides", per_replica)):
            bad = sorted(i for i in mapping if not 0 <= i < replicas)
            if bad:
                raise ValueError(f"{what}: replica indexes {bad} out of range 0..{replicas - 1}")
        for i, values in per_replica.items():
            unknown = sorted(set(values) - set(PARAM_NAMES))
            if unknown:
                raise ValueError(
                    f"replica_overrides[{i}]: unknown engine parameter(s) {unknown}; "
                    f"known: {list(PARAM_NAMES)}"
                )
        replica_params = {
            i: dataclasses.replace(self.params, **dict(values)) for i, values in per_replica.items()
        }
        self.host = host
        self.port = port
        self.replicas: list[SimReplica] = [
            SimReplica(
                i,
                replica_params.get(i, self.params),
                models=models,
                loras=loras,
                speed=speed,
                seed=seed,
                host=host,
                port=port + i if port else 0,
                faults=faults.get(i),
                engine_type=engine_type,
                stream_interval=stream_interval,
            )
            for i in range(replicas)
        ]
        self._started = False

    @property
    def urls(self) -> list[str]:
        """Base URLs (no trailing slash), in replica order."""
        return [r.url for r in self.replicas]

    @property
    def models(self) -> list[str]:
        return list(self.replicas[0].models)

    async def start(self) -> None:
        """Bind every port first (so a busy port fails before anything runs), then serve.
        Starting a started fleet does nothing."""
        if self._started:
            return
        socks: list[socket.socket] = []
        try:
            for r in self.replicas:
                try:
                    socks.append(bind_socket(r.host, r.port))
                except OSError as exc:
                    raise OSError(
                        exc.errno,
                        f"replica {r.index}: cannot listen on {r.host}:{r.port}: {exc.strerror}",
                    ) from exc
        except OSError:
            for s in socks:
                s.close()
            raise
        started = 0
        try:
            for r, sock in zip(self.replicas, socks, strict=True):
                await r.start(sock)
                started += 1
        except BaseException:
            for sock in socks[started:]:
                sock.close()
            await self.stop()
            raise
        self._started = True

    async def stop(self) -> None:
        """Stop every replica; requests still in flight are cut off."""
        await asyncio.gather(*(r.stop() for r in self.replicas))
        self._started = False

    async def __aenter__(self) -> SimFleet:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
