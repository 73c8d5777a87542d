"""InferencePool specs, selectors, pod readiness, membership bookkeeping and the list client."""

from __future__ import annotations

import pytest

from igw.datastore import Pool
from igw.k8s import Gone, NotFound, PoolSpec, PoolSpecError, parse_pool, parse_ports, parse_selector
from igw.k8s.discovery import OBJECTIVES, PODS
from igw.k8s.pods import PodMembership, endpoints_of, is_ready

from .fake_apiserver import POD, inference_pool, pod

APP = {"app": "vllm"}


def test_v1_pool_spec_gives_selector_and_ports():
    spec = parse_pool(
        {"apiVersion": "inference.networking.k8s.io/v1", **inference_pool("p", APP, [8000, 8001])}
    )
    assert spec == PoolSpec((("app", "vllm"),), (8000, 8001))
    assert spec.label_selector == "app=vllm"


def test_v1alpha2_pool_spec_is_read_too():
    obj = {
        "apiVersion": "inference.networking.x-k8s.io/v1alpha2",
        "metadata": {"name": "p", "namespace": "default"},
        "spec": {"selector": {"app": "vllm", "tier": "a"}, "targetPortNumber": 8000},
    }
    assert parse_pool(obj) == PoolSpec((("app", "vllm"), ("tier", "a")), (8000,))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"targetPorts": [{"number": 8000}]}, r"spec\.selector: expected a mapping"),
        ({"selector": {"matchLabels": {}}, "targetPorts": [{"number": 1}]}, "non-empty map"),
        (
            {"selector": {"matchExpressions": [{"key": "a"}]}, "targetPorts": [{"number": 1}]},
            "matchExpressions",
        ),
        ({"selector": {"matchLabels": APP}, "targetPorts": []}, "1 to 8 ports"),
        ({"selector": {"matchLabels": APP}, "targetPorts": [{"number": 70000}]}, r"\[0\]"),
        (
            {"selector": {"matchLabels": APP}, "targetPorts": [{"number": 1}, {"number": 1}]},
            "unique",
        ),
        ({"selector": {"matchLabels": APP}, "targetPorts": [{"number": True}]}, "1..65535"),
        ({"selector": {"matchLabels": {"a b": "c"}}, "targetPorts": [{"number": 1}]}, "label key"),
    ],
)
def test_bad_pool_specs_name_the_field(spec, message):
    obj = {"apiVersion": "inference.networking.k8s.io/v1", "metadata": {"name": "p"}, "spec": spec}
    with pytest.raises(PoolSpecError, match=message):
        parse_pool(obj)


def test_equality_selectors_parse():
    assert parse_selector("app=vllm, tier==gpu") == (("app", "vllm"), ("tier", "gpu"))


@pytest.mark.parametrize("text", ["app!=x", "app in (a,b)", "app", "", "a=b,a=c", "a=b c"])
def test_other_selectors_are_rejected(text):
    with pytest.raises(PoolSpecError, match="--endpoint-selector"):
        parse_selector(text)


def test_target_ports_flag():
    assert parse_ports("8000, 8001") == (8000, 8001)
    with pytest.raises(PoolSpecError, match="--endpoint-target-ports"):
        parse_ports("8000,x")


@pytest.mark.parametrize(
    ("changes", "ready"),
    [
        ({}, True),
        ({"ready": False}, False),
        ({"ip": None}, False),
        ({"terminating": True}, False),
    ],
)
def test_pod_readiness(changes, ready):
    args = {"ip": "10.0.0.1", **changes}
    ip = args.pop("ip")
    assert is_ready(pod("p", ip, APP, **args)) is ready


def test_a_pod_without_a_ready_condition_is_not_ready():
    item = pod("p", "10.0.0.1", APP)
    item["status"]["conditions"] = [{"type": "Initialized", "status": "True"}]
    assert not is_ready(item)


def test_ipv6_pod_endpoints_are_bracketed():
    spec = PoolSpec((("app", "vllm"),), (8000,))
    assert list(endpoints_of(pod("p", "fd00::5", APP), spec)) == ["[fd00::5]:8000"]


def test_an_ip_taken_over_by_a_new_pod_survives_the_old_pods_deletion():
    pool = Pool("p", "default", max_endpoints=16)
    membership = PodMembership(pool, PoolSpec((("app", "vllm"),), (8000,)))
    membership.replace([pod("old", "10.0.0.1", APP)])
    membership.event("ADDED", pod("new", "10.0.0.1", APP))
    membership.event("DELETED", pod("old", "10.0.0.1", APP))
    endpoint = pool.by_address("10.0.0.1:8000")
    assert endpoint is not None and endpoint.name == "new"
    membership.event("DELETED", pod("new", "10.0.0.1", APP))
    assert len(pool) == 0


def test_a_full_list_drops_pods_it_no_longer_has():
    pool = Pool("p", "default", max_endpoints=16)
    membership = PodMembership(pool, PoolSpec((("app", "vllm"),), (8000,)))
    membership.replace([pod("a", "10.0.0.1", APP), pod("b", "10.0.0.2", APP)])
    assert pool.synced and len(pool) == 2
    membership.replace([pod("b", "10.0.0.2", APP)])
    assert [e.address for e in pool.endpoints()] == ["10.0.0.2:8000"]


async def test_list_follows_continue_pages_and_fills_kind(api, client):
    for i in range(5):
        api.apply(POD, pod(f"pod-{i}", f"10.0.0.{i + 1}", APP))
    items, version = await client.list(PODS, "default", limit=2)
    assert [i["metadata"]["name"] for i in items] == [f"pod-{i}" for i in range(5)]
    assert {(i["apiVersion"], i["kind"]) for i in items} == {("v1", "Pod")}
    assert version == str(api.version)
    assert api.lists("pods") == 3


async def test_an_unserved_collection_is_not_found(client):
    from igw.k8s.client import Resource

    with pytest.raises(NotFound):
        await client.list(Resource("example.com", "v1", "widgets", "Widget"), "default")


async def test_an_expired_watch_version_raises_gone(api, client):
    api.apply(POD, pod("pod-0", "10.0.0.1", APP))
    api.compact()
    api.apply(POD, pod("pod-1", "10.0.0.2", APP))
    with pytest.raises(Gone):
        async for _ in client.watch(PODS, "default", "1", timeout_seconds=1):
            pass


async def test_watch_streams_events_after_the_version(api, client):
    api.apply(POD, pod("pod-0", "10.0.0.1", APP))
    since = str(api.version)
    api.apply(POD, pod("pod-1", "10.0.0.2", APP))
    api.delete(POD, "pod-0")
    seen = []
    async for kind, _obj in client.watch(OBJECTIVES[0], "default", since, timeout_seconds=1):
        seen.append(kind)  # another collection: nothing
    assert seen == []
    async for kind, obj in client.watch(PODS, "default", since, timeout_seconds=1):
        seen.append((kind, obj["metadata"]["name"]))
    assert seen == [("ADDED", "pod-1"), ("DELETED", "pod-0")]
