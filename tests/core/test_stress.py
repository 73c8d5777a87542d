"""Concurrency: writers update rows with self-consistent values while readers snapshot and
pick; endpoints come and go; the index is recorded and matched from several threads. No
snapshot may show a torn row, and nothing may crash. Runs against the C++ core only (the
reference is correct by construction: it takes one lock per call)."""

from __future__ import annotations

import threading
import time

import numpy as np

from igw import _core

DURATION = 1.0


def run_threads(targets):
    errors: list[BaseException] = []
    stop = threading.Event()

    def wrap(fn):
        def body():
            try:
                while not stop.is_set():
                    fn()
            except BaseException as exc:  # report in the main thread
                errors.append(exc)
                stop.set()

        return body

    threads = [threading.Thread(target=wrap(fn)) for fn in targets]
    for t in threads:
        t.start()
    time.sleep(DURATION)
    stop.set()
    for t in threads:
        t.join(timeout=10)
    assert not any(t.is_alive() for t in threads)
    if errors:
        raise errors[0]


def test_snapshots_never_show_torn_rows_under_concurrent_writes():
    table = _core.EndpointTable(256)
    for _ in range(200):
        table.set_ready(table.add(), True)
    rng = np.random.default_rng(1)
    stats = {"snapshots": 0, "writes": 0}

    def writer():
        for e in rng.integers(0, 200, 50).tolist():
            v = int(rng.integers(0, 1000))
            if table.is_live(e):
                try:
                    table.update(e, waiting=v, running=v, kv_util=v / 1000, now=float(v),
                                 kv_blocks=v, block_size=v, max_lora=v)  # fmt: skip
                except _core.Error:
                    pass  # removed by the churn thread in between: fine
            stats["writes"] += 1

    def churn():
        e = int(rng.integers(0, 200))
        if table.is_live(e):
            try:
                table.remove(e)
            except _core.Error:
                return
            table.set_ready(table.add(), True)

    def reader():
        s = table.snapshot()
        live = s.active
        w = s.waiting[live]
        assert (w == s.running[live]).all()
        assert (w == np.rint(s.kv_util[live] * 1000).astype(np.int32)).all()
        assert (w == s.updated_at[live]).all()
        assert (w == s.kv_blocks[live]).all() and (w == s.max_lora[live]).all()
        stats["snapshots"] += 1

    run_threads([writer, writer, churn, reader, reader])
    assert stats["snapshots"] > 10 and stats["writes"] > 100


def test_picks_index_and_table_survive_concurrent_mutation():
    table = _core.EndpointTable(128)
    index = _core.PrefixIndex(128, 200)
    sched = _core.Scheduler(table, index, 3)
    for _ in range(100):
        table.set_ready(table.add(), True)
    profile = _core.Profile(
        [("queue-scorer", 2, {}), ("prefix-cache-scorer", 3, {}), ("active-request-scorer", 1, {})]
    )
    seed = _core.model_seed("m")
    prompts = [bytes([p]) * 256 * 8 + bytes([q]) * 512 for p in range(8) for q in range(4)]
    rng = np.random.default_rng(2)
    picked: list[int] = []

    def picker():
        prompt = prompts[int(rng.integers(len(prompts)))]
        res = sched.pick(profile, prompt=prompt, seed=seed, prompt_tokens=640, k=2)
        if res.endpoints:
            picked.append(res.endpoints[0])
            table_id = res.endpoints[0]
            try:
                table.add_inflight(table_id, -1, -res.uncached_tokens)
            except _core.Error:
                pass  # removed meanwhile

    def matcher():
        h = _core.hash_blocks(prompts[int(rng.integers(len(prompts)))], 256, seed)
        m = index.match(h)
        assert (m >= 0).all() and (m <= len(h)).all()

    def recorder():
        e = int(rng.integers(0, 100))
        index.record(e, _core.hash_blocks(prompts[int(rng.integers(len(prompts)))], 256, seed))
        if rng.random() < 0.05:
            index.set_capacity(e, int(rng.integers(0, 300)))

    def churn():
        e = int(rng.integers(0, 100))
        if table.is_live(e):
            try:
                table.remove(e)
            except _core.Error:
                return
            index.remove_endpoint(e)
            table.set_ready(table.add(), True)
        try:
            table.update(e, waiting=int(rng.integers(9)), running=0, kv_util=0.5, now=1.0)
        except _core.Error:
            pass  # not live

    run_threads([picker, picker, matcher, recorder, churn])
    assert len(picked) > 50
    assert index.entries() == sum(index.endpoint_entries(e) for e in range(128))


def test_inflight_pairs_versions_and_lora_counts_stay_consistent_under_writes():
    table = _core.EndpointTable(64)
    sched = _core.Scheduler(table, _core.PrefixIndex(64, 100), 5)
    for _ in range(50):
        table.set_ready(table.add(), True)
    adapters = [table.adapter_id(f"a{i}") for i in range(8)]
    lora = _core.Profile([("lora-affinity-scorer", 1.0, {})])
    rng = np.random.default_rng(3)
    versions = [table.version]

    def bumper():  # every committed state has tokens == 1000 * requests
        e = int(rng.integers(0, 50))
        table.add_inflight(e, 1, 1000)
        table.add_inflight(e, -1, -1000)

    def reader():
        requests, tokens = table.inflight()
        assert (tokens == requests.astype(np.int64) * 1000).all()
        version = table.version
        assert version >= versions[-1]
        versions.append(version)

    def lora_writer():
        e = int(rng.integers(0, 50))
        active = [a for a in adapters if rng.random() < 0.3]
        table.update(e, waiting=0, running=0, kv_util=0.0, now=1.0, lora_active=active,
                     lora_waiting=[], max_lora=int(rng.integers(0, 4)))  # fmt: skip

    def lora_picker():
        adapter = adapters[0] if rng.random() < 0.5 else _core.UNKNOWN_ADAPTER
        res = sched.pick(lora, lora=adapter, reserve=False, record=False, with_scores=True)
        got = set(np.round(res.scores["lora-affinity-scorer"].astype(np.float64), 3).tolist())
        assert got <= {0.0, 0.6, 0.8, 1.0}

    run_threads([bumper, bumper, reader, lora_writer, lora_picker])
    assert versions[-1] > versions[0] and len(versions) > 10
