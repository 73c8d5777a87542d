"""Busy polling: the event loop keeps polling the network for a short window after each read.

Why: a gateway that sleeps between reads pays a wake-up for every one of them, and a proxy hop
has twice the wake-ups of a direct call (the replica's answer, then the client's next request,
where a direct call has only the latter). On virtual machines that halt an idle vCPU at once
(KVM's haltpoll with ``guest_halt_poll_ns`` 0, as on the machine the benchmarks ran on) each
wake-up costs tens of microseconds of exits and scheduling. Polling with a zero timeout for a
while after a read keeps the vCPU running, so the next read is found without a wake-up:
measured on that machine, ~100 us less added latency per request at concurrency 1 and ~10 %
more requests per second at 64 (``docs/standalone.md``). HAProxy's ``busy-polling`` trades CPU
for latency the same way, for the same reason, but spins always; this spins only within
``window`` seconds of the last read, so an idle gateway sleeps.

Cost: up to ``window`` of CPU after every read when traffic is sparse (at concurrency 1 with
instant replicas, ~200 us per request); none when the loop is busy anyway. Off by default
(``igw serve --busy-poll-us``, ``igw epp --busy-poll-us``): it suits a process with a core to
itself, not one squeezed by a CPU quota, where the spinning would use up the quota.

How: while spinning, a callback re-queues itself with ``call_soon``; a loop with a ready
callback polls with a zero timeout (asyncio and uvloop alike), runs the I/O callbacks that
are due, then the re-queued one. Each pass also yields the CPU (``sched_yield``) to any other
runnable thread, so the spinning uses only time that would otherwise go idle. igw's own
protocols call ``poke`` from ``data_received``: ``igw serve``'s fast front end and lean
upstream client, and the HTTP/2 transport of ``igw epp`` and ``igw bbr``
(``--grpc-transport=igw``, ``--observer-port``). grpc.aio and aiohttp read on their own.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

_clock = time.monotonic
# Each pass of the spin gives way to any other thread runnable on this CPU (a replica, the
# client, a neighbour): polite spinning takes only time nobody else wants. Measured at c=64
# on 2 shared cores: 3-10 % more requests/s than spinning without yielding; c=1 unchanged.
_give_way = getattr(os, "sched_yield", lambda: None)


class BusyPoller:
    """Keeps one event loop polling for ``window`` seconds after the last ``poke``."""

    __slots__ = ("_fresh", "_loop", "_since", "_spinning", "_spun", "_until", "episodes", "window")

    def __init__(self, window: float) -> None:
        if not window > 0:
            raise ValueError(f"busy poll window: expected seconds > 0, got {window!r}")
        self.window = window
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fresh = False  # a read came since the spin callback last ran
        self._until = 0.0  # clock time the spinning stops at, without another read
        self._spinning = False
        self._since = 0.0  # clock time the current spinning began
        self._spun = 0.0  # seconds of finished spinning, for igw_busy_poll_seconds_total
        self.episodes = 0  # finished spells of spinning

    def spin_seconds(self) -> float:
        """Seconds the loop has been kept polling (the current spell included), the work it
        did meanwhile included: under steady traffic this grows like the wall clock."""
        current = _clock() - self._since if self._spinning else 0.0
        return self._spun + current

    @property
    def spinning(self) -> bool:
        return self._spinning

    def poke(self) -> None:
        """A read happened: poll for ``window`` more seconds. Called from read callbacks,
        so it is cheap: a flag, and the clock is read by the spin callback (once per loop
        pass however many reads it had)."""
        self._fresh = True
        if not self._spinning:
            if self._loop is None:
                self._loop = asyncio.get_running_loop()
            self._spinning = True
            self._since = _clock()
            self._loop.call_soon(self._spin)

    def _spin(self) -> None:
        now = _clock()
        if self._fresh:
            self._fresh = False
            self._until = now + self.window
        elif now >= self._until:
            self._spinning = False
            self._spun += now - self._since
            self.episodes += 1
            return
        _give_way()
        self._loop.call_soon(self._spin)  # type: ignore[union-attr]


def make_poller(window_us: float) -> BusyPoller | None:
    """A poller for ``window_us`` microseconds, or None when 0 (off)."""
    if window_us < 0:
        raise ValueError(f"busy poll: expected microseconds >= 0, got {window_us:g}")
    return BusyPoller(window_us / 1e6) if window_us else None


def poke_of(poller: BusyPoller | None) -> Callable[[], None] | None:
    """What a protocol calls on each read: the poller's ``poke``, or None when off."""
    return poller.poke if poller is not None else None


class BusyPollCollector(Collector):
    """Prometheus view of a poller, read at scrape time: how long busy polling kept the loop
    awake. ``rate(igw_busy_poll_seconds_total[1m])`` near 1 means the loop never slept, and
    the process CPU it shows is partly the spinning."""

    def __init__(self, poller: BusyPoller) -> None:
        self.poller = poller

    def collect(self) -> Iterator[Metric]:
        window = GaugeMetricFamily(
            "igw_busy_poll_window_seconds",
            "How long the loop keeps polling after a read (--busy-poll-us)",
            value=self.poller.window,
        )
        spun = CounterMetricFamily(
            "igw_busy_poll_seconds",
            "Seconds the event loop was kept polling instead of sleeping, the work it did "
            "meanwhile included",
            value=self.poller.spin_seconds(),
        )
        spells = CounterMetricFamily(
            "igw_busy_poll_spells",
            "Finished spells of busy polling (each ends after a window without a read)",
            value=float(self.poller.episodes),
        )
        yield window
        yield spun
        yield spells


class _TakesArguments(Protocol):
    """An argparse parser or argument group."""

    def add_argument(self, *names: str, **options: Any) -> Any: ...


# Bounds and help shared by the command lines that offer the flag.
MAX_WINDOW_US = 1_000_000
_FLAG_HELP = (
    "keep polling the network for US microseconds after each read instead of sleeping, so "
    "the next read needs no wake-up: on VMs that halt idle vCPUs, ~100 us less added latency "
    "per request through igw serve; it costs up to US of CPU per read when traffic is "
    "sparse, so it suits a process with a core to itself, not a tight CPU quota"
)


def add_flag(parser: _TakesArguments, note: str) -> None:
    """``--busy-poll-us US`` on a command line; ``note`` ends its help (where it applies,
    the default)."""
    parser.add_argument(
        "--busy-poll-us", type=float, default=0.0, metavar="US", help=_FLAG_HELP + note
    )


def window_error(flag: str, window_us: float) -> str | None:
    """What is wrong with a command line's window (None: nothing)."""
    if 0 <= window_us <= MAX_WINDOW_US:
        return None
    return f"{flag}: expected microseconds from 0 (off) to {MAX_WINDOW_US}, got {window_us:g}"
