"""The worked examples applied to the fake API server: each pool's watch finds exactly its pods
(never the pickers' own pods) and the objectives the routes name, with their priorities."""

from __future__ import annotations

from pathlib import Path

import yaml

from igw.datastore import Pool
from igw.k8s import KubernetesDiscovery

from .conftest import eventually, fast_backoff
from .fake_apiserver import OBJECTIVE, POD, POOL, pod

EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples"


def _apply_example(api, name: str) -> list[dict]:
    """Pools and objectives as they are; each Deployment as ``replicas`` Ready pods."""
    docs = [d for d in yaml.safe_load_all((EXAMPLES / name).read_text()) if d]
    address = 0
    for doc in docs:
        ns = doc["metadata"].get("namespace", "default")
        if doc["kind"] == "InferencePool":
            api.apply(POOL, doc)
        elif doc["kind"] == "InferenceObjective":
            api.apply(OBJECTIVE, doc)
        elif doc["kind"] == "Deployment":
            labels = doc["spec"]["template"]["metadata"]["labels"]
            for i in range(doc["spec"].get("replicas", 1)):
                address += 1
                api.apply(
                    POD,
                    pod(
                        f"{doc['metadata']['name']}-{i}", f"10.1.0.{address}", labels, namespace=ns
                    ),
                )
    return docs


async def _watch(api, client, namespace: str, pool_name: str) -> tuple[Pool, KubernetesDiscovery]:
    pool = Pool(pool_name, namespace, max_endpoints=64)
    watcher = KubernetesDiscovery(
        pool, client, namespace=namespace, pool_name=pool_name, backoff=fast_backoff
    )
    await watcher.start()
    await eventually(lambda: pool.synced, what=f"{namespace}/{pool_name} synced")
    await eventually(lambda: watcher.view is not None and watcher.view.rebuilds >= 1)
    return pool, watcher


async def test_example_14a_pools_see_their_replicas_and_priority_10(api, client):
    _apply_example(api, "two-models-canary.yaml")
    expected = {
        ("llm", "chatbot"): (3, "chatbot", 10),
        ("llm-canary", "chatbot-canary"): (1, "chatbot", 10),
        ("llm", "recommender"): (2, "recommender", 0),
    }
    watchers = []
    try:
        for (ns, name), (replicas, objective, priority) in expected.items():
            pool, watcher = await _watch(api, client, ns, name)
            watchers.append(watcher)
            store = watcher.view
            await eventually(lambda s=store, o=objective: s.objectives.priority(o) is not None)
            assert len(pool) == replicas, (ns, name, [e.name for e in pool.endpoints()])
            assert all(e.name.startswith(("chatbot-v", "recommender-")) for e in pool.endpoints())
            assert not any(e.name.endswith("-epp-0") for e in pool.endpoints())
            assert watcher.objectives.priority(objective) == priority
    finally:
        for watcher in watchers:
            await watcher.stop()


async def test_example_14b_one_pool_serves_the_base_and_both_adapters(api, client):
    _apply_example(api, "lora-adapters.yaml")
    pool, watcher = await _watch(api, client, "default", "llm-base")
    try:
        await eventually(lambda: len(watcher.objectives) == 3, what="three objectives")
        assert len(pool) == 3
        assert {e.name for e in pool.endpoints()} == {f"llm-base-{i}" for i in range(3)}
        store = watcher.objectives
        assert (store.priority("english-bot"), store.priority("spanish-bot")) == (1, 1)
        assert store.priority("llm-base") == -1
    finally:
        await watcher.stop()
