"""Busy polling (``igw serve --busy-poll-us``): the loop keeps polling for a window after each
read, then sleeps again; off by default."""

from __future__ import annotations

import argparse
import asyncio
import logging

import pytest
from tests.gateway.conftest import RankingEngine

from igw import busypoll, datastore
from igw.busypoll import BusyPollCollector, BusyPoller, make_poller
from igw.gateway.app import Limits
from igw.gateway.routing import ModelRouter, PoolRuntime
from igw.gateway.runtime import build_gateway
from igw.gateway.upstream import UpstreamPool

COMPLETION = {"model": "sim-model", "prompt": "Once upon a time", "max_tokens": 4}


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(busypoll, "_clock", fake)
    return fake


async def loop_passes(count: int) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


def test_busy_polling_is_off_by_default() -> None:
    assert Limits().busy_poll_us == 0
    assert make_poller(0) is None


def test_a_negative_window_is_refused_with_its_unit() -> None:
    with pytest.raises(ValueError, match="busy poll: expected microseconds >= 0, got -5"):
        make_poller(-5)


async def spinning_after(clock: FakeClock, quiet: float) -> bool:
    """Whether a 1 ms poller still spins ``quiet`` seconds after its only read."""
    poller = BusyPoller(0.001)
    poller.poke()
    await loop_passes(3)
    clock.now += quiet
    await loop_passes(3)
    return poller.spinning


async def test_a_poke_keeps_the_loop_polling_within_the_window(clock) -> None:
    assert await spinning_after(clock, 0.0009)


async def test_polling_stops_once_the_window_has_passed_without_a_read(clock) -> None:
    assert not await spinning_after(clock, 0.0011)


async def test_each_read_restarts_the_window(clock) -> None:
    poller = BusyPoller(0.001)
    poller.poke()
    await loop_passes(3)
    clock.now += 0.0008
    poller.poke()
    await loop_passes(3)
    clock.now += 0.0008  # 1.6 ms after the first read, 0.8 ms after the second
    await loop_passes(3)
    assert poller.spinning


async def test_each_pass_of_the_spin_gives_the_cpu_to_other_runnable_threads(
    clock, monkeypatch
) -> None:
    yields = []
    monkeypatch.setattr(busypoll, "_give_way", lambda: yields.append(1))
    poller = BusyPoller(0.001)
    poller.poke()
    await loop_passes(4)
    assert len(yields) >= 3  # one sched_yield per loop pass while spinning
    clock.now += 0.002
    await loop_passes(3)
    stopped_at = len(yields)
    await loop_passes(3)
    assert len(yields) == stopped_at  # and none once it stopped


async def test_spin_time_counts_each_spell_from_its_first_read_to_its_end(clock) -> None:
    poller = BusyPoller(0.001)
    poller.poke()
    await loop_passes(3)
    clock.now += 0.0004
    poller.poke()  # a read within the spell extends it
    await loop_passes(3)
    clock.now += 0.0011
    await loop_passes(3)
    assert not poller.spinning
    assert poller.episodes == 1
    assert poller.spin_seconds() == pytest.approx(0.0015)


async def test_spin_time_includes_the_spell_under_way(clock) -> None:
    poller = BusyPoller(0.001)
    poller.poke()
    await loop_passes(2)
    clock.now += 0.0005
    assert poller.spin_seconds() == pytest.approx(0.0005)
    assert poller.episodes == 0


def test_the_collector_shows_the_window_the_spin_time_and_the_spells() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    registry.register(BusyPollCollector(BusyPoller(0.001)))
    text = generate_latest(registry).decode()
    assert "igw_busy_poll_window_seconds 0.001" in text
    assert "igw_busy_poll_seconds_total 0.0" in text
    assert "igw_busy_poll_spells_total 0.0" in text


async def test_polling_does_not_hold_back_other_callbacks(clock) -> None:
    # the loop stays responsive while spinning: a timer and I/O callbacks still run
    poller = BusyPoller(60.0)
    poller.poke()
    await asyncio.wait_for(asyncio.sleep(0.01), timeout=2)
    assert poller.spinning
    clock.now += 61  # let it stop before the loop closes
    await loop_passes(3)
    assert not poller.spinning


async def test_a_gateway_polls_after_serving_a_request_and_answers_as_usual(
    replicas, make_gateway, client
) -> None:
    gw = await make_gateway(replicas[:1], limits=Limits(busy_poll_us=50_000))
    if not isinstance(gw.gateway.forwarder.upstream, UpstreamPool):
        pytest.skip("the aiohttp client's reads are aiohttp's own: nothing pokes the poller")
    poller = gw.gateway.poller
    async with client.post(gw.url + "/v1/completions", json=COMPLETION) as response:
        assert response.status == 200
        assert (await response.json())["choices"][0]["text"] == "hello"
    assert poller.spinning  # the replica's answer was read less than 50 ms ago
    for _ in range(200):  # then it goes back to sleep
        if not poller.spinning:
            break
        await asyncio.sleep(0.01)
    assert not poller.spinning


async def test_a_gateway_without_busy_polling_has_no_poller(replicas, make_gateway) -> None:
    gw = await make_gateway(replicas[:1], limits=Limits())
    assert gw.gateway.poke is None


@pytest.mark.parametrize("value", ["-1", "2000000", "nan"])
def test_serve_refuses_a_busy_poll_window_out_of_range(value, capsys) -> None:
    from igw.gateway import command

    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args(["--sim", "1", "--port", "0", "--busy-poll-us", value])
    assert command.run(args) == 2
    assert (
        "--busy-poll-us: expected microseconds from 0 (off) to 1000000" in capsys.readouterr().err
    )


async def test_busy_polling_with_nothing_to_report_reads_warns_at_start(replicas, caplog) -> None:

    pool = datastore.Pool("default")
    runtime = PoolRuntime(pool, models={"sim-model"})
    limits = Limits(busy_poll_us=1000, frontend="aiohttp", lean_client=False)
    gateway = build_gateway(ModelRouter([runtime]), RankingEngine(), limits=limits)
    with caplog.at_level(logging.WARNING, logger="igw.gateway"):
        await gateway.start("127.0.0.1", 0)
    await gateway.stop()
    assert "busy polling is on but has nothing to keep it going" in caplog.text
