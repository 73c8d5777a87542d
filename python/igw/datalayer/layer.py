"""The data layer: scraping every endpoint, readiness, staleness and outlier demotion.

``DataLayer`` subscribes to a ``Pool``'s membership. Every endpoint's ``/metrics`` is read
every ``interval`` seconds over a kept-alive connection (its own lean httptools connection
when httptools is installed, else aiohttp's shared pool: see ``transport``); the endpoint
engine's figures (``engines.extract``) go to the core's endpoint table in ONE
``table.update`` call, so a reader never sees half a scrape. A task per endpoint makes the
first scrape (connecting) and handles failures, back-off and the aiohttp path; once an
endpoint answers on a kept-alive lean connection it is handed to its cohort's single timer,
which sends every due request and handles each answer in the connection's callback (no task,
future or timer per scrape: ~10% less CPU per scrape at 4 endpoints), and anything unusual
hands it back to a task.

Readiness (``table.set_ready``) is the AND of three facts:
* discovered (the endpoint is in the pool);
* not known-down: ``down_after`` consecutive transport failures (refused, reset, timed out)
  make it not ready; the first answer of any kind makes it ready again. A ``/metrics`` page
  that 404s or is malformed does NOT make it unready: the server is up, only its metrics go
  stale (``is_stale``), and the previous values are kept, as the reference picker does;
* not demoted: the front ends report every response's outcome (``report_response``); an
  endpoint whose recent responses mostly fail while it still answers its scrapes is demoted
  until a probe (``GET /health``, or ``/v1/models`` when that 404s) succeeds.

Scheduling: endpoints scrape in cohorts of ``SCRAPE_COHORT`` consecutive ids; a cohort's
scrapes share one phase on a fixed grid of period ``interval``, so they wake in the same
event-loop iteration (4 endpoints at 50 ms: idle cost ~25 -> ~17 ms of CPU per second), and
cohorts are spread over the interval so 1,000 endpoints do not scrape in lockstep. Failures
back off exponentially (capped at ``max_backoff``, with jitter) and rejoin the grid on
recovery. Parsing a 40 KB vLLM page costs ~20 µs (``bench/test_datalayer_bench.py``), so it
runs inline on the event loop; a page byte-identical to the last one is not parsed again.

Calm endpoints are scraped less often (REFERENCE Part 2 section 7 idea 7, adaptive telemetry):
an endpoint whose figures were unchanged over its last ``CALM_AFTER`` scrapes with nobody
waiting is scraped on a coarser grid of the same phase (period ``calm_period`` <=
``calm_cap``; a cohort's calm endpoints still wake together; igw's own requests in flight do
not count, see ``igw.datalayer.calm``). A changed figure, a queue, a failed
scrape or a failed response (``report_response``) puts it back on every tick at once, ending
its sleep early; a new endpoint starts on every tick. Most of a scrape's cost is fixed (a
wake-up, a loopback write and read on both sides, the model server rendering its page), so
skipping scrapes is what cuts the idle cost: 4 idle endpoints at 50 ms cost ~6 instead of
~14 ms of CPU per second. ``calm_cap`` never exceeds half the strictest staleness threshold of
a reader (``consumer_staleness``, ``require_fresh``, the layer's own ``staleness``), so a
calm endpoint's row is at most half that old when its next scrape lands and calm scraping
cannot make a reader (a saturation detector failing closed) see "stale".

Failures never raise into the loop: each is counted (``errors`` by kind, and per endpoint in
``state(...)``) and logged once per change of condition, with the endpoint and the numbers.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import math
import random
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import aiohttp
import yarl

from igw.datalayer.calm import (
    CALM_AFTER,
    CALM_FACTOR,
    CONSUMER_STALENESS,
    CalmCadence,
)
from igw.datalayer.calm import positive as _positive
from igw.datalayer.driven import SCRAPE_COHORT, Cohort, DrivenScraping
from igw.datalayer.engines import (
    DEFAULT_ENGINE,
    ENGINE_LABEL,
    ENGINES,
    EngineSpec,
    Scraped,
    extract,
)
from igw.datalayer.outlier import OutcomeWindow, OutlierPolicy
from igw.datalayer.promtext import MetricsParseError
from igw.datalayer.transport import (
    HAVE_HTTPTOOLS,
    TOO_BIG,
    AiohttpFetch,
    FetchError,
    LeanFetch,
)

if TYPE_CHECKING:
    from igw.datastore import Endpoint, Pool

log = logging.getLogger("igw.datalayer")

# Error kinds (keys of ``DataLayer.errors``). Transport kinds count towards "down".
TIMEOUT = "timeout"
CONNECT = "connect"
TRANSPORT = "transport"
HTTP_STATUS = "http_status"
PARSE = "parse"
UPDATE = "update"
_TRANSPORT_KINDS = frozenset({TIMEOUT, CONNECT, TRANSPORT})
LOG_EVERY = 60.0  # seconds between repeated failure log lines of one endpoint
MAX_PAGE_BYTES = 16 << 20  # a metrics page bigger than this is not a model server's
_GOLDEN = 0.6180339887498949  # spreads cohort phases evenly over the interval, any count


def _wake(nap: asyncio.Future[None]) -> None:
    if not nap.done():
        nap.set_result(None)


class DataLayerError(Exception):
    """A data-layer request the caller asked for (e.g. ``fetch_models``) failed."""


@dataclasses.dataclass(eq=False)
class EndpointState:
    """What the data layer knows about one endpoint (read it with ``DataLayer.state``)."""

    endpoint: Endpoint
    outcomes: OutcomeWindow
    url: yarl.URL
    scrapes: int = 0  # successful scrapes written to the table
    last_success: float | None = None  # clock() of the last successful scrape
    last: Scraped | None = None
    consecutive_failures: int = 0  # transport failures in a row
    down: bool = False
    down_since: float = 0.0
    demoted: bool = False
    demoted_at: float = 0.0
    demotions: int = 0  # consecutive demotions (reset after ``stable_after`` in rotation)
    restored_at: float = -math.inf
    ready: bool | None = None  # what we last wrote to the table
    errors: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    last_error: str = ""
    last_error_kind: str = ""
    last_logged: float = -math.inf  # clock() of the last failure log line
    capacity_blocks: int | None = None  # what we last gave the prefix index
    unchanged: int = 0  # scrapes in a row whose figures equalled the previous, nobody waiting
    calm: bool = False  # scraped every ``calm_cap`` instead of every tick
    page: bytes | None = None  # the last page parsed (an identical one is not parsed again)
    spec: EngineSpec | None = None  # the engine spec ``page`` was parsed with
    row: dict[str, Any] | None = None  # table.update arguments of ``last`` (without now)
    nap: asyncio.Future[None] | None = None  # a calm scraper's sleep, ended early by a stir
    driven: Cohort | None = None  # scraped from its cohort's timer (no task) when set
    pending: bool = False  # a driven request is out
    due: float = 0.0  # loop time of the next driven scrape
    started: float = 0.0  # loop time the pending driven request went out
    deadline: float = 0.0  # loop time the pending driven request times out
    on_fetched: Callable[[], None] | None = None
    fetch: AiohttpFetch | LeanFetch | None = None
    task: asyncio.Task[None] | None = None
    probe_task: asyncio.Task[None] | None = None


class ModelInfo(NamedTuple):
    """One entry of a ``/v1/models`` list."""

    id: str
    parent: str | None = None  # the base model when this is a LoRA adapter

    @property
    def is_adapter(self) -> bool:
        return self.parent is not None and self.parent != self.id


class DataLayer(CalmCadence, DrivenScraping):
    """Scrapes every endpoint of ``pool`` and keeps its table rows, readiness and prefix
    capacity current. Create it, ``await start()``, and ``await stop()`` on shutdown.

    ``interval`` scrape period (s); ``timeout`` per scrape (s); ``staleness`` age after which
    ``is_stale`` is true (s); ``block_tokens`` the prefix index's block size in tokens (the
    LRU capacity is ``num_gpu_blocks * block_size // block_tokens``); ``down_after``
    transport failures in a row that make an endpoint not ready; ``max_backoff`` cap of the
    failure back-off (s); ``outlier`` demotion policy; ``max_demoted_fraction`` most of the
    pool that may be demoted at once (like Envoy's max ejection percent: a fleet-wide fault
    must not empty the pool; a one-endpoint pool is never demoted at the default 0.5);
    ``metrics_path`` / ``metrics_port`` / ``metrics_scheme`` where pages live;
    ``engine_label`` / ``default_engine`` / ``engines`` how an endpoint's engine is found
    and described; ``compress`` ask for gzip pages; ``transport`` "auto", "aiohttp" or
    "httptools"; ``session`` an aiohttp session to use (left open); ``clock`` and ``seed``
    for tests.

    ``calm_interval`` longest gap between a calm endpoint's scrapes (s; None = ``CALM_FACTOR``
    intervals; equal to ``interval`` turns calm scraping off); ``consumer_staleness`` the
    smallest staleness threshold any reader of the table applies (flow control's
    ``metricsStalenessThreshold``; more with ``require_fresh``). The cap in force is
    ``calm_cap``: never more than half of that threshold nor of ``staleness``.
    """

    def __init__(
        self,
        pool: Pool,
        *,
        interval: float = 0.05,
        timeout: float = 1.0,
        staleness: float = 2.0,
        block_tokens: int = 64,
        down_after: int = 3,
        max_backoff: float = 1.0,
        outlier: OutlierPolicy | None = None,
        max_demoted_fraction: float = 0.5,
        metrics_path: str = "/metrics",
        metrics_port: int | None = None,
        metrics_scheme: str | None = None,
        engine_label: str = ENGINE_LABEL,
        default_engine: str | None = None,
        engines: Mapping[str, EngineSpec] | None = None,
        compress: bool = False,
        transport: str = "auto",
        session: aiohttp.ClientSession | None = None,
        clock: Callable[[], float] = time.monotonic,
        seed: int | None = None,
        calm_interval: float | None = None,
        consumer_staleness: float = CONSUMER_STALENESS,
    ) -> None:
        self.pool = pool
        self.interval = _positive("interval", interval)
        self.timeout = _positive("timeout", timeout)
        self.staleness = _positive("staleness", staleness)
        self._fresh = min(self.staleness, _positive("consumer_staleness", consumer_staleness))
        self._calm_interval = CALM_FACTOR * self.interval
        self.calm_cap = self._calm_cap()
        if calm_interval is not None:
            self.calm_interval = calm_interval
        self.max_backoff = max(self.interval, _positive("max_backoff", max_backoff))
        if not isinstance(block_tokens, int) or block_tokens < 1:
            raise ValueError(f"DataLayer block_tokens must be an int >= 1, got {block_tokens!r}")
        if not isinstance(down_after, int) or down_after < 1:
            raise ValueError(f"DataLayer down_after must be an int >= 1, got {down_after!r}")
        if not 0.0 <= max_demoted_fraction <= 1.0:
            raise ValueError(
                f"DataLayer max_demoted_fraction must be within 0..1, got {max_demoted_fraction}"
            )
        if not metrics_path.startswith("/"):
            raise ValueError(f"DataLayer metrics_path must start with '/', got {metrics_path!r}")
        self.block_tokens = block_tokens
        self.down_after = down_after
        self.outlier = outlier or OutlierPolicy()
        self.max_demoted_fraction = max_demoted_fraction
        if metrics_port is not None and not (
            isinstance(metrics_port, int) and 0 < metrics_port < 65536
        ):
            raise ValueError(f"DataLayer metrics_port must be 1..65535, got {metrics_port!r}")
        if metrics_scheme not in (None, "http", "https"):
            raise ValueError(
                f"DataLayer metrics_scheme must be 'http' or 'https', got {metrics_scheme!r}"
            )
        self.engines: dict[str, EngineSpec] = {**ENGINES, **(engines or {})}
        if default_engine is not None and default_engine not in self.engines:
            raise ValueError(
                f"DataLayer default_engine {default_engine!r} is unknown; expected one of "
                f"{sorted(self.engines)}"
            )
        if transport not in ("auto", "aiohttp", "httptools"):
            raise ValueError(
                f"DataLayer transport must be 'auto', 'aiohttp' or 'httptools', got {transport!r}"
            )
        if transport == "httptools" and not HAVE_HTTPTOOLS:
            raise ValueError("DataLayer transport 'httptools' needs the httptools package")
        self.transport = (
            ("httptools" if HAVE_HTTPTOOLS else "aiohttp") if transport == "auto" else transport
        )
        self.metrics_path = metrics_path
        self.metrics_port = metrics_port
        self.metrics_scheme = metrics_scheme
        self.engine_label = engine_label
        self.default_engine = default_engine
        self.errors: collections.Counter[str] = collections.Counter()
        self._clock = clock
        self._rng = random.Random(seed)
        self._client_timeout = aiohttp.ClientTimeout(total=self.timeout)
        self._headers = {"Accept": "text/plain;version=0.0.4;q=1,*/*;q=0.1"}
        if not compress:
            # Saves the model server gzip work and us the inflate; costs bandwidth.
            self._headers["Accept-Encoding"] = "identity"
        self._session = session
        self._owns_session = session is None
        self._states: dict[int, EndpointState] = {}
        self._cohorts: dict[int, Cohort] = {}
        self._adapter_ids: dict[str, int] = {}
        self._running = False

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        """Start scraping every current and future endpoint of the pool."""
        if self._running:
            return
        if self._session is None or self._session.closed:
            self._session = self._new_session()
            self._owns_session = True
        self._running = True
        self.pool.subscribe(self._on_membership)  # replays current members as "added"

    async def stop(self) -> None:
        """Cancel every scraper and probe, then close the HTTP session we own."""
        if self._running:
            self.pool.unsubscribe(self._on_membership)
        self._running = False
        tasks = []
        for state in self._states.values():
            self._undrive(state)
            tasks.extend(t for t in (state.task, state.probe_task) if t is not None)
            state.task = state.probe_task = None
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for state in self._states.values():
            if state.fetch is not None:
                state.fetch.close()
        self._states.clear()
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _new_session(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=30)
        return aiohttp.ClientSession(
            connector=connector, cookie_jar=aiohttp.DummyCookieJar(), headers=self._headers
        )

    def _on_membership(self, event: str, endpoint: Endpoint) -> None:
        if not self._running:
            return
        if event == "added":
            self._track(endpoint)
        elif event == "removed":
            self._untrack(endpoint)

    def _track(self, endpoint: Endpoint) -> None:
        old = self._states.get(endpoint.id)
        if old is not None:
            if old.endpoint is endpoint:
                return
            self._untrack(old.endpoint)
        url = self._metrics_url(endpoint)
        state = EndpointState(endpoint=endpoint, outcomes=OutcomeWindow(self.outlier), url=url)
        state.fetch = self._fetcher(url)
        self._states[endpoint.id] = state
        self._apply_ready(state)  # discovered -> ready until known otherwise
        state.task = asyncio.get_running_loop().create_task(
            self._scrape_loop(state), name=f"igw-scrape {endpoint.address}"
        )

    def _fetcher(self, url: yarl.URL) -> AiohttpFetch | LeanFetch:
        if self.transport == "httptools":
            return LeanFetch(url, headers=self._headers, max_bytes=MAX_PAGE_BYTES)
        assert self._session is not None
        return AiohttpFetch(
            self._session,
            url,
            # Our own session carries the headers already; a caller's gets them per request.
            headers=None if self._owns_session else self._headers,
            max_bytes=MAX_PAGE_BYTES,
        )

    def _metrics_url(self, endpoint: Endpoint) -> yarl.URL:
        """Where the endpoint's metrics are: its own address unless a port/scheme is set
        (Triton serves metrics on a port of their own)."""
        host = endpoint.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        scheme = self.metrics_scheme or endpoint.scheme
        port = self.metrics_port or endpoint.port
        return yarl.URL(f"{scheme}://{host}:{port}{self.metrics_path}")

    def engine_of(self, endpoint: Endpoint) -> str:
        """The endpoint's engine: its ``engine_label`` label, else ``default_engine`` when
        set, else the engine discovery gave it."""
        return (
            endpoint.labels.get(self.engine_label)
            or self.default_engine
            or endpoint.engine
            or DEFAULT_ENGINE
        )

    def _untrack(self, endpoint: Endpoint) -> None:
        state = self._states.get(endpoint.id)
        if state is None or state.endpoint is not endpoint:
            return
        del self._states[endpoint.id]
        self._undrive(state)
        for task in (state.task, state.probe_task):
            if task is not None:
                task.cancel()
        state.task = state.probe_task = None
        if state.fetch is not None:
            state.fetch.close()

    # -- queries --------------------------------------------------------------------------
    def state(self, endpoint: Endpoint | int) -> EndpointState | None:
        endpoint_id = endpoint if isinstance(endpoint, int) else endpoint.id
        return self._states.get(endpoint_id)

    def is_stale(self, endpoint: Endpoint | int, now: float | None = None) -> bool:
        """True when the endpoint's metrics are older than ``staleness`` (or never came)."""
        state = self.state(endpoint)
        if state is None or state.last_success is None:
            return True
        return (self._clock() if now is None else now) - state.last_success > self.staleness

    def stats(self) -> dict[str, Any]:
        """Counts for logs and metrics: endpoints, stale, down, demoted, calm (scraped every
        ``calm_period``), successful scrapes, errors by kind."""
        now = self._clock()
        states = list(self._states.values())
        return {
            "endpoints": len(states),
            "stale": sum(self.is_stale(s.endpoint.id, now) for s in states),
            "down": sum(s.down for s in states),
            "demoted": sum(s.demoted for s in states),
            "calm": sum(s.calm for s in states),
            "scrapes": sum(s.scrapes for s in states),
            "errors": dict(self.errors),
        }

    # -- scraping -------------------------------------------------------------------------
    def scrape_phase(self, endpoint_id: int) -> float:
        """Offset in [0, interval) of this endpoint's scrape ticks on the loop's clock."""
        return ((endpoint_id // SCRAPE_COHORT) * _GOLDEN) % 1.0 * self.interval

    def _next_tick(self, phase: float, now: float, period: float | None = None) -> float:
        """The first grid point ``phase + k * period`` after ``now`` (missed ticks skipped);
        ``period`` defaults to ``interval``."""
        period = period or self.interval
        return phase + (math.floor((now - phase) / period) + 1) * period

    async def _scrape_loop(self, state: EndpointState, start: float | None = None) -> None:
        """Scrape ``state`` from a task: its first scrape (connecting), failures and their
        back-off, and every scrape of a fetcher that cannot be driven by callbacks. Once a
        scrape succeeded on a kept-alive lean connection the endpoint is handed to its
        cohort's timer (``_drive``) and the task ends."""
        loop = asyncio.get_running_loop()
        phase = self.scrape_phase(state.endpoint.id)
        tick = self._next_tick(phase, loop.time()) if start is None else start
        await self._nap(state, loop, tick)
        while True:
            started = loop.time()
            await self._scrape(state)
            now = loop.time()
            self._stir_if_slow(state, now - started)
            if state.consecutive_failures:
                tick = self._backoff(state, now)
            else:
                # Past the tick this scrape was for, even when its timer fired a little
                # early (libuv rounds to milliseconds): else that tick came due again.
                tick = self._next_due(state, phase, max(now, tick + self.interval / 2))
                if isinstance(state.fetch, LeanFetch) and state.fetch.ready and self._running:
                    self._drive(state, tick)
                    state.task = None
                    return
                if state.calm:
                    await self._nap(state, loop, tick)
                    if state.calm:
                        continue
                    tick = self._next_tick(phase, loop.time())  # stirred: back at once
            await self._nap(state, loop, tick)

    def _backoff(self, state: EndpointState, now: float) -> float:
        exponent = min(state.consecutive_failures, 30)
        delay = min(self.max_backoff, self.interval * 2.0**exponent)
        return now + delay * self._rng.uniform(0.75, 1.0)

    def _next_due(self, state: EndpointState, phase: float, now: float) -> float:
        """The next scrape of a healthy endpoint: the next tick, or the next calm tick (a
        coarser grid of the same phase, period <= calm_cap, so a cohort's calm endpoints
        wake together)."""
        return self._next_tick(phase, now, self.calm_period if state.calm else None)

    @staticmethod
    async def _nap(state: EndpointState, loop: asyncio.AbstractEventLoop, until: float) -> None:
        """Sleep until ``until`` on the loop's clock like ``asyncio.sleep`` (without its
        loop lookup, a getpid() system call each); ``_stir`` ends a calm endpoint's early."""
        nap = state.nap = loop.create_future()
        handle = loop.call_at(until, _wake, nap)
        try:
            await nap
        finally:
            handle.cancel()
            state.nap = None

    async def _scrape(self, state: EndpointState) -> None:
        if state.fetch is None:
            return
        try:
            status, body = await state.fetch.get(self.timeout)
        except FetchError as exc:
            self._fetch_failed(state, exc)
            return
        self._answer(state, status, body)

    def _fetch_failed(self, state: EndpointState, exc: FetchError) -> None:
        if exc.kind == TOO_BIG:  # the server answered: up, but no usable metrics
            self._reachable(state)
            self._soft_failure(state, PARSE, str(exc))
        else:
            self._transport_failure(state, exc.kind, str(exc))

    def _answer(self, state: EndpointState, status: int, body: bytes) -> None:
        """A page came (any status): readiness, then the figures to the table."""
        self._reachable(state)
        if status != 200:
            self._soft_failure(state, HTTP_STATUS, f"GET {state.url} returned HTTP {status}")
            return
        engine = self.engine_of(state.endpoint)
        spec = self.engines.get(engine)
        if body == state.page and spec is state.spec and state.last is not None:
            self._write(state, state.last)  # the very same page: same figures, fresh time
            return
        if spec is None:
            self._soft_failure(
                state, PARSE, f"unknown engine {engine!r}; expected one of {sorted(self.engines)}"
            )
            return
        try:
            scraped = extract(spec, body)
        except MetricsParseError as exc:
            self._soft_failure(state, PARSE, f"GET {state.url}: {exc}")
            return
        except Exception as exc:  # never let a surprising page kill the scraper
            self._soft_failure(state, PARSE, f"GET {state.url}: {type(exc).__name__}: {exc}")
            return
        if self._write(state, scraped):
            state.page, state.spec = body, spec

    def _write(self, state: EndpointState, scraped: Scraped) -> bool:
        """Write a scrape's figures to the table (and note whether the endpoint is calm);
        False when the core refused the row."""
        endpoint = state.endpoint
        now = self._clock()
        same = scraped == state.last
        row = state.row
        if row is None or not same:
            lora_active = lora_waiting = None
            if scraped.lora_running is not None:
                lora_active = self._adapter_list(scraped.lora_running)
                lora_waiting = self._adapter_list(scraped.lora_waiting or ())
            row = {
                "waiting": scraped.waiting,
                "running": scraped.running,
                "kv_util": scraped.kv_util,
                "kv_blocks": scraped.num_blocks or -1,
                "block_size": scraped.block_size or -1,
                "max_lora": -1 if scraped.max_lora is None else scraped.max_lora,
                "lora_active": lora_active,
                "lora_waiting": lora_waiting,
            }
        try:
            self.pool.table.update(endpoint.id, now=now, **row)
        except Exception as exc:  # the core rejected the row (should not happen)
            self._soft_failure(state, UPDATE, f"table.update rejected the scrape: {exc}")
            return False
        state.row = row
        if not same:
            self._stir(state, "its figures changed")
        elif scraped.waiting:
            self._stir(state, f"{scraped.waiting} requests are waiting")
        elif self.calm_cap > self.interval:
            state.unchanged += 1
            if not state.calm and state.unchanged >= CALM_AFTER:
                state.calm = True
                log.debug(
                    "endpoint %s is calm (figures unchanged over %d scrapes, nobody waiting): "
                    "scraped every %.3fs until something changes",
                    endpoint.address, state.unchanged, self.calm_cap,
                )  # fmt: skip
        if state.last_error:
            log.info(
                "endpoint %s metrics flow again after %d errors (%s)",
                endpoint.address, sum(state.errors.values()), state.last_error,
            )  # fmt: skip
            state.last_error = state.last_error_kind = ""
        state.scrapes += 1
        state.last_success = now
        state.last = scraped
        if scraped.num_blocks and scraped.block_size:
            capacity = max(1, scraped.num_blocks * scraped.block_size // self.block_tokens)
            if capacity != state.capacity_blocks:
                self.pool.index.set_capacity(endpoint.id, capacity)
                log.debug(
                    "endpoint %s prefix capacity %d blocks (%d KV blocks x %d tokens / %d)",
                    endpoint.address, capacity, scraped.num_blocks, scraped.block_size,
                    self.block_tokens,
                )  # fmt: skip
                state.capacity_blocks = capacity
        return True

    def _adapter_list(self, names) -> list[int]:
        ids = []
        for name in names:
            adapter = self._adapter_ids.get(name)
            if adapter is None:
                try:
                    adapter = self.pool.table.adapter_id(name)
                except Exception as exc:  # registry full (256 adapters)
                    self.errors["adapter"] += 1
                    if self.errors["adapter"] == 1:
                        log.warning("cannot register LoRA adapter %r: %s", name, exc)
                    continue
                self._adapter_ids[name] = adapter
            ids.append(adapter)
        return ids

    # -- readiness ------------------------------------------------------------------------
    def _apply_ready(self, state: EndpointState) -> None:
        ready = not state.down and not state.demoted
        if ready != state.ready:
            self.pool.table.set_ready(state.endpoint.id, ready)
            state.ready = ready

    def _reachable(self, state: EndpointState) -> None:
        if state.down:
            log.warning(
                "endpoint %s is reachable again after %d failed scrapes (down for %.1fs); "
                "ready%s",
                state.endpoint.address, state.consecutive_failures,
                self._clock() - state.down_since,
                " once its demotion ends" if state.demoted else "",
            )  # fmt: skip
            state.down = False
        state.consecutive_failures = 0
        self._apply_ready(state)

    def _transport_failure(self, state: EndpointState, kind: str, message: str) -> None:
        state.consecutive_failures += 1
        self._count(state, kind, message)
        if not state.down and state.consecutive_failures >= self.down_after:
            state.down = True
            state.down_since = self._clock()
            log.warning(
                "endpoint %s is down: %d scrapes in a row failed (last: %s); not ready until "
                "it answers again",
                state.endpoint.address, state.consecutive_failures, message,
            )  # fmt: skip
            self._apply_ready(state)

    def _unexpected(self, state: EndpointState, exc: Exception) -> None:
        """Handling a scrape's answer raised (a bug): count it, keep the scraper going."""
        self._soft_failure(state, UPDATE, f"scrape handling failed: {exc!r}")

    def _soft_failure(self, state: EndpointState, kind: str, message: str) -> None:
        """The server answered but gave no usable metrics: keep old values, stay ready."""
        self._count(state, kind, message)

    def _count(self, state: EndpointState, kind: str, message: str) -> None:
        self._stir(state, f"a scrape failed ({kind})")
        self.errors[kind] += 1
        state.errors[kind] += 1
        now = self._clock()
        # Log when the kind of failure changes, else at most once a minute: a page whose
        # bad value changes every scrape must not log 20 lines a second.
        if kind != state.last_error_kind or now - state.last_logged >= LOG_EVERY:
            # A lone transport blip is routine (the "down" transition is what warns); a
            # server that answers with no usable metrics is worth a warning at once.
            level = logging.DEBUG if kind in _TRANSPORT_KINDS else logging.WARNING
            log.log(
                level,
                "endpoint %s scrape failed (%s, %d so far): %s; keeping metrics from %s",
                state.endpoint.address, kind, state.errors[kind], message,
                "never" if state.last_success is None
                else f"{now - state.last_success:.2f}s ago",
            )  # fmt: skip
            state.last_logged = now
        state.last_error = message
        state.last_error_kind = kind

    # -- outlier detection ----------------------------------------------------------------
    def report_response(self, endpoint: Endpoint | int, ok: bool) -> None:
        """Record one response's outcome (5xx or a broken stream = not ok). Cheap: call it
        on every response end (the state is looked up here, without ``state``'s call)."""
        by_id = isinstance(endpoint, int)
        state = self._states.get(endpoint if by_id else endpoint.id)  # type: ignore[union-attr]
        if state is None or state.demoted:
            return
        if not by_id and state.endpoint is not endpoint:
            return  # a removed endpoint whose id was reused
        now = self._clock()
        state.outcomes.add(now, ok)
        if ok or state.down:
            return
        self._stir(state, "a response from it failed")
        reason = self._outlier_reason(state, now)
        if reason is None:
            return
        failures, total = state.outcomes.counts(now)
        demoted = sum(s.demoted for s in self._states.values())
        if demoted + 1 > self.max_demoted_fraction * len(self._states):
            if state.errors["withheld"] == 0:
                log.warning(
                    "endpoint %s: %d of %d responses failed in %.0fs, but %d of %d endpoints "
                    "are already demoted (limit %.0f%%); keeping it in rotation",
                    state.endpoint.address, failures, total, self.outlier.window, demoted,
                    len(self._states), 100 * self.max_demoted_fraction,
                )  # fmt: skip
            state.errors["withheld"] += 1
            return
        if now - state.restored_at >= self.outlier.stable_after:
            state.demotions = 0  # it served long enough since the last demotion
        state.demotions += 1
        state.demoted = True
        state.demoted_at = now
        self._apply_ready(state)
        delay = self.outlier.first_probe_delay(state.demotions)
        last = state.last
        scrape = (
            "no metrics yet"
            if last is None or state.last_success is None
            else f"metrics {now - state.last_success:.2f}s old: waiting={last.waiting} "
            f"running={last.running} kv={last.kv_util:.2f}"
        )
        log.warning(
            "demoting endpoint %s: %d of %d responses failed in the last %.0fs (%s) while it "
            "answers its scrapes (%s); demotion %d in a row, probing /health in %.1fs",
            state.endpoint.address, failures, total, self.outlier.window, reason, scrape,
            state.demotions, delay,
        )  # fmt: skip
        state.probe_task = asyncio.get_running_loop().create_task(
            self._probe_loop(state, delay), name=f"igw-probe {state.endpoint.address}"
        )

    def _outlier_reason(self, state: EndpointState, now: float) -> str | None:
        """Why ``state``'s recent outcomes make it an outlier, or None when they do not."""
        policy = self.outlier
        if state.outcomes.is_outlier(now):
            return f"at least {policy.error_rate:.0%} failed"
        failures, total = state.outcomes.counts(now)
        if (
            policy.relative_factor <= 0
            or failures < policy.min_failures
            or failures < policy.relative_min_rate * total
        ):
            return None
        peer_failures = peer_total = 0
        for other in self._states.values():
            if other is not state and not other.demoted and not other.down:
                f, t = other.outcomes.counts(now)
                peer_failures += f
                peer_total += t
        if peer_total < policy.min_failures:
            return None  # no baseline to compare with
        peer_rate = peer_failures / peer_total
        if failures >= policy.relative_factor * peer_rate * total:
            return f"{failures / total:.0%} against {peer_rate:.0%} for the rest of the pool"
        return None

    async def _probe_loop(self, state: EndpointState, delay: float) -> None:
        attempts = 0
        while True:
            await asyncio.sleep(delay * self._rng.uniform(0.8, 1.2))
            attempts += 1
            ok, detail = await self._probe(state.endpoint)
            if ok:
                state.demoted = False
                state.restored_at = self._clock()
                state.outcomes.clear()
                state.probe_task = None
                self._apply_ready(state)
                log.warning(
                    "restoring endpoint %s: %s after %d probe(s), demoted for %.1fs%s",
                    state.endpoint.address, detail, attempts, self._clock() - state.demoted_at,
                    "" if state.ready else " (still not ready: it is down)",
                )  # fmt: skip
                return
            log.info(
                "endpoint %s still demoted: probe %d %s; next in %.1fs",
                state.endpoint.address, attempts, detail,
                min(delay * 2, self.outlier.max_probe_backoff),
            )  # fmt: skip
            delay = min(delay * 2, self.outlier.max_probe_backoff)

    async def _probe(self, endpoint: Endpoint) -> tuple[bool, str]:
        """GET /health (or /v1/models when the server has no /health): 2xx = healthy."""
        session = self._session
        if session is None:
            return False, "no HTTP session"
        detail = ""
        for path in ("/health", "/v1/models"):
            url = endpoint.base_url + path
            try:
                async with session.get(url, timeout=self._client_timeout, ssl=False) as resp:
                    await resp.read()
                    detail = f"GET {path} answered {resp.status}"
                    if 200 <= resp.status < 300:
                        return True, detail
                    if resp.status != 404:
                        return False, detail
            except asyncio.CancelledError:
                raise
            except (asyncio.TimeoutError, aiohttp.ClientError, OSError) as exc:
                return False, f"GET {path} failed: {type(exc).__name__}: {exc}"
        return False, detail

    # -- model list -----------------------------------------------------------------------
    async def fetch_models(self, endpoint: Endpoint) -> list[ModelInfo]:
        """The models an endpoint serves, from its OpenAI ``/v1/models`` list, each with its
        ``parent`` (vLLM lists a LoRA adapter with ``parent`` = its base model; None for a
        base model or a server that does not say).

        Raises ``DataLayerError`` naming the URL and what was wrong.
        """
        url = endpoint.base_url + "/v1/models"
        session = self._session
        temporary = session is None or session.closed
        if temporary:
            session = self._new_session()
        assert session is not None
        try:
            async with session.get(url, timeout=self._client_timeout, ssl=False) as resp:
                if resp.status != 200:
                    raise DataLayerError(f"GET {url} returned HTTP {resp.status}; expected 200")
                try:
                    payload = await resp.json(content_type=None)
                except ValueError as exc:
                    raise DataLayerError(f"GET {url}: body is not JSON ({exc})") from None
        except (asyncio.TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise DataLayerError(f"GET {url} failed: {type(exc).__name__}: {exc}") from None
        finally:
            if temporary:
                with contextlib.suppress(Exception):
                    await session.close()
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, list):
            raise DataLayerError(
                f'GET {url}: expected an OpenAI model list {{"data": [{{"id": ...}}]}}'
            )
        models = []
        for i, item in enumerate(data):
            name = item.get("id") if isinstance(item, dict) else None
            if not isinstance(name, str) or not name:
                raise DataLayerError(f"GET {url}: data[{i}].id must be a non-empty string")
            parent = item.get("parent")
            if parent is not None and not isinstance(parent, str):
                raise DataLayerError(f"GET {url}: data[{i}].parent must be a string or null")
            models.append(ModelInfo(name, parent or None))
        return models
