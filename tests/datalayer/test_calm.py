"""Calm scraping: endpoints whose figures do not move are scraped less often, never stale."""

from __future__ import annotations

import argparse
import asyncio
import logging
import types

import pytest

import igw.datalayer.layer as layer_module
from igw.datalayer import DataLayer
from igw.datalayer.freshness import strictest_staleness
from igw.datalayer.layer import CALM_AFTER, CONSUMER_STALENESS
from igw.datalayer.testing import vllm_page
from igw.flowcontrol.detectors import UtilizationDetector

from .helpers import wait_until

# Base tick 20 ms; calm scrapes every 200 ms (readers allow 1 s, so the cap is not cut).
CALM = {"interval": 0.02, "timeout": 0.3, "max_backoff": 0.05, "seed": 1}
SLOW = {**CALM, "calm_interval": 0.2, "consumer_staleness": 1.0}
IDLE_PAGE = vllm_page(0, 0, 0.1)


@pytest.fixture
async def layer(pool):
    made: list[DataLayer] = []

    def make(**kwargs) -> DataLayer:
        dl = DataLayer(pool, **{**SLOW, **kwargs})
        made.append(dl)
        return dl

    yield make
    for dl in made:
        await dl.stop()


async def calm_now(dl: DataLayer, endpoint) -> None:
    await wait_until(lambda: dl.state(endpoint).calm, timeout=3.0)


async def test_a_calm_endpoint_is_scraped_less_often(pool, servers, layer):
    idle, queued = await servers(IDLE_PAGE), await servers(vllm_page(2, 1, 0.1))
    quiet = pool.upsert(idle.address)
    pool.upsert(queued.address)
    dl = layer()
    await dl.start()
    await calm_now(dl, quiet)
    idle_before, queued_before = idle.metrics_hits, queued.metrics_hits
    await asyncio.sleep(0.6)
    idle_hits = idle.metrics_hits - idle_before
    queued_hits = queued.metrics_hits - queued_before
    # Base cadence: ~30 scrapes in 0.6 s; calm: one per 0.2 s, so about 3.
    assert queued_hits >= 12
    assert 1 <= idle_hits <= 5
    assert dl.state(quiet).calm


async def test_a_new_endpoint_starts_on_the_base_interval(pool, servers, layer):
    server = await servers(IDLE_PAGE)
    endpoint = pool.upsert(server.address)
    dl = layer()
    await dl.start()
    await wait_until(lambda: dl.state(endpoint).scrapes >= 1)
    assert not dl.state(endpoint).calm  # not before CALM_AFTER unchanged scrapes
    await calm_now(dl, endpoint)
    assert dl.state(endpoint).scrapes >= CALM_AFTER + 1


async def test_a_change_brings_a_calm_endpoint_back_to_the_base_interval_at_once(
    pool, servers, layer
):
    server = await servers(IDLE_PAGE)
    endpoint = pool.upsert(server.address)
    dl = layer()
    await dl.start()
    await calm_now(dl, endpoint)
    server.page = vllm_page(0, 1, 0.3)  # a request started: running and KV moved
    state = dl.state(endpoint)
    await wait_until(lambda: not state.calm)
    seen_at, scrapes = state.last_success, state.scrapes
    assert state.last is not None and state.last.running == 1
    await wait_until(lambda: state.scrapes > scrapes)
    # The next scrape comes one base tick later (20 ms), not a calm period (200 ms) later.
    assert state.last_success - seen_at < 0.1


async def test_a_waiting_queue_keeps_the_base_interval(pool, servers, layer):
    server = await servers(vllm_page(3, 4, 0.5))  # unchanged figures, but a queue
    endpoint = pool.upsert(server.address)
    dl = layer()
    await dl.start()
    await wait_until(lambda: dl.state(endpoint).scrapes >= 3 * CALM_AFTER)
    before = server.metrics_hits
    await asyncio.sleep(0.3)
    assert not dl.state(endpoint).calm
    assert server.metrics_hits - before >= 8  # ~15 at 20 ms; calm would be 1-2


async def test_requests_of_igw_in_flight_alone_do_not_stir_a_calm_endpoint(pool, servers, layer):
    server = await servers(IDLE_PAGE)
    endpoint = pool.upsert(server.address)
    dl = layer()
    await dl.start()
    await calm_now(dl, endpoint)
    pool.table.add_inflight(endpoint.id, 1, 100)  # igw sent it a request; its page stays put
    state = dl.state(endpoint)
    scrapes = state.scrapes
    await wait_until(lambda: state.scrapes >= scrapes + 2, timeout=2.0)  # two calm scrapes
    assert state.calm
    pool.table.add_inflight(endpoint.id, -1, -100)


async def test_a_busy_model_server_page_stirs_a_calm_endpoint_with_igw_requests_on_it(
    pool, servers, layer
):
    server = await servers(IDLE_PAGE)
    endpoint = pool.upsert(server.address)
    dl = layer()
    await dl.start()
    await calm_now(dl, endpoint)
    pool.table.add_inflight(endpoint.id, 1, 100)
    server.page = vllm_page(0, 1, 0.2)  # the server runs igw's request: its figures move
    await wait_until(lambda: not dl.state(endpoint).calm, timeout=1.0)
    pool.table.add_inflight(endpoint.id, -1, -100)


async def test_a_failed_response_wakes_a_calm_endpoint_at_once(pool, servers, layer):
    server = await servers(IDLE_PAGE)
    endpoint = pool.upsert(server.address)
    dl = layer()
    await dl.start()
    await calm_now(dl, endpoint)
    state = dl.state(endpoint)
    scrapes = state.scrapes
    await wait_until(lambda: state.scrapes > scrapes)  # a calm scrape: the next is 0.2 s off
    scrapes = state.scrapes
    loop = asyncio.get_running_loop()
    reported = loop.time()
    dl.report_response(endpoint, ok=False)
    assert not state.calm
    await wait_until(lambda: state.scrapes > scrapes)
    assert loop.time() - reported < 0.1  # a base tick (20 ms), not the rest of 200 ms


async def test_a_scrape_failure_puts_a_calm_endpoint_back_on_every_tick(pool, servers, layer):
    server = await servers(IDLE_PAGE)
    endpoint = pool.upsert(server.address)
    dl = layer()
    await dl.start()
    await calm_now(dl, endpoint)
    server.metrics_status = 500
    await wait_until(lambda: dl.state(endpoint).errors["http_status"] >= 1, timeout=1.0)
    assert not dl.state(endpoint).calm
    before = server.metrics_hits
    await asyncio.sleep(0.2)
    assert server.metrics_hits - before >= 5  # every tick while it fails (~10)


async def test_an_endpoint_slow_to_answer_is_never_calm(pool, layer):
    endpoint = pool.upsert("127.0.0.1:9")
    dl = layer()
    page = vllm_page(0, 0, 0.1)

    class SlowFetch:
        calls = 0

        async def get(self, timeout):
            SlowFetch.calls += 1
            await asyncio.sleep(0.03)  # longer than a 20 ms tick
            return 200, page

        def close(self):
            pass

    await dl.start()
    dl.state(endpoint).fetch = SlowFetch()
    await wait_until(lambda: SlowFetch.calls >= 4 * CALM_AFTER)
    assert dl.state(endpoint).scrapes >= 3 * CALM_AFTER
    assert not dl.state(endpoint).calm
    assert dl.stats()["calm"] == 0


async def test_calm_interval_equal_to_the_interval_turns_calm_scraping_off(pool, servers, layer):
    server = await servers(IDLE_PAGE)
    endpoint = pool.upsert(server.address)
    dl = layer(calm_interval=CALM["interval"])
    await dl.start()
    await wait_until(lambda: dl.state(endpoint).scrapes >= 3 * CALM_AFTER)
    assert not dl.state(endpoint).calm
    assert dl.calm_cap == dl.interval


async def test_an_identical_page_is_not_parsed_again(pool, servers, layer, monkeypatch):
    parsed = []
    real = layer_module.extract

    def counting(spec, page):
        parsed.append(page)
        return real(spec, page)

    monkeypatch.setattr(layer_module, "extract", counting)
    server = await servers(vllm_page(1, 1, 0.2))
    endpoint = pool.upsert(server.address)
    dl = layer()
    await dl.start()
    await wait_until(lambda: dl.state(endpoint).scrapes >= 4)
    assert len(parsed) == 1
    first_update = float(pool.table.snapshot().updated_at[endpoint.id])
    server.page = vllm_page(1, 2, 0.2)
    await wait_until(lambda: dl.state(endpoint).last.running == 2)
    assert len(parsed) == 2
    # Unparsed scrapes still refresh the row's time (readers judge staleness by it).
    assert float(pool.table.snapshot().updated_at[endpoint.id]) > first_update


async def test_flow_control_never_sees_stale_metrics_on_a_calm_fleet(pool, servers, layer):
    fleet = [await servers(IDLE_PAGE) for _ in range(3)]
    endpoints = [pool.upsert(s.address) for s in fleet]
    # Asked for 1 s between calm scrapes; the reader's 0.2 s threshold must win.
    dl = layer(calm_interval=1.0, consumer_staleness=CONSUMER_STALENESS)
    assert dl.calm_cap <= CONSUMER_STALENESS / 2
    detector = UtilizationDetector(staleness=CONSUMER_STALENESS)
    await dl.start()
    for endpoint in endpoints:
        await calm_now(dl, endpoint)
    hits = sum(s.metrics_hits for s in fleet)
    worst = 0.0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 1.0
    while loop.time() < deadline:
        worst = max(worst, detector.saturation(pool))
        await asyncio.sleep(0.005)
    # KV 0.1 / 0.8 = 0.125 per endpoint; a stale one would read 1.0.
    assert worst == pytest.approx(0.125)
    assert all(dl.state(e).calm for e in endpoints)
    assert dl.stats()["calm"] == 3
    assert sum(s.metrics_hits for s in fleet) - hits <= 3 * 12  # calm (base: ~150)


async def test_a_stricter_reader_shortens_the_calm_interval(pool, servers, layer):
    server = await servers(IDLE_PAGE)
    endpoint = pool.upsert(server.address)
    dl = layer(calm_interval=1.0, consumer_staleness=1.0)
    dl.require_fresh(0.08)
    assert dl.calm_cap == pytest.approx(0.04)
    detector = UtilizationDetector(staleness=0.08)
    await dl.start()
    await calm_now(dl, endpoint)
    loop = asyncio.get_running_loop()
    deadline, worst = loop.time() + 0.6, 0.0
    while loop.time() < deadline:
        worst = max(worst, detector.saturation(pool))
        await asyncio.sleep(0.005)
    assert worst == pytest.approx(0.125)


def test_the_calm_cap_is_half_the_strictest_threshold(pool):
    dl = DataLayer(pool, interval=0.05, staleness=2.0, calm_interval=5.0)
    assert dl.calm_cap == pytest.approx(CONSUMER_STALENESS / 2)  # flow control's default
    dl.require_fresh(0.12)
    assert dl.calm_cap == pytest.approx(0.06)
    assert dl.calm_period == pytest.approx(0.05)  # whole ticks within the cap
    dl.require_fresh(0.05)
    assert dl.calm_cap == dl.interval  # never below the interval: calm scraping is off
    own = DataLayer(pool, interval=0.05, staleness=0.3, consumer_staleness=10.0)
    assert own.calm_cap == pytest.approx(0.15)  # the data layer's own staleness counts too


async def test_cadence_changes_are_logged_at_debug(pool, servers, layer, caplog):
    caplog.set_level(logging.DEBUG, logger="igw.datalayer")
    server = await servers(IDLE_PAGE)
    endpoint = pool.upsert(server.address)
    dl = layer()
    await dl.start()
    await calm_now(dl, endpoint)
    server.page = vllm_page(0, 1, 0.3)
    await wait_until(lambda: not dl.state(endpoint).calm)
    text = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any(server.address in m and "is calm" in m for m in text)
    assert any(server.address in m and "its figures changed" in m for m in text)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"interval": 0.05, "calm_interval": 0.01}, "calm_interval must be >= interval"),
        ({"calm_interval": float("inf")}, "calm_interval must be a positive number"),
        ({"consumer_staleness": 0}, "consumer_staleness must be a positive number"),
    ],
)
def test_bad_calm_settings_are_rejected_with_the_setting_named(pool, kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        DataLayer(pool, **kwargs)


def test_require_fresh_rejects_a_non_positive_threshold(pool):
    with pytest.raises(ValueError, match="staleness must be a positive number"):
        DataLayer(pool).require_fresh(0)


def serve_args(*argv: str) -> argparse.Namespace:
    from igw.gateway import command

    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return parser.parse_args(["--sim", "1", "--port", "0", *argv])


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--scrape-calm-interval", "0.01"], "--scrape-calm-interval: expected seconds >= "),
        (["--scrape-calm-interval", "inf"], "--scrape-calm-interval"),
        (["--scrape-interval", "0"], "--scrape-interval: expected seconds > 0"),
    ],
)
def test_serve_rejects_a_bad_calm_interval_flag(argv, needle, capsys):
    from igw.gateway import command

    assert command.run(serve_args(*argv)) == 2
    assert needle in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "ok"),
    [(["--refresh-metrics-calm-interval", "10ms"], False),
     (["--refresh-metrics-calm-interval", "200ms"], True),
     ([], True)],
)  # fmt: skip
def test_epp_validates_the_calm_interval_flag(argv, ok):
    from igw.extproc import command

    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args(["--endpoints", "127.0.0.1:8000", *argv])
    if ok:
        command._validate(args)
    else:
        with pytest.raises(command.UsageError, match="--refresh-metrics-calm-interval"):
            command._validate(args)


def test_strictest_staleness_finds_every_detector_of_a_pipeline_and_flow_control():
    from igw.flowcontrol import FlowControl

    strict = {
        "flowControl": {},
        "plugins": [
            {
                "name": "sd",
                "type": "utilization-detector",
                "parameters": {"metricsStalenessThreshold": "120ms"},
            }
        ],
        "saturationDetector": {"pluginRef": "sd"},
    }
    flow = FlowControl.from_configs({"a": {}, "b": strict})
    assert flow is not None

    class Stage:
        name = "flowcontrol"
        detector = UtilizationDetector(staleness=0.5)

    pipeline = types.SimpleNamespace(stages=(object(), Stage()))
    assert strictest_staleness(pipeline, flow) == pytest.approx(0.12)
    assert strictest_staleness(pipeline) == pytest.approx(0.5)
    assert strictest_staleness(None, object()) is None


async def test_igw_serve_bounds_calm_scraping_by_its_pools_detectors(tmp_path):
    from igw.gateway import command
    from igw.gateway.serve import ServeOptions, start_stack

    picker = tmp_path / "picker.yaml"
    picker.write_text(
        "apiVersion: inference.networking.x-k8s.io/v1alpha1\n"
        "kind: EndpointPickerConfig\n"
        "plugins:\n"
        "- {name: sd, type: utilization-detector,"
        " parameters: {metricsStalenessThreshold: 80ms}}\n"
        "saturationDetector: {pluginRef: sd}\n"
    )
    args = serve_args("--epp-config", str(picker))
    stack = await start_stack(
        command.config_from_args(args),
        ServeOptions(port=0, epp_config=picker, scrape_interval=0.02, scrape_calm_interval=0.5),
    )
    try:
        (layer,) = stack.datalayers
        assert layer.calm_interval == 0.5
        assert layer.calm_cap == pytest.approx(0.04)  # half the pool's 80 ms threshold
    finally:
        await stack.stop()
