"""Property: after any sequence of pod events, relists and port changes, the pool holds exactly
the ``podIP:port`` pairs of the Ready, matching, non-terminating pods (IPs may be reused)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from igw.datastore import Pool
from igw.k8s import PoolSpec
from igw.k8s.pods import PodMembership

from .fake_apiserver import pod

SELECTOR = (("app", "vllm"),)

pod_state = st.fixed_dictionaries(
    {
        "name": st.sampled_from([f"pod-{i}" for i in range(5)]),
        "ip": st.sampled_from([None, "10.0.0.1", "10.0.0.2", "10.0.0.3"]),  # reuse on purpose
        "ready": st.booleans(),
        "matching": st.booleans(),
        "terminating": st.booleans(),
    }
)
operation = st.one_of(
    st.tuples(st.just("apply"), pod_state),
    st.tuples(st.just("delete"), st.sampled_from([f"pod-{i}" for i in range(5)])),
    st.tuples(st.just("relist"), st.none()),
    st.tuples(st.just("ports"), st.sampled_from([(8000,), (8000, 8001), (9000,)])),
)


def _pod(state: dict) -> dict:
    labels = {"app": "vllm" if state["matching"] else "other"}
    return pod(
        state["name"], state["ip"], labels, ready=state["ready"], terminating=state["terminating"]
    )


def _expected(truth: dict[str, dict], ports: tuple[int, ...]) -> set[str]:
    return {
        f"{s['ip']}:{port}"
        for s in truth.values()
        if s["ip"] and s["ready"] and s["matching"] and not s["terminating"]
        for port in ports
    }


@settings(max_examples=150, deadline=None)
@given(st.lists(operation, max_size=30))
def test_membership_always_equals_the_ready_matching_pods(operations):
    pool = Pool("p", "default", max_endpoints=64)
    ports: tuple[int, ...] = (8000,)
    membership = PodMembership(pool, PoolSpec(SELECTOR, ports))
    truth: dict[str, dict] = {}
    membership.replace([])
    for kind, value in operations:
        if kind == "apply":
            event = "MODIFIED" if value["name"] in truth else "ADDED"
            truth[value["name"]] = value
            membership.event(event, _pod(value))
        elif kind == "delete" and value in truth:
            membership.event("DELETED", _pod(truth.pop(value)))
        elif kind == "relist":
            membership.replace([_pod(s) for s in truth.values()])
        elif kind == "ports":
            ports = value
            membership.set_spec(PoolSpec(SELECTOR, ports))
        assert {e.address for e in pool.endpoints()} == _expected(truth, ports)
    assert pool.synced
