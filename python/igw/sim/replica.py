"""One simulated replica: an ``Engine`` driven by one asyncio task, its faults and its port.

The driver runs the engine on a virtual clock in model milliseconds. Each step's end is a
wall-clock deadline (``t0 + model_ms / (1000 * speed)``), not a relative sleep, so the
replica keeps the model's pace on average even when steps are shorter than the event
loop's timer resolution (speed 100 makes a 10 ms step 0.1 ms): it runs late steps back to
back until it is on time again. If it falls more than ``MAX_LAG_S`` behind (the machine is
overloaded) it forgives the debt rather than bursting for longer.

Requests talk to the driver through their ``Seq``: the driver calls
``seq.listener.on_progress(seq)`` once per step that gave the request a token, and the
listener decides whether that is worth waking its handler for.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import random
import socket
from collections.abc import Sequence

from aiohttp import web

from igw.sim.metrics import ENGINE_TYPES, ReplicaMetrics
from igw.sim.model import Engine, EngineParams, Seq

# How far (wall seconds) the engine may fall behind its deadlines and still catch up by
# running late steps back to back. On a busy 2-core machine the process is regularly
# descheduled for 50-150 ms (measured under igw bench with other jobs running); catching up
# keeps the fleet's throughput at the model's, where forgiving the debt would quietly
# shrink capacity. Beyond this the debt is dropped and counted as lag.
MAX_LAG_S = 0.5

log = logging.getLogger("igw.sim")

ERROR_MODES = ("abort", "event")


@dataclasses.dataclass(slots=True)
class Faults:
    """Fault switches, read on every request and step, so tests can flip them at runtime.

    * ``down``: every path, ``/health`` included, answers 503 (a replica that is up but
      unusable; ``SimReplica.close_port()`` simulates a dead one).
    * ``fail``: every inference request answers 500 while ``/health`` stays 200 - the
      replica a gateway's health check will not catch.
    * ``slow_factor``: every engine step takes this many times longer.
    * ``error_rate``: probability that a request breaks after a random number of tokens:
      a stream is cut (``error_mode="abort"``: connection closed with no ``[DONE]``;
      ``"event"``: an SSE ``error`` object, then ``[DONE]``, as vLLM does); a non-streamed
      request gets a 500.
    """

    down: bool = False
    fail: bool = False
    slow_factor: float = 1.0
    error_rate: float = 0.0
    error_mode: str = "abort"

    def __setattr__(self, name: str, value: object) -> None:
        if name == "slow_factor" and (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not 0 < value < math.inf
        ):
            raise ValueError(f"slow_factor: expected a finite number > 0, got {value!r}")
        if name == "error_rate" and (
            not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0
        ):
            raise ValueError(f"error_rate: expected a probability in [0, 1], got {value!r}")
        if name == "error_mode" and value not in ERROR_MODES:
            raise ValueError(f"error_mode: expected one of {ERROR_MODES}, got {value!r}")
        object.__setattr__(self, name, value)


class SimReplica:
    """A simulated vLLM server: engine + driver task + HTTP app on one port."""

    def __init__(
        self,
        index: int,
        params: EngineParams,
        *,
        models: Sequence[str] = ("sim-model",),
        loras: Sequence[str] = (),
        speed: float = 1.0,
        seed: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
        faults: Faults | None = None,
        engine_type: str = "vllm",
        stream_interval: int = 1,
    ) -> None:
        if engine_type not in ENGINE_TYPES:
            raise ValueError(f"engine_type: expected one of {ENGINE_TYPES}, got {engine_type!r}")
        if (
            isinstance(stream_interval, bool)
            or not isinstance(stream_interval, int)
            or (stream_interval < 1)
        ):
            raise ValueError(f"stream_interval: expected an integer >= 1, got {stream_interval!r}")
        if not models:
            raise ValueError("models: expected at least one served model name")
        if not 0 < speed < math.inf:
            raise ValueError(f"speed: expected a finite number > 0, got {speed!r}")
        overlap = set(models) & set(loras)
        if overlap:
            raise ValueError(f"loras: {sorted(overlap)} also served as base model names")
        self.index = index
        self.params = params
        self.models = list(models)
        self.loras = list(loras)
        self.speed = float(speed)
        self.host = host
        self.port = port
        self.faults = faults or Faults()
        self.engine_type = engine_type  # whose metric names /metrics uses
        self.stream_interval = stream_interval  # tokens per streamed write (after the first)
        self.rng = random.Random(seed * 1_000_003 + index)  # faults only
        self.engine = Engine(params)
        self.metrics = ReplicaMetrics(self)
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._runner: web.AppRunner | None = None
        self._site: web.BaseSite | None = None
        self._t0 = 0.0
        self._vt = 0.0  # engine clock, model ms
        self._idle = True
        self._woken_at = 0.0
        self.lag_s = 0.0  # wall seconds the engine fell behind its model and forgave

    # ---------------------------------------------------------------------------- lifecycle

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host  # IPv6 literal
        return f"http://{host}:{self.port}"

    @property
    def listening(self) -> bool:
        return self._site is not None

    async def start(self, sock: socket.socket | None = None) -> None:
        """Start the engine task and listen (on ``sock`` if given, else host:port)."""
        from igw.sim.server import build_app  # server imports this module

        loop = asyncio.get_running_loop()
        self._t0 = loop.time()
        self._task = asyncio.create_task(self._drive(), name=f"igw-sim-engine-{self.index}")
        self._runner = web.AppRunner(
            build_app(self), handler_cancellation=True, access_log=None, shutdown_timeout=1.0
        )
        await self._runner.setup()
        await self.open_port(sock)

    async def open_port(self, sock: socket.socket | None = None) -> None:
        """(Re)start listening on this replica's port."""
        if self._site is not None or self._runner is None:
            return
        if sock is None:
            sock = bind_socket(self.host, self.port)
        self.port = sock.getsockname()[1]
        site = web.SockSite(self._runner, sock)
        await site.start()
        self._site = site

    async def close_port(self) -> None:
        """Stop listening and drop open connections: clients see connection refused/reset.

        The engine keeps its state (cache contents, queued requests are aborted by their
        handlers); ``open_port()`` brings the replica back on the same port.
        """
        site, self._site = self._site, None
        if site is not None:
            await site.stop()
        server = self._runner.server if self._runner is not None else None
        for conn in server.connections if server is not None else ():
            conn.force_close()  # keep-alive and in-flight connections die too

    async def stop(self) -> None:
        await self.close_port()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    # ------------------------------------------------------------------------------ engine

    def now_ms(self) -> float:
        """Current wall time on the engine's model-millisecond scale."""
        return (asyncio.get_running_loop().time() - self._t0) * 1000.0 * self.speed

    def submit(self, seq: Seq) -> None:
        """Queue a request. Its arrival is stamped on the engine's clock: when the engine
        is catching up (its clock behind the wall), the request joins at the engine's
        present, so model-time latencies never come out shorter than the steps they took.
        """
        now = self.now_ms()
        if self._idle:
            if not self._wake.is_set():
                self._woken_at = now  # the engine starts its next step at this arrival
            # Requests that arrive before the engine task runs join that same first step.
            seq.arrival = self._woken_at
        else:
            seq.arrival = min(now, self._vt)
        self.engine.add(seq)
        self._wake.set()

    def abort(self, seq: Seq) -> None:
        self.engine.abort(seq)

    async def _drive(self) -> None:
        """Run the engine; if a step ever raises (a bug), fail the requests in flight with
        a 500 and start over with an empty engine rather than hang every client."""
        while True:
            try:
                await self._run_engine()
            except Exception:
                log.exception("replica %d: engine step failed; resetting the engine", self.index)
                broken, self.engine = self.engine, Engine(self.params)
                for seq in [*broken.running, *broken.waiting]:
                    seq.aborted = True
                    if seq.listener is not None:
                        seq.listener.on_error(seq)

    async def _run_engine(self) -> None:
        loop = asyncio.get_running_loop()
        engine = self.engine
        ms_per_s = 1000.0 * self.speed
        while True:
            if not engine.has_work():
                await self._idle_wait()
                continue
            now = self.now_ms()
            if now - self._vt > MAX_LAG_S * ms_per_s:
                # Hopelessly late (the process did not get the CPU): forgive the debt rather
                # than burst, and count it so a benchmark can tell the simulator fell behind.
                self.lag_s += (now - self._vt) / ms_per_s
                self._vt = now
            step = engine.schedule(self._vt)
            if not step.seqs:  # nothing can run until something arrives or leaves
                await self._idle_wait()
                continue
            self._vt += step.duration_ms * self.faults.slow_factor
            delay = self._t0 + self._vt / ms_per_s - loop.time()
            await asyncio.sleep(delay if delay > 0 else 0)
            for seq in engine.finish_step(step, self._vt):
                if seq.finished:
                    self.metrics.observe_finished(seq)
                if seq.listener is not None:
                    seq.listener.on_progress(seq)

    async def _idle_wait(self) -> None:
        self._idle = True
        self._wake.clear()
        try:
            await self._wake.wait()
        finally:
            self._idle = False
        # An idle GPU starts on a request the moment it arrives: begin at the arrival that
        # woke us, not at whenever the event loop got round to this task (which would make
        # model latencies depend on CPU load, amplified by --speed).
        self._vt = max(self._vt, self._woken_at)


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket (port 0: a free one), ready for ``web.SockSite``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock
