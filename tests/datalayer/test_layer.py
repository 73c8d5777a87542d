"""DataLayer against fake model servers: values, readiness, staleness, outliers, models."""

from __future__ import annotations

import asyncio
import itertools
import logging

import pytest

from igw.datalayer import DataLayer, DataLayerError, OutlierPolicy
from igw.datalayer.layer import SCRAPE_COHORT
from igw.datalayer.testing import (
    LoraSeries,
    sglang_page,
    triton_page,
    triton_trtllm_page,
    trtllm_page,
    vllm_page,
)
from igw.datalayer.transport import HAVE_HTTPTOOLS

from .helpers import wait_until

FAST = {"interval": 0.02, "timeout": 0.3, "max_backoff": 0.05, "seed": 1}


def row(pool, endpoint):
    snap = pool.table.snapshot()
    i = endpoint.id
    return {
        "ready": bool(snap.ready[i]),
        "waiting": int(snap.waiting[i]),
        "running": int(snap.running[i]),
        "kv_util": round(float(snap.kv_util[i]), 4),
        "kv_blocks": int(snap.kv_blocks[i]),
        "block_size": int(snap.block_size[i]),
        "max_lora": int(snap.max_lora[i]),
        "updated_at": float(snap.updated_at[i]),
        "lora_active": snap.lora_active[i].copy(),
        "lora_waiting": snap.lora_waiting[i].copy(),
    }


def bits(pool, names):
    words = [0, 0, 0, 0]
    for name in names:
        a = pool.table.adapter_id(name)
        words[a // 64] |= 1 << (a % 64)
    return words


TRANSPORTS = [
    "aiohttp",
    pytest.param(
        "httptools", marks=pytest.mark.skipif(not HAVE_HTTPTOOLS, reason="httptools not installed")
    ),
]


@pytest.fixture(params=TRANSPORTS)
async def layer(pool, request):
    """DataLayer factory; every test using it runs once per page-fetching transport."""
    layers = []

    def make(**kwargs):
        dl = DataLayer(pool, **{**FAST, "transport": request.param, **kwargs})
        layers.append(dl)
        return dl

    yield make
    for dl in layers:
        await dl.stop()


@pytest.mark.parametrize(
    ("engine", "page", "expected"),
    [
        ("vllm", vllm_page(4, 2, 0.5), (4, 2, 0.5)),
        ("sglang", sglang_page(3, 1, 0.25), (3, 1, 0.25)),
        ("trtllm-serve", trtllm_page(5, 6, 0.75), (5, 6, 0.75)),
        ("triton-tensorrt-llm", triton_trtllm_page(2, 8, 0.125), (2, 8, 0.125)),
        ("triton", triton_page(pending=9, executions=11), (9, 11, 0.0)),
    ],
)
async def test_scraped_values_land_in_the_table(pool, servers, layer, engine, page, expected):
    server = await servers(page)
    endpoint = pool.upsert(server.address, labels={"llm-d.ai/engine-type": engine})
    dl = layer()
    await dl.start()
    await wait_until(lambda: dl.state(endpoint).scrapes > 0)
    got = row(pool, endpoint)
    assert (got["waiting"], got["running"], got["kv_util"]) == expected
    assert got["ready"] and got["updated_at"] > 0
    assert not dl.is_stale(endpoint)


async def test_each_scrape_is_one_table_update(pool, servers, layer):
    server = await servers(vllm_page(1, 1, 0.1, lora=[LoraSeries("a", "", 2)]))
    calls = []

    class CountingTable:
        def __init__(self, inner):
            self._inner = inner

        def update(self, *args, **kwargs):
            calls.append(kwargs)
            return self._inner.update(*args, **kwargs)

        def __getattr__(self, name):
            return getattr(self._inner, name)

    pool.table = CountingTable(pool.table)
    endpoint = pool.upsert(server.address)
    dl = layer()
    await dl.start()
    await wait_until(lambda: dl.state(endpoint).scrapes >= 3)
    scrapes = dl.state(endpoint).scrapes
    await dl.stop()
    assert len(calls) == scrapes
    # Every page served became exactly one update (one may have been cut short by stop).
    assert server.metrics_hits - 1 <= len(calls) <= server.metrics_hits
    assert {"waiting", "running", "kv_util", "kv_blocks", "lora_active"} <= set(calls[0])


async def test_lora_and_cache_config_set_adapters_and_prefix_capacity(pool, servers, layer):
    page = vllm_page(
        block_size=16,
        num_gpu_blocks=4000,
        lora=[LoraSeries("english-bot,spanish-bot", "french-bot", 3, 1.8e9)],
    )
    server = await servers(page)
    endpoint = pool.upsert(server.address)
    dl = layer(block_tokens=64)
    await dl.start()
    await wait_until(lambda: dl.state(endpoint).scrapes > 0)
    got = row(pool, endpoint)
    assert list(got["lora_active"]) == bits(pool, ["english-bot", "spanish-bot"])
    assert list(got["lora_waiting"]) == bits(pool, ["french-bot"])
    assert (got["max_lora"], got["kv_blocks"], got["block_size"]) == (3, 4000, 16)
    assert pool.index.capacity_of(endpoint.id) == 4000 * 16 // 64


async def test_malformed_page_keeps_previous_values_and_readiness(pool, servers, layer):
    server = await servers(vllm_page(6, 3, 0.4))
    endpoint = pool.upsert(server.address)
    dl = layer()
    await dl.start()
    await wait_until(lambda: dl.state(endpoint).scrapes > 0)
    server.page = b'vllm:num_requests_waiting{x="1"} banana\n'
    await wait_until(lambda: dl.state(endpoint).errors["parse"] >= 3)
    got = row(pool, endpoint)
    assert (got["waiting"], got["running"], got["kv_util"], got["ready"]) == (6, 3, 0.4, True)
    assert dl.errors["parse"] >= 3


async def test_metrics_404_goes_stale_but_stays_ready(pool, servers, layer):
    server = await servers()
    server.metrics_status = 404
    endpoint = pool.upsert(server.address)
    dl = layer(staleness=0.05)
    await dl.start()
    await wait_until(lambda: dl.state(endpoint).errors["http_status"] >= 3)
    assert row(pool, endpoint)["ready"]
    assert dl.is_stale(endpoint)


async def test_fresh_metrics_become_stale_after_the_threshold(pool, servers, layer):
    server = await servers()
    endpoint = pool.upsert(server.address)
    dl = layer(staleness=0.1)
    await dl.start()
    await wait_until(lambda: dl.state(endpoint).scrapes > 0)
    last = dl.state(endpoint).last_success
    assert not dl.is_stale(endpoint, now=last + 0.09)
    assert dl.is_stale(endpoint, now=last + 0.11)


async def test_hanging_page_times_out_without_delaying_others(pool, servers, layer):
    hung, healthy = await servers(), await servers(vllm_page(2, 2, 0.2))
    hung.hang = True
    slow = pool.upsert(hung.address)
    fine = pool.upsert(healthy.address)
    dl = layer(timeout=0.5, max_backoff=0.05, down_after=2)
    await dl.start()
    await wait_until(lambda: hung.metrics_hits >= 1 and dl.state(fine).scrapes >= 1)
    before = dl.state(fine).scrapes
    await asyncio.sleep(0.25)  # the hung request is still pending (timeout 0.5 s)...
    assert dl.state(slow).errors["timeout"] == 0
    assert dl.state(fine).scrapes - before >= 4  # ...while the other endpoint went on (~12)
    await wait_until(lambda: not row(pool, slow)["ready"])
    assert dl.state(slow).errors["timeout"] >= 2
    assert row(pool, fine)["ready"]


async def test_vanished_endpoint_is_unready_and_ready_again_when_back(pool, servers, layer):
    server = await servers()
    endpoint = pool.upsert(server.address)
    dl = layer(down_after=2)
    await dl.start()
    await wait_until(lambda: dl.state(endpoint).scrapes > 0)
    await server.stop()
    await wait_until(lambda: not row(pool, endpoint)["ready"])
    assert dl.state(endpoint).down
    assert dl.state(endpoint).errors["connect"] + dl.state(endpoint).errors["transport"] >= 2
    scrapes = dl.state(endpoint).scrapes
    await server.start()  # same port
    await wait_until(lambda: row(pool, endpoint)["ready"])
    await wait_until(lambda: dl.state(endpoint).scrapes > scrapes)
    assert not dl.state(endpoint).down


async def test_removed_endpoint_stops_its_scraper(pool, servers, layer):
    server = await servers()
    endpoint = pool.upsert(server.address)
    dl = layer()
    await dl.start()
    await wait_until(lambda: server.metrics_hits >= 2)
    task = dl.state(endpoint).task  # None once its cohort's timer drives it
    pool.remove(endpoint.address)
    await asyncio.sleep(0.01)
    assert (task is None or task.done()) and dl.state(endpoint) is None
    await asyncio.sleep(0.02)  # a request written just before the removal may still land
    hits = server.metrics_hits
    await asyncio.sleep(0.1)
    assert server.metrics_hits == hits


async def test_added_endpoint_starts_scraping_while_running(pool, servers, layer):
    dl = layer()
    await dl.start()
    server = await servers(vllm_page(9, 0, 0.0))
    endpoint = pool.upsert(server.address)
    assert row(pool, endpoint)["ready"]  # discovered -> ready before the first scrape
    await wait_until(lambda: row(pool, endpoint)["waiting"] == 9)


async def test_stop_cancels_every_task(pool, servers, layer):
    server = await servers()
    endpoint = pool.upsert(server.address)
    dl = layer()
    await dl.start()
    await wait_until(lambda: server.metrics_hits >= 1)
    task = dl.state(endpoint).task  # None once its cohort's timer drives it
    await dl.stop()
    assert task is None or task.done()
    # A request written just before stop may still reach the server (same loop): let it.
    await asyncio.sleep(0.02)
    hits = server.metrics_hits
    await asyncio.sleep(0.06)
    assert server.metrics_hits == hits


async def test_a_stopped_layer_ignores_new_endpoints_and_resumes_on_start(pool, servers, layer):
    dl = layer()
    await dl.start()
    await dl.stop()
    server = await servers(vllm_page(7, 0, 0.0))
    endpoint = pool.upsert(server.address)
    await asyncio.sleep(0.06)
    assert dl.state(endpoint) is None and server.metrics_hits == 0
    await dl.start()  # picks up the members that arrived meanwhile
    await wait_until(lambda: row(pool, endpoint)["waiting"] == 7)
    await dl.stop()


POLICY = OutlierPolicy(min_failures=5, error_rate=0.5, window=10.0, probe_backoff=0.05)


async def test_failing_responses_demote_until_a_probe_succeeds(pool, servers, layer, caplog):
    bad, good = await servers(), await servers()
    bad.health_status = 503
    broken, fine = pool.upsert(bad.address), pool.upsert(good.address)
    dl = layer(outlier=POLICY)
    await dl.start()
    await wait_until(lambda: dl.state(broken).scrapes > 0)
    caplog.set_level(logging.INFO, logger="igw.datalayer")
    for _ in range(4):
        dl.report_response(broken, ok=False)
    dl.report_response(broken, ok=True)
    assert row(pool, broken)["ready"]  # 4 failures: below min_failures
    dl.report_response(broken, ok=False)
    assert not row(pool, broken)["ready"] and dl.state(broken).demoted
    assert row(pool, fine)["ready"]
    assert any("demoting endpoint" in r.message and "5 of 6" in r.message for r in caplog.records)
    await wait_until(lambda: bad.health_hits >= 2)
    assert dl.state(broken).demoted  # probes answered 503
    bad.health_status = 200
    await wait_until(lambda: row(pool, broken)["ready"])
    assert not dl.state(broken).demoted
    assert any("restoring endpoint" in r.message for r in caplog.records)


async def test_mostly_successful_responses_do_not_demote(pool, servers, layer):
    server = await servers()
    endpoint = pool.upsert(server.address)
    dl = layer(outlier=POLICY)
    await dl.start()
    for i in range(40):
        dl.report_response(endpoint, ok=i % 3 != 0)  # 14 failures of 40 = 35%
    assert not dl.state(endpoint).demoted and row(pool, endpoint)["ready"]


async def test_demotion_is_withheld_when_too_many_are_demoted(pool, servers, layer):
    a, b = await servers(), await servers()
    first, second = pool.upsert(a.address), pool.upsert(b.address)
    dl = layer(outlier=POLICY, max_demoted_fraction=0.5)
    await dl.start()
    for _ in range(5):
        dl.report_response(first, ok=False)
        dl.report_response(second, ok=False)
    assert dl.state(first).demoted
    assert not dl.state(second).demoted and row(pool, second)["ready"]


async def test_probe_falls_back_to_models_when_health_is_missing(pool, servers, layer):
    server = await servers()
    server.health_status = 404
    endpoint = pool.upsert(server.address)
    dl = layer(outlier=POLICY, max_demoted_fraction=1.0)
    await dl.start()
    for _ in range(5):
        dl.report_response(endpoint, ok=False)
    assert dl.state(endpoint).demoted
    await wait_until(lambda: row(pool, endpoint)["ready"])


async def test_fetch_models_lists_model_ids(pool, servers, layer):
    server = await servers(models=["llm-base", "english-bot"])
    endpoint = pool.upsert(server.address)
    assert [m.id for m in await layer().fetch_models(endpoint)] == ["llm-base", "english-bot"]


async def test_fetch_models_error_names_the_url(pool, layer):
    endpoint = pool.upsert("127.0.0.1:1")
    with pytest.raises(DataLayerError, match=r"GET http://127.0.0.1:1/v1/models failed"):
        await layer(timeout=0.5).fetch_models(endpoint)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"interval": 0}, "interval must be a positive number"),
        ({"timeout": float("nan")}, "timeout must be a positive number"),
        ({"block_tokens": 0}, "block_tokens must be an int >= 1"),
        ({"down_after": 0}, "down_after must be an int >= 1"),
        ({"metrics_path": "metrics"}, "metrics_path must start with '/'"),
        ({"metrics_port": 0}, "metrics_port must be 1..65535"),
        ({"metrics_scheme": "ftp"}, "metrics_scheme must be 'http' or 'https'"),
        ({"default_engine": "tgi"}, "default_engine 'tgi' is unknown"),
        ({"transport": "curl"}, "transport must be 'auto', 'aiohttp' or 'httptools'"),
    ],
)
def test_bad_settings_are_rejected_with_the_setting_named(pool, kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        DataLayer(pool, **kwargs)


async def test_one_failed_scrape_does_not_make_an_endpoint_unready(pool, servers, layer):
    server = await servers()
    endpoint = pool.upsert(server.address)
    dl = layer(down_after=3)
    await dl.start()
    await wait_until(lambda: dl.state(endpoint).scrapes > 0)
    state = dl.state(endpoint)
    dl._transport_failure(state, "connect", "refused")
    dl._transport_failure(state, "connect", "refused")
    assert row(pool, endpoint)["ready"] and not state.down
    dl._transport_failure(state, "connect", "refused")
    assert not row(pool, endpoint)["ready"] and state.down


async def test_failures_back_off_exponentially(pool, layer):
    endpoint = pool.upsert("127.0.0.1:9")  # discard port: nothing listens, refused at once
    dl = layer(interval=0.01, max_backoff=0.16, down_after=1)
    await dl.start()
    await asyncio.sleep(0.5)
    attempts = sum(dl.state(endpoint).errors.values())
    # Without back-off: ~50 attempts. With it (0.02, 0.04, 0.08, 0.16, 0.16, ... x0.75-1):
    # about 5-8.
    assert 2 <= attempts <= 10
    assert not row(pool, endpoint)["ready"]


async def test_first_scrapes_of_a_small_fleet_happen_together(pool, servers, layer):
    fleet = [await servers() for _ in range(12)]
    for server in fleet:
        pool.upsert(server.address)
    dl = layer(interval=0.2, seed=3)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await dl.start()
    await wait_until(lambda: all(dl.state(e).last_success for e in pool.endpoints()))
    firsts = sorted(dl.state(e).last_success for e in pool.endpoints())
    assert firsts[-1] - firsts[0] < 0.1  # one cohort: one wake-up, not twelve
    assert firsts[-1] - started < 1.0  # all started promptly (first interval + slack)


def test_endpoints_of_one_cohort_share_a_scrape_phase(pool, layer):
    dl = layer(interval=0.05)
    last = SCRAPE_COHORT - 1
    assert dl.scrape_phase(0) == dl.scrape_phase(last)
    assert dl.scrape_phase(last) != dl.scrape_phase(SCRAPE_COHORT)


def test_cohort_phases_spread_over_the_interval(pool, layer):
    dl = layer(interval=1.0)
    phases = sorted(dl.scrape_phase(c * SCRAPE_COHORT) for c in range(16))
    assert all(0.0 <= p < 1.0 for p in phases)
    gaps = [b - a for a, b in itertools.pairwise(phases)] + [1.0 + phases[0] - phases[-1]]
    assert max(gaps) < 0.15  # 16 cohorts, none bunched: an even split would be 0.0625


def test_next_scrape_tick_is_on_the_grid_and_skips_missed_ticks(pool, layer):
    dl = layer(interval=0.2)
    assert dl._next_tick(0.01, 1.234) == pytest.approx(1.41)
    assert dl._next_tick(0.01, 1.4101) == pytest.approx(1.61)  # just past a tick: the next


async def test_unknown_engine_label_counts_an_error_and_stays_ready(pool, servers, layer):
    server = await servers()
    endpoint = pool.upsert(server.address, labels={"llm-d.ai/engine-type": "tgi"})
    dl = layer()
    await dl.start()
    await wait_until(lambda: dl.state(endpoint).errors["parse"] >= 1)
    assert "unknown engine 'tgi'" in dl.state(endpoint).last_error
    assert row(pool, endpoint)["ready"] and dl.is_stale(endpoint)


async def test_metrics_port_and_custom_engine_are_honoured(pool, servers, layer):
    from igw.datalayer import custom_engine

    metrics = await servers(b"fork_queue 7\nfork_busy 2\nfork_kv 0.5\n")
    endpoint = pool.upsert("127.0.0.1:1", labels={"llm-d.ai/engine-type": "fork"})
    engine = custom_engine("fork", waiting="fork_queue", running="fork_busy", kv_util="fork_kv")
    dl = layer(metrics_port=metrics.port, engines={"fork": engine})
    await dl.start()
    await wait_until(lambda: dl.state(endpoint).scrapes > 0)
    got = row(pool, endpoint)
    assert (got["waiting"], got["running"], got["kv_util"]) == (7, 2, 0.5)


async def test_default_engine_applies_to_unlabelled_endpoints(pool, servers, layer):
    server = await servers(sglang_page(4, 1, 0.1))
    endpoint = pool.upsert(server.address)
    dl = layer(default_engine="sglang")
    await dl.start()
    await wait_until(lambda: dl.state(endpoint).scrapes > 0)
    assert row(pool, endpoint)["waiting"] == 4


async def test_oversized_page_is_refused_without_unreadying(pool, servers, layer, monkeypatch):
    from igw.datalayer import layer as layer_module

    monkeypatch.setattr(layer_module, "MAX_PAGE_BYTES", 1000)
    server = await servers(vllm_page(bulk=True))  # ~40 KB
    endpoint = pool.upsert(server.address)
    dl = layer()
    await dl.start()
    await wait_until(lambda: dl.state(endpoint).errors["parse"] >= 2)
    assert "too big" in dl.state(endpoint).last_error
    assert dl.state(endpoint).scrapes == 0 and row(pool, endpoint)["ready"]


async def test_repeated_failures_log_once_per_kind(pool, servers, layer, caplog):
    server = await servers()
    server.metrics_status = 500
    endpoint = pool.upsert(server.address)
    dl = layer()
    caplog.set_level(logging.WARNING, logger="igw.datalayer")
    await dl.start()
    await wait_until(lambda: dl.state(endpoint).errors["http_status"] >= 5)
    lines = [r for r in caplog.records if "scrape failed (http_status" in r.message]
    assert len(lines) == 1 and "HTTP 500" in lines[0].message
    server.page = b"garbage"
    server.metrics_status = 200
    await wait_until(lambda: dl.state(endpoint).errors["parse"] >= 3)
    assert len([r for r in caplog.records if "scrape failed (parse" in r.message]) == 1


async def test_a_callers_session_is_used_and_left_open(pool, servers, layer):
    import aiohttp

    server = await servers(vllm_page(5, 0, 0.0))
    endpoint = pool.upsert(server.address)
    async with aiohttp.ClientSession() as session:
        dl = layer(session=session)
        await dl.start()
        await wait_until(lambda: row(pool, endpoint)["waiting"] == 5)
        await dl.stop()
        assert not session.closed


async def test_probe_backoff_grows_across_consecutive_demotions(pool, servers, layer):
    server = await servers()  # /health passes every time, as a replica that fails requests
    endpoint = pool.upsert(server.address)
    policy = OutlierPolicy(min_failures=2, window=10.0, probe_backoff=0.05,
                           max_probe_backoff=0.4, stable_after=60.0)  # fmt: skip
    dl = layer(outlier=policy, max_demoted_fraction=1.0)
    await dl.start()
    demoted_for = []
    for expected in (1, 2, 3, 4):
        dl.report_response(endpoint, ok=False)
        dl.report_response(endpoint, ok=False)
        state = dl.state(endpoint)
        assert state.demoted and state.demotions == expected
        started = asyncio.get_running_loop().time()
        await wait_until(lambda: not dl.state(endpoint).demoted, timeout=5)
        demoted_for.append(asyncio.get_running_loop().time() - started)
    assert [policy.first_probe_delay(n) for n in (1, 2, 3, 4)] == [0.05, 0.1, 0.2, 0.4]
    assert demoted_for[2] >= 0.8 * 0.2 and demoted_for[3] >= 0.8 * 0.4  # jitter is +-20%
    assert demoted_for[3] > demoted_for[0]


async def test_demotion_count_resets_after_the_endpoint_stays_in_rotation(pool, servers, layer):
    server = await servers()
    endpoint = pool.upsert(server.address)
    policy = OutlierPolicy(min_failures=2, window=10.0, probe_backoff=0.02, stable_after=0.2)
    dl = layer(outlier=policy, max_demoted_fraction=1.0)
    await dl.start()
    for _ in range(2):
        dl.report_response(endpoint, ok=False)
        dl.report_response(endpoint, ok=False)
        await wait_until(lambda: not dl.state(endpoint).demoted)
    await asyncio.sleep(0.25)  # in rotation longer than stable_after
    dl.report_response(endpoint, ok=False)
    dl.report_response(endpoint, ok=False)
    assert dl.state(endpoint).demoted and dl.state(endpoint).demotions == 1


async def test_a_replica_failing_30_percent_is_demoted_when_its_peers_do_not_fail(
    pool, servers, layer
):
    bad_server, a, b = await servers(), await servers(), await servers()
    bad, peers = pool.upsert(bad_server.address), [pool.upsert(s.address) for s in (a, b)]
    dl = layer(outlier=POLICY)
    await dl.start()
    for i in range(20):
        for peer in peers:
            dl.report_response(peer, ok=True)
        dl.report_response(bad, ok=i % 10 >= 3)  # 3 of every 10 fail
    assert dl.state(bad).demoted and not row(pool, bad)["ready"]
    assert not any(dl.state(peer).demoted for peer in peers)


async def test_a_pool_failing_alike_demotes_no_one(pool, servers, layer):
    endpoints = [pool.upsert((await servers()).address) for _ in range(3)]
    dl = layer(outlier=POLICY)
    await dl.start()
    for i in range(20):
        for endpoint in endpoints:
            dl.report_response(endpoint, ok=i % 10 >= 3)
    assert not any(dl.state(e).demoted for e in endpoints)


async def test_fetch_models_gives_each_adapters_parent(pool, servers, layer):
    server = await servers(models=["llm-base", "english-bot"], parents={"english-bot": "llm-base"})
    endpoint = pool.upsert(server.address)
    models = await layer().fetch_models(endpoint)
    assert [(m.id, m.parent, m.is_adapter) for m in models] == [
        ("llm-base", None, False),
        ("english-bot", "llm-base", True),
    ]
