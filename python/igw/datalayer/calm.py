"""Calm cadence: an endpoint whose figures do not move is scraped less often, never stale.

REFERENCE Part 2 section 7 idea 7 (adaptive telemetry). An endpoint whose figures were
unchanged over its last ``CALM_AFTER`` scrapes with nobody waiting is calm: it is scraped on
a coarser grid of its cohort's phase (``calm_period`` <= ``calm_cap``), so a cohort's calm
endpoints still wake together. Anything that stirs it (``_stir``: a changed figure, a queue,
a slow answer, a failed scrape or response) puts it back on every tick at once.

igw's own requests in flight do not stir it. They are in the table exactly, counted by igw
itself (what the scorers read between scrapes); a scrape adds what igw cannot see, and a
model server busy with igw's requests shows it in the figures (running, KV use), which does
stir it. Stirring on igw's own requests kept an endpoint whose page does not move off the
calm cadence whenever it had traffic: at concurrency 1 against 4 instant replicas that was
every endpoint on every tick, and those scrapes cost ~25 us of igw CPU per request (scrape
interval 50 ms against 1 s, same-run A/B), on cores the requests and the replicas share.

``calm_cap`` is never more than half the strictest staleness threshold of a reader of the
table (``consumer_staleness``, ``require_fresh``, the layer's own ``staleness``): a calm
endpoint's row is at most half that old when its next scrape lands, so calm scraping cannot
make a reader (a saturation detector, which fails closed on stale rows) see "stale".
``DataLayer`` mixes this in; the attributes it reads are the layer's.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from igw.datalayer.layer import EndpointState

log = logging.getLogger("igw.datalayer")

CALM_AFTER = 3  # unchanged scrapes in a row (nobody waiting) that make an endpoint calm
CALM_FACTOR = 4  # default calm cap in scrape intervals (then bounded by freshness)
# Flow control's default metricsStalenessThreshold (the reference's 200 ms): the data layer
# assumes a reader that strict unless told (``consumer_staleness``, ``require_fresh``).
CONSUMER_STALENESS = 0.2


def positive(name: str, value: float) -> float:
    """``value`` as seconds, or a ``ValueError`` naming the setting."""
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"DataLayer {name} must be a positive number of seconds, got {value!r}")
    return float(value)


class CalmCadence:
    """The data layer's calm-cadence settings and transitions (a mixin of ``DataLayer``)."""

    interval: float
    calm_cap: float
    pool: Any
    _calm_interval: float
    _fresh: float

    @property
    def calm_interval(self) -> float:
        """The longest gap asked for between a calm endpoint's scrapes (``calm_cap`` is what
        is in force). Settable while running, e.g. from a command-line flag."""
        return self._calm_interval

    @calm_interval.setter
    def calm_interval(self, value: float) -> None:
        if positive("calm_interval", value) < self.interval:
            raise ValueError(
                f"DataLayer calm_interval must be >= interval ({self.interval:g}s; equal turns "
                f"calm scraping off), got {value!r}"
            )
        self._calm_interval = float(value)
        self._set_cap()

    def _calm_cap(self) -> float:
        # Half the strictest threshold: a calm endpoint's figures are at most that old when
        # its next scrape lands, so even a scrape late by as much again is not "stale".
        return max(self.interval, min(self._calm_interval, self._fresh / 2))

    def _set_cap(self) -> None:
        cap = self._calm_cap()
        if cap != self.calm_cap:
            log.debug(
                "calm endpoints are scraped every %.3fs at most (asked %.3fs; the strictest "
                "staleness threshold of a reader is %.3fs)", cap, self._calm_interval, self._fresh,
            )  # fmt: skip
            self.calm_cap = cap

    @property
    def calm_period(self) -> float:
        """A calm endpoint's scrape period: the most whole intervals within ``calm_cap``."""
        return self.interval * max(1, math.floor(self.calm_cap / self.interval + 1e-9))

    def require_fresh(self, staleness: float) -> None:
        """A reader of the table treats rows older than ``staleness`` seconds as stale (e.g.
        a saturation detector's ``metricsStalenessThreshold``): keep calm scraping well
        inside it. Lowers ``calm_cap`` when needed; never raises it."""
        self._fresh = min(self._fresh, positive("staleness", staleness))
        self._set_cap()

    def _stir(self, state: EndpointState, why: str) -> None:
        """Something happened at the endpoint: scrape it on every tick again."""
        state.unchanged = 0
        if state.calm:
            state.calm = False
            if state.nap is not None and not state.nap.done():
                state.nap.set_result(None)
            cohort = state.driven
            if cohort is not None and not state.pending:
                state.due = self._next_tick(cohort.phase, asyncio.get_running_loop().time())
                self._wake_cohort(cohort, state.due)
            log.debug(
                "endpoint %s scraped every %.3fs again: %s",
                state.endpoint.address, self.interval, why,
            )  # fmt: skip

    def _stir_if_slow(self, state: EndpointState, took: float) -> None:
        """A scrape that took longer than a tick to answer: a slow answer is no calm, and a
        calm gap plus a slow answer could outlast a reader's threshold where every-tick
        scraping would not."""
        if state.unchanged and took > self.interval:
            self._stir(state, f"it took {took:.3f}s to answer")
