"""InferencePool + pod discovery against the fake API server: membership follows the cluster."""

from __future__ import annotations

import random

from igw.k8s import ClusterConfig, KubeClient, KubernetesDiscovery, PoolSpec

from .conftest import POOL_NAME, eventually, fast_backoff
from .fake_apiserver import (
    KINDS,
    LEGACY_OBJECTIVE,
    LEGACY_REWRITE,
    OBJECTIVE,
    POD,
    POOL,
    REWRITE,
    FakeApiServer,
    inference_pool,
    objective,
    pod,
    rewrite,
)

APP = {"app": "vllm"}


def addresses(pool) -> set[str]:
    return {e.address for e in pool.endpoints()}


async def test_ready_pods_become_endpoints_and_the_pool_syncs(api, pool, discovery):
    api.apply(POOL, inference_pool(POOL_NAME, APP, [8000]))
    api.apply(POD, pod("pod-0", "10.0.0.1", APP))
    api.apply(POD, pod("pod-1", "10.0.0.2", APP))
    api.apply(POD, pod("other", "10.0.0.9", {"app": "other"}))
    await discovery().start()
    await eventually(lambda: pool.synced, what="pool synced")
    assert addresses(pool) == {"10.0.0.1:8000", "10.0.0.2:8000"}


async def test_pool_is_not_synced_until_the_inference_pool_exists(api, pool, discovery):
    api.apply(POD, pod("pod-0", "10.0.0.1", APP))
    watcher = discovery()
    await watcher.start()
    await eventually(lambda: api.lists("inferencepools") >= 1, what="pool list")
    await eventually(lambda: api.watches("inferencepools") >= 1, what="pool watch")
    assert not pool.synced and len(pool) == 0
    api.apply(POOL, inference_pool(POOL_NAME, APP, [8000]))
    await eventually(lambda: pool.synced, what="pool synced after creation")
    assert addresses(pool) == {"10.0.0.1:8000"}


async def test_each_target_port_is_an_endpoint_with_the_pods_labels_and_engine(
    api, pool, discovery
):
    labels = {**APP, "llm-d.ai/engine-type": "sglang", "zone": "a"}
    api.apply(POOL, inference_pool(POOL_NAME, APP, [8000, 8001]))
    api.apply(POD, pod("pod-0", "10.0.0.1", labels))
    await discovery().start()
    await eventually(lambda: len(pool) == 2, what="two endpoints")
    first = pool.by_address("10.0.0.1:8001")
    assert first is not None
    assert (first.name, first.namespace, first.engine) == ("pod-0", "default", "sglang")
    assert first.labels["zone"] == "a"


async def test_pods_appear_become_unready_and_disappear(api, pool, discovery):
    api.apply(POOL, inference_pool(POOL_NAME, APP, [8000]))
    await discovery().start()
    await eventually(lambda: pool.synced, what="synced")
    assert len(pool) == 0
    api.apply(POD, pod("pod-0", "10.0.0.1", APP))
    api.apply(POD, pod("pod-1", "10.0.0.2", APP, ready=False))
    await eventually(lambda: addresses(pool) == {"10.0.0.1:8000"}, what="only the ready pod")
    api.apply(POD, pod("pod-1", "10.0.0.2", APP))
    await eventually(lambda: len(pool) == 2, what="pod-1 became ready")
    api.apply(POD, pod("pod-0", "10.0.0.1", APP, ready=False))
    await eventually(lambda: addresses(pool) == {"10.0.0.2:8000"}, what="pod-0 unready")
    api.apply(POD, pod("pod-1", "10.0.0.2", APP, terminating=True))
    await eventually(lambda: len(pool) == 0, what="terminating pod removed")
    api.apply(POD, pod("pod-2", "10.0.0.3", APP))
    api.delete(POD, "pod-2")
    api.apply(POD, pod("pod-3", "10.0.0.4", APP))
    await eventually(lambda: addresses(pool) == {"10.0.0.4:8000"}, what="deleted pod gone")


async def test_a_pod_relabelled_out_of_the_selector_leaves_the_pool(api, pool, discovery):
    api.apply(POOL, inference_pool(POOL_NAME, APP, [8000]))
    api.apply(POD, pod("pod-0", "10.0.0.1", APP))
    await discovery().start()
    await eventually(lambda: len(pool) == 1, what="pod-0 in")
    api.apply(POD, pod("pod-0", "10.0.0.1", {"app": "retired"}))
    await eventually(lambda: len(pool) == 0, what="pod-0 out")


async def test_pool_selector_change_re_evaluates_membership(api, pool, discovery):
    api.apply(POOL, inference_pool(POOL_NAME, APP, [8000]))
    api.apply(POD, pod("old-0", "10.0.0.1", APP))
    api.apply(POD, pod("new-0", "10.0.1.1", {"app": "vllm-v2"}))
    watcher = discovery()
    await watcher.start()
    await eventually(lambda: addresses(pool) == {"10.0.0.1:8000"}, what="old selector")
    api.apply(POOL, inference_pool(POOL_NAME, {"app": "vllm-v2"}, [8000]))
    await eventually(lambda: addresses(pool) == {"10.0.1.1:8000"}, what="new selector")
    assert pool.synced and watcher.spec_changes == 1
    # pods of the new selector keep flowing; the old selector's pods no longer count
    api.apply(POD, pod("new-1", "10.0.1.2", {"app": "vllm-v2"}))
    api.apply(POD, pod("old-1", "10.0.0.2", APP))
    await eventually(lambda: len(pool) == 2, what="new-1 joins")
    assert addresses(pool) == {"10.0.1.1:8000", "10.0.1.2:8000"}


async def test_target_port_change_re_derives_endpoints(api, pool, discovery):
    api.apply(POOL, inference_pool(POOL_NAME, APP, [8000]))
    api.apply(POD, pod("pod-0", "10.0.0.1", APP))
    await discovery().start()
    await eventually(lambda: len(pool) == 1, what="one port")
    lists_before = api.lists("pods")
    api.apply(POOL, inference_pool(POOL_NAME, APP, [9000, 9001]))
    await eventually(
        lambda: addresses(pool) == {"10.0.0.1:9000", "10.0.0.1:9001"}, what="new ports"
    )
    assert api.lists("pods") == lists_before  # same selector: no new pod list needed


async def test_deleting_the_pool_clears_endpoints_and_readiness(api, pool, discovery):
    api.apply(POOL, inference_pool(POOL_NAME, APP, [8000]))
    api.apply(POD, pod("pod-0", "10.0.0.1", APP))
    await discovery().start()
    await eventually(lambda: pool.synced and len(pool) == 1, what="synced")
    api.delete(POOL, POOL_NAME)
    await eventually(lambda: not pool.synced and len(pool) == 0, what="cleared")
    api.apply(POOL, inference_pool(POOL_NAME, APP, [8000]))
    await eventually(lambda: pool.synced and len(pool) == 1, what="back after re-creation")


async def test_a_pod_list_in_flight_when_the_pool_is_deleted_is_discarded(api, pool, discovery):
    import asyncio

    api.apply(POOL, inference_pool(POOL_NAME, APP, [8000]))
    api.apply(POD, pod("pod-0", "10.0.0.1", APP))
    api.list_delay[POD] = 0.3
    await discovery().start()
    await eventually(lambda: api.lists("pods") >= 1, what="pod list in flight")
    api.delete(POOL, POOL_NAME)
    await asyncio.sleep(0.5)  # the slow list has answered by now
    assert not pool.synced and len(pool) == 0


async def test_an_invalid_pool_update_keeps_the_previous_membership(api, pool, discovery):
    api.apply(POOL, inference_pool(POOL_NAME, APP, [8000]))
    api.apply(POD, pod("pod-0", "10.0.0.1", APP))
    await discovery().start()
    await eventually(lambda: len(pool) == 1, what="synced")
    bad = inference_pool(POOL_NAME, APP, [8000])
    bad["spec"]["targetPorts"] = [{"number": 0}]
    api.apply(POOL, bad)
    api.apply(POD, pod("pod-1", "10.0.0.2", APP))
    await eventually(lambda: len(pool) == 2, what="pods still followed")
    assert addresses(pool) == {"10.0.0.1:8000", "10.0.0.2:8000"}


async def test_relists_after_410_gone_and_converges(api, pool, discovery):
    api.apply(POOL, inference_pool(POOL_NAME, APP, [8000]))
    api.apply(POD, pod("pod-0", "10.0.0.1", APP))
    api.apply(POD, pod("pod-1", "10.0.0.2", APP))
    watcher = discovery()
    await watcher.start()
    await eventually(lambda: len(pool) == 2, what="synced")
    await eventually(lambda: api.watches("pods") >= 1, what="pod watch open")
    lists_before = api.lists("pods")
    # the watch's version expires while it is down: changes made meanwhile are only in a list
    api.compact()
    api.drop_watches()
    api.delete(POD, "pod-0")
    api.apply(POD, pod("pod-2", "10.0.0.3", APP))
    api.compact()
    await eventually(
        lambda: addresses(pool) == {"10.0.0.2:8000", "10.0.0.3:8000"}, what="converged"
    )
    assert api.lists("pods") > lists_before


async def test_a_dropped_watch_resumes_from_the_last_version_without_relisting(
    api, pool, discovery
):
    api.apply(POOL, inference_pool(POOL_NAME, APP, [8000]))
    await discovery().start()
    await eventually(lambda: pool.synced, what="synced")
    await eventually(lambda: api.watches("pods") >= 1, what="pod watch open")
    lists_before, watches_before = api.lists("pods"), api.watches("pods")
    api.drop_watches()
    api.apply(POD, pod("pod-0", "10.0.0.1", APP))
    await eventually(lambda: len(pool) == 1, what="event after the drop")
    assert api.lists("pods") == lists_before
    assert api.watches("pods") > watches_before
    resumed = [q for path, q in api.requests if path.endswith("pods") and "watch" in q][-1]
    assert int(resumed["resourceVersion"]) > 0


async def test_bookmarks_advance_the_resume_version(api, pool, discovery):
    api.apply(POOL, inference_pool(POOL_NAME, APP, [8000]))
    watcher = discovery()
    await watcher.start()
    await eventually(lambda: api.watches("pods") >= 1, what="pod watch open")
    api.apply(POD, pod("elsewhere", "10.9.9.9", {"app": "other"}))  # not visible to our watch
    listed = watcher.pods.version
    api.bookmark()
    await eventually(lambda: watcher.pods.version == str(api.version), what="bookmark seen")
    assert int(watcher.pods.version) > int(listed)
    api.drop_watches()
    await eventually(lambda: api.watches("pods") >= 2, what="re-watch")
    resumed = [q for path, q in api.requests if path.endswith("pods") and "watch" in q][-1]
    assert resumed["resourceVersion"] == str(api.version)


async def test_forbidden_is_retried_until_rbac_allows(api, pool, discovery):
    api.apply(POOL, inference_pool(POOL_NAME, APP, [8000]))
    api.apply(POD, pod("pod-0", "10.0.0.1", APP))
    api.forbid(POD)
    watcher = discovery()
    await watcher.start()
    await eventually(lambda: api.lists("pods") >= 3, what="retries")
    assert not pool.synced
    errors = watcher.status()
    assert any("forbidden" in w["last_error"] for w in errors.values()), errors
    api.allow(POD)
    await eventually(lambda: pool.synced and len(pool) == 1, what="synced once allowed")


async def test_an_unreachable_api_server_is_retried_without_crashing(api, pool, discovery):
    api.apply(POOL, inference_pool(POOL_NAME, APP, [8000]))
    api.apply(POD, pod("pod-0", "10.0.0.1", APP))
    port = api.port
    await api.stop()
    watcher = discovery()
    await watcher.start()
    await eventually(
        lambda: any(w["errors"] >= 2 for w in watcher.status().values()), what="failures counted"
    )
    assert not pool.synced
    # the same server comes back on the same port
    from aiohttp import web

    app_runner = api._runner
    assert app_runner is not None
    await app_runner.setup()
    await web.TCPSite(app_runner, "127.0.0.1", port).start()
    await eventually(lambda: pool.synced and len(pool) == 1, what="synced after recovery")


async def test_standalone_selector_mode_watches_pods_only(api, pool, discovery):
    api.apply(POD, pod("pod-0", "10.0.0.1", {"app": "sa", "tier": "gpu"}))
    api.apply(POD, pod("pod-1", "10.0.0.2", {"app": "sa"}))
    spec = PoolSpec(selector=(("app", "sa"), ("tier", "gpu")), ports=(8000, 8002))
    watcher = discovery(standalone=spec)
    await watcher.start()
    await eventually(lambda: pool.synced, what="synced")
    assert addresses(pool) == {"10.0.0.1:8000", "10.0.0.1:8002"}
    assert api.lists("inferencepools") == 0 and api.lists("inferenceobjectives") == 0
    assert watcher.objectives is None


async def test_objectives_and_rewrites_of_this_pool_flow_into_the_stores(api, pool, discovery):
    api.apply(POOL, inference_pool(POOL_NAME, APP, [8000]))
    api.apply(OBJECTIVE, objective("chat", POOL_NAME, 10))
    api.apply(OBJECTIVE, objective("batch", POOL_NAME, -1))
    api.apply(OBJECTIVE, objective("plain", POOL_NAME))
    api.apply(OBJECTIVE, objective("theirs", "another-pool", 5))
    api.apply(REWRITE, rewrite("rw", POOL_NAME, "llm", "llm-v2"))
    watcher = discovery()
    await watcher.start()
    await eventually(lambda: watcher.objectives is not None and len(watcher.objectives) == 3)
    store = watcher.objectives
    assert store is not None
    assert (store.priority("chat"), store.priority("batch"), store.priority("plain")) == (10, -1, 0)
    assert store.priority("theirs") is None
    await eventually(lambda: watcher.rewrites is not None and len(watcher.rewrites) == 1)
    assert watcher.rewrites is not None
    resolved = watcher.rewrites.resolve("llm", random.Random(1))
    assert resolved is not None and resolved[0] == "llm-v2"
    api.apply(OBJECTIVE, objective("chat", POOL_NAME, 3))
    api.delete(OBJECTIVE, "batch")
    await eventually(lambda: watcher.objectives.priority("chat") == 3, what="update")
    await eventually(lambda: watcher.objectives.priority("batch") is None, what="delete")


async def test_an_invalid_objective_is_skipped_and_the_rest_kept(api, pool, discovery):
    api.apply(POOL, inference_pool(POOL_NAME, APP, [8000]))
    bad = objective("bad", POOL_NAME, 1)
    bad["spec"]["priority"] = "high"
    api.apply(OBJECTIVE, bad)
    api.apply(OBJECTIVE, objective("good", POOL_NAME, 4))
    watcher = discovery()
    await watcher.start()
    await eventually(lambda: watcher.view is not None and watcher.view.rebuilds >= 1)
    await eventually(lambda: watcher.objectives.priority("good") == 4, what="good objective")
    assert watcher.objectives.priority("bad") is None


async def test_objectives_fall_back_to_the_legacy_group(pool):
    served = tuple(k for k in KINDS if k not in (OBJECTIVE, REWRITE))
    legacy = await FakeApiServer(served=served).start()
    client = KubeClient(ClusterConfig(server=legacy.url, token=legacy.token))
    watcher = KubernetesDiscovery(
        pool, client, namespace="default", pool_name=POOL_NAME, backoff=fast_backoff
    )
    try:
        legacy.apply(POOL, inference_pool(POOL_NAME, APP, [8000]))
        legacy.apply(LEGACY_OBJECTIVE, objective("chat", POOL_NAME, 7))
        legacy.apply(LEGACY_REWRITE, rewrite("rw", POOL_NAME, "a", "b"))
        await watcher.start()
        await eventually(lambda: watcher.objectives.priority("chat") == 7, what="legacy objective")
        await eventually(lambda: len(watcher.rewrites) == 1, what="legacy rewrite")
    finally:
        await watcher.stop()
        await legacy.stop()


async def test_watch_metrics_report_synced_lists_and_errors(api, pool, discovery):
    from prometheus_client import CollectorRegistry

    from igw.k8s.metrics import WatchCollector

    api.apply(POOL, inference_pool(POOL_NAME, APP, [8000]))
    api.forbid(POD)
    watcher = discovery()
    registry = CollectorRegistry()
    registry.register(WatchCollector(watcher))
    await watcher.start()
    await eventually(lambda: api.lists("pods") >= 2, what="pod list retried")

    def sample(name: str, watch: str) -> float | None:
        return registry.get_sample_value(name, {"watch": watch})

    pool_watch, pods_watch = f"InferencePool default/{POOL_NAME}", "pods app=vllm"
    assert sample("igw_kubernetes_watch_synced", pool_watch) == 1.0
    assert sample("igw_kubernetes_watch_synced", pods_watch) == 0.0
    assert sample("igw_kubernetes_watch_errors_total", pods_watch) >= 1.0
    api.allow(POD)
    await eventually(lambda: pool.synced, what="synced")
    assert sample("igw_kubernetes_watch_synced", pods_watch) == 1.0
    assert sample("igw_kubernetes_watch_lists_total", pods_watch) == 1.0


async def test_the_historic_v1alpha2_pool_is_followed_with_pool_group_x_k8s(api, pool, discovery):
    from .fake_apiserver import LEGACY_POOL

    legacy = {
        "metadata": {"name": POOL_NAME, "namespace": "default"},
        "spec": {"selector": APP, "targetPortNumber": 8000, "extensionRef": {"name": "epp"}},
    }
    api.apply(LEGACY_POOL, legacy)
    api.apply(POOL, inference_pool(POOL_NAME, {"app": "not-this"}, [9999]))  # the v1 one
    api.apply(POD, pod("pod-0", "10.0.0.1", APP))
    await discovery(pool_group="inference.networking.x-k8s.io").start()
    await eventually(lambda: pool.synced, what="synced")
    assert addresses(pool) == {"10.0.0.1:8000"}


async def test_fields_a_newer_crd_adds_are_ignored_not_refused(api, pool, discovery):
    api.apply(POOL, inference_pool(POOL_NAME, APP, [8000]))
    newer = objective("chat", POOL_NAME, 6)
    newer["spec"]["latencyTarget"] = "500ms"
    newer["spec"]["poolRef"]["port"] = 1
    newer_rewrite = rewrite("rw", POOL_NAME, "llm", "llm-v2")
    newer_rewrite["spec"]["rules"][0]["targets"][0]["note"] = "from v1alpha3"
    api.apply(OBJECTIVE, newer)
    api.apply(REWRITE, newer_rewrite)
    watcher = discovery()
    await watcher.start()
    await eventually(lambda: watcher.objectives.priority("chat") == 6, what="objective kept")
    await eventually(lambda: len(watcher.rewrites) == 1, what="rewrite kept")
